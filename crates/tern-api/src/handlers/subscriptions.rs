//! `/mqtt/sessions/{sel}/subscriptions`: POST adds subscriptions to the selected sessions (live
//! or offline, as if they had subscribed; no retained messages are sent), and
//! `/{subscription_sel}` GETs or DELETEs them.

use axum::extract::State;
use axum::http::StatusCode;
use bytestring::ByteString;
use serde_json::Value;
use tern_broker::admin::parse_subscription;
use tern_broker::fabric::{RemoteChange, RemoteOutcome};
use tern_broker::rights::Rights;
use tern_broker::subscriptions::SubscribeError;
use tern_broker::{Session, Subscription, SubscriptionKey};
use tern_codec::{QoS, RetainHandling, SubscriptionOptions};
use utoipa::IntoParams;

use super::sessions::{key_of, selected as selected_sessions, selected_in_cluster};
use super::{FieldsQuery, ListQuery, ResultOf, check};
use crate::ApiState;
use crate::call::Call;
use crate::error::{ApiError, ErrorEnvelope, ErrorItem};
use crate::items::{NoData, SubscriptionInput, SubscriptionItem, to_value};
use crate::reply::Reply;

/// The session and subscription selectors (for the OpenAPI description).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only described: `selector` parses them from the raw path
pub(crate) struct SubSel {
    /// Selects sessions (as `/mqtt/sessions/{sel}`).
    pub sel: String,
    /// Selects their subscriptions: `all`, ids, `topic=a/*`, `{qos > 0}`...
    pub subscription_sel: String,
}

/// The session selector (for the OpenAPI description).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only described
pub(crate) struct SessionSel {
    /// Selects sessions (as `/mqtt/sessions/{sel}`).
    pub sel: String,
}

/// Adds subscriptions to the selected sessions.
#[utoipa::path(
    post, path = "/mqtt/sessions/{sel}/subscriptions", tag = "mqtt", params(SessionSel, FieldsQuery),
    request_body(content = Vec<SubscriptionInput>, description = "An array of subscriptions, or one"),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The subscriptions, one per session and item", body = ResultOf<SubscriptionItem>),
        (status = 400, description = "Invalid items; nothing added", body = ErrorEnvelope),
        (status = 404, description = "No session matches the selector", body = ErrorEnvelope),
    )
)]
pub(crate) async fn create(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let inputs = call.items::<SubscriptionInput>()?;
    let mut subs = Vec::with_capacity(inputs.len());
    let mut errors = Vec::new();
    for (i, input) in inputs.into_iter().enumerate() {
        match subscription(&api, &call, input) {
            Ok(s) => subs.push(s),
            Err(e) => errors.push(e.at(i)),
        }
    }
    check(errors)?;
    let sessions = selected_sessions(&api, &call, 1)?;
    // Cluster mode: the sessions other nodes hold, changed on their node.
    let elsewhere = selected_in_cluster(&api, &call, 1)?;
    if sessions.is_empty() && elsewhere.is_empty() {
        return Err(ApiError::not_found("no session matches the selector"));
    }
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (session, _) in &sessions {
        for (i, sub) in subs.iter().enumerate() {
            match api
                .broker
                .add_subscription(session, sub.clone(), &call.caller.rights)
            {
                Err(err) => failed.push(refused(session.public_id(), err, sub).at(i)),
                Ok((is_new, sub)) => {
                    if is_new || session.lock().subscriptions.contains_key(&sub.key) {
                        done.push(to_value(&SubscriptionItem::new(
                            sub.view(),
                            session.public_id(),
                        )));
                    }
                }
            }
        }
    }
    // The node holding the session checks the caller's ACL again (a master or standard token
    // may subscribe to anything).
    let token_id = matches!(call.caller.rights, Rights::Acl(_)).then_some(call.caller.token.id);
    for (item, _) in &elsewhere {
        let (Some(key), Some(sid)) = (key_of(item), item.get("id").and_then(Value::as_u64)) else {
            continue;
        };
        let change = RemoteChange::subscribe(&subs, token_id);
        let outcomes = api.broker.change_cluster_session(&key, change).await;
        for (i, (sub, outcome)) in subs.iter().zip(outcomes).enumerate() {
            match outcome {
                RemoteOutcome::Done => {
                    done.push(to_value(&SubscriptionItem::new(sub.view(), sid)));
                }
                RemoteOutcome::Unchanged => {}
                RemoteOutcome::Refused(err) => failed.push(refused(sid, err, sub).at(i)),
                RemoteOutcome::Invalid | RemoteOutcome::Unanswered => {
                    failed.push(unanswered(sid, "added", &sub.key).at(i));
                }
            }
        }
    }
    Ok(Reply::changed(&call, done, failed))
}

/// The error item of a subscription that session `sid` refused.
fn refused(sid: u64, err: SubscribeError, sub: &Subscription) -> ErrorItem {
    let status = match err {
        SubscribeError::StoreRefusing => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::FORBIDDEN,
    };
    let what = match err {
        SubscribeError::QuotaExceeded => "subscriptions quota exceeded".into(),
        err => err.to_string(),
    };
    ErrorItem::new(
        status,
        format!("session {sid}: {what}, `{}` not added", sub.key),
    )
}

/// The error item of a change that the node holding session `sid` did not make (cluster
/// mode: it did not answer in time, or the session's record could not be written).
fn unanswered(sid: u64, done: &str, sub: &impl std::fmt::Display) -> ErrorItem {
    ErrorItem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("session {sid}: the node that holds it did not answer, `{sub}` not {done}"),
    )
}

/// Checks one subscription item and builds it as a client's SUBSCRIBE would.
fn subscription(
    api: &ApiState,
    call: &Call,
    input: SubscriptionInput,
) -> Result<Subscription, ErrorItem> {
    let bad = |reason: String| ErrorItem::new(StatusCode::BAD_REQUEST, reason);
    let qos =
        QoS::from_u8(input.qos.unwrap_or(0)).ok_or_else(|| bad("qos must be 0, 1 or 2".into()))?;
    let retain_handling = match input.retain_handling.unwrap_or(0) {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(bad("retain_handling must be 0, 1 or 2".into())),
    };
    if input
        .subscription_id
        .is_some_and(|id| id == 0 || id > 268_435_455)
    {
        return Err(bad("subscription_id must be within 1..=268435455".into()));
    }
    let options = SubscriptionOptions {
        qos: qos.min(api.broker.config.max_qos),
        no_local: input.no_local.unwrap_or(false),
        retain_as_published: input.rap.unwrap_or(false),
        retain_handling,
    };
    let mut sub = parse_subscription(&input.topic, input.cid, options, input.subscription_id)
        .map_err(|e| bad(format!("topic `{}`: {e}", input.topic)))?;
    // Checked here so that a refused item changes nothing; `Broker::subscribe` checks again.
    if !sub.authorize(&call.caller.rights) {
        return Err(ErrorItem::new(
            StatusCode::FORBIDDEN,
            format!("the token may not subscribe to `{}`", input.topic),
        ));
    }
    Ok(sub)
}

/// The subscriptions of the selected sessions that the last selector picks.
fn selected(
    api: &ApiState,
    call: &Call,
) -> Result<Vec<(std::sync::Arc<Session>, Value)>, ApiError> {
    let sel = call.selector(0)?;
    let now = api.now_secs();
    let mut out = Vec::new();
    for (session, _) in selected_sessions(api, call, 2)? {
        let sid = session.public_id();
        for view in session.subscription_views() {
            let item = to_value(&SubscriptionItem::new(view, sid));
            if sel.matches(&item, now) {
                out.push((session.clone(), item));
            }
        }
    }
    Ok(out)
}

/// Lists subscriptions of sessions.
#[utoipa::path(
    get, path = "/mqtt/sessions/{sel}/subscriptions/{subscription_sel}", tag = "mqtt", params(SubSel, ListQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The selected subscriptions", body = ResultOf<SubscriptionItem>),
        (status = 400, description = "Bad selector or parameters", body = ErrorEnvelope),
    )
)]
pub(crate) async fn list(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    call.data::<NoData>()?;
    let mut items: Vec<Value> = selected(&api, &call)?.into_iter().map(|(_, v)| v).collect();
    // Cluster mode: the subscriptions of sessions other nodes hold too.
    let sel = call.selector(0)?;
    let now = api.now_secs();
    for (session, subs) in selected_in_cluster(&api, &call, 2)? {
        let sid = session.get("id").and_then(Value::as_u64).unwrap_or(0);
        for view in subs {
            let item = to_value(&SubscriptionItem::new(view, sid));
            if sel.matches(&item, now) {
                items.push(item);
            }
        }
    }
    Ok(Reply::list(&call, items))
}

/// Removes subscriptions from sessions.
#[utoipa::path(
    delete, path = "/mqtt/sessions/{sel}/subscriptions/{subscription_sel}", tag = "mqtt", params(SubSel, FieldsQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The removed subscriptions", body = ResultOf<SubscriptionItem>),
        (status = 400, description = "Bad selector", body = ErrorEnvelope),
    )
)]
pub(crate) async fn delete(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    call.data::<NoData>()?;
    let mut done = Vec::new();
    for (session, item) in selected(&api, &call)? {
        if api.broker.remove_subscription(&session, &identity(&item)) {
            done.push(item);
        }
    }
    // Cluster mode: the subscriptions of sessions other nodes hold, removed on their node.
    let mut failed = Vec::new();
    for (key, sid, items) in selected_elsewhere(&api, &call)? {
        let keys: Vec<SubscriptionKey> = items.iter().map(identity).collect();
        let change = RemoteChange::unsubscribe(&keys);
        let outcomes = api.broker.change_cluster_session(&key, change).await;
        for ((item, outcome), sub) in items.into_iter().zip(outcomes).zip(&keys) {
            match outcome {
                RemoteOutcome::Done => done.push(item),
                RemoteOutcome::Unchanged | RemoteOutcome::Refused(_) => {}
                RemoteOutcome::Invalid | RemoteOutcome::Unanswered => {
                    failed.push(unanswered(sid, "removed", sub));
                }
            }
        }
    }
    Ok(Reply::changed(&call, done, failed))
}

/// The identity of a subscription item (its `topic` and `cid`).
fn identity(item: &Value) -> SubscriptionKey {
    let topic = item
        .get("topic")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let cid = item.get("cid").and_then(Value::as_u64);
    SubscriptionKey::new(ByteString::from(topic), cid)
}

/// Cluster mode: the sessions other nodes hold with the items of their subscriptions that
/// the last selector picks (sessions with none left out).
fn selected_elsewhere(
    api: &ApiState,
    call: &Call,
) -> Result<Vec<(tern_broker::SessionKey, u64, Vec<Value>)>, ApiError> {
    let sel = call.selector(0)?;
    let now = api.now_secs();
    let mut out = Vec::new();
    for (session, subs) in selected_in_cluster(api, call, 2)? {
        let (Some(key), Some(sid)) = (key_of(&session), session.get("id").and_then(Value::as_u64))
        else {
            continue;
        };
        let items: Vec<Value> = subs
            .into_iter()
            .map(|view| to_value(&SubscriptionItem::new(view, sid)))
            .filter(|item| sel.matches(item, now))
            .collect();
        if !items.is_empty() {
            out.push((key, sid, items));
        }
    }
    Ok(out)
}
