//! `/gw/groups`: POST new groups, GET/PUT/PATCH/DELETE `/{sel}`, and
//! GET/POST/DELETE `/{sel}/devices/{sel}` to list, add and remove members (so that a device
//! selector can say `groups.id=N`). Groups of the acting account and below.

use axum::extract::State;
use serde_json::Value;
use tern_gw::{GroupChanges, GroupInput};
use utoipa::IntoParams;

use super::gw_common::changed_each;
use super::gw_devices::selected as devices_selected;
use super::{FieldsQuery, ListQuery, Sel, account_in_scope, check, invalid_item};
use crate::ApiState;
use crate::call::Call;
use crate::error::ApiError;
use crate::reply::Reply;

const READ_ONLY: &[&str] = &["id", "cid"];

/// The device selector of `/gw/groups/{sel}/devices/{device_sel}` (for the OpenAPI description).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only described
pub(crate) struct DeviceSel {
    /// A device selector, as for `/gw/devices/{sel}`.
    pub device_sel: String,
}

fn selected(api: &ApiState, call: &Call, n: usize) -> Result<Vec<u64>, ApiError> {
    let sel = call.selector(n)?;
    Ok(sel
        .filter(api.gateway.groups(&call.caller.scope(api)), api.now_secs())
        .iter()
        .filter_map(|v| v.get("id").and_then(Value::as_u64))
        .collect())
}

/// Creates groups.
#[utoipa::path(
    post, path = "/gw/groups", tag = "gw", params(FieldsQuery),
    request_body(content = Object, description = "An array of groups (`name`, `metadata`, `cid`), or one"),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The created groups"), (status = 400, description = "Invalid items"))
)]
pub(crate) async fn create(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let inputs = call.items::<GroupInput>()?;
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for (i, input) in inputs.into_iter().enumerate() {
        match account_in_scope(&api, &call, input.cid) {
            Ok(cid) => ok.push((input, cid)),
            Err(reason) => errors.push(invalid_item(i, reason)),
        }
    }
    check(errors)?;
    Ok(changed_each(&call, ok, |(input, cid)| {
        api.gateway.create_group(input, cid).map(std::iter::once)
    }))
}

/// Lists groups.
#[utoipa::path(
    get, path = "/gw/groups/{sel}", tag = "gw", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The selected groups"))
)]
pub(crate) async fn list(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let sel = call.selector(0)?;
    let items = sel.filter(api.gateway.groups(&call.caller.scope(&api)), api.now_secs());
    Ok(Reply::list(&call, items))
}

/// Changes groups.
#[utoipa::path(
    put, path = "/gw/groups/{sel}", tag = "gw", params(Sel, FieldsQuery),
    request_body(content = Object, description = "`name`, `metadata`"),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The changed groups"))
)]
pub(crate) async fn put(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    update(api, call, false)
}

/// Like PUT, merging `metadata`.
#[utoipa::path(
    patch, path = "/gw/groups/{sel}", tag = "gw", params(Sel, FieldsQuery),
    request_body(content = Object, description = "`name`, `metadata`"),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The changed groups"))
)]
pub(crate) async fn patch(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    update(api, call, true)
}

fn update(api: ApiState, call: Call, merge: bool) -> Result<Reply, ApiError> {
    let (changes, _) = call.changes::<GroupChanges>(READ_ONLY)?;
    Ok(changed_each(&call, selected(&api, &call, 0)?, |id| {
        api.gateway
            .update_group(id, &changes, merge)
            .map(std::iter::once)
    }))
}

/// Deletes groups (their devices stay, outside the group).
#[utoipa::path(
    delete, path = "/gw/groups/{sel}", tag = "gw", params(Sel, FieldsQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The deleted groups"))
)]
pub(crate) async fn delete(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let done = selected(&api, &call, 0)?
        .into_iter()
        .filter_map(|id| api.gateway.delete_group(id).ok())
        .collect();
    Ok(Reply::changed(&call, done, Vec::new()))
}

fn members(api: ApiState, call: Call, remove: bool) -> Result<Reply, ApiError> {
    let devices = devices_selected(&api, &call, 0)?;
    Ok(changed_each(&call, selected(&api, &call, 2)?, |group| {
        api.gateway.assign(group, &devices, remove)
    }))
}

/// The devices of the selected groups that the device selector picks.
#[utoipa::path(
    get, path = "/gw/groups/{sel}/devices/{device_sel}", tag = "gw", params(Sel, DeviceSel, ListQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The member devices"))
)]
pub(crate) async fn list_devices(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    let groups = selected(&api, &call, 2)?;
    let items = devices_selected(&api, &call, 0)?
        .into_iter()
        .filter(|id| {
            api.gateway
                .device(*id)
                .is_some_and(|d| d.groups.iter().any(|g| groups.contains(g)))
        })
        .filter_map(|id| api.gateway.device_item(id, false))
        .collect();
    Ok(Reply::list(&call, items))
}

/// Adds the devices the device selector picks to the selected groups.
#[utoipa::path(
    post, path = "/gw/groups/{sel}/devices/{device_sel}", tag = "gw", params(Sel, DeviceSel),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The devices added (`id`)"))
)]
pub(crate) async fn add_devices(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    members(api, call, false)
}

/// Takes the devices the device selector picks out of the selected groups.
#[utoipa::path(
    delete, path = "/gw/groups/{sel}/devices/{device_sel}", tag = "gw", params(Sel, DeviceSel),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The devices removed (`id`)"))
)]
pub(crate) async fn remove_devices(
    State(api): State<ApiState>,
    call: Call,
) -> Result<Reply, ApiError> {
    members(api, call, true)
}
