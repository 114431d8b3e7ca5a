//! `/platform/webhooks` (docs/flespi.md#webhooks): POST new webhooks, GET/PUT/PATCH/DELETE
//! `/{sel}`, and their logs (`/{sel}/logs`). Master tokens only (the `/platform` rule of
//! `auth.rs`: others get 403). The domain is `tern_gw::Gateway` (`webhooks.rs`); this module
//! takes calls apart, and provides the gateway's internal REST caller for `flespi-platform`
//! steps ([`PlatformCalls`]).

use std::future::Future;
use std::pin::Pin;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value};
use tern_broker::Cid;
use tern_gw::logs::{LogsData, Origin};
use tower::ServiceExt;

use super::gw_common::{api_error, changed_each, data_of};
use super::gw_history::{self, Kind};
use super::{FieldsQuery, ListQuery, Sel, account_in_scope, check, invalid_item};
use crate::ApiState;
use crate::call::Call;
use crate::error::ApiError;
use crate::reply::Reply;

/// The ids of the webhooks the selector `n` segments from the end picks, in id order.
pub(crate) fn selected(api: &ApiState, call: &Call, n: usize) -> Result<Vec<u64>, ApiError> {
    let sel = call.selector(n)?;
    Ok(sel
        .filter(
            api.gateway.webhooks(&call.caller.scope(api)),
            api.now_secs(),
        )
        .iter()
        .filter_map(|v| v.get("id").and_then(Value::as_u64))
        .collect())
}

/// Creates webhooks.
#[utoipa::path(
    post, path = "/platform/webhooks", tag = "platform", params(FieldsQuery),
    request_body(content = Object, description = "An array of webhooks (`name`, `enabled`, `triggers`: 1 to 3 `{topic, filter: {cid, payload}}`, `configuration`: one step or an array of steps, `{type: \"custom-server\", method, uri, headers, body, ca, timeout, validate}` or `{type: \"flespi-platform\", method, uri, body, cid}`; `uri`, header values and `body` are `%expr%` templates; `cid`), or one"),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The created webhooks"),
        (status = 400, description = "Invalid items (nothing created)"),
        (status = 403, description = "Not a master token"),
    )
)]
pub(crate) async fn create(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let raw = call.items::<Map<String, Value>>()?;
    let mut ok = Vec::with_capacity(raw.len());
    let mut errors = Vec::new();
    for (i, obj) in raw.into_iter().enumerate() {
        if obj.contains_key("id") {
            errors.push(invalid_item(i, "field `id` cannot be set"));
            continue;
        }
        let cid = match obj.get("cid") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(c) => Some(c),
                None => {
                    errors.push(invalid_item(i, "`cid` must be an account id"));
                    continue;
                }
            },
        };
        let cid = match account_in_scope(&api, &call, cid) {
            Ok(c) => c,
            Err(reason) => {
                errors.push(invalid_item(i, reason));
                continue;
            }
        };
        // Checked here in full, so that one bad item creates nothing.
        match tern_gw::Webhook::from_input(&obj, 0, cid) {
            Ok(_) => ok.push((obj, cid)),
            Err(e) => errors.push(invalid_item(i, e.to_string())),
        }
    }
    check(errors)?;
    Ok(changed_each(&call, ok, |(obj, cid)| {
        api.gateway.create_webhook(&obj, cid).map(std::iter::once)
    }))
}

/// Lists webhooks.
#[utoipa::path(
    get, path = "/platform/webhooks/{sel}", tag = "platform", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The selected webhooks"),
        (status = 400, description = "Bad selector or parameters"),
    )
)]
pub(crate) async fn list(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let sel = call.selector(0)?;
    let items = sel.filter(
        api.gateway.webhooks(&call.caller.scope(&api)),
        api.now_secs(),
    );
    Ok(Reply::list(&call, items))
}

/// Replaces the given fields of the selected webhooks.
#[utoipa::path(
    put, path = "/platform/webhooks/{sel}", tag = "platform", params(Sel, FieldsQuery),
    request_body(content = Object, description = "The fields to change"),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The changed webhooks"), (status = 400, description = "Invalid body or selector"))
)]
pub(crate) async fn put(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    update(api, call, false)
}

/// Like PUT, but a `configuration` object is merged into the stored one (one level).
#[utoipa::path(
    patch, path = "/platform/webhooks/{sel}", tag = "platform", params(Sel, FieldsQuery),
    request_body(content = Object, description = "The fields to change"),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The changed webhooks"), (status = 400, description = "Invalid body or selector"))
)]
pub(crate) async fn patch(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    update(api, call, true)
}

fn update(api: ApiState, call: Call, merge: bool) -> Result<Reply, ApiError> {
    let (_, changes) = call.changes::<Map<String, Value>>(tern_gw::webhook::READ_ONLY)?;
    let ids = selected(&api, &call, 0)?;
    Ok(changed_each(&call, ids, |id| {
        api.gateway
            .update_webhook(id, &changes, merge)
            .map(std::iter::once)
    }))
}

/// Deletes the selected webhooks with their pending calls and logs.
#[utoipa::path(
    delete, path = "/platform/webhooks/{sel}", tag = "platform", params(Sel, FieldsQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The deleted webhooks"), (status = 400, description = "Bad selector"))
)]
pub(crate) async fn delete(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let done = selected(&api, &call, 0)?
        .into_iter()
        .filter_map(|id| api.gateway.delete_webhook(id).ok())
        .collect();
    Ok(Reply::changed(&call, done, Vec::new()))
}

/// Reads the logs of the selected webhooks (requests answered, refused, retried, dropped; queue
/// overflow).
#[utoipa::path(
    get, path = "/platform/webhooks/{sel}/logs", tag = "platform", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses((status = 200, description = "The log records (`response_code`, `request_body`, `response`, ...) by `timestamp` (newest first with `reverse`); `warnings` when truncated"), (status = 400, description = "Bad `data`"))
)]
pub(crate) async fn logs(State(api): State<ApiState>, call: Call) -> Result<Response, ApiError> {
    let ids = selected(&api, &call, 1)?;
    let data: LogsData = data_of(&call)?;
    let query = data.query().map_err(|e| api_error(&e))?;
    gw_history::answer(&api, &call, Kind::Logs(Origin::Webhook), ids, query).await
}

/// Who a `flespi-platform` step calls as: a master token of the account (an identity only
/// the process can put on a request).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlatformIdentity {
    pub cid: Cid,
}

/// The gateway's internal REST caller: the API router, called in process.
#[derive(Clone)]
pub struct PlatformCalls {
    router: Router,
}

impl std::fmt::Debug for PlatformCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformCalls").finish_non_exhaustive()
    }
}

impl PlatformCalls {
    pub(crate) fn new(router: Router) -> PlatformCalls {
        PlatformCalls { router }
    }
}

impl tern_gw::PlatformCaller for PlatformCalls {
    fn call(
        &self,
        cid: Cid,
        method: axum::http::Method,
        uri: String,
        body: Bytes,
    ) -> Pin<Box<dyn Future<Output = (u16, Bytes)> + Send>> {
        let router = self.router.clone();
        Box::pin(async move {
            let target = if uri.starts_with('/') {
                uri
            } else {
                format!("/{uri}")
            };
            let req = Request::builder()
                .method(method)
                .uri(target.as_str())
                .header(header::ACCEPT, "application/json")
                .header(header::CONTENT_TYPE, "application/json")
                .extension(PlatformIdentity { cid })
                .body(Body::from(body));
            let req = match req {
                Ok(r) => r,
                Err(e) => {
                    let msg = format!("{{\"errors\":[{{\"reason\":\"invalid URI: {e}\"}}]}}");
                    return (400, Bytes::from(msg));
                }
            };
            let Ok(resp) = router.oneshot(req).await;
            let status = resp.status().as_u16();
            let body = axum::body::to_bytes(resp.into_body(), 1024 * 1024)
                .await
                .unwrap_or_default();
            (status, body)
        })
    }
}
