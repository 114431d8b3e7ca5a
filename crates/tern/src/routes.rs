//! The daemon's own HTTP routes, served on the `http` and `https` listeners next to MQTT over
//! WebSocket: `/health` for load balancers and container health checks, and `/metrics` for
//! Prometheus (unless `metrics.enabled = false`). `server.rs` merges the REST API in beside them.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tern_broker::Broker;

use crate::metrics::{Exporter, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};

#[derive(Debug, Clone)]
struct Routes {
    broker: Arc<Broker>,
    exporter: Option<Arc<Exporter>>,
}

/// `/health`, and `/metrics` when an exporter is given.
pub fn routes(broker: Arc<Broker>, exporter: Option<Arc<Exporter>>) -> Router {
    let metrics = exporter.is_some();
    let router = Router::new().route("/health", get(health));
    let router = if metrics {
        router.route("/metrics", get(metrics_handler))
    } else {
        router
    };
    router.with_state(Routes { broker, exporter })
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// 200 `{"status":"ok"}` while serving; 503 `{"status":"stopping"}` once shutdown began, and
/// 503 `{"status":"store_failing","store":"<why>"}` while the store cannot write (disk full, I/O
/// error): nothing is acknowledged then, so a load balancer should send clients elsewhere; in
/// cluster mode 503 `{"status":"cluster_unavailable"}` while the node is cut off from NATS or
/// its JetStream quorum (`cluster.unavailable_after`).
async fn health(State(r): State<Routes>) -> Response {
    if r.broker.shutdown_token().is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, JSON)],
            "{\"status\":\"stopping\"}\n",
        )
            .into_response();
    }
    if r.broker.is_unavailable() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, JSON)],
            "{\"status\":\"cluster_unavailable\"}\n",
        )
            .into_response();
    }
    let store = r.broker.store();
    if store.failing() {
        let why = store
            .failure()
            .unwrap_or_else(|| "the store cannot write".into());
        let body = serde_json::json!({"status": "store_failing", "store": why});
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, JSON)],
            format!("{body}\n"),
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, JSON)],
        "{\"status\":\"ok\"}\n",
    )
        .into_response()
}

/// OpenMetrics when the scraper accepts it (Prometheus does), else the Prometheus text format.
async fn metrics_handler(State(r): State<Routes>, headers: HeaderMap) -> Response {
    let Some(exporter) = &r.exporter else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match exporter.render(openmetrics) {
        Ok(body) => {
            let content_type = if openmetrics {
                OPENMETRICS_CONTENT_TYPE
            } else {
                PROMETHEUS_CONTENT_TYPE
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
                body,
            )
                .into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
