//! `/gw/devices` (docs/flespi.md#devices): POST new devices, GET/PUT/PATCH/DELETE `/{sel}`,
//! PUT `/{sel}/cid`, POST/GET/DELETE `/{sel}/messages`, GET/DELETE `/{sel}/telemetry[/{params}]`.
//! The devices of the acting account and of every account below it; the domain is
//! `tern_gw::Gateway`, this module only takes calls apart and answers.

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tern_gw::{DeviceChanges, DeviceInput, device};
use utoipa::IntoParams;

use super::gw_common::{api_error, changed_each};
use super::gw_history::{self, Kind};
use super::{FieldsQuery, ListQuery, Sel, account_in_scope, check, invalid_item};
use crate::ApiState;
use crate::call::Call;
use crate::error::ApiError;
use crate::reply::Reply;

/// The ids of the devices the selector `n` segments from the end picks, in id order.
pub(crate) fn selected(api: &ApiState, call: &Call, n: usize) -> Result<Vec<u64>, ApiError> {
    let sel = call.selector(n)?;
    let scope = call.caller.scope(api);
    if let Some(ids) = sel.only_ids() {
        // Ids alone (the ingest path: POST /gw/devices/<id>/messages): no need to build every
        // device's view.
        let mut ids: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| {
                api.gateway
                    .device(*id)
                    .is_some_and(|d| scope.contains(&d.cid))
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        return Ok(ids);
    }
    let views = api.gateway.selector_views(&scope);
    Ok(sel
        .filter(views, api.now_secs())
        .iter()
        .filter_map(|v| v.get("id").and_then(Value::as_u64))
        .collect())
}

/// The `{params}` path segment: `all` or comma-separated parameter names.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only described
pub(crate) struct ParamsSel {
    /// `all`, or parameter names separated by commas (`position.latitude,ident`).
    pub params: String,
}

/// Creates devices.
#[utoipa::path(
    post, path = "/gw/devices", tag = "gw", params(FieldsQuery),
    request_body(content = Object, description = "An array of devices, or one device"),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The created devices"),
        (status = 400, description = "Invalid items (nothing created), or some failed (`result` and `errors`)"),
    )
)]
pub(crate) async fn create(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let raw = call.items::<Map<String, Value>>()?;
    let mut inputs = Vec::with_capacity(raw.len());
    let mut errors = Vec::new();
    for (i, obj) in raw.into_iter().enumerate() {
        if let Some(f) = device::READ_ONLY
            .iter()
            .find(|f| **f != "cid" && obj.contains_key(**f))
        {
            errors.push(invalid_item(i, format!("field `{f}` cannot be set")));
            continue;
        }
        match serde_json::from_value::<DeviceInput>(Value::Object(obj)) {
            Ok(input) => match account_in_scope(&api, &call, input.cid) {
                Ok(cid) => match input.into_device(cid) {
                    Ok(d) => inputs.push(d),
                    Err(e) => errors.push(invalid_item(i, e.to_string())),
                },
                Err(reason) => errors.push(invalid_item(i, reason)),
            },
            Err(e) => errors.push(invalid_item(i, format!("item {i}: {e}"))),
        }
    }
    check(errors)?;
    Ok(changed_each(&call, inputs, |d| {
        api.gateway.create_device(d).map(std::iter::once)
    }))
}

fn wants_telemetry(call: &Call) -> bool {
    call.params
        .fields
        .iter()
        .any(|f| f == "telemetry" || f.starts_with("telemetry."))
}

/// Lists devices.
#[utoipa::path(
    get, path = "/gw/devices/{sel}", tag = "gw", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The selected devices (`telemetry` only when asked for in `fields`)"),
        (status = 400, description = "Bad selector or parameters"),
    )
)]
pub(crate) async fn list(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let telemetry = wants_telemetry(&call);
    let items = selected(&api, &call, 0)?
        .into_iter()
        .filter_map(|id| api.gateway.device_item(id, telemetry))
        .collect();
    Ok(Reply::list(&call, items))
}

/// Changes the given fields of the selected devices.
#[utoipa::path(
    put, path = "/gw/devices/{sel}", tag = "gw", params(Sel, FieldsQuery),
    request_body(content = Object, description = "The fields to change"),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The changed devices"), (status = 400, description = "Invalid body or selector"))
)]
pub(crate) async fn put(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    update(api, call, false)
}

/// Like PUT, but `configuration` and `metadata` are merged into the stored objects (RFC 7396).
#[utoipa::path(
    patch, path = "/gw/devices/{sel}", tag = "gw", params(Sel, FieldsQuery),
    request_body(content = Object, description = "The fields to change"),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The changed devices"), (status = 400, description = "Invalid body or selector"))
)]
pub(crate) async fn patch(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    update(api, call, true)
}

fn update(api: ApiState, call: Call, merge: bool) -> Result<Reply, ApiError> {
    let (changes, _) = call.changes::<DeviceChanges>(device::READ_ONLY)?;
    let ids = selected(&api, &call, 0)?;
    Ok(changed_each(&call, ids, |id| {
        api.gateway
            .update_device(id, &changes, merge)
            .map(std::iter::once)
    }))
}

/// Deletes the selected devices with their messages and telemetry.
#[utoipa::path(
    delete, path = "/gw/devices/{sel}", tag = "gw", params(Sel, FieldsQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The deleted devices"), (status = 400, description = "Bad selector"))
)]
pub(crate) async fn delete(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let ids = selected(&api, &call, 0)?;
    let done = ids
        .into_iter()
        .filter_map(|id| api.gateway.delete_device(id).ok())
        .collect();
    Ok(Reply::changed(&call, done, Vec::new()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CidBody {
    cid: u64,
}

/// Moves the selected (disabled) devices to another account.
#[utoipa::path(
    put, path = "/gw/devices/{sel}/cid", tag = "gw", params(Sel),
    request_body(content = Object, description = "`{\"cid\": <account>}`"),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The moved devices"), (status = 400, description = "A device is enabled, or the account is out of reach"))
)]
pub(crate) async fn move_cid(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let (body, _) = call.changes::<CidBody>(&[])?;
    let cid = account_in_scope(&api, &call, Some(body.cid)).map_err(ApiError::bad_request)?;
    let ids = selected(&api, &call, 1)?;
    Ok(changed_each(&call, ids, |id| {
        api.gateway.move_device(id, cid).map(std::iter::once)
    }))
}

/// Registers messages into the selected devices.
#[utoipa::path(
    post, path = "/gw/devices/{sel}/messages", tag = "gw", params(Sel),
    request_body(content = Object, description = "An array of messages (or one): flat JSON objects; `timestamp` (unix seconds or ISO-8601 UTC) and `ident` default to now and the device's"),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "`{\"result\": []}` once stored"), (status = 400, description = "A bad message (nothing kept)"))
)]
pub(crate) async fn post_messages(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    let messages = match &call.body {
        Some(Value::Array(list)) => list.clone(),
        Some(v @ Value::Object(_)) => vec![v.clone()],
        _ => {
            return Err(ApiError::bad_request(
                "the body must be an array of messages or one message (a JSON object)",
            ));
        }
    };
    let ids = selected(&api, &call, 1)?;
    for id in ids {
        api.gateway
            .post_messages(id, &messages)
            .map_err(|e| api_error(&e))?;
    }
    Ok(Reply::changed(&call, Vec::new(), Vec::new()))
}

/// Reads the messages of the selected devices.
#[utoipa::path(
    get, path = "/gw/devices/{sel}/messages", tag = "gw", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The messages, ascending by timestamp (or newest first with `reverse`); `warnings` when truncated"), (status = 400, description = "Bad `data`"))
)]
pub(crate) async fn get_messages(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Response, ApiError> {
    let ids = selected(&api, &call, 1)?;
    gw_history::read(&api, &call, Kind::Devices, ids).await
}

/// Deletes messages of the selected devices (`data`: `from`, `to`, `filter`).
#[utoipa::path(
    delete, path = "/gw/devices/{sel}/messages", tag = "gw", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "`{\"result\": []}`"), (status = 400, description = "Bad `data`"))
)]
pub(crate) async fn delete_messages(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    let ids = selected(&api, &call, 1)?;
    gw_history::delete(&api, &call, Kind::Devices, ids).await
}

/// `all` (or empty) for every parameter, else the names.
fn param_names(raw: Option<&str>) -> Option<Vec<String>> {
    let raw = raw?;
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    if decoded == "all" || decoded.is_empty() {
        return None;
    }
    Some(
        decoded
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

fn telemetry_reply(
    api: &ApiState,
    call: &Call,
    n: usize,
    names: Option<Vec<String>>,
    delete: bool,
) -> Result<Reply, ApiError> {
    let mut items = Vec::new();
    for id in selected(api, call, n)? {
        let t = if delete {
            api.gateway
                .delete_telemetry(id, names.as_deref())
                .map_err(|e| api_error(&e))?
        } else {
            match api.gateway.telemetry(id, names.as_deref()) {
                Some(t) => t,
                None => continue,
            }
        };
        items.push(json!({"id": id, "telemetry": t}));
    }
    Ok(Reply::list(call, items))
}

/// The telemetry of the selected devices.
#[utoipa::path(
    get, path = "/gw/devices/{sel}/telemetry", tag = "gw", params(Sel, FieldsQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "`[{\"id\", \"telemetry\": {\"<param>\": {\"value\", \"ts\"}}}]`"))
)]
pub(crate) async fn telemetry_all(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    telemetry_reply(&api, &call, 1, None, false)
}

/// Deletes the telemetry of the selected devices.
#[utoipa::path(
    delete, path = "/gw/devices/{sel}/telemetry", tag = "gw", params(Sel),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "What is left of each device's telemetry"))
)]
pub(crate) async fn delete_telemetry_all(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    telemetry_reply(&api, &call, 1, None, true)
}

/// Some (or `all`) telemetry parameters of the selected devices.
#[utoipa::path(
    get, path = "/gw/devices/{sel}/telemetry/{params}", tag = "gw", params(Sel, ParamsSel, FieldsQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "`[{\"id\", \"telemetry\": {\"<param>\": {\"value\", \"ts\"}}}]`"))
)]
pub(crate) async fn telemetry(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let names = param_names(Some(call.segment_from_end(0)));
    telemetry_reply(&api, &call, 2, names, false)
}

/// Deletes some (or `all`) telemetry parameters of the selected devices.
#[utoipa::path(
    delete, path = "/gw/devices/{sel}/telemetry/{params}", tag = "gw", params(Sel, ParamsSel),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "What is left of each device's telemetry"))
)]
pub(crate) async fn delete_telemetry(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    let names = param_names(Some(call.segment_from_end(0)));
    telemetry_reply(&api, &call, 2, names, true)
}
