//! Who is calling, in which account, and whether they may (docs/flespi.md#the-rest-api).
//!
//! A call carries its token in `Authorization` (`FlespiToken <key>` or the bare key), or, when
//! it comes through the REST-over-MQTT bridge, as the session's token id in a request extension
//! that an HTTP client cannot set.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use serde_json::Value;
use tern_broker::Cid;
use tern_broker::accounts::{Access, Rights, Token};
use tern_codec::ReasonCode;

use crate::ApiState;
use crate::call_log::CallSlot;
use crate::error::ApiError;

/// The header that makes a call act inside another account.
pub(crate) const CID_HEADER: &str = "x-flespi-cid";

/// The caller of one REST call.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub token: Token,
    /// The account the call acts in: the token's, or the one named by `x-flespi-cid`.
    pub cid: Cid,
    pub rights: Rights,
}

/// Set by the REST-over-MQTT bridge: the MQTT session's token (`None` for an anonymous client).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BridgeIdentity {
    pub token_id: Option<u64>,
    /// The MQTT session's address (`host` of the call's log record).
    pub peer: Option<std::net::IpAddr>,
}

/// Authenticates the call and checks that its token may call this URI.
pub(crate) fn authenticate(api: &ApiState, parts: &Parts) -> Result<Caller, ApiError> {
    let platform = parts
        .extensions
        .get::<crate::handlers::platform_webhooks::PlatformIdentity>();
    let token = match parts.extensions.get::<BridgeIdentity>() {
        // A webhook's flespi-platform step (an extension no HTTP client can set): a master
        // token of its account, made for this call only.
        None if let Some(p) = platform => platform_token(api, p.cid)?,
        Some(bridge) => {
            let id = bridge
                .token_id
                .ok_or_else(|| ApiError::unauthorized("the MQTT session has no token"))?;
            api.directory.check_token(id, None).map_err(refusal)?
        }
        None => {
            let key = key_of(&parts.headers)?;
            let peer = parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip());
            // Failed logins share MQTT's per-address limit: a key-guessing client is refused
            // unchecked (429) until its bucket refills, and nobody else notices.
            if let Some(ip) = peer
                && !api.directory.login_allowed(ip)
            {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed logins from this address; retry later",
                ));
            }
            let checked = api
                .directory
                .token_by_key(key)
                .ok_or_else(|| ApiError::unauthorized("invalid token"))
                .and_then(|found| api.directory.check_token(found.id, peer).map_err(refusal));
            if let Some(ip) = peer {
                api.directory.login_checked(ip, checked.is_ok());
            }
            checked?
        }
    };
    // From here on the call has an account: it is logged (`call_log`), refused or not.
    let slot = parts.extensions.get::<CallSlot>();
    if let Some(slot) = slot {
        slot.set(token.cid, token.id);
    }
    authorize(&token, &parts.method, parts.uri.path())?;
    let cid = acting_cid(api, &token, &parts.headers)?;
    if let Some(slot) = slot {
        slot.set(cid, token.id);
    }
    Ok(Caller {
        rights: Rights::of(&token.access),
        token,
        cid,
    })
}

/// The master token a webhook's `flespi-platform` step calls as (never stored; id 0).
fn platform_token(api: &ApiState, cid: Cid) -> Result<Token, ApiError> {
    if api.directory.account(cid).is_none() {
        return Err(ApiError::unauthorized("the webhook's account is gone"));
    }
    Ok(Token {
        id: 0,
        key: String::new(),
        info: "webhook".into(),
        enabled: true,
        expire: 0,
        ttl: 0,
        created: 0,
        accessed: 0,
        ips: String::new(),
        cid,
        metadata: Value::Object(Default::default()),
        access: tern_broker::accounts::Access {
            kind: Access::MASTER,
            acl: Vec::new(),
        },
    })
}

/// The key of `Authorization: FlespiToken <key>` (or of a bare key).
fn key_of(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthorized("missing token: send `Authorization: FlespiToken <key>`")
        })?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("invalid token"))?
        .trim();
    let key = text
        .strip_prefix("FlespiToken")
        .map_or(text, str::trim_start);
    if key.is_empty() {
        return Err(ApiError::unauthorized(
            "missing token: send `Authorization: FlespiToken <key>`",
        ));
    }
    Ok(key)
}

fn refusal(code: ReasonCode) -> ApiError {
    match code {
        ReasonCode::NOT_AUTHORIZED => {
            ApiError::forbidden("the token is not allowed from this address")
        }
        ReasonCode::BANNED => ApiError::forbidden("the token's account is disabled"),
        _ => ApiError::unauthorized("invalid, disabled or expired token"),
    }
}

/// Which token types may call which URIs.
fn authorize(token: &Token, method: &Method, path: &str) -> Result<(), ApiError> {
    let path = path.trim_start_matches('/');
    if path.starts_with("auth/") {
        return Ok(());
    }
    if path.starts_with("platform/") {
        return match token.access.kind {
            Access::MASTER => Ok(()),
            _ => Err(ApiError::forbidden("only master tokens may call /platform")),
        };
    }
    match token.access.kind {
        Access::MASTER | Access::STANDARD => Ok(()),
        Access::ACL if acl_allows(token, method, path) => Ok(()),
        _ => Err(ApiError::forbidden(format!(
            "the token's ACL does not allow {method} /{path}"
        ))),
    }
}

/// Whether an ACL token has a REST entry for this call: an entry without `topic` (those are MQTT
/// topic grants) whose `uri` is a prefix of the path at a level boundary, and whose `methods`,
/// if listed, include the method.
fn acl_allows(token: &Token, method: &Method, path: &str) -> bool {
    token
        .access
        .acl
        .iter()
        .filter(|e| e.topic.is_none())
        .any(|e| {
            let uri = e.uri.trim_matches('/');
            let prefix = !uri.is_empty()
                && path
                    .strip_prefix(uri)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            let methods = match e.rest.get("methods") {
                Some(serde_json::Value::Array(list)) => list.iter().any(|m| {
                    m.as_str()
                        .is_some_and(|m| m.eq_ignore_ascii_case(method.as_str()))
                }),
                _ => true,
            };
            prefix && methods
        })
}

/// The account named by `x-flespi-cid`, if it is the token's or below it.
fn acting_cid(api: &ApiState, token: &Token, headers: &HeaderMap) -> Result<Cid, ApiError> {
    let Some(value) = headers.get(CID_HEADER) else {
        return Ok(token.cid);
    };
    let cid: Cid = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| ApiError::bad_request(format!("{CID_HEADER} must be an account id")))?;
    if cid == token.cid {
        return Ok(cid);
    }
    if token.access.kind != Access::MASTER {
        return Err(ApiError::forbidden(format!(
            "only master tokens may act in another account ({CID_HEADER}: {cid})"
        )));
    }
    if api.directory.account(cid).is_none() || !api.directory.is_within(cid, token.cid) {
        return Err(ApiError::forbidden(format!(
            "account {cid} is not within the token's account {}",
            token.cid
        )));
    }
    Ok(cid)
}

impl Caller {
    /// The acting account and every account below it.
    pub fn scope(&self, api: &ApiState) -> Vec<Cid> {
        api.directory.descendants(self.cid)
    }
}
