//! Cluster mode's seam of the directory (issue 17, `scale-out.md` §3.6): accounts and tokens
//! changed on one node in force on every node.
//!
//! `tern-cluster` installs a [`DirectoryReplica`] once ([`Directory::set_replica`]); without one
//! (single-node mode) nothing here runs. Every account or token this node puts or deletes is
//! handed to it as a [`DirectoryChange`] (the JSON document the store keeps), after the change
//! is made here; the replica writes it where the other nodes read it. What the other nodes
//! changed comes back through [`Directory::apply_remote`], which changes this directory and
//! its store but hands nothing to the replica (no loops), and says in a [`RemoteEffect`] which
//! connections the broker must end, as the REST handlers do after a local change.
//!
//! New ids come from the replica too ([`DirectoryReplica::new_id`]): in cluster mode two nodes
//! never hand out the same token id or account id.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::{Account, Directory, Token};
use crate::message::Cid;

/// What a new id is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    Account,
    Token,
}

impl IdKind {
    pub fn name(self) -> &'static str {
        match self {
            IdKind::Account => "account",
            IdKind::Token => "token",
        }
    }
}

/// One change of the directory: a put carries the document as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryChange {
    Account { cid: Cid, json: Bytes },
    Token { id: u64, json: Bytes },
    DelAccount(Cid),
    DelToken(u64),
}

/// Where this node's directory changes go, and where its new ids come from (cluster mode).
pub trait DirectoryReplica: Send + Sync + std::fmt::Debug {
    /// A change made on this node (called under the directory's lock, in the order of the
    /// changes: it must not block).
    fn changed(&self, change: DirectoryChange);
    /// An id that no node has handed out or will hand out; `None` when none can be had now
    /// (the creation is refused with [`super::DirectoryError::NoId`]).
    fn new_id(&self, kind: IdKind) -> Option<u64>;
}

/// What a change made on another node asks of this node's broker: the same as the REST
/// handlers do after the change made locally.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RemoteEffect {
    /// Whether the directory changed at all (a node's own change coming back does not).
    pub changed: bool,
    /// Tokens whose live connections end (0x87): deleted, disabled, expired, their rights or
    /// addresses changed (see [`narrows`]).
    pub revoke_tokens: Vec<u64>,
    /// Accounts whose live connections end (0x87): disabled, or below a disabled one.
    pub revoke_accounts: Vec<Cid>,
    /// Deleted accounts (with everything below them): their sessions and retained messages go.
    pub deleted_accounts: Vec<Cid>,
}

/// Whether a token change takes rights away from connections already authorized with it: they
/// are disconnected (0x87) and a reconnect is checked against the token as it is now. ACL
/// rules are fixed for a connection's lifetime, so any change of `access` counts.
pub fn narrows(before: &Token, after: &Token, now_secs: u64) -> bool {
    (before.enabled && !after.enabled)
        || before.access != after.access
        || before.ips != after.ips
        || (after.expire != 0 && after.expire <= now_secs && after.expire != before.expire)
}

impl Directory {
    /// Installs the replica (once; later calls are refused: `false`).
    pub fn set_replica(&self, replica: Arc<dyn DirectoryReplica>) -> bool {
        self.replica.set(replica).is_ok()
    }

    /// The highest account id and the highest token id (0 when there is none).
    pub fn max_ids(&self) -> (u64, u64) {
        let st = self.state.read();
        (
            st.accounts.keys().copied().max().unwrap_or(0),
            st.tokens.keys().copied().max().unwrap_or(0),
        )
    }

    /// Every account and token as a put (accounts first, each by id).
    pub fn all_changes(&self) -> Vec<DirectoryChange> {
        let mut out = Vec::new();
        for a in self.accounts() {
            if let Ok(json) = serde_json::to_vec(&a) {
                out.push(DirectoryChange::Account {
                    cid: a.id,
                    json: Bytes::from(json),
                });
            }
        }
        for t in self.tokens() {
            if let Ok(json) = serde_json::to_vec(&t) {
                out.push(DirectoryChange::Token {
                    id: t.id,
                    json: Bytes::from(json),
                });
            }
        }
        out
    }

    /// Applies a change made on another node: here and in the store, not handed to the
    /// replica. No quota or parent is checked (the node that made it did; a token or a
    /// sub-account may come before its account). A token keeps the later of the two
    /// `accessed`. `Err` says why a document was not applied.
    pub fn apply_remote(&self, change: DirectoryChange) -> Result<RemoteEffect, String> {
        match change {
            DirectoryChange::Account { cid, json } => {
                let a: Account = serde_json::from_slice(&json).map_err(|e| e.to_string())?;
                if a.id != cid {
                    return Err(format!("account {} under the id {cid}", a.id));
                }
                Ok(self.put_remote_account(a))
            }
            DirectoryChange::Token { id, json } => {
                let t: Token = serde_json::from_slice(&json).map_err(|e| e.to_string())?;
                if t.id != id {
                    return Err(format!("token {} under the id {id}", t.id));
                }
                Ok(self.put_remote_token(t))
            }
            DirectoryChange::DelAccount(cid) => {
                let mut st = self.state.write();
                if st.top == Some(cid) {
                    return Err(format!("account {cid} is this node's top account"));
                }
                Ok(match self.remove_account(&mut st, cid, false) {
                    Ok(gone) => RemoteEffect {
                        changed: true,
                        deleted_accounts: gone,
                        ..RemoteEffect::default()
                    },
                    Err(_) => RemoteEffect::default(),
                })
            }
            DirectoryChange::DelToken(id) => {
                let mut st = self.state.write();
                Ok(match self.remove_token(&mut st, id, false) {
                    Ok(_) => RemoteEffect {
                        changed: true,
                        revoke_tokens: vec![id],
                        ..RemoteEffect::default()
                    },
                    Err(_) => RemoteEffect::default(),
                })
            }
        }
    }

    fn put_remote_account(&self, a: Account) -> RemoteEffect {
        let mut st = self.state.write();
        let old = st.accounts.get(&a.id).cloned();
        if old.as_ref() == Some(&a) {
            return RemoteEffect::default();
        }
        self.persist_account_to(&a, false);
        let mut effect = RemoteEffect {
            changed: true,
            ..RemoteEffect::default()
        };
        if a.parent.is_none() && st.top.is_none() {
            st.top = Some(a.id);
        }
        let disabled = !a.enabled && old.as_ref().is_none_or(|o| o.enabled);
        let cid = a.id;
        let parent = a.parent;
        st.accounts.insert(cid, a);
        match old {
            // New: it and what came before it below it (a chain stops at an account not known
            // yet) count for every account above it. Counted, not recounted: a node loading
            // the bucket applies every account.
            None => {
                let sub = st.below.get(&cid).copied().unwrap_or_default();
                if let Some(p) = parent {
                    for c in st.chain(p) {
                        let b = st.below.entry(c).or_default();
                        b.accounts += sub.accounts + 1;
                        b.tokens += sub.tokens;
                    }
                }
            }
            // Moved (ids are never reused, so only a broken document does this).
            Some(o) if o.parent != parent => st.recount(),
            Some(_) => {}
        }
        if disabled {
            effect.revoke_accounts = super::descendants_of(&st.accounts, cid);
        }
        effect
    }

    fn put_remote_token(&self, mut t: Token) -> RemoteEffect {
        let now = self.now_secs();
        let mut st = self.state.write();
        let old = st.tokens.get(&t.id).cloned();
        if let Some(o) = &old {
            t.accessed = t.accessed.max(o.accessed);
        }
        if old.as_ref() == Some(&t) {
            return RemoteEffect::default();
        }
        self.persist_token_to(&t, false);
        let mut effect = RemoteEffect {
            changed: true,
            ..RemoteEffect::default()
        };
        match &old {
            Some(o) => {
                if o.key != t.key && st.by_key.get(&o.key) == Some(&o.id) {
                    st.by_key.remove(&o.key);
                }
                if narrows(o, &t, now) || o.key != t.key {
                    effect.revoke_tokens.push(t.id);
                }
            }
            None => {
                for c in st.chain(t.cid) {
                    st.below.entry(c).or_default().tokens += 1;
                }
            }
        }
        let moved = old.as_ref().is_some_and(|o| o.cid != t.cid);
        claim_key(&mut st.by_key, &t);
        st.tokens.insert(t.id, t);
        if moved {
            st.recount();
        }
        effect
    }
}

/// Points `t`'s key at `t` unless a token with a lower id has it: two nodes given the same
/// key for two new tokens at the same moment agree on which one it opens.
fn claim_key(by_key: &mut HashMap<String, u64>, t: &Token) {
    match by_key.get(&t.key) {
        Some(&other) if other < t.id => {
            tracing::warn!(
                token = t.id,
                other,
                "two tokens have the same key; it opens the older one"
            );
        }
        _ => {
            by_key.insert(t.key.clone(), t.id);
        }
    }
}
