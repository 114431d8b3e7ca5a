//! Webhooks (docs/flespi.md#webhooks) against a real `tern` process and a Rust HTTP receiver
//! that records every request and answers by plan: templates with `json()` and
//! `strescape()`, chained steps (custom-server then flespi-platform), triggers on `flespi/`
//! and user topics with `cid` and payload filters, retries through a 500, a 4xx logged at
//! once, pending calls surviving `kill -9`, bad input and non-master tokens refused. Waits are
//! bounded polls; nothing asserts on time.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::Client;
use crate::support::client::connect_packet;
use crate::support::http::request;
use crate::support::process::{Daemon, free_addr};
use tern_codec::{ProtocolVersion, QoS, ReasonCode};

const KEY: &str = "WWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWW";

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    method: String,
    pub(crate) path: String,
    headers: Vec<(String, String)>,
    pub(crate) body: String,
    /// The status it answered.
    status: u16,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 receiver (keep-alive, Content-Length bodies) recording what it gets. `plan`
/// picks the status of each request by its path: the statuses listed for a path prefix are
/// used in turn, the last one forever; anything else is answered 200.
#[derive(Clone)]
pub(crate) struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    addr: SocketAddr,
}

type Plan = Arc<Mutex<Vec<(String, Vec<u16>)>>>;

impl Receiver {
    pub(crate) async fn start(plan: &[(&str, &[u16])]) -> Receiver {
        Receiver::start_on(free_addr(), plan).await
    }

    async fn start_on(addr: SocketAddr, plan: &[(&str, &[u16])]) -> Receiver {
        let listener = TcpListener::bind(addr).await.expect("bind the receiver");
        let got = Arc::new(Mutex::new(Vec::new()));
        let plan: Plan = Arc::new(Mutex::new(
            plan.iter()
                .map(|(p, s)| (p.to_string(), s.to_vec()))
                .collect(),
        ));
        let r = Receiver { got, addr };
        let rr = r.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, rr.got.clone(), plan.clone()));
            }
        });
        r
    }

    pub(crate) fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Polls until `n` requests came (bounded: 60 s).
    pub(crate) async fn wait(&self, n: usize) -> Vec<Got> {
        for _ in 0..600 {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the receiver got {:?}", self.got());
    }

    pub(crate) fn uri(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn serve(mut sock: TcpStream, got: Arc<Mutex<Vec<Got>>>, plan: Plan) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let first = lines.next().unwrap_or("");
        let mut parts = first.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let body_start = head_end + 4;
        while buf.len() < body_start + len {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[body_start..body_start + len]).to_string();
        buf.drain(..body_start + len);
        let status = {
            let mut plan = plan.lock().unwrap();
            match plan.iter_mut().find(|(p, _)| path.starts_with(p.as_str())) {
                Some((_, list)) if list.len() > 1 => list.remove(0),
                Some((_, list)) => list.first().copied().unwrap_or(200),
                None => 200,
            }
        };
        got.lock().unwrap().push(Got {
            method,
            path,
            headers,
            body,
            status,
        });
        let answer = format!("{{\"status\":{status}}}");
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if sock.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn call_as(
    http: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let auth = format!("Authorization: FlespiToken {key}");
    let body = body.map(|v| v.to_string()).unwrap_or_default();
    let r = request(http, method, path, &[&auth], &body).await;
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

async fn rest(http: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = call_as(http, KEY, method, path, body).await;
    assert_eq!(status, 200, "{method} {path}: {v}");
    v
}

async fn create(http: SocketAddr, webhook: Value) -> u64 {
    let v = rest(http, "POST", "/platform/webhooks", Some(webhook)).await;
    v["result"][0]["id"].as_u64().expect("webhook id")
}

async fn publisher(mqtt: SocketAddr, id: &str) -> Client {
    let mut c = connect_packet(ProtocolVersion::V5, id, true);
    c.username = Some(KEY.into());
    let (client, ack) = Client::connect_with(mqtt, c).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");
    client
}

/// The log records of webhook `id`.
async fn logs(http: SocketAddr, id: u64) -> Vec<Value> {
    let v = rest(http, "GET", &format!("/platform/webhooks/{id}/logs"), None).await;
    v["result"].as_array().cloned().unwrap_or_default()
}

/// Polls until webhook `id` has a log record that `pred` accepts (bounded: 60 s).
async fn wait_log(http: SocketAddr, id: u64, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        if let Some(r) = logs(http, id).await.into_iter().find(&pred) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no such log record: {:?}", logs(http, id).await);
}

async fn daemon(dir: &std::path::Path) -> (Daemon, SocketAddr) {
    let http = free_addr();
    let http_s = http.to_string();
    let d = Daemon::spawn(dir, &["--http", &http_s, "--master-token", KEY]).await;
    (d, http)
}

#[tokio::test]
async fn templates_chained_steps_and_triggers_on_user_and_flespi_topics() {
    let data = tempfile::tempdir().unwrap();
    let (d, http) = daemon(data.path()).await;
    let rx = Receiver::start(&[]).await;
    // custom-server with templates, then flespi-platform creating a device named after the
    // topic; triggered by a user topic with a payload filter.
    let body = r#"{"room":"%topics[1]%","t":%json(payload, "/t")%,"note":"%strescape(json(payload, "/note"))%","is":%isstring(json(payload, "/note"))%}"#;
    let w = create(
        http,
        json!({
            "name": "chain",
            "triggers": [{"topic": "sensors/+/temp", "filter": {"payload": "t > 20"}}],
            "configuration": [
                {"type": "custom-server", "method": "PUT",
                 "uri": rx.uri("/hook/%topics[1]%?c=%cid%"),
                 "headers": [{"name": "X-Room", "value": "%topics[1]%"}],
                 "body": body},
                {"type": "flespi-platform", "method": "POST", "uri": "/gw/devices",
                 "body": "[{\"name\":\"from-%topics[1]%\",\"device_type_id\":1,\"configuration\":{\"ident\":\"%topics[1]%\"}}]"}
            ]
        }),
    )
    .await;
    let item = rest(
        http,
        "GET",
        &format!("/platform/webhooks/{w}?fields=cid,name"),
        None,
    )
    .await;
    let cid = item["result"][0]["cid"].as_u64().expect("cid");
    assert_eq!(item["result"][0], json!({"cid": cid, "name": "chain"}));

    let mut p = publisher(d.mqtt, "pub1").await;
    p.publish(
        "sensors/hall/temp",
        br#"{"t": 10}"#,
        QoS::AtLeastOnce,
        false,
    )
    .await; // filtered out
    p.publish(
        "sensors/kitchen/temp",
        br#"{"t": 25.5, "note": "say \"hi\"\n"}"#,
        QoS::AtLeastOnce,
        false,
    )
    .await;
    let got = rx.wait(1).await;
    let g = &got[0];
    assert_eq!(g.method, "PUT");
    assert_eq!(g.path, format!("/hook/kitchen?c={cid}"));
    assert_eq!(g.header("x-room"), Some("kitchen"));
    assert_eq!(g.header("content-type"), Some("application/json"));
    let sent: Value = serde_json::from_str(&g.body).expect(&g.body);
    assert_eq!(
        sent,
        json!({"room": "kitchen", "t": 25.5, "note": "say \"hi\"\n", "is": true})
    );
    // The second step ran: the device exists.
    let mut found = Value::Null;
    for _ in 0..600 {
        let v = rest(http, "GET", "/gw/devices/name=from-kitchen", None).await;
        if let Some(dev) = v["result"].as_array().and_then(|a| a.first()) {
            found = dev.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let device = found["id"]
        .as_u64()
        .expect("the flespi-platform step made the device");
    let done = wait_log(http, w, |r| r["event_code"] == 410 && r["step"] == 1).await;
    assert_eq!(done["response_code"], 200);
    assert_eq!(done["origin_type"], 36);
    let first = wait_log(http, w, |r| r["event_code"] == 410 && r["step"] == 0).await;
    assert_eq!(first["request_body"], g.body);
    assert_eq!(first["response"], "{\"status\":200}");
    // One call only: the filtered publication made none.
    assert_eq!(rx.got().len(), 1);

    // A trigger on a flespi/ topic: the devices layer's message topic, with a cid filter.
    let w2 = create(
        http,
        json!({
            "name": "flespi-topic",
            "triggers": [{"topic": "flespi/message/gw/devices/+", "filter": {"cid": cid}}],
            "configuration": {"type": "custom-server", "uri": rx.uri("/dev/%topics[4]%"),
                              "body": "%json(payload, \"/n\")%"}
        }),
    )
    .await;
    rest(
        http,
        "POST",
        &format!("/gw/devices/{device}/messages"),
        Some(json!([{"n": 7}])),
    )
    .await;
    let got = rx.wait(2).await;
    assert_eq!(got[1].path, format!("/dev/{device}"));
    assert_eq!(got[1].method, "POST");
    assert_eq!(got[1].body, "7");
    wait_log(http, w2, |r| r["event_code"] == 410).await;
    // A cid outside the account is refused.
    let (status, v) = call_as(
        http,
        KEY,
        "PATCH",
        &format!("/platform/webhooks/{w2}"),
        Some(json!({"triggers": [{"topic": "a", "filter": {"cid": cid + 1000}}]})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("filter.cid"), "{v}");
    let metrics = request(http, "GET", "/metrics", &[], "").await.body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "tern_gw_webhook_calls_total{outcome=\"done\"} 2"),
        "{metrics}"
    );
    d.kill().await;
}

#[tokio::test]
async fn a_500_is_retried_and_a_4xx_logged_at_once() {
    let data = tempfile::tempdir().unwrap();
    let (d, http) = daemon(data.path()).await;
    let rx = Receiver::start(&[("/r/retry", &[500, 200]), ("/r/refuse", &[404])]).await;
    let w = create(
        http,
        json!({
            "name": "r",
            "triggers": [{"topic": "r/#"}],
            "configuration": {"type": "custom-server", "uri": rx.uri("/%topic%"),
                              "body": "%payload%"}
        }),
    )
    .await;
    let mut p = publisher(d.mqtt, "pub2").await;
    p.publish("r/retry", b"one", QoS::AtLeastOnce, false).await;
    p.publish("r/refuse", b"two", QoS::AtLeastOnce, false).await;
    let got = rx.wait(3).await;
    let paths: Vec<(&str, u16, &str)> = got
        .iter()
        .map(|g| (g.path.as_str(), g.status, g.body.as_str()))
        .collect();
    // FIFO: the second call waits for the first, retried after its 500.
    assert_eq!(
        paths,
        vec![
            ("/r/retry", 500, "one"),
            ("/r/retry", 200, "one"),
            ("/r/refuse", 404, "two")
        ]
    );
    let retry = wait_log(http, w, |r| r["event_code"] == 412).await;
    assert_eq!(retry["response_code"], 500);
    assert_eq!(retry["retry"], 1);
    let failed = wait_log(http, w, |r| r["event_code"] == 411).await;
    assert_eq!(failed["response_code"], 404);
    assert_eq!(failed["request_body"], "two");
    // No retry of the 4xx: the next call (FIFO) comes right after it.
    p.publish("r/next", b"three", QoS::AtLeastOnce, false).await;
    let got = rx.wait(4).await;
    assert_eq!(got[3].path, "/r/next");
    assert_eq!(got.len(), 4);
    d.kill().await;
}

#[tokio::test]
async fn pending_calls_survive_kill_9_while_the_receiver_is_down() {
    let data = tempfile::tempdir().unwrap();
    let http = free_addr();
    let http_s = http.to_string();
    let args = ["--http", http_s.as_str(), "--master-token", KEY];
    let d = Daemon::spawn(data.path(), &args).await;
    // Nothing listens there yet.
    let rx_addr = free_addr();
    let w = create(
        http,
        json!({
            "name": "k9",
            "triggers": [{"topic": "k9/+"}],
            "configuration": {"type": "custom-server",
                              "uri": format!("http://{rx_addr}/in/%topics[1]%"), "body": "%payload%"}
        }),
    )
    .await;
    let dev = rest(
        http,
        "POST",
        "/gw/devices",
        Some(json!({"name": "flush", "device_type_id": 1, "configuration": {"ident": "flush"}})),
    )
    .await;
    let device = dev["result"][0]["id"].as_u64().unwrap();
    let mut p = publisher(d.mqtt, "pub3").await;
    for n in 0..5 {
        p.publish(
            &format!("k9/{n}"),
            n.to_string().as_bytes(),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    }
    // The store applies in order: once this POST is answered (durable), so are the calls
    // queued before it.
    rest(
        http,
        "POST",
        &format!("/gw/devices/{device}/messages"),
        Some(json!([{"n": 1}])),
    )
    .await;
    // The first attempt failed: the target is unreachable, and that is logged.
    let retry = wait_log(http, w, |r| r["event_code"] == 412).await;
    assert!(
        retry["reason"].as_str().is_some_and(|s| !s.is_empty()),
        "{retry}"
    );
    d.kill().await;

    let rx = Receiver::start_on(rx_addr, &[]).await;
    let d = Daemon::spawn(data.path(), &args).await;
    let got = rx.wait(5).await;
    let paths: Vec<String> = got.iter().map(|g| g.path.clone()).collect();
    assert_eq!(
        paths,
        (0..5).map(|n| format!("/in/{n}")).collect::<Vec<_>>(),
        "all, in order"
    );
    let mut pending = String::new();
    for _ in 0..100 {
        let metrics = request(http, "GET", "/metrics", &[], "").await.body;
        pending = metrics
            .lines()
            .find(|l| l.starts_with("tern_gw_webhook_pending "))
            .unwrap_or("")
            .to_string();
        if pending == "tern_gw_webhook_pending 0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pending, "tern_gw_webhook_pending 0");
    d.kill().await;
}

#[tokio::test]
async fn bad_webhooks_are_refused_and_only_master_tokens_may_call() {
    let data = tempfile::tempdir().unwrap();
    let (d, http) = daemon(data.path()).await;
    let step = json!({"type": "custom-server", "uri": "http://127.0.0.1:9/x"});
    let t = json!([{"topic": "a/b"}]);
    for (bad, why) in [
        (
            json!({"name": "x", "triggers": t,
                   "configuration": {"type": "custom-server", "uri": "http://h/%topic +%"}}),
            "template at 9",
        ),
        (
            json!({"name": "x", "triggers": t,
                   "configuration": {"type": "custom-server", "uri": "http://h/", "body": "%json(payload%"}}),
            "`body`",
        ),
        (
            json!({"name": "x", "triggers": t,
                   "configuration": {"type": "custom-server", "uri": "not a uri"}}),
            "`uri`",
        ),
        (
            json!({"name": "x", "triggers": t,
                   "configuration": {"type": "custom-server", "uri": "ftp://h/"}}),
            "scheme",
        ),
        (
            json!({"name": "x", "configuration": step,
                   "triggers": [{"topic": "a"}, {"topic": "b"}, {"topic": "c"}, {"topic": "d"}]}),
            "1 to 3 triggers, found 4",
        ),
        (
            json!({"name": "x", "configuration": step,
                   "triggers": [{"topic": "a", "filter": {"payload": "x >"}}]}),
            "filter.payload",
        ),
        (
            json!({"name": "x", "triggers": t, "configuration": [step, {"type": "nope"}]}),
            "configuration[1]",
        ),
    ] {
        let (status, v) = call_as(http, KEY, "POST", "/platform/webhooks", Some(bad)).await;
        assert_eq!(status, 400, "{v}");
        assert!(v.to_string().contains(why), "{why}: {v}");
    }
    let all = rest(http, "GET", "/platform/webhooks/all", None).await;
    assert_eq!(all["result"], json!([]), "nothing was created");

    // A standard token gets flespi's 403 envelope.
    let t = rest(
        http,
        "POST",
        "/platform/tokens",
        Some(json!({"info": "std", "access": {"type": 0}})),
    )
    .await;
    let std_key = t["result"][0]["key"].as_str().expect("key").to_string();
    for (method, body) in [("GET", None), ("POST", Some(json!({"name": "x"})))] {
        let path = if method == "GET" {
            "/platform/webhooks/all"
        } else {
            "/platform/webhooks"
        };
        let (status, v) = call_as(http, &std_key, method, path, body).await;
        assert_eq!(status, 403, "{v}");
        assert_eq!(v["errors"][0]["code"], 403, "{v}");
    }
    // Created, changed, deleted.
    let w = create(
        http,
        json!({"name": "x", "triggers": t_of("a/b"), "configuration": step}),
    )
    .await;
    let v = rest(
        http,
        "PATCH",
        &format!("/platform/webhooks/{w}"),
        Some(json!({"enabled": false, "configuration": {"uri": "http://127.0.0.1:9/y"}})),
    )
    .await;
    assert_eq!(v["result"][0]["enabled"], false);
    assert_eq!(
        v["result"][0]["configuration"]["uri"],
        "http://127.0.0.1:9/y"
    );
    let v = rest(http, "DELETE", &format!("/platform/webhooks/{w}"), None).await;
    assert_eq!(v["result"][0]["id"], w);
    let all = rest(http, "GET", "/platform/webhooks/all", None).await;
    assert_eq!(all["result"], json!([]));
    d.kill().await;
}

fn t_of(topic: &str) -> Value {
    json!([{"topic": topic}])
}

/// With `[gw] outbound_private_targets = false`: a literal loopback target is a 400 at create,
/// and a host name resolving there is refused before the request and logged.
#[tokio::test]
async fn the_outbound_switch_refuses_private_targets() {
    let data = tempfile::tempdir().unwrap();
    let http = free_addr();
    let http_s = http.to_string();
    let d = Daemon::spawn_env(
        data.path(),
        &["--http", &http_s, "--master-token", KEY],
        &[("TERN_GW_OUTBOUND_PRIVATE_TARGETS", "false")],
    )
    .await;
    let rx = Receiver::start(&[]).await;
    let (status, v) = call_as(
        http,
        KEY,
        "POST",
        "/platform/webhooks",
        Some(json!({"name": "x", "triggers": t_of("o/1"),
                    "configuration": {"type": "custom-server", "uri": rx.uri("/x")}})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("loopback"), "{v}");
    let port = rx.addr.port();
    let w = create(
        http,
        json!({"name": "x", "triggers": t_of("o/1"),
               "configuration": {"type": "custom-server",
                                 "uri": format!("http://localhost:{port}/x")}}),
    )
    .await;
    let mut p = publisher(d.mqtt, "pub4").await;
    p.publish("o/1", b"x", QoS::AtLeastOnce, false).await;
    let failed = wait_log(http, w, |r| r["event_code"] == 411).await;
    assert!(
        failed["reason"]
            .as_str()
            .is_some_and(|s| s.contains("outbound_private_targets")),
        "{failed}"
    );
    assert!(rx.got().is_empty());
    d.kill().await;
}
