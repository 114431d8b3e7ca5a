//! REST over MQTT (docs/flespi.md#rest-over-mqtt): a client's publish to
//! `flespi/rest/<method>/<uri>[?query]` runs through the same router as HTTP, with the session's
//! token, and the answer is published back.
//!
//! - The method is `get`, `post`, `put`, `patch` or `delete`; the rest of the topic is the URI
//!   (selectors percent-encoded as over HTTP; characters a URI cannot hold, such as spaces,
//!   quotes and braces, are encoded by the bridge). The payload is the body; for GET and DELETE
//!   a non-empty payload is the `data` parameter.
//! - The answer is the HTTP answer's body, with user property `http_code`. It goes to the v5
//!   Response Topic when given (routed normally, as the requester's account); otherwise to the
//!   request topic, delivered only to the requesting session (v3.1.1 clients always get it
//!   there). Correlation Data is echoed on every message. A Response Topic outside the
//!   requester's publish grants, or under `flespi/` other than the request topic itself, is
//!   refused by the broker before anything runs (v5 PUBACK 0x87).
//! - `response_cid=<n>` (a master token, n its account or below) publishes the answer as account
//!   n: to the Response Topic, or without one to the request topic, routed normally in n's
//!   namespace (and seen by its ancestors' subscribers, as any message of n).
//! - `response_chunked=true` splits the body into consecutive chunks of at most
//!   [`ApiOptions::chunk_size`](crate::ApiOptions) bytes and at most the client's Maximum Packet
//!   Size minus the packet's overhead; only the last carries `http_code`.
//! - Every failure is answered with the error envelope: an unknown method (405), an unknown URI
//!   (404), malformed JSON (400), a refused `response_cid` (403), an unchunked answer larger
//!   than the client's Maximum Packet Size (413, with an empty body when even the envelope
//!   does not fit), too many calls in progress (429, beyond
//!   [`ApiOptions::bridge_max_calls`](crate::ApiOptions)).
//! - Answers are published at QoS 1 (capped by the broker's maximum QoS): the request's QoS
//!   does not reach the bridge.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use bytestring::ByteString;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tern_broker::topics;
use tern_broker::{Broker, Cid, RestBridge, RestCall};
use tern_codec::{ProtocolVersion, Publish, PublishProperties, QoS};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::ApiState;
use crate::auth::BridgeIdentity;
use crate::error::{ApiError, ErrorEnvelope};
use crate::openapi::bridge_router;

/// Installs the REST-over-MQTT bridge into the broker (once; later calls are ignored by the
/// broker). Each call is spawned on the runtime of the connection task that made it.
///
/// The broker keeps the bridge and the bridge keeps the [`ApiState`] (and so the broker): the
/// pair lives as long as the process, as the daemon's broker does.
pub fn install_bridge(broker: &Arc<Broker>, state: ApiState) {
    // Webhooks' flespi-platform steps call the same router in process.
    state.gateway.set_platform_caller(Arc::new(
        crate::handlers::platform_webhooks::PlatformCalls::new(bridge_router(state.clone())),
    ));
    let permits = Arc::new(Semaphore::new(state.options.bridge_max_calls.max(1)));
    let bridge = Bridge {
        router: bridge_router(state.clone()),
        state,
        permits,
    };
    broker.set_rest_bridge(Arc::new(bridge));
}

/// The bridge the broker hands `flespi/rest/...` publishes to.
struct Bridge {
    router: Router,
    state: ApiState,
    /// Calls in progress (each holds one permit).
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("available", &self.permits.available_permits())
            .finish()
    }
}

impl RestBridge for Bridge {
    fn call(&self, call: RestCall) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many REST calls in progress",
            );
            respond(&self.state, &call, err.status, envelope(&err));
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(topic = %call.topic, "REST call outside a tokio runtime: dropped");
            return;
        };
        let router = self.router.clone();
        let state = self.state.clone();
        runtime.spawn(async move {
            let (status, body) = run(router, &call).await;
            respond(&state, &call, status, body);
            drop(permit);
        });
    }
}

fn envelope(err: &ApiError) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&ErrorEnvelope {
            errors: err.errors.clone(),
        })
        .unwrap_or_default(),
    )
}

/// Runs the call through the router; returns the status and the body.
async fn run(router: Router, call: &RestCall) -> (StatusCode, Bytes) {
    let req = match request(call) {
        Ok(req) => req,
        Err(err) => return (err.status, envelope(&err)),
    };
    let Ok(resp) = router.oneshot(req).await;
    let status = resp.status();
    match axum::body::to_bytes(resp.into_body(), usize::MAX).await {
        Ok(body) => (status, body),
        Err(err) => {
            let err = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("could not read the answer: {err}"),
            );
            (err.status, envelope(&err))
        }
    }
}

/// What a URI may not hold literally (RFC 3986), besides non-ASCII: encoded by the bridge.
const NOT_IN_URI: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'|')
    .add(b'\\')
    .add(b'^')
    .add(b'#');

/// Everything but unreserved characters, for the `data` parameter.
const DATA: &AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The HTTP request of a `flespi/rest/<method>/<uri>` publish.
fn request(call: &RestCall) -> Result<Request<Body>, ApiError> {
    let (method, uri) = topics::rest_request(&call.topic).unwrap_or(("", ""));
    let method = match method.to_ascii_lowercase().as_str() {
        "get" => Method::GET,
        "post" => Method::POST,
        "put" => Method::PUT,
        "patch" => Method::PATCH,
        "delete" => Method::DELETE,
        other => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "unknown method `{other}`: use flespi/rest/<get|post|put|patch|delete>/<uri>"
                ),
            ));
        }
    };
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut target = format!("/{}", utf8_percent_encode(path, NOT_IN_URI));
    let mut query = utf8_percent_encode(query, NOT_IN_URI).to_string();
    let mut body = call.payload.clone();
    if (method == Method::GET || method == Method::DELETE) && !body.is_empty() {
        let data = std::str::from_utf8(&body)
            .map_err(|_| ApiError::bad_request("the payload (data) is not UTF-8"))?;
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str("data=");
        query.extend(utf8_percent_encode(data, DATA));
        body = Bytes::new();
    }
    if !query.is_empty() {
        target.push('?');
        target.push_str(&query);
    }
    Request::builder()
        .method(method)
        .uri(target)
        .header(header::ACCEPT, "application/json")
        .header(header::CONTENT_TYPE, "application/json")
        .extension(BridgeIdentity {
            token_id: call.principal.token_id,
            peer: call.session.lock().last_peer.map(|a| a.ip()),
        })
        .body(Body::from(body))
        .map_err(|e| ApiError::bad_request(format!("invalid URI: {e}")))
}

/// Where an answer goes.
enum Route {
    /// Routed normally as account `cid` on `topic`.
    Publish { cid: Cid, topic: ByteString },
    /// Only to the requesting session, on the request topic.
    Requester,
}

fn user_property<'a>(props: &'a PublishProperties, name: &str) -> Option<&'a str> {
    props
        .user_properties
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| &**v)
}

/// Where the answer of `call` goes, or why it cannot go there.
fn route(state: &ApiState, call: &RestCall) -> Result<Route, ApiError> {
    let props = &call.properties;
    let response_cid = match user_property(props, "response_cid").filter(|_| call.v5) {
        None => None,
        Some(text) => Some(response_account(state, call, text)?),
    };
    let response_topic = props.response_topic.clone().filter(|_| call.v5);
    // The broker refuses these before the call runs (PUBACK 0x87); kept here so no answer
    // can land under `flespi/` or outside the requester's grants whoever calls the bridge.
    if let Some(topic) = &response_topic
        && *topic != call.topic
        && (topics::is_reserved(topic) || !call.principal.rights.can_publish(topic))
    {
        return Err(ApiError::forbidden(format!(
            "response topic `{topic}`: not a topic this token may publish to"
        )));
    }
    Ok(match (response_topic, response_cid) {
        (Some(topic), cid) => Route::Publish {
            cid: cid.unwrap_or(call.principal.cid),
            topic,
        },
        (None, Some(cid)) => Route::Publish {
            cid,
            topic: call.topic.clone(),
        },
        (None, None) => Route::Requester,
    })
}

/// The account of `response_cid`: a master token's account or one below it.
fn response_account(state: &ApiState, call: &RestCall, text: &str) -> Result<Cid, ApiError> {
    let cid: Cid = text.trim().parse().map_err(|_| {
        ApiError::bad_request(format!("response_cid `{text}` is not an account id"))
    })?;
    let own = call.principal.cid;
    if !call.principal.rights.is_master() {
        return Err(ApiError::forbidden("response_cid needs a master token"));
    }
    if state.directory.account(cid).is_none() || !state.directory.is_within(cid, own) {
        return Err(ApiError::forbidden(format!(
            "response_cid {cid} is not within account {own}"
        )));
    }
    Ok(cid)
}

/// Publishes the answer (status and body) of `call`.
fn respond(state: &ApiState, call: &RestCall, status: StatusCode, body: Bytes) {
    let (route, status, body) = match route(state, call) {
        Ok(r) => (r, status, body),
        Err(err) => (Route::Requester, err.status, envelope(&err)),
    };
    let topic = match &route {
        Route::Publish { topic, .. } => topic.clone(),
        Route::Requester => call.topic.clone(),
    };
    let chunked = user_property(&call.properties, "response_chunked")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let max = call.max_packet_size as usize;
    let overhead = overhead(&topic, &call.properties, call.v5);
    // Too large and not chunked: a small 413 envelope instead, wherever the answer goes (a
    // routed answer over the requester's Maximum Packet Size would be dropped on delivery).
    let (status, body) = if !chunked && body.len() + overhead > max {
        let err = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the answer ({} bytes) exceeds your Maximum Packet Size; ask with response_chunked=true",
                body.len()
            ),
        );
        (err.status, envelope(&err))
    } else {
        (status, body)
    };
    // An envelope that does not fit either: the status alone, in `http_code`.
    let body = if !chunked && body.len() + overhead > max {
        Bytes::new()
    } else {
        body
    };
    let chunk = state.options.chunk_size.min(max.saturating_sub(overhead));
    if chunk == 0 {
        tracing::warn!(topic = %call.topic, max, "REST answer dropped: the client's Maximum Packet Size leaves no room");
        return;
    }
    let pieces: Vec<Bytes> = if chunked && body.len() > chunk {
        body.chunks(chunk).map(|c| body.slice_ref(c)).collect()
    } else {
        vec![body]
    };
    let last = pieces.len() - 1;
    let cid = match &route {
        Route::Publish { cid, .. } => *cid,
        Route::Requester => call.principal.cid,
    };
    let broker = &state.broker;
    for (i, piece) in pieces.into_iter().enumerate() {
        let mut msg = broker.message(cid, topic.clone(), piece, QoS::AtLeastOnce, false);
        msg.properties.correlation_data = call.properties.correlation_data.clone();
        if i == last {
            msg.properties.user_properties.push((
                ByteString::from_static("http_code"),
                ByteString::from(status.as_u16().to_string()),
            ));
        }
        match &route {
            Route::Publish { .. } => {
                broker.publish(Arc::new(msg));
            }
            Route::Requester => {
                let qos = msg.qos;
                broker.deliver_to(&call.session, msg, qos);
            }
        }
    }
}

/// Bytes of one answer PUBLISH besides its payload, with room for what delivery adds
/// (`cid`/`timestamp` user properties, subscription identifiers, expiry, a topic alias).
fn overhead(topic: &ByteString, props: &PublishProperties, v5: bool) -> usize {
    let mut properties = PublishProperties {
        correlation_data: props.correlation_data.clone(),
        ..PublishProperties::default()
    };
    if v5 {
        for (k, v) in [
            ("http_code", "000"),
            ("cid", "18446744073709551615"),
            ("timestamp", "18446744073709.551615"),
        ] {
            properties
                .user_properties
                .push((ByteString::from_static(k), ByteString::from_static(v)));
        }
    }
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic.clone(),
        packet_id: Some(1),
        properties,
        payload: Bytes::new(),
    };
    let version = if v5 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    };
    // Room for a few subscription identifiers, a message expiry and a topic alias.
    tern_codec::publish_len(&publish, version) + if v5 { 32 } else { 0 }
}
