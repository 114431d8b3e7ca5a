//! The account's REST call log (docs/flespi.md#logs, spec flespi-gw §7): every call whose token
//! was found, over HTTP or REST over MQTT, is recorded in the log of the account it acted in
//! (`GET /platform/customer/logs`) with `host`, `app` (`x-flespi-app`), `method`, `uri`,
//! `token_id`, `http_code`, `transport` and `duration`.
//!
//! The layer ([`log_calls`]) wraps the whole router, so the code is the one the client got
//! (the 503 of `durable` included). It leaves an empty [`CallSlot`] in the request; `auth`
//! fills it once the token is known (then again with the acting account), so a call refused
//! before that (401: no token, an unknown one; an unknown URI or method, which never checks
//! one) belongs to no account and is not logged. After the answer the record goes to the
//! devices layer's bounded queue without waiting (`tern_gw::account_logs`): nothing is written
//! on the call's path.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tern_broker::Cid;
use tern_gw::account_logs::{APP_MAX, RestCallLog};
use tern_net::Listener;

use crate::ApiState;
use crate::auth::BridgeIdentity;

/// The header an app names itself with.
pub(crate) const APP_HEADER: &str = "x-flespi-app";

const UNSET: u64 = u64::MAX;

/// Where `auth` leaves the caller of a call for its log record.
#[derive(Debug, Clone)]
pub(crate) struct CallSlot(Arc<[AtomicU64; 2]>);

impl CallSlot {
    fn new() -> CallSlot {
        CallSlot(Arc::new([AtomicU64::new(UNSET), AtomicU64::new(UNSET)]))
    }

    /// The call acts in account `cid` with token `token_id`.
    pub(crate) fn set(&self, cid: Cid, token_id: u64) {
        self.0[0].store(cid, Ordering::Relaxed);
        self.0[1].store(token_id, Ordering::Relaxed);
    }

    fn get(&self) -> Option<(Cid, u64)> {
        let cid = self.0[0].load(Ordering::Relaxed);
        (cid != UNSET).then(|| (cid, self.0[1].load(Ordering::Relaxed)))
    }
}

/// The layer: runs the call, then queues its record if it had an account.
pub(crate) async fn log_calls(
    State(api): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Response {
    let slot = CallSlot::new();
    req.extensions_mut().insert(slot.clone());
    // Cheap copies (reference-counted), turned into strings only for a logged call.
    let method = req.method().clone();
    let uri = req.uri().clone();
    let app = req.headers().get(APP_HEADER).cloned();
    let (host, transport) = match req.extensions().get::<BridgeIdentity>() {
        Some(bridge) => (bridge.peer, "mqtt"),
        None => (
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
            match req.extensions().get::<Listener>() {
                Some(Listener::Https) => "https",
                _ => "http",
            },
        ),
    };
    let started = Instant::now();
    let response = next.run(req).await;
    if let Some((cid, token_id)) = slot.get() {
        api.gateway.log_rest_call(RestCallLog {
            cid,
            token_id,
            host: host.as_ref().map(IpAddr::to_string).unwrap_or_default(),
            app: app.map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .chars()
                    .take(APP_MAX)
                    .collect()
            }),
            method: method.as_str().to_string(),
            uri: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_string(), ToString::to_string),
            http_code: response.status().as_u16(),
            transport,
            duration: started.elapsed().as_secs_f64(),
        });
    }
    response
}
