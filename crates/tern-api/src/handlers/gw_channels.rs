//! `/gw/channels` (docs/flespi.md#devices): POST new channels, GET/PUT/PATCH/DELETE `/{sel}`,
//! and the HTTP channels' ingest route `POST /gw/channels/{id}/ingest/{secret}`, which needs no
//! token (the secret in the channel's `uri` is the credential). The domain is
//! `tern_gw::Gateway` (`channel_messages` is the pipeline); this module takes calls apart.

use std::net::SocketAddr;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};
use tern_gw::{ChannelChanges, ChannelInput, channel};
use tern_net::{Listener, LocalAddr};
use utoipa::IntoParams;

use super::gw_common::{changed_each, gw_error};
use super::gw_history::{self, Kind};
use super::{FieldsQuery, ListQuery, Sel, account_in_scope, check, invalid_item};
use crate::ApiState;
use crate::call::Call;
use crate::error::{ApiError, ErrorItem, json_response};
use crate::reply::Reply;

/// The ids of the channels the selector `n` segments from the end picks, in id order.
pub(crate) fn selected(api: &ApiState, call: &Call, n: usize) -> Result<Vec<u64>, ApiError> {
    let sel = call.selector(n)?;
    Ok(sel
        .filter(
            api.gateway.channels(&call.caller.scope(api)),
            api.now_secs(),
        )
        .iter()
        .filter_map(|v| v.get("id").and_then(Value::as_u64))
        .collect())
}

/// Creates channels; an HTTP channel's `uri` points at the listener this call came through.
#[utoipa::path(
    post, path = "/gw/channels", tag = "gw", params(FieldsQuery),
    request_body(content = Object, description = "An array of channels (`name`, `protocol_id` or `protocol_name`, `configuration`, `enabled`, `messages_ttl`, `cid`), or one"),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The created channels, with `uri`"),
        (status = 400, description = "Invalid items (nothing created)"),
    )
)]
pub(crate) async fn create(
    State(api): State<ApiState>,
    listener: Option<Extension<Listener>>,
    local: Option<Extension<LocalAddr>>,
    headers: HeaderMap,
    call: Call,
) -> Result<Reply, ApiError> {
    let base = super::auth::rest_base(&api, listener, local, &headers);
    let raw = call.items::<Map<String, Value>>()?;
    let mut channels = Vec::with_capacity(raw.len());
    let mut errors = Vec::new();
    for (i, obj) in raw.into_iter().enumerate() {
        if let Some(f) = channel::READ_ONLY
            .iter()
            .find(|f| !matches!(**f, "cid" | "protocol_name") && obj.contains_key(**f))
        {
            errors.push(invalid_item(i, format!("field `{f}` cannot be set")));
            continue;
        }
        match serde_json::from_value::<ChannelInput>(Value::Object(obj)) {
            Ok(input) => match account_in_scope(&api, &call, input.cid) {
                Ok(cid) => {
                    let secret = tern_broker::accounts::generate_key();
                    match input.into_channel(cid, secret, base.clone()) {
                        Ok(c) => channels.push(c),
                        Err(e) => errors.push(invalid_item(i, e.to_string())),
                    }
                }
                Err(reason) => errors.push(invalid_item(i, reason)),
            },
            Err(e) => errors.push(invalid_item(i, format!("item {i}: {e}"))),
        }
    }
    check(errors)?;
    Ok(changed_each(&call, channels, |c| {
        api.gateway.create_channel(c).map(std::iter::once)
    }))
}

/// Lists channels.
#[utoipa::path(
    get, path = "/gw/channels/{sel}", tag = "gw", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The selected channels"),
        (status = 400, description = "Bad selector or parameters"),
    )
)]
pub(crate) async fn list(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let sel = call.selector(0)?;
    let items = sel.filter(
        api.gateway.channels(&call.caller.scope(&api)),
        api.now_secs(),
    );
    Ok(Reply::list(&call, items))
}

/// Changes the given fields of the selected channels.
#[utoipa::path(
    put, path = "/gw/channels/{sel}", tag = "gw", params(Sel, FieldsQuery),
    request_body(content = Object, description = "The fields to change"),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The changed channels"), (status = 400, description = "Invalid body or selector"))
)]
pub(crate) async fn put(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    update(api, call, false)
}

/// Like PUT, but `configuration` is merged into the stored object (RFC 7396).
#[utoipa::path(
    patch, path = "/gw/channels/{sel}", tag = "gw", params(Sel, FieldsQuery),
    request_body(content = Object, description = "The fields to change"),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The changed channels"), (status = 400, description = "Invalid body or selector"))
)]
pub(crate) async fn patch(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    update(api, call, true)
}

fn update(api: ApiState, call: Call, merge: bool) -> Result<Reply, ApiError> {
    let mut fixed = channel::READ_ONLY.to_vec();
    fixed.push("protocol_id");
    let (changes, _) = call.changes::<ChannelChanges>(&fixed)?;
    let ids = selected(&api, &call, 0)?;
    Ok(changed_each(&call, ids, |id| {
        api.gateway
            .update_channel(id, &changes, merge)
            .map(std::iter::once)
    }))
}

/// Deletes the selected channels.
#[utoipa::path(
    delete, path = "/gw/channels/{sel}", tag = "gw", params(Sel, FieldsQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The deleted channels"), (status = 400, description = "Bad selector"))
)]
pub(crate) async fn delete(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let done = selected(&api, &call, 0)?
        .into_iter()
        .filter_map(|id| api.gateway.delete_channel(id).ok())
        .collect();
    Ok(Reply::changed(&call, done, Vec::new()))
}

/// The open connections of the selected channels (Teltonika channels; others hold none).
#[utoipa::path(
    get, path = "/gw/channels/{sel}/connections", tag = "gw", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "`id`, `channel_id`, `ident`, `peer`, `since`, `msgs` of each open connection"), (status = 400, description = "Bad selector"))
)]
pub(crate) async fn connections(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    let items = selected(&api, &call, 1)?
        .into_iter()
        .flat_map(|id| api.gateway.channel_connections(id))
        .collect();
    Ok(Reply::list(&call, items))
}

/// The path of the ingest route.
#[derive(Debug, serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct IngestPath {
    /// The channel id.
    pub id: u64,
    /// The channel's secret (from its `uri`).
    pub secret: String,
}

/// Whether two secrets are equal, in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The array of messages in a posted body: the body itself, `json_path` inside an object, or
/// one object.
fn messages_of(body: Value, json_path: Option<&str>) -> Result<Vec<Value>, String> {
    let mut v = body;
    if let Some(path) = json_path {
        for key in path.split('.') {
            v = match v {
                Value::Object(mut m) => m
                    .remove(key)
                    .ok_or_else(|| format!("no `{path}` in the posted object (json_path)"))?,
                _ => return Err(format!("no `{path}` in the posted body (json_path)")),
            };
        }
    }
    match v {
        Value::Array(list) => Ok(list),
        v @ Value::Object(_) => Ok(vec![v]),
        _ => Err("the body must be a JSON array of messages or one message (an object)".into()),
    }
}

/// An HTTP channel receives messages: a JSON array, or one object (`json_path` picks the array
/// inside an object). 200 `{"result":[]}` once they are durable; with `skip_invalid` the
/// dropped ones are named in `errors` (still 200), without it one bad message refuses all (400).
#[utoipa::path(
    post, path = "/gw/channels/{id}/ingest/{secret}", tag = "gw", params(IngestPath),
    request_body(content = Object, description = "A JSON array of messages, or one message"),
    responses(
        (status = 200, description = "Kept (`errors` names the messages dropped with `skip_invalid`)"),
        (status = 400, description = "Not JSON, or a bad message (nothing kept)"),
        (status = 404, description = "No such channel, or a wrong secret"),
    )
)]
pub(crate) async fn ingest(
    State(api): State<ApiState>,
    Path(path): Path<IngestPath>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format!("channel {} not found", path.id));
    let c = api.gateway.channel(path.id).ok_or_else(not_found)?;
    if c.protocol().map(|p| p.name) != Some("http") || !same_secret(&c.secret, &path.secret) {
        return Err(not_found());
    }
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let messages = messages_of(body, c.json_path().as_deref()).map_err(ApiError::bad_request)?;
    let peer = peer.map_or_else(String::new, |Extension(ConnectInfo(a))| a.to_string());
    let done = api
        .gateway
        .channel_messages(c.id, messages, &peer)
        .map_err(|e| {
            let item = gw_error(&e);
            ApiError {
                status: StatusCode::from_u16(item.code).unwrap_or(StatusCode::BAD_REQUEST),
                errors: vec![item],
            }
        })?;
    if !api.gateway.settled().await {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store cannot write; the messages may not be kept",
        ));
    }
    let errors: Vec<ErrorItem> = done
        .dropped
        .into_iter()
        .map(|(i, reason)| {
            ErrorItem::new(StatusCode::BAD_REQUEST, format!("message {i}: {reason}")).at(i)
        })
        .collect();
    let body = if errors.is_empty() {
        json!({"result": []})
    } else {
        json!({"result": [], "errors": errors})
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// Reads the buffers of the selected channels (`data`: `from`, `to` on `server.timestamp`,
/// `count`, `reverse`, `fields`, `filter`).
#[utoipa::path(
    get, path = "/gw/channels/{sel}/messages", tag = "gw", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The buffered messages by `server.timestamp` (newest first with `reverse`); `warnings` when truncated"), (status = 400, description = "Bad `data`"))
)]
pub(crate) async fn get_messages(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Response, ApiError> {
    let ids = selected(&api, &call, 1)?;
    gw_history::read(&api, &call, Kind::Channels, ids).await
}

/// Deletes from the buffers of the selected channels (`data`: `from`, `to`, `filter`).
#[utoipa::path(
    delete, path = "/gw/channels/{sel}/messages", tag = "gw", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "`{\"result\": []}`"), (status = 400, description = "Bad `data`"))
)]
pub(crate) async fn delete_messages(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    let ids = selected(&api, &call, 1)?;
    gw_history::delete(&api, &call, Kind::Channels, ids).await
}
