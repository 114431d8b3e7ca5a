//! Accounts and tokens (spec §2, §3): who may connect, in which namespace, with which rights.
//!
//! The [`Directory`] holds every account and token in memory, mirrors changes into the store
//! as JSON documents, and authenticates CONNECTs in every form flespi accepts. It implements
//! the broker's [`Authenticator`], so namespaces and ancestors come from here too.
//!
//! Layout:
//! - `model`: the Account and Token documents
//! - `acl`: topic rights of master, standard and ACL tokens
//! - `limiter`: the per-address limit on failed logins

pub mod acl;
mod limiter;
pub mod model;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;
use subtle::ConstantTimeEq;
use tern_codec::ReasonCode;
use tern_store::{Op, Snapshot, Store};

pub use acl::{AclRules, Rights, SubscribeRight};
pub use limiter::FailLimiter;
pub use model::{Access, Account, AclEntry, Limits, Token};

use crate::auth::{Authenticator, Credentials, Principal};
use crate::message::Cid;

/// Length of a token key.
pub const KEY_LEN: usize = 64;
/// The shortest key prefix accepted with the token-id form.
pub const MIN_KEY_PREFIX: usize = 16;

/// Quota defaults for accounts without their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaDefaults {
    pub mqtt_sessions: u64,
    pub mqtt_subscriptions: u64,
    pub retained_bytes: u64,
}

impl Default for QuotaDefaults {
    fn default() -> Self {
        QuotaDefaults {
            mqtt_sessions: 100_000,
            mqtt_subscriptions: 10_000,
            retained_bytes: 1 << 30,
        }
    }
}

/// How the directory authenticates.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// Clients without credentials are let in as this account with standard rights.
    pub anonymous: Option<Cid>,
    pub quotas: QuotaDefaults,
    /// Failed logins allowed per source address in a burst, and refilled per second.
    pub failed_login_burst: u32,
    pub failed_login_per_sec: f64,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            anonymous: None,
            quotas: QuotaDefaults::default(),
            failed_login_burst: 20,
            failed_login_per_sec: 2.0,
        }
    }
}

/// Why a directory change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("account {0} not found")]
    NoAccount(Cid),
    #[error("token {0} not found")]
    NoToken(u64),
    #[error("invalid token key: {0}")]
    BadKey(&'static str),
    #[error("a token with this key already exists")]
    DuplicateKey,
    #[error("account {0} already exists")]
    DuplicateAccount(Cid),
    #[error("the top account cannot be deleted")]
    TopAccount,
}

#[derive(Debug, Default)]
struct State {
    accounts: HashMap<Cid, Account>,
    tokens: HashMap<u64, Token>,
    by_key: HashMap<String, u64>,
    top: Option<Cid>,
}

/// Counters of the authentication path.
#[derive(Debug, Default)]
pub struct AuthMetrics {
    pub failures: AtomicU64,
    pub rate_limited: AtomicU64,
    pub successes: AtomicU64,
}

/// Every account and token.
#[derive(Debug)]
pub struct Directory {
    state: RwLock<State>,
    store: Store,
    config: DirectoryConfig,
    limiter: Mutex<FailLimiter>,
    pub metrics: AuthMetrics,
}

impl Directory {
    /// Loads accounts and tokens from the store's snapshot. Documents that do not parse are
    /// reported and skipped.
    pub fn load(snapshot: &Snapshot, store: Store, config: DirectoryConfig) -> Arc<Directory> {
        let mut st = State::default();
        for (cid, json) in &snapshot.accounts {
            match serde_json::from_slice::<Account>(json) {
                Ok(a) => {
                    if a.parent.is_none() {
                        st.top = Some(st.top.map_or(a.id, |t: Cid| t.min(a.id)));
                    }
                    st.accounts.insert(*cid, a);
                }
                Err(err) => tracing::error!(cid, %err, "stored account does not parse; skipped"),
            }
        }
        for (id, json) in &snapshot.tokens {
            match serde_json::from_slice::<Token>(json) {
                Ok(t) => {
                    st.by_key.insert(t.key.clone(), *id);
                    st.tokens.insert(*id, t);
                }
                Err(err) => tracing::error!(id, %err, "stored token does not parse; skipped"),
            }
        }
        let limiter = FailLimiter::new(
            config.failed_login_burst,
            config.failed_login_per_sec,
            100_000,
        );
        Arc::new(Directory {
            state: RwLock::new(st),
            store,
            config,
            limiter: Mutex::new(limiter),
            metrics: AuthMetrics::default(),
        })
    }

    /// The top account, if any.
    pub fn top(&self) -> Option<Cid> {
        self.state.read().top
    }

    /// Creates the top account and a master token unless they exist. `master_key` sets the
    /// master token's key; otherwise one is generated. Returns the master token when it was
    /// created now (so the caller can show it once).
    pub fn bootstrap(
        &self,
        top_cid: Cid,
        master_key: Option<&str>,
    ) -> Result<Option<Token>, DirectoryError> {
        if let Some(key) = master_key {
            check_key(key)?;
        }
        let now = now_secs();
        let mut st = self.state.write();
        if st.top.is_none() {
            let account = Account {
                id: top_cid,
                name: "tern".into(),
                parent: None,
                metadata: serde_json::json!({}),
                enabled: true,
                limits: Limits::default(),
            };
            self.persist_account(&account);
            st.accounts.insert(top_cid, account);
            st.top = Some(top_cid);
        }
        let top = st.top.unwrap_or(top_cid);
        if let Some(key) = master_key {
            // A configured master key always works: create it if it is not there yet.
            if st.by_key.contains_key(key) {
                return Ok(None);
            }
        } else if st
            .tokens
            .values()
            .any(|t| t.cid == top && t.access.kind == Access::MASTER)
        {
            return Ok(None);
        }
        let token = Token {
            id: next_id(st.tokens.keys()),
            key: master_key.map_or_else(generate_key, str::to_string),
            info: "master token".into(),
            enabled: true,
            expire: 0,
            ttl: 0,
            created: now,
            accessed: 0,
            ips: String::new(),
            cid: top,
            metadata: serde_json::json!({}),
            access: Access {
                kind: Access::MASTER,
                acl: vec![],
            },
        };
        self.persist_token(&token);
        st.by_key.insert(token.key.clone(), token.id);
        st.tokens.insert(token.id, token.clone());
        Ok(Some(token))
    }

    // ---- accounts --------------------------------------------------------------------

    pub fn account(&self, cid: Cid) -> Option<Account> {
        self.state.read().accounts.get(&cid).cloned()
    }

    pub fn accounts(&self) -> Vec<Account> {
        let mut v: Vec<Account> = self.state.read().accounts.values().cloned().collect();
        v.sort_by_key(|a| a.id);
        v
    }

    /// Creates a sub-account of `parent` (id chosen when `id` is `None`).
    pub fn create_account(
        &self,
        parent: Cid,
        id: Option<Cid>,
        name: &str,
        metadata: serde_json::Value,
    ) -> Result<Account, DirectoryError> {
        let mut st = self.state.write();
        if !st.accounts.contains_key(&parent) {
            return Err(DirectoryError::NoAccount(parent));
        }
        let id = match id {
            Some(id) if st.accounts.contains_key(&id) => {
                return Err(DirectoryError::DuplicateAccount(id));
            }
            Some(id) => id,
            None => next_id(st.accounts.keys()),
        };
        let account = Account {
            id,
            name: name.to_string(),
            parent: Some(parent),
            metadata,
            enabled: true,
            limits: Limits::default(),
        };
        self.persist_account(&account);
        st.accounts.insert(id, account.clone());
        Ok(account)
    }

    /// Replaces an account document (its id and parent are kept).
    pub fn update_account(&self, mut account: Account) -> Result<Account, DirectoryError> {
        let mut st = self.state.write();
        let old = st
            .accounts
            .get(&account.id)
            .ok_or(DirectoryError::NoAccount(account.id))?;
        account.parent = old.parent;
        self.persist_account(&account);
        st.accounts.insert(account.id, account.clone());
        Ok(account)
    }

    /// Deletes an account, its sub-accounts (recursively) and their tokens. Returns every
    /// deleted account id, so the broker can drop their sessions and retained messages.
    pub fn delete_account(&self, cid: Cid) -> Result<Vec<Cid>, DirectoryError> {
        let mut st = self.state.write();
        if !st.accounts.contains_key(&cid) {
            return Err(DirectoryError::NoAccount(cid));
        }
        if st.top == Some(cid) {
            return Err(DirectoryError::TopAccount);
        }
        let gone = descendants_of(&st.accounts, cid);
        for id in &gone {
            st.accounts.remove(id);
            self.store.submit(Op::DelAccount { cid: *id });
        }
        let tokens: Vec<u64> = st
            .tokens
            .values()
            .filter(|t| gone.contains(&t.cid))
            .map(|t| t.id)
            .collect();
        for id in tokens {
            if let Some(t) = st.tokens.remove(&id) {
                st.by_key.remove(&t.key);
            }
            self.store.submit(Op::DelToken { id });
        }
        Ok(gone)
    }

    /// `cid` and its ancestors, nearest first.
    pub fn ancestors(&self, cid: Cid) -> SmallVec<[Cid; 4]> {
        let st = self.state.read();
        let mut out = SmallVec::new();
        let mut cur = Some(cid);
        while let Some(c) = cur {
            if out.contains(&c) || out.len() > 64 {
                break;
            }
            out.push(c);
            cur = st.accounts.get(&c).and_then(|a| a.parent);
        }
        out
    }

    /// `cid` and every account below it.
    pub fn descendants(&self, cid: Cid) -> Vec<Cid> {
        descendants_of(&self.state.read().accounts, cid)
    }

    /// Whether `cid` is `ancestor` or below it.
    pub fn is_within(&self, cid: Cid, ancestor: Cid) -> bool {
        self.ancestors(cid).contains(&ancestor)
    }

    /// The effective quotas of an account.
    pub fn quotas(&self, cid: Cid) -> QuotaDefaults {
        let d = self.config.quotas;
        match self.state.read().accounts.get(&cid) {
            Some(a) => QuotaDefaults {
                mqtt_sessions: a.limits.mqtt_sessions.unwrap_or(d.mqtt_sessions),
                mqtt_subscriptions: a.limits.mqtt_subscriptions.unwrap_or(d.mqtt_subscriptions),
                retained_bytes: a.limits.retained_bytes.unwrap_or(d.retained_bytes),
            },
            None => d,
        }
    }

    // ---- tokens ----------------------------------------------------------------------

    pub fn token(&self, id: u64) -> Option<Token> {
        self.state.read().tokens.get(&id).cloned()
    }

    /// The token with this key (constant-time comparison of the key).
    pub fn token_by_key(&self, key: &str) -> Option<Token> {
        let st = self.state.read();
        let id = st.by_key.get(key)?;
        let t = st.tokens.get(id)?;
        bool::from(t.key.as_bytes().ct_eq(key.as_bytes())).then(|| t.clone())
    }

    /// `(id, expire)` of every token whose absolute `expire` (unix seconds) is at or before
    /// `now`: the tokens whose live connections must end.
    pub fn expired_tokens(&self, now: u64) -> Vec<(u64, u64)> {
        self.state
            .read()
            .tokens
            .values()
            .filter(|t| t.expire != 0 && t.expire <= now)
            .map(|t| (t.id, t.expire))
            .collect()
    }

    pub fn tokens(&self) -> Vec<Token> {
        let mut v: Vec<Token> = self.state.read().tokens.values().cloned().collect();
        v.sort_by_key(|t| t.id);
        v
    }

    /// Creates a token. The key is generated (64 alphanumerics from the OS CSPRNG) unless
    /// `token.key` is set; `id`, `created` are assigned.
    pub fn create_token(&self, mut token: Token) -> Result<Token, DirectoryError> {
        if token.key.is_empty() {
            token.key = generate_key();
        } else {
            check_key(&token.key)?;
        }
        let mut st = self.state.write();
        if !st.accounts.contains_key(&token.cid) {
            return Err(DirectoryError::NoAccount(token.cid));
        }
        if st.by_key.contains_key(&token.key) {
            return Err(DirectoryError::DuplicateKey);
        }
        token.id = next_id(st.tokens.keys());
        token.created = now_secs();
        self.persist_token(&token);
        st.by_key.insert(token.key.clone(), token.id);
        st.tokens.insert(token.id, token.clone());
        Ok(token)
    }

    /// Replaces a token document (id, key, cid and created are kept).
    pub fn update_token(&self, mut token: Token) -> Result<Token, DirectoryError> {
        let mut st = self.state.write();
        let old = st
            .tokens
            .get(&token.id)
            .ok_or(DirectoryError::NoToken(token.id))?;
        token.key = old.key.clone();
        token.cid = old.cid;
        token.created = old.created;
        self.persist_token(&token);
        st.tokens.insert(token.id, token.clone());
        Ok(token)
    }

    pub fn delete_token(&self, id: u64) -> Result<Token, DirectoryError> {
        let mut st = self.state.write();
        let t = st.tokens.remove(&id).ok_or(DirectoryError::NoToken(id))?;
        st.by_key.remove(&t.key);
        self.store.submit(Op::DelToken { id });
        Ok(t)
    }

    /// Checks a token for use now from `peer`: enabled, not expired, within its ttl, from an
    /// allowed address, of an enabled account. Records the access.
    pub fn check_token(&self, id: u64, peer: Option<IpAddr>) -> Result<Token, ReasonCode> {
        let now = now_secs();
        let mut st = self.state.write();
        let t = in_force(&st, id, now)?;
        if let Some(ip) = peer
            && !ip_allowed(&t.ips, ip)
        {
            return Err(ReasonCode::NOT_AUTHORIZED);
        }
        let mut token = t.clone();
        // `accessed` is kept to the second; writing it at most once a second per token keeps a
        // reconnect storm from turning into a write storm.
        if token.accessed != now {
            token.accessed = now;
            self.persist_token(&token);
            st.tokens.insert(id, token.clone());
        }
        Ok(token)
    }

    /// Whether a login from `ip` may be checked at all, for logins other than MQTT CONNECT
    /// (REST calls): the same per-address limit on failures applies to both.
    pub fn login_allowed(&self, ip: IpAddr) -> bool {
        let allowed = self.limiter.lock().allow(ip);
        if !allowed {
            self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }

    /// Records the outcome of a login checked outside MQTT CONNECT.
    pub fn login_checked(&self, ip: IpAddr, ok: bool) {
        if ok {
            self.metrics.successes.fetch_add(1, Ordering::Relaxed);
        } else {
            self.metrics.failures.fetch_add(1, Ordering::Relaxed);
            self.limiter.lock().failed(ip);
        }
    }

    fn persist_account(&self, a: &Account) {
        if self.store.enabled()
            && let Ok(json) = serde_json::to_vec(a)
        {
            self.store.submit(Op::PutAccount {
                cid: a.id,
                json: Bytes::from(json),
            });
        }
    }

    fn persist_token(&self, t: &Token) {
        if self.store.enabled()
            && let Ok(json) = serde_json::to_vec(t)
        {
            self.store.submit(Op::PutToken {
                id: t.id,
                json: Bytes::from(json),
            });
        }
    }

    /// Finds the token a CONNECT presents, in every form of spec §2.
    fn find_token(&self, creds: &Credentials<'_>) -> Option<u64> {
        let username = creds.username.unwrap_or("");
        let password = creds
            .password
            .and_then(|p| std::str::from_utf8(p).ok())
            .unwrap_or("");
        let key_from_user = username
            .strip_prefix("FlespiToken ")
            .unwrap_or(username)
            .trim();
        if key_from_user.len() == KEY_LEN
            && let Some(t) = self.token_by_key(key_from_user)
        {
            return Some(t.id);
        }
        if password.len() == KEY_LEN
            && let Some(t) = self.token_by_key(password)
        {
            return Some(t.id);
        }
        // The 16-byte form: token id as username, the first 16 or more characters of its key
        // as password.
        if let Ok(id) = username.parse::<u64>()
            && password.len() >= MIN_KEY_PREFIX
        {
            let st = self.state.read();
            if let Some(t) = st.tokens.get(&id)
                && password.len() <= t.key.len()
                && bool::from(t.key.as_bytes()[..password.len()].ct_eq(password.as_bytes()))
            {
                return Some(id);
            }
        }
        None
    }

    fn principal(&self, token: &Token) -> Principal {
        let doc = serde_json::json!({
            "id": token.id,
            "cid": token.cid,
            "info": token.info,
            "expire": token.expire,
            "ttl": token.ttl,
            "access": token.access,
        });
        Principal {
            cid: token.cid,
            token_id: Some(token.id),
            rights: Rights::of(&token.access),
            token_json: Some(doc.to_string()),
        }
    }
}

impl Authenticator for Arc<Directory> {
    fn authenticate(&self, creds: &Credentials<'_>) -> Result<Principal, ReasonCode> {
        let anonymous =
            creds.username.is_none_or(str::is_empty) && creds.password.is_none_or(<[u8]>::is_empty);
        if anonymous {
            return match self.config.anonymous {
                Some(cid) => Ok(Principal::anonymous(cid)),
                None => Err(ReasonCode::NOT_AUTHORIZED),
            };
        }
        if !self.limiter.lock().allow(creds.peer) {
            self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(ReasonCode::CONNECTION_RATE_EXCEEDED);
        }
        let result = match self.find_token(creds) {
            Some(id) => self.check_token(id, Some(creds.peer)),
            None => Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
        };
        match result {
            Ok(token) => {
                self.metrics.successes.fetch_add(1, Ordering::Relaxed);
                Ok(self.principal(&token))
            }
            Err(code) => {
                self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                self.limiter.lock().failed(creds.peer);
                Err(code)
            }
        }
    }

    fn ancestors(&self, cid: Cid) -> SmallVec<[Cid; 4]> {
        Directory::ancestors(self, cid)
    }

    fn descendants(&self, cid: Cid) -> Vec<Cid> {
        Directory::descendants(self, cid)
    }

    fn token_rights(&self, token_id: u64) -> Option<Rights> {
        // A deleted, disabled or expired token, or one of a disabled account, grants nothing.
        let st = self.state.read();
        Some(in_force(&st, token_id, now_secs()).map_or_else(
            |_| Rights::Acl(Arc::new(AclRules::default())),
            |t| Rights::of(&t.access),
        ))
    }

    fn max_sessions(&self, cid: Cid) -> u64 {
        self.quotas(cid).mqtt_sessions
    }

    fn max_subscriptions(&self, cid: Cid) -> u64 {
        self.quotas(cid).mqtt_subscriptions
    }

    fn max_retained_bytes(&self, cid: Cid) -> u64 {
        self.quotas(cid).retained_bytes
    }
}

/// Token `id` if it may be used now: it exists, is enabled and not expired (`expire`, `ttl`),
/// and its account and every account above it are enabled (disabling an account disables its
/// sub-accounts too). `Err` is the CONNACK reason code.
fn in_force(st: &State, id: u64, now: u64) -> Result<&Token, ReasonCode> {
    let t = st
        .tokens
        .get(&id)
        .ok_or(ReasonCode::BAD_USER_NAME_OR_PASSWORD)?;
    if !t.enabled
        || (t.expire != 0 && now >= t.expire)
        || (t.ttl != 0 && t.accessed != 0 && now > t.accessed + t.ttl)
    {
        return Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    }
    let mut cur = Some(t.cid);
    let mut depth = 0;
    while let Some(c) = cur {
        match st.accounts.get(&c) {
            Some(a) if a.enabled => cur = a.parent,
            Some(_) => return Err(ReasonCode::BANNED),
            None if c == t.cid => return Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
            None => break,
        }
        depth += 1;
        if depth > 64 {
            break;
        }
    }
    Ok(t)
}

fn descendants_of(accounts: &HashMap<Cid, Account>, cid: Cid) -> Vec<Cid> {
    let mut out = vec![cid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        let mut children: Vec<Cid> = accounts
            .values()
            .filter(|a| a.parent == Some(parent) && !out.contains(&a.id))
            .map(|a| a.id)
            .collect();
        children.sort_unstable();
        out.extend(children);
        i += 1;
    }
    out
}

fn next_id<'a>(ids: impl Iterator<Item = &'a u64>) -> u64 {
    ids.max().map_or(1, |m| m + 1)
}

/// A new token key: 64 alphanumerics from a CSPRNG.
pub fn generate_key() -> String {
    use rand::RngExt;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // ThreadRng is ChaCha12, seeded and periodically reseeded from the OS.
    let mut rng = rand::rng();
    (0..KEY_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Checks the shape of a key given by a user.
pub fn check_key(key: &str) -> Result<(), DirectoryError> {
    if key.len() != KEY_LEN {
        return Err(DirectoryError::BadKey("a key is 64 characters"));
    }
    if !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(DirectoryError::BadKey("a key has only letters and digits"));
    }
    Ok(())
}

/// Whether `ip` matches one of the comma-separated masks (`*` any run, `?` one character).
pub fn ip_allowed(masks: &str, ip: IpAddr) -> bool {
    let masks = masks.trim();
    if masks.is_empty() {
        return true;
    }
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let text = ip.to_string();
    masks
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .any(|m| tern_expr::Pattern::new(m).map_or(m == text, |p| p.matches(&text)))
}

fn now_secs() -> u64 {
    crate::message::wall_micros() / 1_000_000
}
