//! `/gw/streams` (docs/flespi.md#streams): POST new streams, GET/PUT/PATCH/DELETE `/{sel}`,
//! their sources (`/{sel}/devices/{sel}`, `/{sel}/channels/{sel}`: GET, POST, DELETE), their
//! logs (`/{sel}/logs`), and `GET /gw/stream-protocols/{sel}`. The domain is
//! `tern_gw::Gateway` (`streams.rs`); this module takes calls apart.

use axum::extract::State;
use axum::response::Response;
use serde_json::{Map, Value};
use tern_gw::logs::{LogsData, Origin};
use tern_gw::stream::{self, STREAM_PROTOCOLS, protocol_item};
use tern_gw::{StreamChanges, StreamInput};
use utoipa::IntoParams;

use super::gw_common::{api_error, changed_each, data_of};
use super::gw_history::{self, Kind};
use super::{
    FieldsQuery, ListQuery, Sel, account_in_scope, check, gw_channels, gw_devices, invalid_item,
};
use crate::ApiState;
use crate::call::Call;
use crate::error::ApiError;
use crate::reply::Reply;

/// The source selector of `/gw/streams/{sel}/devices/{source_sel}` and `/channels/{source_sel}`
/// (for the OpenAPI description).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only described
pub(crate) struct SourceSel {
    /// A device (or channel) selector, as for `/gw/devices/{sel}`.
    pub source_sel: String,
}

/// The ids of the streams the selector `n` segments from the end picks, in id order.
pub(crate) fn selected(api: &ApiState, call: &Call, n: usize) -> Result<Vec<u64>, ApiError> {
    let sel = call.selector(n)?;
    Ok(sel
        .filter(api.gateway.streams(&call.caller.scope(api)), api.now_secs())
        .iter()
        .filter_map(|v| v.get("id").and_then(Value::as_u64))
        .collect())
}

/// Creates streams.
#[utoipa::path(
    post, path = "/gw/streams", tag = "gw", params(FieldsQuery),
    request_body(content = Object, description = "An array of streams (`name`, `protocol_id` or `protocol_name`, `configuration` (http: `uri`, `headers`, `ca`, `timeout`, `limit_messages`), `enabled`, `queue_ttl`, `queue_max_bytes`, `validate_message`, `metadata`, `cid`), or one"),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The created streams"),
        (status = 400, description = "Invalid items (nothing created)"),
    )
)]
pub(crate) async fn create(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let raw = call.items::<Map<String, Value>>()?;
    let mut streams = Vec::with_capacity(raw.len());
    let mut errors = Vec::new();
    for (i, obj) in raw.into_iter().enumerate() {
        if let Some(f) = stream::READ_ONLY
            .iter()
            .find(|f| !matches!(**f, "cid" | "protocol_name") && obj.contains_key(**f))
        {
            errors.push(invalid_item(i, format!("field `{f}` cannot be set")));
            continue;
        }
        match serde_json::from_value::<StreamInput>(Value::Object(obj)) {
            Ok(input) => match account_in_scope(&api, &call, input.cid) {
                Ok(cid) => match input.into_stream(cid) {
                    Ok(s) => streams.push(s),
                    Err(e) => errors.push(invalid_item(i, e.to_string())),
                },
                Err(reason) => errors.push(invalid_item(i, reason)),
            },
            Err(e) => errors.push(invalid_item(i, format!("item {i}: {e}"))),
        }
    }
    check(errors)?;
    Ok(changed_each(&call, streams, |s| {
        api.gateway.create_stream(s).map(std::iter::once)
    }))
}

/// Lists streams.
#[utoipa::path(
    get, path = "/gw/streams/{sel}", tag = "gw", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The selected streams, with `queue_size` and `connected`"),
        (status = 400, description = "Bad selector or parameters"),
    )
)]
pub(crate) async fn list(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let sel = call.selector(0)?;
    let items = sel.filter(
        api.gateway.streams(&call.caller.scope(&api)),
        api.now_secs(),
    );
    Ok(Reply::list(&call, items))
}

/// Changes the given fields of the selected streams.
#[utoipa::path(
    put, path = "/gw/streams/{sel}", tag = "gw", params(Sel, FieldsQuery),
    request_body(content = Object, description = "The fields to change"),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The changed streams"), (status = 400, description = "Invalid body or selector"))
)]
pub(crate) async fn put(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    update(api, call, false)
}

/// Like PUT, but `configuration` and `metadata` are merged into the stored objects (RFC 7396).
#[utoipa::path(
    patch, path = "/gw/streams/{sel}", tag = "gw", params(Sel, FieldsQuery),
    request_body(content = Object, description = "The fields to change"),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The changed streams"), (status = 400, description = "Invalid body or selector"))
)]
pub(crate) async fn patch(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    update(api, call, true)
}

fn update(api: ApiState, call: Call, merge: bool) -> Result<Reply, ApiError> {
    let mut fixed = stream::READ_ONLY.to_vec();
    fixed.push("protocol_id");
    let (changes, _) = call.changes::<StreamChanges>(&fixed)?;
    let ids = selected(&api, &call, 0)?;
    Ok(changed_each(&call, ids, |id| {
        api.gateway
            .update_stream(id, &changes, merge)
            .map(std::iter::once)
    }))
}

/// Deletes the selected streams with their queues and logs.
#[utoipa::path(
    delete, path = "/gw/streams/{sel}", tag = "gw", params(Sel, FieldsQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The deleted streams"), (status = 400, description = "Bad selector"))
)]
pub(crate) async fn delete(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let done = selected(&api, &call, 0)?
        .into_iter()
        .filter_map(|id| api.gateway.delete_stream(id).ok())
        .collect();
    Ok(Reply::changed(&call, done, Vec::new()))
}

/// Adds or removes the devices (or channels) the source selector picks of the selected
/// streams.
fn sources(api: ApiState, call: Call, devices: bool, remove: bool) -> Result<Reply, ApiError> {
    let picked = if devices {
        gw_devices::selected(&api, &call, 0)?
    } else {
        gw_channels::selected(&api, &call, 0)?
    };
    Ok(changed_each(&call, selected(&api, &call, 2)?, |id| {
        api.gateway.stream_sources(id, devices, &picked, remove)
    }))
}

/// The sources of the selected streams that the source selector picks.
fn list_sources(api: &ApiState, call: &Call, devices: bool) -> Result<Reply, ApiError> {
    let streams: Vec<tern_gw::Stream> = selected(api, call, 2)?
        .into_iter()
        .filter_map(|id| api.gateway.stream(id))
        .collect();
    let taken = |id: &u64| {
        streams.iter().any(|s| {
            if devices {
                s.devices.contains(id)
            } else {
                s.channels.contains(id)
            }
        })
    };
    let items: Vec<Value> = if devices {
        gw_devices::selected(api, call, 0)?
            .into_iter()
            .filter(taken)
            .filter_map(|id| api.gateway.device_item(id, false))
            .collect()
    } else {
        let ids: Vec<u64> = gw_channels::selected(api, call, 0)?
            .into_iter()
            .filter(taken)
            .collect();
        api.gateway
            .channels(&call.caller.scope(api))
            .into_iter()
            .filter(|c| {
                c.get("id")
                    .and_then(Value::as_u64)
                    .is_some_and(|id| ids.contains(&id))
            })
            .collect()
    };
    Ok(Reply::list(call, items))
}

/// The devices of the selected streams that the device selector picks.
#[utoipa::path(
    get, path = "/gw/streams/{sel}/devices/{source_sel}", tag = "gw", params(Sel, SourceSel, ListQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The devices the streams take messages from"))
)]
pub(crate) async fn list_devices(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    list_sources(&api, &call, true)
}

/// Makes the selected streams take the messages of the devices the device selector picks.
#[utoipa::path(
    post, path = "/gw/streams/{sel}/devices/{source_sel}", tag = "gw", params(Sel, SourceSel),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The devices added (`id`)"))
)]
pub(crate) async fn add_devices(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    sources(api, call, true, false)
}

/// Stops the selected streams taking the messages of the devices the selector picks.
#[utoipa::path(
    delete, path = "/gw/streams/{sel}/devices/{source_sel}", tag = "gw", params(Sel, SourceSel),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The devices removed (`id`)"))
)]
pub(crate) async fn remove_devices(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    sources(api, call, true, true)
}

/// The channels of the selected streams that the channel selector picks.
#[utoipa::path(
    get, path = "/gw/streams/{sel}/channels/{source_sel}", tag = "gw", params(Sel, SourceSel, ListQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The channels the streams take messages from"))
)]
pub(crate) async fn list_channels(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    list_sources(&api, &call, false)
}

/// Makes the selected streams take the messages of the channels the selector picks.
#[utoipa::path(
    post, path = "/gw/streams/{sel}/channels/{source_sel}", tag = "gw", params(Sel, SourceSel),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The channels added (`id`)"))
)]
pub(crate) async fn add_channels(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    sources(api, call, false, false)
}

/// Stops the selected streams taking the messages of the channels the selector picks.
#[utoipa::path(
    delete, path = "/gw/streams/{sel}/channels/{source_sel}", tag = "gw", params(Sel, SourceSel),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The channels removed (`id`)"))
)]
pub(crate) async fn remove_channels(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    sources(api, call, false, true)
}

/// Reads the logs of the selected streams (deliveries failed and resumed, queue overflow and
/// expiry).
#[utoipa::path(
    get, path = "/gw/streams/{sel}/logs", tag = "gw", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The log records by `timestamp` (newest first with `reverse`); `warnings` when truncated"), (status = 400, description = "Bad `data`"))
)]
pub(crate) async fn logs(State(api): State<ApiState>, call: Call) -> Result<Response, ApiError> {
    let ids = selected(&api, &call, 1)?;
    let data: LogsData = data_of(&call)?;
    let query = data.query().map_err(|e| api_error(&e))?;
    gw_history::answer(&api, &call, Kind::Logs(Origin::Stream), ids, query).await
}

/// Lists stream protocols.
#[utoipa::path(
    get, path = "/gw/stream-protocols/{sel}", tag = "gw", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The selected stream protocols (`id`, `name`, `title`)"),
        (status = 400, description = "Bad selector or parameters"),
    )
)]
pub(crate) async fn protocols(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let sel = call.selector(0)?;
    let items = STREAM_PROTOCOLS.iter().map(protocol_item).collect();
    Ok(Reply::list(&call, sel.filter(items, api.now_secs())))
}
