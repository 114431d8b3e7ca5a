//! `/metrics` (Prometheus, scraped and parsed) and `/health` on the HTTP listeners, and the
//! `tern health` probe used by container health checks.

use std::collections::HashMap;

use tern_codec::*;

use crate::support::process::{Daemon, free_addr, run};
use crate::support::transport::{self, Transport};
use crate::support::{Client, TestBroker, eventually, http};

/// One scrape: `name{labels}` → value, labels as written by the encoder.
#[derive(Debug)]
struct Scrape(HashMap<String, f64>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut values = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("a number in {line:?}"));
            values.insert(series.to_string(), value);
        }
        Scrape(values)
    }

    /// The value of `name` with exactly these labels (in the encoder's order).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = if labels.is_empty() {
            name.to_string()
        } else {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{name}{{{}}}", l.join(","))
        };
        *self
            .0
            .get(&key)
            .unwrap_or_else(|| panic!("no series {key} in {:?}", self.0.keys()))
    }
}

async fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let res = http::get(addr, "/metrics", &[]).await;
    assert_eq!(res.status, 200);
    assert!(
        res.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        res.headers
    );
    Scrape::parse(&res.body)
}

#[tokio::test]
async fn metrics_are_scraped_and_move_with_traffic() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let before = scrape(b.http()).await;
    assert_eq!(before.get("tern_messages_received_total", &[]), 0.0);
    assert_eq!(
        before.get(
            "tern_connections",
            &[("listener", "mqtt"), ("protocol", "5")]
        ),
        0.0
    );

    let mut tcp5 = Client::connect(b.addr, ProtocolVersion::V5, "m-tcp5").await;
    let ws = transport::open(&b, Transport::Ws).await;
    let mut ws311 = Client::connect_over(ws, ProtocolVersion::V311, "m-ws311").await;
    let tls = transport::open(&b, Transport::Tls).await;
    let mut tls31 = Client::connect_over(tls, ProtocolVersion::V31, "m-tls31").await;
    ws311.subscribe("m/#", QoS::AtLeastOnce).await;
    for i in 0..10 {
        tcp5.publish(&format!("m/{i}"), b"12345", QoS::AtLeastOnce, false)
            .await;
    }
    tcp5.publish("m/retained", b"r", QoS::AtMostOnce, true)
        .await;
    for _ in 0..11 {
        let p = ws311.recv_publish().await;
        ws311.ack(&p).await;
    }
    tls31.ping().await;

    let after = scrape(b.http()).await;
    assert_eq!(after.get("tern_messages_received_total", &[]), 11.0);
    assert_eq!(after.get("tern_messages_sent_total", &[]), 11.0);
    assert_eq!(after.get("tern_payload_bytes_received_total", &[]), 51.0);
    // m/retained, and the broker's own state topics: flespi/state/platform/customer of the
    // top and of the anonymous account, and the anonymous account's
    // flespi/state/platform/subaccounts/<id> in the top account.
    assert_eq!(after.get("tern_retained_messages", &[]), 4.0);
    assert_eq!(after.get("tern_subscriptions", &[]), 1.0);
    assert_eq!(after.get("tern_sessions", &[]), 3.0);
    // Anonymous clients present no token: no token check ran.
    assert_eq!(after.get("tern_auth_total", &[("result", "ok")]), 0.0);
    assert_eq!(
        after.get("tern_auth_total", &[("result", "rate_limited")]),
        0.0
    );
    assert!(
        after.get("tern_store_syncs_total", &[]) >= 1.0,
        "the store is on in tests"
    );
    for (listener, protocol) in [("mqtt", "5"), ("http", "3.1.1"), ("mqtts", "3.1")] {
        let labels = [("listener", listener), ("protocol", protocol)];
        assert_eq!(after.get("tern_connections", &labels), 1.0, "{labels:?}");
        assert_eq!(after.get("tern_connects_total", &labels), 1.0, "{labels:?}");
    }
    assert_eq!(
        after.get(
            "tern_connections",
            &[("listener", "https"), ("protocol", "5")]
        ),
        0.0
    );
    assert_eq!(after.get("tern_network_connections", &[]), 3.0);
    assert!(after.get("tern_listener_accepted_total", &[("listener", "http")]) >= 2.0);
    assert_eq!(
        after.get("tern_tls_reloads_total", &[("result", "ok")]),
        0.0
    );
    assert_eq!(
        after.get("tern_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );

    // Closes are counted by reason; the connection gauges go back down.
    tls31.disconnect().await;
    let net = b.server().net_metrics().clone();
    assert!(
        eventually(|| net.connected(tern_net::Listener::Mqtts, ProtocolVersion::V31) == 0).await
    );
    let last = scrape(b.http()).await;
    assert_eq!(
        last.get(
            "tern_connections",
            &[("listener", "mqtts"), ("protocol", "3.1")]
        ),
        0.0
    );
    assert!(
        last.get(
            "tern_connections_closed_total",
            &[("reason", "client_disconnect")]
        ) >= 1.0
    );
    assert_eq!(
        last.get("tern_messages_dropped_total", &[("reason", "too_large")]),
        0.0
    );
}

#[tokio::test]
async fn openmetrics_when_asked_for() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let res = http::get(
        b.http(),
        "/metrics",
        &["Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5"],
    )
    .await;
    assert_eq!(res.status, 200);
    assert!(
        res.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(res.body.trim_end().ends_with("# EOF"), "{}", res.body);
    assert!(res.body.contains("# TYPE tern_messages_received counter"));
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let b = TestBroker::with_listeners(|c| c.metrics.enabled = false).await;
    assert_eq!(http::get(b.http(), "/metrics", &[]).await.status, 404);
    assert_eq!(http::get(b.http(), "/health", &[]).await.status, 200);
}

#[tokio::test]
async fn health_on_http_and_https() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let res = http::get(b.http(), "/health", &[]).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(res.body, "{\"status\":\"ok\"}\n");
    // The same over HTTPS.
    let config = transport::client_tls(&b.test_certs().ca(), None);
    let mut tls = transport::tls(b.https(), config).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.ok();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("{\"status\":\"ok\"}\n"), "{answer}");
}

#[tokio::test]
async fn tern_health_probes_the_http_listener() {
    let data = tempfile::tempdir().unwrap();
    let http_addr = free_addr();
    let d = Daemon::spawn(data.path(), &["--http", &http_addr.to_string()]).await;
    let (code, out, err) = run(&["health", "--addr", &http_addr.to_string()], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "ok");
    // The address from the environment, as in a container.
    let (code, _, err) = run(
        &["health"],
        &[(
            "TERN_LISTENERS_HTTP",
            &format!("0.0.0.0:{}", http_addr.port()),
        )],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    drop(d);
    let closed = free_addr();
    let (code, _, err) = run(
        &["health", "--addr", &closed.to_string(), "--timeout", "2"],
        &[],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.starts_with("unhealthy: cannot connect to"), "{err}");
}

/// The devices layer's families (`tern_gw_*`) move with HTTP channel ingest, a device POST
/// over the bytes quota, and a retention sweep (every second here).
#[tokio::test]
async fn gw_metrics_move_with_ingest_and_a_sweep() {
    use serde_json::{Value, json};
    let b = TestBroker::with_listeners(|c| {
        c.gw.retention_interval = 1;
        c.quotas.messages_bytes = 20_000;
    })
    .await;
    let auth = format!("Authorization: FlespiToken {}", b.master_key());
    let rest = |method: &'static str, path: String, body: Value| {
        let auth = auth.clone();
        let addr = b.http();
        async move {
            let r = http::request(addr, method, &path, &[&auth], &body.to_string()).await;
            (
                r.status,
                serde_json::from_str::<Value>(&r.body).unwrap_or(Value::Null),
            )
        }
    };
    let before = scrape(b.http()).await;
    assert_eq!(before.get("tern_gw_devices", &[]), 0.0);
    assert_eq!(before.get("tern_gw_stored_bytes", &[]), 0.0);
    assert_eq!(before.get("tern_gw_retention_messages_total", &[]), 0.0);

    let (status, r) = rest(
        "POST",
        "/gw/devices".into(),
        json!({"name": "m", "device_type_id": 1, "messages_ttl": 60, "configuration": {"ident": "m-1"}}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let id = r["result"][0]["id"].as_u64().expect("id");
    let (status, r) = rest(
        "POST",
        "/gw/channels".into(),
        json!({"name": "in", "protocol_id": 1}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let uri = r["result"][0]["uri"].as_str().expect("uri").to_string();
    let path = uri[uri.find("/gw/channels/").expect("path")..].to_string();
    // Three messages older than the device's messages_ttl, through the channel into the device.
    let old: Vec<Value> = (0..3)
        .map(|i| json!({"ident": "m-1", "timestamp": 1_700_000_000 + i}))
        .collect();
    let r = http::request(b.http(), "POST", &path, &[], &Value::Array(old).to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Over the bytes quota: refused whole.
    let big: Vec<Value> = (0..10).map(|_| json!({"pad": "x".repeat(3000)})).collect();
    let (status, _) = rest(
        "POST",
        format!("/gw/devices/{id}/messages"),
        Value::Array(big),
    )
    .await;
    assert_eq!(status, 403);

    let s = scrape(b.http()).await;
    assert_eq!(s.get("tern_gw_devices", &[]), 1.0);
    assert_eq!(s.get("tern_gw_channels", &[]), 1.0);
    assert_eq!(
        s.get(
            "tern_gw_messages_ingested_total",
            &[("route", "http_channel")]
        ),
        3.0
    );
    assert_eq!(
        s.get(
            "tern_gw_messages_ingested_total",
            &[("route", "device_post")]
        ),
        0.0
    );
    assert_eq!(
        s.get("tern_gw_messages_refused_total", &[("reason", "quota")]),
        10.0
    );

    // The next sweeps expire the three messages and bring the stored bytes back to 0.
    let mut last = s;
    for _ in 0..100 {
        if last.get("tern_gw_retention_messages_total", &[]) == 3.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        last = scrape(b.http()).await;
    }
    assert_eq!(last.get("tern_gw_retention_messages_total", &[]), 3.0);
    assert!(last.get("tern_gw_retention_sweeps_total", &[]) >= 1.0);
    assert_eq!(
        last.get("tern_gw_retention_devices_total", &[("action", "expired")]),
        1.0
    );
    assert_eq!(last.get("tern_gw_stored_bytes", &[]), 0.0);
}
