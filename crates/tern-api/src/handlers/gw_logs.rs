//! Entity logs (docs/flespi.md#logs): `GET /gw/devices/{sel}/logs` and
//! `GET /gw/channels/{sel}/logs`, read like message history (`gw_history`) with `data`
//! `from`, `to` (on the record `timestamp`), `count`, `reverse`, `filter`, `fields`; keys tern
//! does not implement (the Toolbox's `item_type`) are ignored. And `GET /const/values`, which
//! serves the event code table (`toolbox/codes`) without a token: the Toolbox asks it before
//! it sends one.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde_json::{Map, Value, json};
use tern_gw::logs::{LogsData, Origin, toolbox_codes};

use super::gw_common::{api_error, data_of};
use super::gw_history::{self, Kind};
use super::{ListQuery, Sel, gw_channels, gw_devices};
use crate::ApiState;
use crate::call::Call;
use crate::error::{ApiError, json_response};

/// The logs of `ids` of `origin`, with the call's `data`.
async fn read(
    api: &ApiState,
    call: &Call,
    origin: Origin,
    ids: Vec<u64>,
) -> Result<Response, ApiError> {
    let data: LogsData = data_of(call)?;
    let query = data.query().map_err(|e| api_error(&e))?;
    gw_history::answer(api, call, Kind::Logs(origin), ids, query).await
}

/// Reads the logs of the selected devices.
#[utoipa::path(
    get, path = "/gw/devices/{sel}/logs", tag = "gw", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The log records (`timestamp`, `event_code`, `origin_type`, `origin_id`, the event's fields) by `timestamp` (newest first with `reverse`); `warnings` when truncated"), (status = 400, description = "Bad `data`"))
)]
pub(crate) async fn device_logs(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Response, ApiError> {
    let ids = gw_devices::selected(&api, &call, 1)?;
    read(&api, &call, Origin::Device, ids).await
}

/// Reads the logs of the selected channels.
#[utoipa::path(
    get, path = "/gw/channels/{sel}/logs", tag = "gw", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The log records by `timestamp` (newest first with `reverse`); `warnings` when truncated"), (status = 400, description = "Bad `data`"))
)]
pub(crate) async fn channel_logs(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Response, ApiError> {
    let ids = gw_channels::selected(&api, &call, 1)?;
    read(&api, &call, Origin::Channel, ids).await
}

/// Constants by name (`names`, comma-separated; tern knows `toolbox/codes`, the event code
/// table of the logs). Needs no token; unknown names are left out.
#[utoipa::path(
    get, path = "/const/values", tag = "gw",
    params(("names" = String, Query, description = "Comma-separated names: `toolbox/codes`")),
    responses((status = 200, description = "`{\"result\":[{\"toolbox/codes\":{\"codes\":{..},\"entities\":{..}}}]}`"))
)]
pub(crate) async fn const_values(uri: Uri) -> Response {
    let names: Vec<String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("names="))
        .flat_map(|v| {
            let v = v.replace('+', " ");
            percent_encoding::percent_decode_str(&v)
                .decode_utf8_lossy()
                .split(',')
                .map(|n| n.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let result: Vec<Value> = names
        .iter()
        .filter(|n| n.as_str() == "toolbox/codes")
        .map(|n| {
            let mut item = Map::new();
            item.insert(n.clone(), toolbox_codes());
            Value::Object(item)
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "result": result }))
}
