//! Who a client is: the hook through which CONNECT credentials become an account.
//!
//! The broker core only needs an account id and the account's ancestors (for the recursive
//! namespaces of spec §3). Token checks live behind [`Authenticator`] so the accounts layer can
//! plug in without the core knowing about tokens.

use std::net::IpAddr;

use smallvec::{SmallVec, smallvec};
use tern_codec::{ProtocolVersion, ReasonCode};

use crate::message::Cid;

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
}

/// Decides who may connect and how accounts nest.
pub trait Authenticator: Send + Sync + std::fmt::Debug + 'static {
    /// Authenticates a CONNECT; an error is the CONNACK reason code (v5 code; mapped for 3.x).
    fn authenticate(&self, creds: &Credentials<'_>) -> Result<Principal, ReasonCode>;

    /// The account and its ancestors, nearest first: a publish by `cid` reaches subscriptions of
    /// every account listed.
    fn ancestors(&self, cid: Cid) -> SmallVec<[Cid; 4]> {
        smallvec![cid]
    }
}

/// Lets every client in as one account (the `--anonymous` mode before accounts exist).
#[derive(Debug, Clone)]
pub struct Anonymous {
    pub cid: Cid,
}

impl Authenticator for Anonymous {
    fn authenticate(&self, _creds: &Credentials<'_>) -> Result<Principal, ReasonCode> {
        Ok(Principal { cid: self.cid })
    }
}
