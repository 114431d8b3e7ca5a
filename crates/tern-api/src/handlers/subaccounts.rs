//! `/platform/subaccounts`: POST new sub-accounts, GET/PUT/PATCH/DELETE `/{sel}`: every account
//! below the acting one. Deleting one deletes its sub-accounts, their tokens, sessions (live ones
//! are disconnected), subscriptions and retained messages.

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tern_broker::Cid;
use tern_broker::accounts::{Account, DirectoryError};

use super::{FieldsQuery, ListQuery, ResultOf, Sel, account_in_scope, check, invalid_item};
use crate::ApiState;
use crate::call::Call;
use crate::error::{ApiError, ErrorEnvelope, ErrorItem};
use crate::items::{AccountChanges, AccountItem, NoData, SubaccountInput, merge_patch, to_value};
use crate::reply::Reply;
use crate::state;

/// A checked new sub-account.
struct NewAccount {
    parent: Cid,
    input: SubaccountInput,
}

/// Creates sub-accounts.
#[utoipa::path(
    post, path = "/platform/subaccounts", tag = "platform", params(FieldsQuery),
    request_body(content = Vec<SubaccountInput>, description = "An array of sub-accounts, or one"),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The created sub-accounts", body = ResultOf<AccountItem>),
        (status = 400, description = "Invalid items (nothing created), or some items failed (both `result` and `errors`)", body = ResultOf<AccountItem>),
        (status = 403, description = "Not a master token", body = ErrorEnvelope),
    )
)]
pub(crate) async fn create(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let inputs = call.items::<SubaccountInput>()?;
    let mut checked = Vec::with_capacity(inputs.len());
    let mut errors = Vec::new();
    for (i, input) in inputs.into_iter().enumerate() {
        match check_new(&api, &call, input) {
            Ok(n) => checked.push(n),
            Err(reason) => errors.push(invalid_item(i, reason)),
        }
    }
    check(errors)?;
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (i, new) in checked.into_iter().enumerate() {
        match add(&api, new) {
            Ok(a) => done.push(to_value(&AccountItem::from(&a))),
            Err(e) => failed.push(directory_error(&e).at(i)),
        }
    }
    Ok(Reply::changed(&call, done, failed))
}

fn check_new(api: &ApiState, call: &Call, input: SubaccountInput) -> Result<NewAccount, String> {
    if input.name.trim().is_empty() {
        return Err("name must not be empty".into());
    }
    if input.id == Some(0) {
        return Err("id must not be 0".into());
    }
    if input.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err("metadata must be a JSON object".into());
    }
    let parent = account_in_scope(api, call, input.cid)?;
    Ok(NewAccount { parent, input })
}

/// Creates one sub-account: refused (nothing created) past the `subaccounts` quota of the
/// parent or an account above it, or with limits above the parent's.
fn add(api: &ApiState, new: NewAccount) -> Result<Account, DirectoryError> {
    let NewAccount { parent, input } = new;
    let account = api
        .directory
        .add_account(tern_broker::accounts::NewAccount {
            parent,
            id: input.id,
            name: input.name,
            metadata: input.metadata.unwrap_or_else(|| json!({})),
            enabled: input.enabled.unwrap_or(true),
            limits: input.limits.unwrap_or_default().into(),
        })?;
    state::account_changed(api, &account);
    Ok(account)
}

/// The error item of a refused directory change: 403 for a quota, 404 for an account that is
/// gone, 400 otherwise.
pub(crate) fn directory_error(e: &DirectoryError) -> ErrorItem {
    let status = match e {
        DirectoryError::QuotaExceeded { .. } => StatusCode::FORBIDDEN,
        DirectoryError::NoAccount(_) | DirectoryError::NoToken(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_REQUEST,
    };
    ErrorItem::new(status, e.to_string())
}

/// Every account below the acting one, as items.
fn listing(api: &ApiState, call: &Call) -> Vec<Value> {
    let scope = call.caller.scope(api);
    api.directory
        .accounts()
        .iter()
        .filter(|a| a.id != call.caller.cid && scope.contains(&a.id))
        .map(|a| to_value(&AccountItem::from(a)))
        .collect()
}

fn selected(api: &ApiState, call: &Call) -> Result<Vec<Account>, ApiError> {
    let sel = call.selector(0)?;
    let items = sel.filter(listing(api, call), api.now_secs());
    Ok(items
        .iter()
        .filter_map(|v| v.get("id").and_then(Value::as_u64))
        .filter_map(|id| api.directory.account(id))
        .collect())
}

/// Lists sub-accounts.
#[utoipa::path(
    get, path = "/platform/subaccounts/{sel}", tag = "platform", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The selected sub-accounts", body = ResultOf<AccountItem>),
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

/// Changes the given fields of the selected sub-accounts.
#[utoipa::path(
    put, path = "/platform/subaccounts/{sel}", tag = "platform", params(Sel, FieldsQuery),
    request_body = AccountChanges,
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The changed sub-accounts", body = ResultOf<AccountItem>),
        (status = 400, description = "Invalid body or selector; nothing changed", body = ErrorEnvelope),
    )
)]
pub(crate) async fn put(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    update(api, call, false)
}

/// Like PUT, but `metadata` and `limits` are merged into the stored objects (RFC 7396).
#[utoipa::path(
    patch, path = "/platform/subaccounts/{sel}", tag = "platform", params(Sel, FieldsQuery),
    request_body = AccountChanges,
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The changed sub-accounts", body = ResultOf<AccountItem>),
        (status = 400, description = "Invalid body or selector; nothing changed", body = ErrorEnvelope),
    )
)]
pub(crate) async fn patch(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    update(api, call, true)
}

fn update(api: ApiState, call: Call, merge: bool) -> Result<Reply, ApiError> {
    let (changes, raw) = call.changes::<AccountChanges>(&["id", "cid"])?;
    if changes.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        return Err(ApiError::bad_request("name must not be empty"));
    }
    if changes.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(ApiError::bad_request("metadata must be a JSON object"));
    }
    let targets = selected(&api, &call)?;
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for mut a in targets {
        let was_enabled = a.enabled;
        apply(&mut a, &changes, raw.get("limits"), merge);
        match api.directory.update_account(a) {
            Ok(a) => {
                if was_enabled && !a.enabled {
                    // Disabling an account disables everything below it.
                    api.broker.revoke_accounts(&api.directory.descendants(a.id));
                }
                state::account_changed(&api, &a);
                done.push(to_value(&AccountItem::from(&a)));
            }
            Err(e) => failed.push(directory_error(&e)),
        }
    }
    Ok(Reply::changed(&call, done, failed))
}

fn apply(a: &mut Account, c: &AccountChanges, raw_limits: Option<&Value>, merge: bool) {
    if let Some(v) = &c.name {
        a.name = v.clone();
    }
    if let Some(v) = c.enabled {
        a.enabled = v;
    }
    if let Some(m) = &c.metadata {
        if merge {
            merge_patch(&mut a.metadata, m.clone());
        } else {
            a.metadata = m.clone();
        }
    }
    if let Some(limits) = &c.limits {
        if merge {
            // Only the limits named in the body change; `null` resets one to the default.
            let mut current = to_value(&AccountItem::from(&*a).limits);
            if let Some(patch) = raw_limits {
                merge_patch(&mut current, patch.clone());
            }
            if let Ok(l) = serde_json::from_value::<crate::items::LimitsItem>(current) {
                a.limits = l.into();
            }
        } else {
            a.limits = limits.clone().into();
        }
    }
}

/// Deletes the selected sub-accounts with everything in them.
#[utoipa::path(
    delete, path = "/platform/subaccounts/{sel}", tag = "platform", params(Sel, FieldsQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The deleted sub-accounts (their own sub-accounts went with them)", body = ResultOf<AccountItem>),
        (status = 400, description = "Bad selector", body = ErrorEnvelope),
    )
)]
pub(crate) async fn delete(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    call.data::<NoData>()?;
    let mut done = Vec::new();
    for a in selected(&api, &call)? {
        // A sub-account below one deleted before in this call is already gone.
        let Ok(gone) = api.directory.delete_account(a.id) else {
            continue;
        };
        api.broker.purge_accounts(&gone);
        api.gateway.accounts_deleted(&gone);
        state::account_deleted(&api, a.id, a.parent);
        done.push(to_value(&AccountItem::from(&a)));
    }
    Ok(Reply::changed(&call, done, Vec::new()))
}
