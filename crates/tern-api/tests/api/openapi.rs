//! `/api.json`: it parses, lists every endpoint, and every route it lists is served.

use serde_json::{Value, json};

use crate::support::*;

/// Every endpoint of docs/flespi.md#the-rest-api, as the issue lists them.
const ENDPOINTS: &[(&str, &str)] = &[
    ("get", "/auth/info"),
    ("get", "/auth/regions"),
    ("get", "/platform/customer"),
    ("put", "/platform/customer"),
    ("post", "/platform/tokens"),
    ("get", "/platform/tokens/{sel}"),
    ("put", "/platform/tokens/{sel}"),
    ("patch", "/platform/tokens/{sel}"),
    ("delete", "/platform/tokens/{sel}"),
    ("post", "/platform/webhooks"),
    ("get", "/platform/webhooks/{sel}"),
    ("put", "/platform/webhooks/{sel}"),
    ("patch", "/platform/webhooks/{sel}"),
    ("delete", "/platform/webhooks/{sel}"),
    ("get", "/platform/webhooks/{sel}/logs"),
    ("post", "/platform/subaccounts"),
    ("get", "/platform/subaccounts/{sel}"),
    ("put", "/platform/subaccounts/{sel}"),
    ("patch", "/platform/subaccounts/{sel}"),
    ("delete", "/platform/subaccounts/{sel}"),
    ("get", "/mqtt/sessions/{sel}"),
    ("delete", "/mqtt/sessions/{sel}"),
    ("post", "/mqtt/sessions/{sel}/subscriptions"),
    (
        "get",
        "/mqtt/sessions/{sel}/subscriptions/{subscription_sel}",
    ),
    (
        "delete",
        "/mqtt/sessions/{sel}/subscriptions/{subscription_sel}",
    ),
    ("get", "/mqtt/messages/{topic}"),
    ("delete", "/mqtt/messages/{topic}"),
    ("post", "/mqtt/messages"),
    ("post", "/gw/devices"),
    ("get", "/gw/devices/{sel}"),
    ("put", "/gw/devices/{sel}"),
    ("patch", "/gw/devices/{sel}"),
    ("delete", "/gw/devices/{sel}"),
    ("put", "/gw/devices/{sel}/cid"),
    ("post", "/gw/devices/{sel}/messages"),
    ("get", "/gw/devices/{sel}/messages"),
    ("delete", "/gw/devices/{sel}/messages"),
    ("get", "/gw/devices/{sel}/telemetry"),
    ("delete", "/gw/devices/{sel}/telemetry"),
    ("get", "/gw/devices/{sel}/telemetry/{params}"),
    ("delete", "/gw/devices/{sel}/telemetry/{params}"),
    ("post", "/gw/devices/{sel}/commands"),
    ("post", "/gw/devices/{sel}/commands-queue"),
    ("get", "/gw/devices/{sel}/commands-queue"),
    ("delete", "/gw/devices/{sel}/commands-queue"),
    ("get", "/gw/devices/{sel}/commands-queue/{id}"),
    ("delete", "/gw/devices/{sel}/commands-queue/{id}"),
    ("get", "/gw/devices/{sel}/commands-result"),
    ("get", "/gw/devices/{sel}/commands-result/{id}"),
    ("post", "/gw/groups"),
    ("get", "/gw/groups/{sel}"),
    ("put", "/gw/groups/{sel}"),
    ("patch", "/gw/groups/{sel}"),
    ("delete", "/gw/groups/{sel}"),
    ("get", "/gw/groups/{sel}/devices/{device_sel}"),
    ("post", "/gw/groups/{sel}/devices/{device_sel}"),
    ("delete", "/gw/groups/{sel}/devices/{device_sel}"),
    ("get", "/gw/channel-protocols/{sel}"),
    ("post", "/gw/channels"),
    ("get", "/gw/channels/{sel}"),
    ("put", "/gw/channels/{sel}"),
    ("patch", "/gw/channels/{sel}"),
    ("delete", "/gw/channels/{sel}"),
    ("post", "/gw/channels/{id}/ingest/{secret}"),
    ("get", "/gw/channels/{sel}/messages"),
    ("delete", "/gw/channels/{sel}/messages"),
    ("get", "/gw/channels/{sel}/connections"),
    ("get", "/gw/devices/{sel}/logs"),
    ("get", "/gw/channels/{sel}/logs"),
    ("get", "/const/values"),
    ("get", "/gw/channel-protocols/{sel}/device-types/{type_sel}"),
    ("post", "/gw/streams"),
    ("get", "/gw/streams/{sel}"),
    ("put", "/gw/streams/{sel}"),
    ("patch", "/gw/streams/{sel}"),
    ("delete", "/gw/streams/{sel}"),
    ("get", "/gw/streams/{sel}/devices/{source_sel}"),
    ("post", "/gw/streams/{sel}/devices/{source_sel}"),
    ("delete", "/gw/streams/{sel}/devices/{source_sel}"),
    ("get", "/gw/streams/{sel}/channels/{source_sel}"),
    ("post", "/gw/streams/{sel}/channels/{source_sel}"),
    ("delete", "/gw/streams/{sel}/channels/{source_sel}"),
    ("get", "/gw/streams/{sel}/logs"),
    ("get", "/gw/stream-protocols/{sel}"),
    ("get", "/platform/customer/logs"),
    ("get", "/mqtt/logs"),
];

#[tokio::test]
async fn api_json_lists_every_served_route() {
    let env = Env::start().await;
    let r = env.call("GET", "/api.json", None, &[], None).await;
    assert_eq!(r.status, 200, "no token needed");
    let doc = r.json();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        doc,
        serde_json::to_value(tern_api::openapi()).expect("serializes"),
        "served as generated"
    );
    assert!(doc["components"]["securitySchemes"]["FlespiToken"].is_object());

    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let text = doc.to_string();
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap_or_default();
        assert!(
            schemas.contains_key(name),
            "unresolved schema reference {name}"
        );
    }
    let paths = doc["paths"].as_object().expect("paths");
    let mut listed = Vec::new();
    for (path, item) in paths {
        for method in ["get", "put", "post", "patch", "delete"] {
            if let Some(op) = item.get(method) {
                listed.push((method.to_string(), path.clone()));
                assert!(
                    op["responses"]["200"].is_object(),
                    "{method} {path} documents its answer"
                );
            }
        }
    }
    let mut expected: Vec<(String, String)> = ENDPOINTS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    listed.sort();
    assert_eq!(listed, expected);

    // Every listed route is served: never the router's "unknown URI" 404 or a 405. Selectors
    // that match nothing keep the calls harmless.
    for (method, path) in &listed {
        let concrete = path
            .replace("{sel}", "0")
            .replace("{subscription_sel}", "0")
            .replace("{device_sel}", "0")
            .replace("{type_sel}", "0")
            .replace("{id}", "0")
            .replace("{secret}", "x")
            .replace("{params}", "all")
            .replace("{topic}", "nothing");
        let body = match method.as_str() {
            "post" => Some(json!([])),
            "put" | "patch" => Some(json!({})),
            _ => None,
        };
        let r = env.master(&method.to_uppercase(), &concrete, body).await;
        assert_ne!(r.status, 405, "{method} {concrete}: {}", r.text());
        let v: Value = r.json();
        let unknown = v["errors"].as_array().is_some_and(|e| {
            e.iter().any(|e| {
                e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("unknown URI"))
            })
        });
        assert!(!unknown, "{method} {concrete} is not served: {v}");
    }
}

#[tokio::test]
async fn the_router_merges_beside_the_daemon_routes() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    let env = Env::start().await;
    let state = tern_api::ApiState::new(
        env.broker.clone(),
        env.directory.clone(),
        env.gateway.clone(),
    );
    let daemon = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
    let app = daemon.merge(tern_api::router(state));
    let health = app
        .clone()
        .oneshot(
            Request::get("/health")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(health.status(), 200);
    let other = app
        .oneshot(
            Request::get("/elsewhere")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(
        other.status(),
        404,
        "paths outside /auth, /platform, /mqtt, /gw are not claimed"
    );
}
