//! `GET /gw/channel-protocols/{sel}` and `/gw/channel-protocols/{sel}/device-types/{sel}`
//! (docs/flespi.md#devices): the catalogue of `tern_gw::types`, read-only, for any token.

use axum::extract::State;
use serde_json::Value;
use tern_gw::types::{DEVICE_TYPES, PROTOCOLS};
use utoipa::IntoParams;

use super::{ListQuery, Sel};
use crate::ApiState;
use crate::call::Call;
use crate::error::ApiError;
use crate::reply::Reply;

/// The `{type_sel}` path segment.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only described
pub(crate) struct TypeSel {
    /// A device-type selector: `all`, ids, `name=...`, `{expression}`.
    pub type_sel: String,
}

/// The protocols the selector `n` segments from the end picks.
fn protocols(api: &ApiState, call: &Call, n: usize) -> Result<Vec<Value>, ApiError> {
    let sel = call.selector(n)?;
    let items = PROTOCOLS.iter().map(|p| p.item()).collect();
    Ok(sel.filter(items, api.now_secs()))
}

/// Lists channel protocols.
#[utoipa::path(
    get, path = "/gw/channel-protocols/{sel}", tag = "gw", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The selected protocols (`id`, `name`, `title`, `message_parameters`, `configuration`)"),
        (status = 400, description = "Bad selector or parameters"),
    )
)]
pub(crate) async fn list(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    Ok(Reply::list(&call, protocols(&api, &call, 0)?))
}

/// Lists the device types of the selected protocols.
#[utoipa::path(
    get, path = "/gw/channel-protocols/{sel}/device-types/{type_sel}", tag = "gw",
    params(Sel, TypeSel, ListQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The selected device types (`id`, `name`, `title`, `protocol_id`, `protocol_name`, `configuration`)"),
        (status = 400, description = "Bad selector or parameters"),
    )
)]
pub(crate) async fn device_types(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    let ids: Vec<u64> = protocols(&api, &call, 2)?
        .iter()
        .filter_map(|p| p.get("id").and_then(Value::as_u64))
        .collect();
    let sel = call.selector(0)?;
    let items = DEVICE_TYPES
        .iter()
        .filter(|t| ids.contains(&t.protocol_id))
        .map(|t| t.item())
        .collect();
    Ok(Reply::list(&call, sel.filter(items, api.now_secs())))
}
