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

/// Lists sessions.
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
    let items = selected(&api, &call, 0)?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
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
    Ok(Reply::changed(&call, done, Vec::new()))
}
