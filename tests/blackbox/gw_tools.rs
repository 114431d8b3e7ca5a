//! The devices layer as flespi's example tools use it (docs/flespi.md#browser-apps, the tools
//! of the contract's acceptance list), each flow scripted the way the tool calls it: the
//! browser apps over HTTPS and MQTT 5 over secure WebSocket with `x-flespi-app` and an
//! `Origin` (every answer must carry CORS), the Python tools with urllib. What one endpoint
//! does in detail is in `crates/tern-api/tests/api/gw.rs`; here the point is the sequence.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use tern_codec::*;

use crate::support::client::{Read, connect_packet, user_property};
use crate::support::http::{HttpResponse, request_over};
use crate::support::transport::{Transport, client_tls, open, tls};
use crate::support::{Client, QUIET, TestBroker, WAIT};

/// A page origin other than tern's (the apps are served from elsewhere).
const ORIGIN: &str = "Origin: https://apps.example";
/// A UTC midnight: the "whole day" of the history calls.
const DAY: f64 = 1_700_006_400.0;

async fn start() -> TestBroker {
    TestBroker::with_listeners(|c| c.auth.anonymous = false).await
}

/// One REST call over HTTPS as a browser app makes it: the token (unless `token` is false),
/// `x-flespi-app`, an `Origin`. Every answer, errors included, carries CORS.
async fn call(
    b: &TestBroker,
    app: &str,
    token: bool,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> HttpResponse {
    let auth = format!("Authorization: FlespiToken {}", b.master_key());
    let app_header = format!("x-flespi-app: {app}");
    let mut headers = vec![ORIGIN, app_header.as_str()];
    if token {
        headers.push(&auth);
    }
    let body = body.map(Value::to_string).unwrap_or_default();
    let stream = tls(b.https(), client_tls(&b.test_certs().ca(), None))
        .await
        .expect("tls");
    let host = format!("127.0.0.1:{}", b.https().port());
    let r = request_over(stream, &host, method, path, &headers, &body).await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("*"),
        "{app}: {method} {path} without CORS: {r:?}"
    );
    r
}

/// A call that must answer 200 with JSON.
async fn ok(b: &TestBroker, app: &str, method: &str, path: &str, body: Option<&Value>) -> Value {
    let r = call(b, app, true, method, path, body).await;
    assert_eq!(r.status, 200, "{app}: {method} {path}: {}", r.body);
    serde_json::from_str(&r.body).expect("JSON")
}

/// The browser's preflight of a call with `Authorization` and `x-flespi-app`.
async fn preflight(b: &TestBroker, method: &str, path: &str) {
    let stream = tls(b.https(), client_tls(&b.test_certs().ca(), None))
        .await
        .expect("tls");
    let host = format!("127.0.0.1:{}", b.https().port());
    let wanted = format!("Access-Control-Request-Method: {method}");
    let r = request_over(
        stream,
        &host,
        "OPTIONS",
        path,
        &[
            ORIGIN,
            &wanted,
            "Access-Control-Request-Headers: authorization,x-flespi-app",
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 204, "preflight of {method} {path}: {r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let methods = r.header("access-control-allow-methods").unwrap_or("");
    assert!(methods.contains(method), "{methods}");
    let headers = r
        .header("access-control-allow-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(
        headers.contains("x-flespi-app") && headers.contains("authorization"),
        "{headers}"
    );
}

/// Percent-encodes everything but unreserved characters, as `encodeURIComponent` does.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A query value as axios (under flespi-io-js, which the apps use) writes it:
/// `encodeURIComponent`, then `:`, `$`, `,`, `[`, `]` back as they were and a space as `+`.
fn axios_enc(s: &str) -> String {
    enc(s)
        .replace("%3A", ":")
        .replace("%24", "$")
        .replace("%2C", ",")
        .replace("%20", "+")
        .replace("%5B", "[")
        .replace("%5D", "]")
}

fn with_data(path: &str, data: &Value) -> String {
    format!("{path}?data={}", axios_enc(&data.to_string()))
}

/// Creates a device of the HTTP device type (1); returns its id.
async fn device(b: &TestBroker, app: &str, name: &str, ident: &str) -> u64 {
    let item = json!({"name": name, "device_type_id": 1, "configuration": {"ident": ident}});
    let r = ok(b, app, "POST", "/gw/devices", Some(&item)).await;
    r["result"][0]["id"].as_u64().expect("id")
}

async fn post_messages(b: &TestBroker, app: &str, id: u64, messages: Value) {
    let r = ok(
        b,
        app,
        "POST",
        &format!("/gw/devices/{id}/messages"),
        Some(&messages),
    )
    .await;
    assert_eq!(r, json!({"result": []}));
}

fn timestamps(r: &Value) -> Vec<f64> {
    r["result"]
        .as_array()
        .expect("result")
        .iter()
        .map(|m| m["timestamp"].as_f64().expect("timestamp"))
        .collect()
}

/// MQTT 5 over secure WebSocket with the token as user name (`FlespiToken <key>`), as the
/// browser apps connect.
async fn wss(b: &TestBroker, client_id: &str) -> (Client, ConnAck) {
    let mut c = Client::over(open(b, Transport::Wss).await, ProtocolVersion::V5);
    let mut connect = connect_packet(ProtocolVersion::V5, client_id, true);
    connect.username = Some(format!("FlespiToken {}", b.master_key()).into());
    c.send(Packet::Connect(Box::new(connect))).await;
    match c.recv().await {
        Packet::ConnAck(ack) => {
            assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");
            (c, ack)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Subscribes to each filter with its retain handling, all under subscription identifier
/// `id`; every filter must be granted.
async fn subscribe(c: &mut Client, id: u32, filters: &[(&str, RetainHandling)]) {
    let filters = filters
        .iter()
        .map(|(f, rh)| {
            let o = SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                retain_handling: *rh,
                ..Default::default()
            };
            (*f, o)
        })
        .collect();
    let ack = c.subscribe_with(filters, Some(id)).await;
    assert!(
        ack.reasons.iter().all(|r| *r == ReasonCode::GRANTED_QOS_1),
        "{ack:?}"
    );
}

/// Every PUBLISH until nothing came for a short while (acknowledged on the way).
async fn drain(c: &mut Client) -> Vec<Publish> {
    let mut got = Vec::new();
    loop {
        match c.read(QUIET).await {
            Read::Packet(Packet::Publish(p)) => {
                c.ack(&p).await;
                got.push(p);
            }
            Read::Packet(other) => panic!("unexpected {other:?}"),
            Read::Timeout => return got,
            Read::Closed => panic!("the connection closed"),
        }
    }
}

/// PUBLISHes until `done` holds for what came (within [`WAIT`]), then whatever follows at once.
async fn until(c: &mut Client, done: impl Fn(&[Publish]) -> bool) -> Vec<Publish> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    while !done(&got) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.read(left).await {
            Read::Packet(Packet::Publish(p)) => {
                c.ack(&p).await;
                got.push(p);
            }
            Read::Packet(other) => panic!("unexpected {other:?}"),
            other => panic!("{other:?} before the expected deliveries; got {got:?}"),
        }
    }
    got.extend(drain(c).await);
    got
}

fn on<'a>(ps: &'a [Publish], topic: &str) -> Vec<&'a Publish> {
    ps.iter().filter(|p| p.topic == topic).collect()
}

fn levels(p: &Publish) -> usize {
    p.topic.split('/').count()
}

fn json_of(p: &Publish) -> Value {
    serde_json::from_slice(&p.payload)
        .unwrap_or_else(|e| panic!("{}: payload {:?} is not JSON: {e}", p.topic, p.payload))
}

fn ids(p: &Publish) -> Vec<u32> {
    p.properties.subscription_identifiers.to_vec()
}

#[tokio::test]
async fn mqtt_telemetry_dashboard() {
    let b = start().await;
    let app = "mqtt-telemetry-dashboard";
    let truck = device(&b, app, "truck", "d1").await;
    let van = device(&b, app, "van", "d2").await;
    post_messages(
        &b,
        app,
        truck,
        json!([{"timestamp": DAY, "speed": 10, "position.latitude": 54.7,
                "position.longitude": 25.3, "din": true, "note": "", "can.fuel": null}]),
    )
    .await;
    post_messages(&b, app, van, json!({"timestamp": DAY, "speed": 3})).await;

    let (mut c, _) = wss(&b, "dashboard").await;
    subscribe(
        &mut c,
        1,
        &[("flespi/state/gw/devices/+", RetainHandling::SendAtSubscribe)],
    )
    .await;
    let items = drain(&mut c).await;
    assert_eq!(items.len(), 2, "{items:?}");
    let mut names = BTreeMap::new();
    for p in &items {
        assert_eq!(levels(p), 5, "{}", p.topic);
        assert!(p.retain);
        let item = json_of(p);
        assert_eq!(p.topic, format!("flespi/state/gw/devices/{}", item["id"]));
        names.insert(item["id"].as_u64().expect("id"), item["name"].clone());
    }
    assert_eq!(
        names,
        BTreeMap::from([(truck, json!("truck")), (van, json!("van"))])
    );

    // The telemetry of both devices: retained, 7 levels, every payload JSON.
    for id in [truck, van] {
        let filter = format!("flespi/state/gw/devices/{id}/telemetry/+");
        subscribe(&mut c, 2, &[(&filter, RetainHandling::SendAtSubscribe)]).await;
        let values = drain(&mut c).await;
        assert!(!values.is_empty());
        for p in &values {
            assert_eq!(levels(p), 7, "{}", p.topic);
            assert!(p.retain && !p.payload.is_empty(), "{p:?}");
            json_of(p);
        }
        if id == truck {
            let param = |name: &str| {
                let t = format!("flespi/state/gw/devices/{truck}/telemetry/{name}");
                json_of(on(&values, &t).first().expect(name))
            };
            assert_eq!(param("speed"), json!(10));
            // An empty string and null are values, not deletions.
            assert_eq!(param("note"), json!(""));
            assert_eq!(param("can.fuel"), json!(null));
            assert_eq!(param("din"), json!(true));
            assert_eq!(param("ident"), json!("d1"));
            assert_eq!(
                param("position"),
                json!({"latitude": 54.7, "longitude": 25.3})
            );
        }
    }

    // Live: a new value, then one parameter deleted: the only empty payload.
    post_messages(
        &b,
        app,
        truck,
        json!({"timestamp": DAY + 60.0, "speed": 20}),
    )
    .await;
    let speed = format!("flespi/state/gw/devices/{truck}/telemetry/speed");
    let live = until(&mut c, |ps| !on(ps, &speed).is_empty()).await;
    for p in &live {
        // Telemetry, and the item itself (`last_active` moved): both JSON.
        assert!(!p.payload.is_empty(), "{p:?}");
        match levels(p) {
            7 => assert_eq!(ids(p), [2]),
            5 => assert_eq!(json_of(p)["id"], truck),
            _ => panic!("{}", p.topic),
        }
    }
    assert_eq!(json_of(on(&live, &speed)[0]), json!(20));
    ok(
        &b,
        app,
        "DELETE",
        &format!("/gw/devices/{truck}/telemetry/speed"),
        None,
    )
    .await;
    let deleted = until(&mut c, |ps| !on(ps, &speed).is_empty()).await;
    for p in &deleted {
        assert_eq!(p.payload.is_empty(), p.topic == speed, "{p:?}");
    }

    // A device deleted: its item and every one of its values go empty; nothing else does.
    ok(&b, app, "DELETE", &format!("/gw/devices/{van}"), None).await;
    let gone = until(&mut c, |ps| ps.iter().any(|p| levels(p) == 5)).await;
    let item = format!("flespi/state/gw/devices/{van}");
    assert_eq!(on(&gone, &item).len(), 1, "{gone:?}");
    assert!(
        gone.iter()
            .all(|p| p.payload.is_empty() && p.topic.starts_with(&item)),
        "{gone:?}"
    );
    let values: BTreeSet<&str> = gone
        .iter()
        .filter(|p| levels(p) == 7)
        .map(|p| &*p.topic)
        .collect();
    assert!(values.contains(&*format!("{item}/telemetry/speed")));
    assert!(values.contains(&*format!("{item}/telemetry/ident")));

    // A dashboard opened now lists the truck alone.
    let (mut late, _) = wss(&b, "dashboard-2").await;
    subscribe(
        &mut late,
        1,
        &[("flespi/state/gw/devices/+", RetainHandling::SendAtSubscribe)],
    )
    .await;
    let items = drain(&mut late).await;
    assert_eq!(items.len(), 1);
    assert_eq!(json_of(&items[0])["id"], truck);
    // Its values without the deleted one, and no empty payload.
    let filter = format!("flespi/state/gw/devices/{truck}/telemetry/+");
    subscribe(&mut late, 2, &[(&filter, RetainHandling::SendAtSubscribe)]).await;
    let values = drain(&mut late).await;
    let ident = format!("flespi/state/gw/devices/{truck}/telemetry/ident");
    assert_eq!(on(&values, &ident).len(), 1, "{values:?}");
    assert!(on(&values, &speed).is_empty(), "{values:?}");
    assert!(values.iter().all(|p| !p.payload.is_empty()));
}

#[tokio::test]
async fn trackit() {
    let b = start().await;
    let app = "TrackIt";

    // The region, without a token; `rest` has a scheme, `mqtt-ws` has none.
    preflight(&b, "GET", "/auth/regions").await;
    let r = call(&b, app, false, "GET", "/auth/regions", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let region: Value = serde_json::from_str(&r.body).expect("JSON");
    let host = format!("127.0.0.1:{}", b.https().port());
    assert_eq!(region["result"][0]["rest"], format!("https://{host}"));
    assert_eq!(region["result"][0]["mqtt-ws"], host);
    // A refused token is a 401 the page can read (CORS), so TrackIt logs out.
    let stream = tls(b.https(), client_tls(&b.test_certs().ca(), None))
        .await
        .expect("tls");
    let bad = format!("Authorization: FlespiToken {}", "0".repeat(64));
    let r = request_over(stream, &host, "GET", "/gw/devices/all", &[ORIGIN, &bad], "").await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    // Live device list changes, routed by subscription identifier.
    let (mut c, _) = wss(&b, "trackit").await;
    for (id, event) in [(1, "created"), (2, "updated"), (3, "deleted")] {
        let f = format!("flespi/log/gw/devices/+/{event}");
        subscribe(&mut c, id, &[(&f, RetainHandling::SendAtSubscribe)]).await;
    }
    let a = device(&b, app, "alpha", "t1").await;
    let bravo = device(&b, app, "bravo", "t2").await;
    let temp = device(&b, app, "temp", "t3").await;
    preflight(&b, "PATCH", &format!("/gw/devices/{temp}")).await;
    ok(
        &b,
        app,
        "PATCH",
        &format!("/gw/devices/{temp}"),
        Some(&json!({"name": "temp2"})),
    )
    .await;
    preflight(&b, "DELETE", &format!("/gw/devices/{temp}")).await;
    ok(&b, app, "DELETE", &format!("/gw/devices/{temp}"), None).await;
    let log = until(&mut c, |ps| ps.len() >= 5).await;
    assert_eq!(log.len(), 5, "{log:?}");
    for p in &log {
        let v = json_of(p);
        let event = p.topic.rsplit('/').next().unwrap_or_default();
        let id = v["origin_id"].as_u64().expect("origin_id");
        assert_eq!(p.topic, format!("flespi/log/gw/devices/{id}/{event}"));
        match event {
            "created" => {
                assert_eq!(ids(p), [1]);
                assert_eq!(v["new"]["id"], id);
                assert!(v.get("old").is_none());
            }
            "updated" => {
                assert_eq!(ids(p), [2]);
                assert_eq!(
                    (&v["old"]["name"], &v["new"]["name"]),
                    (&json!("temp"), &json!("temp2"))
                );
            }
            "deleted" => {
                assert_eq!(ids(p), [3]);
                assert_eq!(v["old"]["name"], "temp2");
                assert!(v.get("new").is_none());
            }
            other => panic!("{other}"),
        }
    }

    // The list, with what TrackIt reads of each device.
    preflight(&b, "GET", "/gw/devices/all").await;
    let list = ok(&b, app, "GET", "/gw/devices/all", None).await;
    let list = list["result"].as_array().expect("result").clone();
    assert_eq!(list.len(), 2);
    for d in &list {
        assert!(d["id"].is_u64() && d["name"].is_string(), "{d}");
        assert!(d["configuration"]["ident"].is_string(), "{d}");
        assert_eq!(d["device_type_id"], 1);
    }

    // Positions of both for the map.
    post_messages(
        &b,
        app,
        a,
        json!([{"timestamp": DAY - 10.0, "position.latitude": 1.0, "position.longitude": 2.0},
               {"timestamp": DAY + 3600.0, "position.latitude": 54.1, "position.longitude": 25.1, "speed": 10},
               {"timestamp": DAY + 7200.0, "position.latitude": 54.2, "position.longitude": 25.2, "speed": 20},
               {"timestamp": DAY + 7200.5, "position.latitude": 54.3, "position.longitude": 25.3, "speed": 30},
               {"timestamp": DAY + 80000.0, "position.latitude": 54.4, "position.longitude": 25.4, "speed": 40},
               {"timestamp": DAY + 86400.0, "position.latitude": 9.0, "position.longitude": 9.0}]),
    )
    .await;
    post_messages(
        &b,
        app,
        bravo,
        json!({"timestamp": DAY - 100.0, "position.latitude": 60.0, "position.longitude": 20.0}),
    )
    .await;
    let path = format!("/gw/devices/{a},{bravo}/telemetry/position.latitude,position.longitude");
    let t = ok(&b, app, "GET", &path, None).await;
    let t = t["result"].as_array().expect("result");
    assert_eq!(t.len(), 2);
    for entry in t {
        let (lat, lon) = if entry["id"] == a {
            (9.0, 9.0)
        } else {
            assert_eq!(entry["id"], bravo);
            (60.0, 20.0)
        };
        let tel = &entry["telemetry"];
        assert_eq!(tel["position.latitude"]["value"], lat, "{entry}");
        assert_eq!(tel["position.longitude"]["value"], lon, "{entry}");
        assert!(tel["position.latitude"]["ts"].is_number());
        assert_eq!(tel.as_object().map(|o| o.len()), Some(2), "{entry}");
    }

    // One device's page: its type's parameters, then its track of a whole day.
    let item = ok(&b, app, "GET", &format!("/gw/devices/{a}"), None).await;
    let dt = item["result"][0]["device_type_id"].as_u64().expect("type");
    let types = ok(
        &b,
        app,
        "GET",
        &format!("/gw/channel-protocols/all/device-types/{dt}?fields=protocol_id"),
        None,
    )
    .await;
    let protocol = types["result"][0]["protocol_id"]
        .as_u64()
        .expect("protocol");
    let params = ok(
        &b,
        app,
        "GET",
        &format!("/gw/channel-protocols/{protocol}?fields=message_parameters"),
        None,
    )
    .await;
    assert!(
        params["result"][0]["message_parameters"].is_array(),
        "{params}"
    );

    let messages = format!("/gw/devices/{a}/messages");
    let to = DAY + 86399.999;
    preflight(&b, "GET", &messages).await;
    let day = ok(
        &b,
        app,
        "GET",
        // As a page's fetch() sends a query it did not encode: braces, colons and commas
        // raw, quotes as %22.
        &format!(
            "{messages}?data={}",
            json!({"from": DAY, "to": to})
                .to_string()
                .replace('"', "%22")
        ),
        None,
    )
    .await;
    assert_eq!(
        timestamps(&day),
        [DAY + 3600.0, DAY + 7200.0, DAY + 7200.5, DAY + 80000.0]
    );
    let last = ok(
        &b,
        app,
        "GET",
        &with_data(
            &messages,
            &json!({"from": DAY, "to": to, "reverse": true, "count": 2}),
        ),
        None,
    )
    .await;
    assert_eq!(timestamps(&last), [DAY + 80000.0, DAY + 7200.5]);
    // What came since the newest one shown: strictly after it.
    post_messages(&b, app, a, json!({"timestamp": DAY + 80000.5, "speed": 41})).await;
    let t = timestamps(&last)[0];
    let newer = ok(
        &b,
        app,
        "GET",
        &with_data(
            &messages,
            &json!({"from": t + 0.000001, "to": to, "count": 100}),
        ),
        None,
    )
    .await;
    assert_eq!(timestamps(&newer), [DAY + 80000.5]);
    // A day without messages: where the device is now.
    let now = ok(
        &b,
        app,
        "GET",
        &format!("/gw/devices/{bravo}/telemetry/position,ident"),
        None,
    )
    .await;
    let tel = &now["result"][0]["telemetry"];
    assert_eq!(
        tel["position"]["value"],
        json!({"latitude": 60.0, "longitude": 20.0})
    );
    assert_eq!(tel["ident"]["value"], "t2");

    // Live track: all messages, and through a `$filter` the fast ones; telemetry with the
    // value's time in `timestamp`.
    let live = format!("flespi/message/gw/devices/{a}");
    let fast = format!("$filter/payload={}/{live}", enc("speed>50"));
    subscribe(&mut c, 10, &[(&live, RetainHandling::DoNotSend)]).await;
    subscribe(&mut c, 11, &[(&fast, RetainHandling::DoNotSend)]).await;
    let tel = format!("flespi/state/gw/devices/{a}/telemetry/+");
    subscribe(&mut c, 12, &[(&tel, RetainHandling::SendAtSubscribe)]).await;
    let retained = drain(&mut c).await;
    assert!(retained.iter().all(|p| ids(p) == [12] && levels(p) == 7));
    let speed = on(
        &retained,
        &format!("flespi/state/gw/devices/{a}/telemetry/speed"),
    );
    assert_eq!(json_of(speed[0]), json!(41));
    assert_eq!(
        user_property(&speed[0].properties.user_properties, "timestamp"),
        Some("1700086400.500000")
    );
    post_messages(
        &b,
        app,
        a,
        json!([{"timestamp": DAY + 90000.0, "speed": 10}, {"timestamp": DAY + 90001.0, "speed": 60}]),
    )
    .await;
    let got = until(&mut c, |ps| {
        ps.iter()
            .filter(|p| p.topic == live)
            .map(|p| json_of(p)["speed"].as_i64())
            .collect::<BTreeSet<_>>()
            .len()
            == 2
    })
    .await;
    // Per message, the identifiers it came with (once with both, or once per subscription).
    let mut routed: BTreeMap<i64, BTreeSet<u32>> = BTreeMap::new();
    for p in got.iter().filter(|p| p.topic == live) {
        assert!(!p.retain);
        let speed = json_of(p)["speed"].as_i64().expect("speed");
        routed.entry(speed).or_default().extend(ids(p));
    }
    assert_eq!(
        routed,
        BTreeMap::from([(10, BTreeSet::from([10])), (60, BTreeSet::from([10, 11]))])
    );
    for p in got.iter().filter(|p| p.topic != live) {
        assert_eq!(ids(p), [12], "{}", p.topic);
        assert!(!p.payload.is_empty());
    }
    let speed = on(
        &got,
        &format!("flespi/state/gw/devices/{a}/telemetry/speed"),
    );
    assert_eq!(
        user_property(
            &speed.last().expect("speed").properties.user_properties,
            "timestamp"
        ),
        Some("1700096401.000000")
    );
}

#[tokio::test]
async fn toolbox() {
    let b = start().await;
    let app = "toolbox";
    let r = call(&b, app, false, "GET", "/auth/regions", None).await;
    assert_eq!(r.status, 200);

    let (mut c, ack) = wss(&b, "toolbox").await;
    let token: Value = serde_json::from_str(
        user_property(&ack.properties.user_properties, "token").expect("token property"),
    )
    .expect("token JSON");
    let cid = token["cid"].as_u64().expect("cid");
    assert!(token["access"]["type"].is_u64(), "{token}");

    let a = device(&b, app, "alpha", "x1").await;
    let gone = device(&b, app, "beta", "x2").await;

    // The device list from per-property topics: id = the level before the property.
    subscribe(
        &mut c,
        1,
        &[(
            "flespi/state/gw/devices/+/id,name,deleted,configuration",
            RetainHandling::SendAtSubscribe,
        )],
    )
    .await;
    let props = drain(&mut c).await;
    let mut list: BTreeMap<u64, BTreeMap<String, Value>> = BTreeMap::new();
    for p in &props {
        let levels: Vec<&str> = p.topic.split('/').collect();
        assert_eq!(levels.len(), 6, "{}", p.topic);
        let id = levels[4].parse().expect("id level");
        assert_ne!(
            levels[5], "deleted",
            "no deleted topic while a device exists"
        );
        list.entry(id)
            .or_default()
            .insert(levels[5].to_string(), json_of(p));
    }
    assert_eq!(list.len(), 2);
    assert_eq!(list[&a]["id"], a);
    assert_eq!(list[&a]["name"], "alpha");
    assert_eq!(list[&a]["configuration"]["ident"], "x1");
    assert_eq!(list[&gone]["name"], "beta");

    // The selected device, and its calculators (granted, nothing there).
    subscribe(
        &mut c,
        2,
        &[
            (
                &format!("flespi/state/gw/devices/{a}/id,name,deleted,configuration"),
                RetainHandling::SendAtSubscribe,
            ),
            (
                &format!("flespi/state/gw/calcs/+/devices/{a}/device_id,calc_id"),
                RetainHandling::SendAtSubscribe,
            ),
        ],
    )
    .await;
    let selected = drain(&mut c).await;
    assert_eq!(selected.len(), 3, "{selected:?}");
    assert!(selected.iter().all(|p| ids(p) == [2]));

    // A deletion empties the properties, then says `deleted`: the list drops it.
    ok(&b, app, "DELETE", &format!("/gw/devices/{gone}"), None).await;
    let deleted_topic = format!("flespi/state/gw/devices/{gone}/deleted");
    let dropped = until(&mut c, |ps| !on(ps, &deleted_topic).is_empty()).await;
    let flag = on(&dropped, &deleted_topic);
    assert_eq!(flag.len(), 1);
    assert!(!flag[0].retain);
    assert_eq!(json_of(flag[0]), json!(true));
    assert_eq!(ids(flag[0]), [1]);
    for p in dropped.iter().filter(|p| p.topic != deleted_topic) {
        assert!(p.payload.is_empty(), "{p:?}");
    }

    // Messages: the newest one's time picks the day, then a page of it.
    post_messages(
        &b,
        app,
        a,
        json!([{"timestamp": DAY + 10.0, "speed": 10}, {"timestamp": DAY + 20.0, "speed": 20},
               {"timestamp": DAY + 30.0, "speed": 30}, {"timestamp": DAY + 40.0, "speed": 40}]),
    )
    .await;
    let messages = format!("/gw/devices/{a}/messages");
    let newest = ok(
        &b,
        app,
        "GET",
        &with_data(
            &messages,
            &json!({"reverse": true, "count": 1, "fields": "timestamp"}),
        ),
        None,
    )
    .await;
    let newest = newest["result"].as_array().expect("result");
    assert_eq!(newest.len(), 1);
    assert_eq!(
        newest[0].as_object().map(|o| o.len()),
        Some(1),
        "{newest:?}"
    );
    assert_eq!(newest[0]["timestamp"].as_f64(), Some(DAY + 40.0));
    let page = ok(
        &b,
        app,
        "GET",
        &with_data(
            &messages,
            &json!({"count": 2, "filter": "speed + 0 > 15 && device.name == \"alpha\"", "from": DAY, "to": DAY + 86399.0, "reverse": true}),
        ),
        None,
    )
    .await;
    assert_eq!(timestamps(&page), [DAY + 40.0, DAY + 30.0]);
    assert_eq!(page["result"][0]["device.id"], a);

    // Live log of the device, and a filtered view of it restricted to the account.
    let log = format!("flespi/log/gw/devices/{a}/#");
    let expr = enc(r#"new.name=="alpha3""#);
    let filtered = format!("$filter/payload={expr}&cid={cid}/{log}");
    let elsewhere = format!("$filter/payload={expr}&cid={}/{log}", cid + 1);
    subscribe(&mut c, 20, &[(&log, RetainHandling::DoNotSend)]).await;
    subscribe(&mut c, 21, &[(&filtered, RetainHandling::DoNotSend)]).await;
    subscribe(&mut c, 22, &[(&elsewhere, RetainHandling::DoNotSend)]).await;
    for name in ["alpha2", "alpha3"] {
        ok(
            &b,
            app,
            "PATCH",
            &format!("/gw/devices/{a}"),
            Some(&json!({"name": name})),
        )
        .await;
    }
    let updated_topic = format!("flespi/log/gw/devices/{a}/updated");
    let got = until(&mut c, |ps| on(ps, &updated_topic).len() >= 2).await;
    let mut routed: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for p in on(&got, &updated_topic) {
        let v = json_of(p);
        assert_eq!(v["event_code"], 2);
        let name = v["new"]["name"].as_str().expect("new.name").to_string();
        routed.entry(name).or_default().extend(ids(p));
    }
    assert_eq!(
        routed,
        BTreeMap::from([
            ("alpha2".to_string(), BTreeSet::from([20])),
            ("alpha3".to_string(), BTreeSet::from([20, 21])),
        ])
    );
    // The renames also reach the list and the selected device (`name` property).
    let name = on(&got, &format!("flespi/state/gw/devices/{a}/name"));
    assert_eq!(name.len(), 2, "{got:?}");
    for p in name {
        assert_eq!(
            ids(p).into_iter().collect::<BTreeSet<_>>(),
            BTreeSet::from([1, 2])
        );
    }
    assert!(got.iter().all(|p| !ids(p).contains(&22)), "{got:?}");
}

/// Runs `tests/python/gw_history_tools.py` with `args`; `None` (the test is skipped) when
/// python3 is missing.
async fn python_tool(args: &[String]) -> Option<Value> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/gw_history_tools.py"
    );
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("python3")
            .arg(script)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the script finishes");
    let Ok(out) = out else {
        eprintln!("SKIPPED: python3 is not installed");
        return None;
    };
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("the script prints JSON"))
}

#[tokio::test]
async fn message_converter_and_re_register() {
    let b = TestBroker::with_listeners(|c| c.auth.anonymous = false).await;
    let app = "python";
    let src = device(&b, app, "source", "r1").await;
    let dst = device(&b, app, "target", "r2").await;
    let batch: Vec<Value> = (0..250)
        .map(|i| {
            let mut m = json!({"timestamp": DAY + f64::from(i), "n": i});
            if i % 5 != 0 {
                m["position.latitude"] = json!(50.0 + f64::from(i) / 1000.0);
                m["position.longitude"] = json!(20.0);
            }
            m
        })
        .collect();
    post_messages(&b, app, src, Value::Array(batch)).await;
    let base = format!("http://{}", b.http());
    let key = b.master_key();

    // message-converter: `fields` and the same list as `filter` (each must be there).
    let Some(converted) =
        python_tool(&["convert".into(), base.clone(), key.clone(), src.to_string()]).await
    else {
        return;
    };
    let rows = converted["result"].as_array().expect("result");
    assert_eq!(rows.len(), 200);
    for row in rows {
        let keys: BTreeSet<&str> = row
            .as_object()
            .expect("object")
            .keys()
            .map(|k| &**k)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["timestamp", "position.latitude", "position.longitude"])
        );
    }

    // re-register: a GET with the window as its JSON body, then POSTs of 100.
    let from = DAY + 10.0;
    let to = DAY + 239.0;
    let done = python_tool(&[
        "reregister".into(),
        base,
        key,
        src.to_string(),
        dst.to_string(),
        from.to_string(),
        to.to_string(),
    ])
    .await
    .expect("python3 ran before");
    assert_eq!(done["read"], 230);
    assert_eq!(done["statuses"], json!([200, 200, 200]));
    let moved = ok(&b, app, "GET", &format!("/gw/devices/{dst}/messages"), None).await;
    let moved = moved["result"].as_array().expect("result");
    let n: Vec<i64> = moved.iter().map(|m| m["n"].as_i64().expect("n")).collect();
    assert_eq!(n, (10..240).collect::<Vec<_>>());
    for m in moved {
        assert_eq!(m["device.id"], dst, "{m}");
        assert_eq!(m["device.name"], "target");
    }
    assert_eq!(
        moved[1]["position.latitude"].as_f64(),
        Some(50.0 + 11.0 / 1000.0)
    );
}
