//! `/platform/tokens`: POST new tokens, GET/PUT/PATCH/DELETE `/{sel}`. Tokens of the acting
//! account and of every account below it.

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tern_broker::accounts::{Access, AclEntry, Token, check_key};

use super::{FieldsQuery, ListQuery, ResultOf, Sel, account_in_scope, check, invalid_item};
use crate::ApiState;
use crate::call::Call;
use crate::error::{ApiError, ErrorEnvelope, ErrorItem};
use crate::items::{
    AccessItem, NoData, TokenChanges, TokenInput, TokenItem, merge_patch, to_value,
};
use crate::reply::Reply;

const READ_ONLY: &[&str] = &["id", "key", "cid", "created", "accessed"];

/// Creates tokens.
#[utoipa::path(
    post, path = "/platform/tokens", tag = "platform", params(FieldsQuery),
    request_body(content = Vec<TokenInput>, description = "An array of tokens, or one token"),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The created tokens, with their keys", body = ResultOf<TokenItem>),
        (status = 400, description = "Invalid items (nothing created), or some items failed (both `result` and `errors`)", body = ResultOf<TokenItem>),
        (status = 403, description = "Not a master token", body = ErrorEnvelope),
    )
)]
pub(crate) async fn create(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let inputs = call.items::<TokenInput>()?;
    let mut tokens = Vec::with_capacity(inputs.len());
    let mut errors = Vec::new();
    for (i, input) in inputs.into_iter().enumerate() {
        match new_token(&api, &call, input) {
            Ok(t) => tokens.push(t),
            Err(reason) => errors.push(invalid_item(i, reason)),
        }
    }
    check(errors)?;
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        match api.directory.create_token(token) {
            Ok(t) => done.push(to_value(&TokenItem::from(&t))),
            Err(e) => failed.push(super::subaccounts::directory_error(&e).at(i)),
        }
    }
    Ok(Reply::changed(&call, done, failed))
}

/// Checks one new token.
fn new_token(api: &ApiState, call: &Call, input: TokenInput) -> Result<Token, String> {
    let cid = account_in_scope(api, call, input.cid)?;
    if let Some(key) = input.key.as_deref() {
        check_key(key).map_err(|e| e.to_string())?;
    }
    let access = input
        .access
        .map(check_access)
        .transpose()?
        .unwrap_or_default();
    Ok(Token {
        id: 0,
        key: input.key.unwrap_or_default(),
        info: input.info.unwrap_or_default(),
        enabled: input.enabled.unwrap_or(true),
        expire: input.expire.unwrap_or(0),
        ttl: input.ttl.unwrap_or(0),
        created: 0,
        accessed: 0,
        ips: input.ips.unwrap_or_default(),
        cid,
        metadata: object_or_empty(input.metadata)?,
        access,
    })
}

/// A token's access: a known type, and MQTT entries with a valid topic filter.
fn check_access(a: AccessItem) -> Result<Access, String> {
    if a.kind > Access::ACL {
        return Err(format!(
            "access.type must be 0 (standard), 1 (master) or 2 (ACL), found {}",
            a.kind
        ));
    }
    if a.kind != Access::ACL && !a.acl.is_empty() {
        return Err("access.acl is only for ACL tokens (access.type 2)".into());
    }
    for (i, e) in a.acl.iter().enumerate() {
        check_acl_entry(e).map_err(|r| format!("access.acl[{i}]: {r}"))?;
    }
    Ok(a.into())
}

fn check_acl_entry(e: &AclEntry) -> Result<(), String> {
    if e.uri == "mqtt" {
        let topic = e.topic.as_deref().ok_or("an mqtt entry needs a topic")?;
        tern_topic::validate_topic_filter(topic)
            .map_err(|err| format!("topic `{topic}`: {err}"))?;
        for action in &e.actions {
            if action != "publish" && action != "subscribe" {
                return Err(format!("unknown action `{action}` (publish, subscribe)"));
            }
        }
    } else if e.uri.trim_matches('/').is_empty() {
        return Err("uri must not be empty".into());
    }
    Ok(())
}

fn object_or_empty(v: Option<Value>) -> Result<Value, String> {
    match v {
        None => Ok(json!({})),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err("metadata must be a JSON object".into()),
    }
}

/// The tokens of the acting account and below, as items.
fn listing(api: &ApiState, call: &Call) -> Vec<Value> {
    let scope = call.caller.scope(api);
    api.directory
        .tokens()
        .iter()
        .filter(|t| scope.contains(&t.cid))
        .map(|t| to_value(&TokenItem::from(t)))
        .collect()
}

/// The tokens a selector picks.
fn selected(api: &ApiState, call: &Call) -> Result<Vec<Token>, ApiError> {
    let sel = call.selector(0)?;
    let items = sel.filter(listing(api, call), api.now_secs());
    Ok(items
        .iter()
        .filter_map(|v| v.get("id").and_then(Value::as_u64))
        .filter_map(|id| api.directory.token(id))
        .collect())
}

/// Lists tokens.
#[utoipa::path(
    get, path = "/platform/tokens/{sel}", tag = "platform", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The selected tokens", body = ResultOf<TokenItem>),
        (status = 400, description = "Bad selector or parameters", body = ErrorEnvelope),
        (status = 403, description = "Not a master token", body = ErrorEnvelope),
    )
)]
pub(crate) async fn list(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    call.data::<NoData>()?;
    let sel = call.selector(0)?;
    Ok(Reply::list(
        &call,
        sel.filter(listing(&api, &call), api.now_secs()),
    ))
}

/// Changes the given fields of the selected tokens.
#[utoipa::path(
    put, path = "/platform/tokens/{sel}", tag = "platform", params(Sel, FieldsQuery),
    request_body = TokenChanges,
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The changed tokens", body = ResultOf<TokenItem>),
        (status = 400, description = "Invalid body or selector; nothing changed", body = ErrorEnvelope),
    )
)]
pub(crate) async fn put(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    update(api, call, false)
}

/// Like PUT, but `metadata` is merged into the stored object (RFC 7396).
#[utoipa::path(
    patch, path = "/platform/tokens/{sel}", tag = "platform", params(Sel, FieldsQuery),
    request_body = TokenChanges,
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The changed tokens", body = ResultOf<TokenItem>),
        (status = 400, description = "Invalid body or selector; nothing changed", body = ErrorEnvelope),
    )
)]
pub(crate) async fn patch(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    update(api, call, true)
}

fn update(api: ApiState, call: Call, merge: bool) -> Result<Reply, ApiError> {
    let (changes, _) = call.changes::<TokenChanges>(READ_ONLY)?;
    let access = changes
        .access
        .clone()
        .map(check_access)
        .transpose()
        .map_err(ApiError::bad_request)?;
    if changes.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(ApiError::bad_request("metadata must be a JSON object"));
    }
    let targets = selected(&api, &call)?;
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for mut t in targets {
        let before = t.clone();
        apply(&mut t, &changes, access.clone(), merge);
        match api.directory.update_token(t) {
            Ok(t) => {
                if narrows(&before, &t, api.now_secs()) {
                    api.broker.revoke_token(t.id);
                }
                done.push(to_value(&TokenItem::from(&t)));
            }
            Err(e) => failed.push(ErrorItem::new(StatusCode::NOT_FOUND, e.to_string())),
        }
    }
    Ok(Reply::changed(&call, done, failed))
}

/// Whether a change takes rights away from connections already authorized with the token:
/// they are disconnected (0x87) and a reconnect is checked against the token as it is now.
/// ACL rules are fixed for a connection's lifetime, so any change of `access` counts.
fn narrows(before: &Token, after: &Token, now: f64) -> bool {
    (before.enabled && !after.enabled)
        || before.access != after.access
        || before.ips != after.ips
        || (after.expire != 0 && after.expire as f64 <= now && after.expire != before.expire)
}

fn apply(t: &mut Token, c: &TokenChanges, access: Option<Access>, merge: bool) {
    if let Some(v) = &c.info {
        t.info = v.clone();
    }
    if let Some(v) = c.enabled {
        t.enabled = v;
    }
    if let Some(v) = c.expire {
        t.expire = v;
    }
    if let Some(v) = c.ttl {
        t.ttl = v;
    }
    if let Some(v) = &c.ips {
        t.ips = v.clone();
    }
    if let Some(m) = &c.metadata {
        if merge {
            merge_patch(&mut t.metadata, m.clone());
        } else {
            t.metadata = m.clone();
        }
    }
    if let Some(a) = access {
        t.access = a;
    }
}

/// Deletes the selected tokens.
#[utoipa::path(
    delete, path = "/platform/tokens/{sel}", tag = "platform", params(Sel, FieldsQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The deleted tokens", body = ResultOf<TokenItem>),
        (status = 400, description = "Bad selector", body = ErrorEnvelope),
    )
)]
pub(crate) async fn delete(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    call.data::<NoData>()?;
    let mut done = Vec::new();
    for t in selected(&api, &call)? {
        if let Ok(t) = api.directory.delete_token(t.id) {
            api.broker.revoke_token(t.id);
            done.push(to_value(&TokenItem::from(&t)));
        }
    }
    Ok(Reply::changed(&call, done, Vec::new()))
}
