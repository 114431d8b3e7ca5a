//! `/mqtt/messages`: GET and DELETE retained messages by topic or filter (of the acting account
//! and, unless `data={"recursive": false}`, every account below it), and POST to publish as the
//! acting account.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use bytestring::ByteString;
use serde_json::Value;
use tern_broker::Message;
use tern_broker::accounts::Rights;
use tern_broker::topics;
use tern_codec::{PublishProperties, QoS};
use utoipa::IntoParams;

use super::{FieldsQuery, ListQuery, ResultOf, check};
use crate::ApiState;
use crate::call::Call;
use crate::error::{ApiError, ErrorEnvelope, ErrorItem};
use crate::items::{MessageInput, MessageItem, MessagesData, PublishedItem, to_value};
use crate::reply::Reply;
use crate::selector::Selector;

/// The topic selector (for the OpenAPI description).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only described: `selector` parses it from the raw path
pub(crate) struct TopicSel {
    /// A percent-encoded topic or filter (`a%2Fb%2F%23`), optionally followed by
    /// `,field=value` or `,{expression}` conditions on the messages (`,cid=1000`).
    pub topic: String,
}

/// The retained messages the topic selector picks.
fn selected(api: &ApiState, call: &Call) -> Result<Vec<(Arc<Message>, Value)>, ApiError> {
    let (filter, sel) = Selector::parse_topic(call.segment_from_end(0))?;
    tern_topic::validate_topic_filter(&filter)
        .map_err(|e| ApiError::bad_request(format!("topic filter `{filter}`: {e}")))?;
    let data: MessagesData = call.data()?;
    let cids = if data.recursive {
        call.caller.scope(api)
    } else {
        vec![call.caller.cid]
    };
    let now = api.now_secs();
    Ok(api
        .broker
        .retained_of(&cids, &filter)
        .into_iter()
        .filter(|m| readable(&call.caller.rights, &m.topic))
        .map(|m| {
            let item = to_value(&MessageItem::from(&*m));
            (m, item)
        })
        .filter(|(_, item)| sel.matches(item, now))
        .collect())
}

fn readable(rights: &Rights, topic: &str) -> bool {
    match rights {
        Rights::Acl(rules) => rules.can_receive(topic),
        _ => true,
    }
}

/// Lists retained messages.
#[utoipa::path(
    get, path = "/mqtt/messages/{topic}", tag = "mqtt", params(TopicSel, ListQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The retained messages, by account and topic", body = ResultOf<MessageItem>),
        (status = 400, description = "Bad topic, selector or parameters", body = ErrorEnvelope),
    )
)]
pub(crate) async fn list(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let items = selected(&api, &call)?.into_iter().map(|(_, v)| v).collect();
    Ok(Reply::list(&call, items))
}

/// Deletes retained messages.
#[utoipa::path(
    delete, path = "/mqtt/messages/{topic}", tag = "mqtt", params(TopicSel, FieldsQuery),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "The deleted messages", body = ResultOf<MessageItem>),
        (status = 400, description = "Bad topic or selector, or some messages could not be deleted", body = ResultOf<MessageItem>),
    )
)]
pub(crate) async fn delete(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (msg, item) in selected(&api, &call)? {
        if !call.caller.rights.can_publish(&msg.topic) {
            failed.push(ErrorItem::new(
                StatusCode::FORBIDDEN,
                format!("the token may not delete `{}`", msg.topic),
            ));
            continue;
        }
        if api.broker.delete_retained(msg.cid, &msg.topic) {
            done.push(item);
        }
    }
    Ok(Reply::changed(&call, done, failed))
}

/// A checked message to publish.
struct Outgoing {
    topic: ByteString,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    properties: PublishProperties,
}

/// Publishes messages as the acting account.
#[utoipa::path(
    post, path = "/mqtt/messages", tag = "mqtt", params(FieldsQuery),
    request_body(content = Vec<MessageInput>, description = "An array of messages, or one"),
    security(("FlespiToken" = [])),
    responses(
        (status = 200, description = "What was published", body = ResultOf<PublishedItem>),
        (status = 400, description = "Invalid items (nothing published), or some failed (both `result` and `errors`)", body = ResultOf<PublishedItem>),
    )
)]
pub(crate) async fn publish(State(api): State<ApiState>, call: Call) -> Result<Reply, ApiError> {
    let inputs = call.items::<MessageInput>()?;
    let mut out = Vec::with_capacity(inputs.len());
    let mut errors = Vec::new();
    for (i, input) in inputs.into_iter().enumerate() {
        match outgoing(&api, &call, input) {
            Ok(o) => out.push(o),
            Err(e) => errors.push(e.at(i)),
        }
    }
    check(errors)?;
    let cid = call.caller.cid;
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (i, o) in out.into_iter().enumerate() {
        if o.retain
            && api
                .broker
                .retained_quota_exceeded(cid, &o.topic, o.payload.len())
        {
            failed.push(
                ErrorItem::new(
                    StatusCode::FORBIDDEN,
                    "the account's retained messages quota is exceeded",
                )
                .at(i),
            );
            continue;
        }
        let item = PublishedItem {
            topic: o.topic.to_string(),
            cid,
            qos: o.qos as u8,
            retained: o.retain,
            subscribers: 0,
        };
        let routed = api
            .broker
            .publish_as(cid, o.topic, o.payload, o.qos, o.retain, o.properties);
        done.push(to_value(&PublishedItem {
            subscribers: routed.sessions,
            ..item
        }));
    }
    Ok(Reply::changed(&call, done, failed))
}

fn outgoing(api: &ApiState, call: &Call, m: MessageInput) -> Result<Outgoing, ErrorItem> {
    let bad = |reason: String| ErrorItem::new(StatusCode::BAD_REQUEST, reason);
    tern_topic::validate_topic_name(&m.topic)
        .map_err(|e| bad(format!("topic `{}`: {e}", m.topic)))?;
    if topics::is_reserved(&m.topic) {
        return Err(ErrorItem::new(
            StatusCode::FORBIDDEN,
            format!(
                "topic `{}`: {} is reserved",
                m.topic,
                topics::RESERVED_PREFIX
            ),
        ));
    }
    if !call.caller.rights.can_publish(&m.topic) {
        return Err(ErrorItem::new(
            StatusCode::FORBIDDEN,
            format!("the token may not publish to `{}`", m.topic),
        ));
    }
    let qos =
        QoS::from_u8(m.qos.unwrap_or(0)).ok_or_else(|| bad("qos must be 0, 1 or 2".into()))?;
    let retain = m.retained.unwrap_or(false);
    if retain && !api.broker.config.retain_available {
        return Err(bad("retained messages are not supported".into()));
    }
    if let Some(rt) = &m.response_topic {
        tern_topic::validate_topic_name(rt)
            .map_err(|e| bad(format!("response_topic `{rt}`: {e}")))?;
    }
    let payload = match m.payload {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) => Bytes::from(s),
        Some(other) => Bytes::from(other.to_string()),
    };
    let user_properties = m
        .user_properties
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (ByteString::from(k), ByteString::from(v))
        })
        .collect();
    let properties = PublishProperties {
        message_expiry_interval: m.message_expiry_interval,
        content_type: m.content_type.map(ByteString::from),
        response_topic: m.response_topic.map(ByteString::from),
        correlation_data: m.correlation_data.map(Bytes::from),
        user_properties,
        ..PublishProperties::default()
    };
    Ok(Outgoing {
        topic: ByteString::from(m.topic),
        payload,
        qos,
        retain,
        properties,
    })
}
