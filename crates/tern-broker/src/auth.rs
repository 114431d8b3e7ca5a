//! Who a client is: the hook through which CONNECT credentials become an account and rights.
//!
//! The broker core needs an account id, the account's ancestors (for the recursive namespaces
//! of docs/flespi.md#accounts-and-namespaces), the principal's topic rights and the account quotas.
//! Token checks live behind [`Authenticator`]; the accounts layer ([`crate::accounts::Directory`])
//! implements it, and [`Anonymous`] lets everyone in as one account.

use std::net::IpAddr;

use smallvec::{SmallVec, smallvec};
use tern_codec::{ProtocolVersion, ReasonCode};

use crate::message::Cid;
use crate::quota::QuotaChain;
use crate::rights::Rights;

/// The credentials of a CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: IpAddr,
    pub protocol: ProtocolVersion,
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The account the client acts in.
    pub cid: Cid,
    /// The token it presented, if any.
    pub token_id: Option<u64>,
    /// What it may do with topics.
    pub rights: Rights,
    /// The token as a JSON document for the v5 CONNACK `token` user property
    /// (docs/flespi.md#connecting-and-authorization).
    pub token_json: Option<String>,
}

impl Principal {
    /// A client without a token, with standard rights in account `cid`.
    pub fn anonymous(cid: Cid) -> Principal {
        Principal {
            cid,
            token_id: None,
            rights: Rights::Standard,
            token_json: None,
        }
    }
}

/// Decides who may connect, how accounts nest, and their quotas.
pub trait Authenticator: Send + Sync + std::fmt::Debug + 'static {
    /// Authenticates a CONNECT; an error is the CONNACK reason code (v5 code; mapped for 3.x).
    fn authenticate(&self, creds: &Credentials<'_>) -> Result<Principal, ReasonCode>;

    /// The account and its ancestors, nearest first: a publish by `cid` reaches subscriptions of
    /// every account listed.
    fn ancestors(&self, cid: Cid) -> SmallVec<[Cid; 4]> {
        smallvec![cid]
    }

    /// The account and every account below it.
    fn descendants(&self, cid: Cid) -> Vec<Cid> {
        vec![cid]
    }

    /// The rights of a token by id (a session restored after a restart keeps the rights of
    /// the token that last owned it); `None` when rights do not depend on tokens.
    fn token_rights(&self, _token_id: u64) -> Option<Rights> {
        None
    }

    /// The quotas of the account and of each ancestor, nearest first: a session, subscription
    /// or retained byte of `cid` counts against every one (hierarchical quotas). Empty: no
    /// limits.
    fn quota_chain(&self, _cid: Cid) -> QuotaChain {
        QuotaChain::new()
    }

    /// `(token id, expire)` of every token whose `expire` (unix seconds) is at or before
    /// `now_secs`: the broker's timers end their live connections.
    fn expired_tokens(&self, _now_secs: u64) -> Vec<(u64, u64)> {
        Vec::new()
    }
}

/// Lets every client in as one account with standard rights.
#[derive(Debug, Clone)]
pub struct Anonymous {
    pub cid: Cid,
}

impl Authenticator for Anonymous {
    fn authenticate(&self, _creds: &Credentials<'_>) -> Result<Principal, ReasonCode> {
        Ok(Principal::anonymous(self.cid))
    }
}
