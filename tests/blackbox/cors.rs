//! Browser apps (docs/flespi.md#browser-apps): CORS on every route of the HTTP listeners
//! (preflights on any path before authentication and routing, `Access-Control-Allow-Origin`
//! on every answer, errors included), `GET /auth/regions` without a token on `http` and
//! `https` and with the `[http.region]` overrides, and WebSocket upgrades from any `Origin`.

use std::net::SocketAddr;

use serde_json::Value;
use tern_codec::ProtocolVersion;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::http::{self, HttpResponse};
use crate::support::transport;
use crate::support::{Client, TestBroker};

const APP: &str = "Origin: https://trackit.example.org";

async fn preflight(addr: SocketAddr, path: &str, headers: Option<&str>) -> HttpResponse {
    let mut extra = vec![APP, "Access-Control-Request-Method: GET"];
    let asked;
    if let Some(h) = headers {
        asked = format!("Access-Control-Request-Headers: {h}");
        extra.push(&asked);
    }
    http::request(addr, "OPTIONS", path, &extra, "").await
}

fn assert_preflight(res: &HttpResponse, path: &str) {
    assert_eq!(res.status, 204, "{path}: {res:?}");
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("*"),
        "{path}"
    );
    assert_eq!(
        res.header("access-control-allow-methods"),
        Some("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
        "{path}"
    );
    let allowed = res
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for h in [
        "authorization",
        "content-type",
        "x-flespi-app",
        "x-flespi-cid",
    ] {
        assert!(allowed.contains(h), "{path}: {h} not in {allowed}");
    }
    assert_eq!(
        res.header("access-control-max-age"),
        Some("86400"),
        "{path}"
    );
    assert_eq!(
        res.header("access-control-allow-credentials"),
        None,
        "{path}"
    );
}

fn assert_acao(res: &HttpResponse, what: &str) {
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("*"),
        "{what}: {res:?}"
    );
    assert_eq!(
        res.header("access-control-allow-credentials"),
        None,
        "{what}"
    );
}

#[tokio::test]
async fn preflight_on_any_path_before_auth_and_routing() {
    let b = TestBroker::with_listeners(|_| {}).await;
    for path in [
        "/platform/customer",
        "/gw/devices/all",
        "/health",
        "/metrics",
        "/api.json",
        "/auth/regions",
        "/const/values?names=toolbox%2Fcodes",
        "/no/such/path",
        "/",
    ] {
        let res = preflight(b.http(), path, None).await;
        assert_preflight(&res, path);
    }
    // What the request asks for is allowed too.
    let res = preflight(
        b.http(),
        "/gw/devices/all",
        Some("authorization,x-flespi-app,x-requested-with"),
    )
    .await;
    assert_preflight(&res, "asking");
    assert!(
        res.header("access-control-allow-headers")
            .unwrap_or_default()
            .contains("x-requested-with"),
        "{res:?}"
    );
    // The same on the TLS listener.
    let ca = b.test_certs().ca();
    let tls = transport::tls(b.https(), transport::client_tls(&ca, None))
        .await
        .expect("tls");
    let res = http::raw_over(
        tls,
        &format!(
            "OPTIONS /platform/customer HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\
             {APP}\r\nAccess-Control-Request-Method: PATCH\r\nContent-Length: 0",
            b.https().port()
        ),
    )
    .await;
    assert_preflight(&res, "https");
}

#[tokio::test]
async fn every_answer_carries_allow_origin() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let master = format!("Authorization: FlespiToken {}", b.master_key());
    let cases: [(&str, &str, Vec<&str>, u16); 8] = [
        ("GET", "/health", vec![], 200),
        ("GET", "/auth/info", vec![master.as_str(), APP], 200),
        ("GET", "/platform/customer", vec![APP], 401),
        (
            "GET",
            "/platform/customer",
            vec!["Authorization: FlespiToken nope"],
            401,
        ),
        ("GET", "/gw/devices/all", vec![APP], 401),
        ("GET", "/no/such/path", vec![], 404),
        ("DELETE", "/health", vec![APP], 405),
        (
            "GET",
            "/platform/tokens/all?limit=abc",
            vec![master.as_str()],
            400,
        ),
    ];
    for (method, path, extra, status) in cases {
        let res = http::request(b.http(), method, path, &extra, "").await;
        assert_eq!(res.status, status, "{method} {path}: {res:?}");
        assert_acao(&res, &format!("{method} {path}"));
    }
    // 413: a body declared too large is refused before it is read.
    let res = http::raw(
        b.http(),
        &format!(
            "POST /platform/tokens HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{master}\r\n\
             Content-Length: 99999999"
        ),
        true,
    )
    .await;
    assert_eq!(res.status, 413, "{res:?}");
    assert_acao(&res, "413");
    // An OPTIONS that is not a preflight (no Access-Control-Request-Method) is routed as usual.
    let res = http::request(b.http(), "OPTIONS", "/health", &[APP], "").await;
    assert_eq!(res.status, 405, "{res:?}");
    assert_acao(&res, "OPTIONS without a request method");
}

/// `GET /auth/regions` over `stream`, with `host` as the `Host` header (none if `None`).
async fn regions_over<S>(stream: S, host: Option<&str>) -> (HttpResponse, Value)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let head = match host {
        Some(h) => format!("GET /auth/regions HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n{APP}"),
        None => format!("GET /auth/regions HTTP/1.0\r\n{APP}"),
    };
    let res = http::raw_over(stream, &head).await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_acao(&res, "/auth/regions");
    let body: Value = serde_json::from_str(&res.body).expect("JSON");
    let region = body["result"][0].clone();
    assert_eq!(body["result"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(region["name"], "local");
    assert_eq!(region["default"], true);
    (res, region)
}

async fn tcp(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

#[tokio::test]
async fn regions_need_no_token_and_follow_the_host() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let mqtt = b.addr.port();
    let (_, r) = regions_over(tcp(b.http()).await, Some("tern.example.org:9005")).await;
    assert_eq!(r["rest"], "http://tern.example.org:9005");
    assert_eq!(r["mqtt-ws"], "tern.example.org:9005");
    assert_eq!(r["mqtt"], format!("tern.example.org:{mqtt}"));
    assert_eq!(r["gw"], "tern.example.org");

    // Without a port in Host, the scheme's.
    let (_, r) = regions_over(tcp(b.http()).await, Some("tern.example.org")).await;
    assert_eq!(r["rest"], "http://tern.example.org");
    assert_eq!(r["mqtt-ws"], "tern.example.org:80");

    // Without a Host, the address the client connected to (never 0.0.0.0).
    let (_, r) = regions_over(tcp(b.http()).await, None).await;
    let http = b.http();
    assert_eq!(r["rest"], format!("http://{http}"));
    assert_eq!(r["mqtt-ws"], http.to_string());
    assert_eq!(r["mqtt"], format!("127.0.0.1:{mqtt}"));

    // On the TLS listener: https.
    let ca = b.test_certs().ca();
    let https = b.https();
    let tls = transport::tls(https, transport::client_tls(&ca, None))
        .await
        .expect("tls");
    let host = format!("localhost:{}", https.port());
    let (_, r) = regions_over(tls, Some(&host)).await;
    assert_eq!(r["rest"], format!("https://{host}"));
    assert_eq!(r["mqtt-ws"], host);
    assert_eq!(r["mqtt"], format!("localhost:{mqtt}"));
    assert_eq!(r["gw"], "localhost");

    // It is in the OpenAPI description like every route.
    let res = http::get(b.http(), "/api.json", &[]).await;
    let doc: Value = serde_json::from_str(&res.body).expect("JSON");
    assert!(doc["paths"]["/auth/regions"]["get"].is_object(), "{doc}");
}

#[tokio::test]
async fn regions_overridden_behind_a_proxy() {
    let b = TestBroker::with_listeners(|c| {
        c.http.region.rest = Some("https://broker.example.com".into());
        c.http.region.mqtt_ws = Some("broker.example.com:443".into());
        c.http.region.mqtt = Some("mqtt.example.com:1883".into());
    })
    .await;
    let (_, r) = regions_over(tcp(b.http()).await, Some("10.0.0.7:8080")).await;
    assert_eq!(r["rest"], "https://broker.example.com");
    assert_eq!(r["mqtt-ws"], "broker.example.com:443");
    assert_eq!(r["mqtt"], "mqtt.example.com:1883");
    assert_eq!(r["gw"], "broker.example.com");
}

#[tokio::test]
async fn websocket_upgrade_from_any_origin() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let addr = b.http();
    let res = http::raw(
        addr,
        &format!(
            "GET /mqtt HTTP/1.1\r\nHost: {addr}\r\nOrigin: https://example.org\r\n\
             Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt"
        ),
        true,
    )
    .await;
    assert_eq!(res.status, 101, "{res:?}");

    // And MQTT runs over it, as from a browser page on another host.
    let mut request = format!("ws://{addr}/mqtt")
        .into_client_request()
        .expect("request");
    let h = request.headers_mut();
    h.insert("Origin", "https://example.org".parse().expect("header"));
    h.insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let (ws, _) = tokio_tungstenite::client_async(request, tcp(addr).await)
        .await
        .expect("ws handshake with an Origin");
    let io = Box::new(tern_net::ws::WsStream::new(ws, addr));
    let mut c = Client::connect_over(io, ProtocolVersion::V5, "browser-origin").await;
    c.ping().await;
    c.disconnect().await;
}

#[tokio::test]
async fn rate_limited_answers_carry_allow_origin_and_preflights_pass() {
    let b = TestBroker::with_listeners(|c| {
        c.auth.failed_login_burst = 2;
        c.auth.failed_login_per_sec = 0.001;
    })
    .await;
    let bad = "Authorization: FlespiToken 0123456789abcdefABCDEF0123456789abcdefABCDEF0123456789abcdefABCD";
    let mut last = 0;
    for _ in 0..4 {
        let res = http::request(b.http(), "GET", "/platform/customer", &[bad, APP], "").await;
        assert_acao(&res, "a failed login");
        last = res.status;
    }
    assert_eq!(last, 429, "the address is limited by now");
    let res = preflight(b.http(), "/platform/customer", Some("authorization")).await;
    assert_preflight(&res, "preflight from a limited address");
}

/// The Toolbox fetches the log event codes with no `Authorization`, from another origin.
#[tokio::test]
async fn const_values_need_no_token_and_carry_allow_origin() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let res = http::request(
        b.http(),
        "GET",
        "/const/values?names=toolbox%2Fcodes",
        &[APP],
        "",
    )
    .await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_acao(&res, "/const/values");
    let body: Value = serde_json::from_str(&res.body).expect("JSON");
    let table = &body["result"][0]["toolbox/codes"];
    assert!(table["codes"]["102"]["extra_codes"].is_object(), "{body}");
    assert!(table["entities"]["devices"].is_array(), "{body}");
}
