//! `/mqtt/sessions/{sel}`: GET and DELETE the MQTT sessions, live and offline, of the acting
//! account and below. Deleting a connected session disconnects it (DISCONNECT 0x98 in v5).

use std::sync::Arc;

use axum::extract::State;
use serde_json::Value;
use tern_broker::Session;

use super::{FieldsQuery, ListQuery, ResultOf, Sel};
use crate::ApiState;
use crate::call::Call;
use crate::error::{ApiError, ErrorEnvelope};
use crate::items::{NoData, SessionItem, to_value};
use crate::reply::Reply;

/// The sessions in scope that the selector `n` segments from the end picks, with their items.
pub(crate) fn selected(
    api: &ApiState,
    call: &Call,
    n: usize,
) -> Result<Vec<(Arc<Session>, Value)>, ApiError> {
    let sel = call.selector(n)?;
    let now = api.now_secs();
    let sessions = api.broker.sessions_of(&call.caller.scope(api));
    let mut out: Vec<(Arc<Session>, Value)> = sessions
        .into_iter()
        .map(|s| {
            let item = to_value(&SessionItem::from(s.view()));
            (s, item)
        })
        .filter(|(_, item)| sel.matches(item, now))
        .collect();
    out.sort_by(|a, b| (a.0.key.cid, &a.0.key.client_id).cmp(&(b.0.key.cid, &b.0.key.client_id)));
    Ok(out)
}

/// Cluster mode: the sessions in scope that other nodes hold (or held: offline since), from
/// the cluster's records, that the selector `n` segments from the end picks, each with its
/// item and its subscriptions' views. Empty on a single node.
pub(crate) fn selected_in_cluster(
    api: &ApiState,
    call: &Call,
    n: usize,
) -> Result<Vec<(Value, Vec<tern_broker::SubscriptionView>)>, ApiError> {
    if !api.broker.is_clustered() {
        return Ok(Vec::new());
    }
    let sel = call.selector(n)?;
    let now = api.now_secs();
    Ok(api
        .broker
        .cluster_session_views(&call.caller.scope(api))
        .into_iter()
        .map(|(view, subs)| (to_value(&SessionItem::from(view)), subs))
        .filter(|(item, _)| sel.matches(item, now))
        .collect())
}

/// The session key of a session item (its `cid` and `client_id`).
pub(crate) fn key_of(item: &Value) -> Option<tern_broker::SessionKey> {
    Some(tern_broker::SessionKey {
        cid: item.get("cid").and_then(Value::as_u64)?,
        client_id: item.get("client_id").and_then(Value::as_str)?.into(),
    })
}

/// Sorts items as sessions are listed: by account, then client id.
pub(crate) fn sort_items(items: &mut [Value]) {
    let key = |v: &Value| {
        (
            v.get("cid").and_then(Value::as_u64).unwrap_or(0),
            v.get("client_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        )
    };
    items.sort_by_cached_key(key);
}

/// Lists sessions (in cluster mode, those of every node).
#[utoipa::path(
    get, path = "/mqtt/sessions/{sel}", tag = "mqtt", params(Sel, ListQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The selected sessions", body = ResultOf<SessionItem>),
        (status = 400, description = "Bad selector or parameters", body = ErrorEnvelope),
        (status = 403, description = "The token may not call this", body = ErrorEnvelope),
    )
)]
pub(crate) async fn list(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    call.data::<NoData>()?;
    let mut items: Vec<Value> = selected(&api, &call, 0)?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let elsewhere = selected_in_cluster(&api, &call, 0)?;
    if !elsewhere.is_empty() {
        items.extend(elsewhere.into_iter().map(|(v, _)| v));
        sort_items(&mut items);
    }
    Ok(Reply::list(&call, items))
}

/// Deletes sessions, disconnecting connected ones.
#[utoipa::path(
    delete, path = "/mqtt/sessions/{sel}", tag = "mqtt", params(Sel, FieldsQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The deleted sessions", body = ResultOf<SessionItem>),
        (status = 400, description = "Bad selector", body = ErrorEnvelope),
    )
)]
pub(crate) async fn delete(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    call.data::<NoData>()?;
    let mut done = Vec::new();
    for (session, item) in selected(&api, &call, 0)? {
        api.broker.remove_session(&session);
        done.push(item);
    }
    // Cluster mode: the sessions other nodes hold, removed there.
    for (item, _) in selected_in_cluster(&api, &call, 0)? {
        let Some(key) = key_of(&item) else {
            continue;
        };
        api.broker.remove_cluster_session(&key);
        done.push(item);
    }
    Ok(Reply::changed(&call, done, Vec::new()))
}
