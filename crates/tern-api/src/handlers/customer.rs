//! `GET`/`PUT /platform/customer`: the acting account itself.

use axum::extract::State;

use super::{FieldsQuery, ResultOf};
use crate::ApiState;
use crate::call::Call;
use crate::error::{ApiError, ErrorEnvelope};
use crate::items::{AccountItem, CustomerChanges, NoData, to_value};
use crate::reply::Reply;
use crate::state;

/// The acting account.
#[utoipa::path(
    get, path = "/platform/customer", tag = "platform", params(FieldsQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The account", body = ResultOf<AccountItem>),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 403, description = "Not a master token", body = ErrorEnvelope),
    )
)]
pub(crate) async fn get(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    call.data::<NoData>()?;
    let account = api
        .directory
        .account(call.caller.cid)
        .ok_or_else(|| ApiError::not_found("the account no longer exists"))?;
    Ok(Reply::list(
        &call,
        vec![to_value(&AccountItem::from(&account))],
    ))
}

/// Changes the acting account's `name` and `metadata`.
#[utoipa::path(
    put, path = "/platform/customer", tag = "platform", params(FieldsQuery),
    request_body = CustomerChanges,
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The changed account", body = ResultOf<AccountItem>),
        (status = 400, description = "Invalid body; nothing changed", body = ErrorEnvelope),
        (status = 403, description = "Not a master token", body = ErrorEnvelope),
    )
)]
pub(crate) async fn put(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let (changes, _) = call.changes::<CustomerChanges>(&["id", "cid", "enabled", "limits"])?;
    if changes.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        return Err(ApiError::bad_request("name must not be empty"));
    }
    let mut account = api
        .directory
        .account(call.caller.cid)
        .ok_or_else(|| ApiError::not_found("the account no longer exists"))?;
    if let Some(name) = changes.name {
        account.name = name;
    }
    if let Some(metadata) = changes.metadata {
        account.metadata = metadata;
    }
    let account = api
        .directory
        .update_account(account)
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    state::account_changed(&api, &account);
    Ok(Reply::changed(
        &call,
        vec![to_value(&AccountItem::from(&account))],
        Vec::new(),
    ))
}
