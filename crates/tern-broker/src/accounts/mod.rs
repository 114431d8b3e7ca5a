//! Accounts and tokens (docs/flespi.md#connecting-and-authorization, #accounts-and-namespaces): who
//! may connect, in which namespace, with which rights.
//!
//! The [`Directory`] holds every account and token in memory, mirrors changes into the store
//! as JSON documents, and authenticates CONNECTs in every form flespi accepts. It implements
//! the broker's [`Authenticator`], so namespaces and ancestors come from here too.
//!
//! Layout:
//! - `model`: the Account and Token documents
//! - `acl`: topic rights of master, standard and ACL tokens
//! - `limiter`: the per-address limit on failed logins
//! - `replica`: cluster mode's seam ([`DirectoryReplica`]): this node's changes handed out,
//!   other nodes' changes applied ([`Directory::apply_remote`]), ids that no two nodes share
//!
//! Quotas are hierarchical: an account's limits bound it together with every account below it,
//! so a use in account X (a session, a subscription, retained bytes, a token, a sub-account)
//! is allowed only when X and every ancestor of X have room for it. The directory counts the
//! accounts and tokens below each account itself; the broker counts sessions, subscriptions and
//! retained bytes per namespace and asks [`Authenticator::quota_chain`] for the limits. A limit
//! is never set above the parent's (effective) limit, and an account's limits are set only from
//! above it: a token never changes its own account's limits (the REST API lets it change only
//! accounts strictly below the one it acts in).

pub mod acl;
mod limiter;
pub mod model;
mod replica;
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

pub use limiter::FailLimiter;
pub use model::{Access, Account, AclEntry, Limits, Token};
pub use replica::{DirectoryChange, DirectoryReplica, IdKind, RemoteEffect, narrows};

// The rights and quota types the accounts produce, at their former paths.
pub use crate::quota::{QuotaChain, QuotaDefaults};
pub use crate::rights::{AclRules, Rights, SubscribeRight};

use crate::auth::{Authenticator, Credentials, Principal};
use crate::message::{Cid, Clock};

/// Length of a token key.
pub const KEY_LEN: usize = 64;
/// The shortest key prefix accepted with the token-id form.
pub const MIN_KEY_PREFIX: usize = 16;
/// The name of the account anonymous clients land in.
pub const ANONYMOUS: &str = "anonymous";

impl QuotaDefaults {
    /// These defaults overridden by an account's own limits.
    pub fn with(&self, l: &Limits) -> QuotaDefaults {
        QuotaDefaults {
            mqtt_sessions: l.mqtt_sessions.unwrap_or(self.mqtt_sessions),
            mqtt_subscriptions: l.mqtt_subscriptions.unwrap_or(self.mqtt_subscriptions),
            retained_bytes: l.retained_bytes.unwrap_or(self.retained_bytes),
            subaccounts: l.subaccounts.unwrap_or(self.subaccounts),
            tokens: l.tokens.unwrap_or(self.tokens),
            devices: l.devices.unwrap_or(self.devices),
            channels: l.channels.unwrap_or(self.channels),
            messages_bytes: l.messages_bytes.unwrap_or(self.messages_bytes),
        }
    }
}

/// How the directory authenticates.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// Clients without credentials are let in, with standard rights, into the anonymous
    /// account (see [`Directory::anonymous_account`]); without one they are refused.
    pub anonymous: bool,
    pub quotas: QuotaDefaults,
    /// Failed logins allowed per source address in a burst, and refilled per second.
    pub failed_login_burst: u32,
    pub failed_login_per_sec: f64,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            anonymous: false,
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
    /// A new token or sub-account would take `cid` (the account or an ancestor) over a quota.
    #[error("the {quota} quota of account {cid} ({limit}) is used up")]
    QuotaExceeded {
        cid: Cid,
        quota: &'static str,
        limit: u64,
    },
    /// A limit set above what the parent account may have.
    #[error("limits.{quota} = {value} is above the parent account's {quota} ({cap})")]
    AboveParent {
        quota: &'static str,
        value: u64,
        cap: u64,
    },
    #[error("the anonymous account cannot be the top account")]
    AnonymousTop,
    /// Cluster mode: no id that no other node uses could be taken now (NATS out of reach).
    #[error("no new {0} id can be taken now (the cluster is out of reach); try again")]
    NoId(&'static str),
}

#[derive(Debug, Default)]
struct State {
    accounts: HashMap<Cid, Account>,
    tokens: HashMap<u64, Token>,
    by_key: HashMap<String, u64>,
    top: Option<Cid>,
    /// What each account has below it, for the `subaccounts` and `tokens` quotas.
    below: HashMap<Cid, Below>,
}

/// What the directory counts against quotas.
#[derive(Debug, Clone, Copy)]
enum Counted {
    Subaccount,
    Token,
}

/// The accounts strictly below an account, and the tokens of it and of every account below it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Below {
    accounts: u64,
    tokens: u64,
}

impl State {
    /// `cid` and its ancestors, nearest first.
    fn chain(&self, cid: Cid) -> SmallVec<[Cid; 4]> {
        let mut out = SmallVec::new();
        let mut cur = Some(cid);
        while let Some(c) = cur {
            if out.contains(&c) || out.len() > 64 {
                break;
            }
            out.push(c);
            cur = self.accounts.get(&c).and_then(|a| a.parent);
        }
        out
    }

    /// Counts the accounts and tokens below every account from scratch.
    fn recount(&mut self) {
        let mut below: HashMap<Cid, Below> = HashMap::new();
        for a in self.accounts.values() {
            for c in self.chain(a.id).into_iter().skip(1) {
                below.entry(c).or_default().accounts += 1;
            }
        }
        for t in self.tokens.values() {
            for c in self.chain(t.cid) {
                below.entry(c).or_default().tokens += 1;
            }
        }
        self.below = below;
    }

    /// The quotas of `cid` (its own limits over the defaults).
    fn quotas(&self, cid: Cid, defaults: &QuotaDefaults) -> QuotaDefaults {
        match self.accounts.get(&cid) {
            Some(a) => defaults.with(&a.limits),
            None => *defaults,
        }
    }

    /// The most any limit of a sub-account of `parent` may be: the lowest quota of `parent`
    /// and its ancestors.
    fn cap(&self, parent: Cid, defaults: &QuotaDefaults) -> QuotaDefaults {
        self.chain(parent)
            .into_iter()
            .fold(QuotaDefaults::UNLIMITED, |cap, c| {
                cap.min(&self.quotas(c, defaults))
            })
    }

    /// Refuses limits of a sub-account of `parent` above the parent's; only the limits that
    /// differ from `old` are checked, so lowering a parent's limit later does not make its
    /// sub-accounts unchangeable.
    fn check_limits(
        &self,
        parent: Cid,
        new: &Limits,
        old: &Limits,
        defaults: &QuotaDefaults,
    ) -> Result<(), DirectoryError> {
        let cap = self.cap(parent, defaults).named();
        for (i, ((quota, value), (_, before))) in
            new.named().into_iter().zip(old.named()).enumerate()
        {
            if let Some(value) = value
                && Some(value) != before
                && value > cap[i].1
            {
                return Err(DirectoryError::AboveParent {
                    quota,
                    value,
                    cap: cap[i].1,
                });
            }
        }
        Ok(())
    }

    /// Refuses one more sub-account or token in `cid` when it would take `cid` or an
    /// ancestor over its quota.
    fn check_room(
        &self,
        cid: Cid,
        what: Counted,
        defaults: &QuotaDefaults,
    ) -> Result<(), DirectoryError> {
        for c in self.chain(cid) {
            let q = self.quotas(c, defaults);
            let below = self.below.get(&c).copied().unwrap_or_default();
            let (used, limit, quota) = match what {
                Counted::Subaccount => (below.accounts, q.subaccounts, "subaccounts"),
                Counted::Token => (below.tokens, q.tokens, "tokens"),
            };
            if used >= limit {
                return Err(DirectoryError::QuotaExceeded {
                    cid: c,
                    quota,
                    limit,
                });
            }
        }
        Ok(())
    }
}

/// A new sub-account (see [`Directory::add_account`]).
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub parent: Cid,
    /// Chosen when `None`.
    pub id: Option<Cid>,
    pub name: String,
    pub metadata: serde_json::Value,
    pub enabled: bool,
    pub limits: Limits,
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
    /// The account anonymous clients land in (0: none).
    anonymous: AtomicU64,
    pub metrics: AuthMetrics,
    /// What token `expire`, `ttl` and `created` are measured against: the wall clock, or the
    /// broker's manual clock in tests ([`Clock::share`]).
    clock: Clock,
    /// Cluster mode: where this node's changes go and its new ids come from (set once).
    replica: std::sync::OnceLock<Arc<dyn DirectoryReplica>>,
}

impl Directory {
    /// Loads accounts and tokens from the store's snapshot. Documents that do not parse are
    /// reported and skipped.
    pub fn load(snapshot: &Snapshot, store: Store, config: DirectoryConfig) -> Arc<Directory> {
        Directory::load_with_clock(snapshot, store, config, Clock::default())
    }

    /// [`Directory::load`] on `clock` (for tests on a manual clock).
    pub fn load_with_clock(
        snapshot: &Snapshot,
        store: Store,
        config: DirectoryConfig,
        clock: Clock,
    ) -> Arc<Directory> {
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
        st.recount();
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
            anonymous: AtomicU64::new(0),
            metrics: AuthMetrics::default(),
            clock,
            replica: std::sync::OnceLock::new(),
        })
    }

    fn now_secs(&self) -> u64 {
        self.clock.now() / 1_000_000
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
        let now = self.now_secs();
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
        let id = self.new_id(IdKind::Token, &st.tokens)?;
        let token = Token {
            id,
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
        st.below.entry(top).or_default().tokens += 1;
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

    /// Creates a sub-account of `parent` (id chosen when `id` is `None`) with the default
    /// limits, within the quotas (see [`Directory::add_account`]).
    pub fn create_account(
        &self,
        parent: Cid,
        id: Option<Cid>,
        name: &str,
        metadata: serde_json::Value,
    ) -> Result<Account, DirectoryError> {
        self.add_account(NewAccount {
            parent,
            id,
            name: name.to_string(),
            metadata,
            enabled: true,
            limits: Limits::default(),
        })
    }

    /// Creates a sub-account. Refused when `parent` or an ancestor has no room under its
    /// `subaccounts` quota, or when a limit is above the parent's.
    pub fn add_account(&self, new: NewAccount) -> Result<Account, DirectoryError> {
        let mut st = self.state.write();
        if !st.accounts.contains_key(&new.parent) {
            return Err(DirectoryError::NoAccount(new.parent));
        }
        let id = match new.id {
            Some(id) if st.accounts.contains_key(&id) => {
                return Err(DirectoryError::DuplicateAccount(id));
            }
            Some(id) => id,
            None => self.new_id(IdKind::Account, &st.accounts)?,
        };
        let defaults = self.config.quotas;
        st.check_limits(new.parent, &new.limits, &Limits::default(), &defaults)?;
        st.check_room(new.parent, Counted::Subaccount, &defaults)?;
        let account = Account {
            id,
            name: new.name,
            parent: Some(new.parent),
            metadata: new.metadata,
            enabled: new.enabled,
            limits: new.limits,
        };
        self.persist_account(&account);
        for c in st.chain(new.parent) {
            st.below.entry(c).or_default().accounts += 1;
        }
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
        if let Some(parent) = old.parent {
            st.check_limits(parent, &account.limits, &old.limits, &self.config.quotas)?;
        }
        self.persist_account(&account);
        st.accounts.insert(account.id, account.clone());
        Ok(account)
    }

    /// Deletes an account, its sub-accounts (recursively) and their tokens. Returns every
    /// deleted account id, so the broker can drop their sessions and retained messages.
    pub fn delete_account(&self, cid: Cid) -> Result<Vec<Cid>, DirectoryError> {
        let mut st = self.state.write();
        self.remove_account(&mut st, cid, true)
    }

    /// [`Directory::delete_account`] on the locked state; handed to the replica when
    /// `replicate`.
    fn remove_account(
        &self,
        st: &mut State,
        cid: Cid,
        replicate: bool,
    ) -> Result<Vec<Cid>, DirectoryError> {
        if !st.accounts.contains_key(&cid) {
            return Err(DirectoryError::NoAccount(cid));
        }
        if st.top == Some(cid) {
            return Err(DirectoryError::TopAccount);
        }
        let gone = descendants_of(&st.accounts, cid);
        // What goes, counted off every account above it.
        let above: SmallVec<[Cid; 4]> = st.chain(cid).into_iter().skip(1).collect();
        let removed = st.below.get(&cid).copied().unwrap_or_default();
        for c in above {
            if let Some(b) = st.below.get_mut(&c) {
                b.accounts = b.accounts.saturating_sub(removed.accounts + 1);
                b.tokens = b.tokens.saturating_sub(removed.tokens);
            }
        }
        for id in &gone {
            st.below.remove(id);
            st.accounts.remove(id);
            self.store.submit(Op::DelAccount { cid: *id });
            if replicate {
                self.hand_out(DirectoryChange::DelAccount(*id));
            }
        }
        let tokens: Vec<u64> = st
            .tokens
            .values()
            .filter(|t| gone.contains(&t.cid))
            .map(|t| t.id)
            .collect();
        for id in tokens {
            if let Some(t) = st.tokens.remove(&id)
                && st.by_key.get(&t.key) == Some(&id)
            {
                st.by_key.remove(&t.key);
            }
            self.store.submit(Op::DelToken { id });
            if replicate {
                self.hand_out(DirectoryChange::DelToken(id));
            }
        }
        Ok(gone)
    }

    /// `cid` and its ancestors, nearest first.
    pub fn ancestors(&self, cid: Cid) -> SmallVec<[Cid; 4]> {
        self.state.read().chain(cid)
    }

    /// `cid` and every account below it.
    pub fn descendants(&self, cid: Cid) -> Vec<Cid> {
        descendants_of(&self.state.read().accounts, cid)
    }

    /// Whether `cid` is `ancestor` or below it.
    pub fn is_within(&self, cid: Cid, ancestor: Cid) -> bool {
        self.ancestors(cid).contains(&ancestor)
    }

    /// The quotas of an account (its own limits over the defaults). The account and every
    /// account below it share them, and each ancestor's quotas bound them too (see
    /// [`Directory::quota_chain`]).
    pub fn quotas(&self, cid: Cid) -> QuotaDefaults {
        self.state.read().quotas(cid, &self.config.quotas)
    }

    /// The quotas of `cid` and of each ancestor, nearest first.
    pub fn quota_chain(&self, cid: Cid) -> QuotaChain {
        let st = self.state.read();
        st.chain(cid)
            .into_iter()
            .map(|c| (c, st.quotas(c, &self.config.quotas)))
            .collect()
    }

    /// How many accounts are below `cid`, and how many tokens `cid` and the accounts below it
    /// have.
    pub fn usage(&self, cid: Cid) -> (u64, u64) {
        let b = self
            .state
            .read()
            .below
            .get(&cid)
            .copied()
            .unwrap_or_default();
        (b.accounts, b.tokens)
    }

    /// The account anonymous clients land in (with `auth.anonymous`), if any.
    pub fn anonymous(&self) -> Option<Cid> {
        match self.anonymous.load(Ordering::Relaxed) {
            0 => None,
            cid => Some(cid),
        }
    }

    /// Finds or creates the account anonymous clients land in, and makes it theirs: account
    /// `id` when given, otherwise the top account's sub-account named `anonymous`. A new one
    /// is created as a sub-account of the top account named `anonymous` (with id `id` when
    /// given). It is never the top account: anonymous clients must not see other accounts'
    /// traffic, while the top account sees theirs (docs/flespi.md#connecting-and-authorization,
    /// #accounts-and-namespaces).
    pub fn anonymous_account(&self, id: Option<Cid>) -> Result<Account, DirectoryError> {
        let top = self
            .top()
            .ok_or(DirectoryError::NoAccount(id.unwrap_or(0)))?;
        if id == Some(top) {
            return Err(DirectoryError::AnonymousTop);
        }
        let found = {
            let st = self.state.read();
            match id {
                Some(id) => st.accounts.get(&id).cloned(),
                None => st
                    .accounts
                    .values()
                    .filter(|a| a.parent == Some(top) && a.name == ANONYMOUS)
                    .min_by_key(|a| a.id)
                    .cloned(),
            }
        };
        let account = match found {
            Some(a) => a,
            None => self.create_account(top, id, ANONYMOUS, serde_json::json!({}))?,
        };
        self.anonymous.store(account.id, Ordering::Relaxed);
        Ok(account)
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
        st.check_room(token.cid, Counted::Token, &self.config.quotas)?;
        token.id = self.new_id(IdKind::Token, &st.tokens)?;
        token.created = self.now_secs();
        self.persist_token(&token);
        for c in st.chain(token.cid) {
            st.below.entry(c).or_default().tokens += 1;
        }
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
        self.remove_token(&mut st, id, true)
    }

    /// [`Directory::delete_token`] on the locked state; handed to the replica when
    /// `replicate`.
    fn remove_token(
        &self,
        st: &mut State,
        id: u64,
        replicate: bool,
    ) -> Result<Token, DirectoryError> {
        let t = st.tokens.remove(&id).ok_or(DirectoryError::NoToken(id))?;
        if st.by_key.get(&t.key) == Some(&id) {
            st.by_key.remove(&t.key);
        }
        for c in st.chain(t.cid) {
            if let Some(b) = st.below.get_mut(&c) {
                b.tokens = b.tokens.saturating_sub(1);
            }
        }
        self.store.submit(Op::DelToken { id });
        if replicate {
            self.hand_out(DirectoryChange::DelToken(id));
        }
        Ok(t)
    }

    /// Checks a token for use now from `peer`: enabled, not expired, within its ttl, from an
    /// allowed address, of an enabled account. Records the access.
    pub fn check_token(&self, id: u64, peer: Option<IpAddr>) -> Result<Token, ReasonCode> {
        let now = self.now_secs();
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
            // Only a token with a `ttl` needs the other nodes to know its last use (it is
            // refused `ttl` seconds after it); the others' `accessed` stays this node's.
            self.persist_token_to(&token, token.ttl != 0);
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

    /// Writes an account to the store and hands it to the replica.
    fn persist_account(&self, a: &Account) {
        self.persist_account_to(a, true);
    }

    /// Writes an account to the store, and hands it to the replica when `replicate`.
    fn persist_account_to(&self, a: &Account, replicate: bool) {
        let replica = self.replica.get().filter(|_| replicate);
        if (self.store.enabled() || replica.is_some())
            && let Ok(json) = serde_json::to_vec(a)
        {
            let json = Bytes::from(json);
            if let Some(r) = replica {
                r.changed(DirectoryChange::Account {
                    cid: a.id,
                    json: json.clone(),
                });
            }
            if self.store.enabled() {
                self.store.submit(Op::PutAccount { cid: a.id, json });
            }
        }
    }

    /// Writes a token to the store and hands it to the replica.
    fn persist_token(&self, t: &Token) {
        self.persist_token_to(t, true);
    }

    /// Writes a token to the store, and hands it to the replica when `replicate`.
    fn persist_token_to(&self, t: &Token, replicate: bool) {
        let replica = self.replica.get().filter(|_| replicate);
        if (self.store.enabled() || replica.is_some())
            && let Ok(json) = serde_json::to_vec(t)
        {
            let json = Bytes::from(json);
            if let Some(r) = replica {
                r.changed(DirectoryChange::Token {
                    id: t.id,
                    json: json.clone(),
                });
            }
            if self.store.enabled() {
                self.store.submit(Op::PutToken { id: t.id, json });
            }
        }
    }

    /// Hands a delete to the replica, if any.
    fn hand_out(&self, change: DirectoryChange) {
        if let Some(r) = self.replica.get() {
            r.changed(change);
        }
    }

    /// A new account or token id, not in `taken`: from the replica in cluster mode (an id no
    /// other node hands out), otherwise the next after the highest in `taken`.
    fn new_id<V>(&self, kind: IdKind, taken: &HashMap<u64, V>) -> Result<u64, DirectoryError> {
        let Some(r) = self.replica.get() else {
            return Ok(next_id(taken.keys()));
        };
        // An id of the replica's is never another node's, but one could have been given
        // explicitly (a sub-account's `id`): skipped.
        loop {
            match r.new_id(kind) {
                Some(id) if taken.contains_key(&id) => {}
                Some(id) => return Ok(id),
                None => return Err(DirectoryError::NoId(kind.name())),
            }
        }
    }

    /// Finds the token a CONNECT presents, in every form of
    /// docs/flespi.md#connecting-and-authorization.
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
            let cid = self
                .anonymous()
                .filter(|_| self.config.anonymous)
                .ok_or(ReasonCode::NOT_AUTHORIZED)?;
            // The anonymous account may have been deleted or disabled since (over REST).
            return match self.state.read().accounts.get(&cid) {
                Some(a) if a.enabled => Ok(Principal::anonymous(cid)),
                Some(_) => Err(ReasonCode::BANNED),
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
        Some(in_force(&st, token_id, self.now_secs()).map_or_else(
            |_| Rights::Acl(Arc::new(AclRules::default())),
            |t| Rights::of(&t.access),
        ))
    }

    fn quota_chain(&self, cid: Cid) -> QuotaChain {
        Directory::quota_chain(self, cid)
    }

    fn expired_tokens(&self, now_secs: u64) -> Vec<(u64, u64)> {
        Directory::expired_tokens(self, now_secs)
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
