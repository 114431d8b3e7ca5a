//! `/gw/channels` (docs/flespi.md#devices) over real sockets: CRUD with the state topics and a
//! restart, and the HTTP channel's ingest route fed by raw HTTP, curl and a Python client
//! (urllib, like the seed's http-channel-sender), watched by a gmqtt subscriber like the
//! seed's mqtt-message-handler.

use serde_json::{Value, json};
use tern_codec::{ProtocolVersion, Publish};
use tern_gw::GwOptions;
use tern_store::MemoryBackend;

use crate::support::*;

async fn gw_env() -> (Env, MemoryBackend) {
    let backend = MemoryBackend::new();
    let env = Env::start_with_store(&backend, GwOptions::default()).await;
    (env, backend)
}

async fn drain(c: &mut Mqtt) -> Vec<Publish> {
    let mut out = Vec::new();
    while let Some(p) = c.publish_within(QUIET).await {
        out.push(p);
    }
    out
}

fn on<'a>(ps: &'a [Publish], topic: &str) -> Vec<&'a Publish> {
    ps.iter().filter(|p| &*p.topic == topic).collect()
}

fn payload(p: &Publish) -> Value {
    serde_json::from_slice(&p.payload).unwrap_or(Value::Null)
}

async fn channel(env: &Env, item: Value) -> Value {
    let r = env.master("POST", "/gw/channels", Some(item)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.result()[0].clone()
}

/// The path of a channel's `uri` (the tests' requests name the host `localhost`).
fn ingest_path(item: &Value) -> String {
    let uri = item["uri"].as_str().expect("uri");
    let at = uri.find("/gw/channels/").expect("path");
    uri[at..].to_string()
}

/// A POST to the ingest route: no token.
async fn ingest(env: &Env, path: &str, body: &str) -> Resp {
    env.call("POST", path, None, &[], Some(body.as_bytes().to_vec()))
        .await
}

async fn device_messages(env: &Env, id: u64) -> Vec<Value> {
    let r = env
        .master("GET", &format!("/gw/devices/{id}/messages"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.result()
}

#[tokio::test]
async fn channels_crud_state_topics_and_a_restart() {
    let (env, backend) = gw_env().await;
    let mut watch = env.mqtt(ProtocolVersion::V5, "watch", &env.master).await;
    watch.subscribe("flespi/state/gw/channels/#").await;

    let item = channel(
        &env,
        json!({"name": "http-in", "protocol_name": "http", "configuration": {"ident_field": "imei"}}),
    )
    .await;
    let id = item["id"].as_u64().expect("id");
    assert_eq!(item["protocol_id"], 1);
    assert_eq!(item["protocol_name"], "http");
    assert_eq!(item["enabled"], true);
    assert_eq!(item["messages_ttl"], 0);
    assert_eq!(item["connections_count"], 0);
    assert_eq!(item["messages_size"], 0);
    assert_eq!(item["cid"], TOP);
    let uri = item["uri"].as_str().expect("uri");
    assert!(
        uri.starts_with(&format!("http://localhost/gw/channels/{id}/ingest/")),
        "{uri}"
    );
    assert_eq!(uri.rsplit('/').next().map(str::len), Some(64), "{uri}");
    let ps = drain(&mut watch).await;
    let state = on(&ps, &format!("flespi/state/gw/channels/{id}"));
    assert_eq!(state.len(), 1);
    assert_eq!(payload(state[0]), item);
    let mut late = env.mqtt(ProtocolVersion::V5, "late", &env.master).await;
    late.subscribe(&format!("flespi/state/gw/channels/{id}"))
        .await;
    let kept = late.next_publish().await;
    assert!(kept.retain, "retained");
    assert_eq!(payload(&kept), item);
    assert_eq!(
        payload(on(&ps, &format!("flespi/state/gw/channels/{id}/name"))[0]),
        "http-in"
    );

    // Refused input: read-only fields, an unknown protocol, bad MQTT configurations.
    for bad in [
        json!({"protocol_id": 1, "uri": "x"}),
        json!({"protocol_id": 7}),
        json!({"name": "no protocol"}),
        json!({"protocol_id": 2, "configuration": {"broker": {"uri": "http://localhost:1"}, "topics": ["a/#"]}}),
        json!({"protocol_id": 2, "configuration": {"broker": {"uri": "mqtt://localhost:1", "qos": 2}, "topics": ["a/#"]}}),
        json!({"protocol_id": 2, "configuration": {"topics": []}}),
        json!({"protocol_id": 2, "configuration": {"topics": ["flespi/#"]}}),
        json!({"protocol_id": 2, "configuration": {"topics": ["a/#/b"]}}),
    ] {
        let r = env.master("POST", "/gw/channels", Some(bad.clone())).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }

    // PATCH merges the configuration; property topics only for what changed.
    let r = env
        .master(
            "PATCH",
            &format!("/gw/channels/{id}"),
            Some(json!({"configuration": {"skip_invalid": true}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.result()[0]["configuration"],
        json!({"ident_field": "imei", "skip_invalid": true})
    );
    let ps = drain(&mut watch).await;
    assert_eq!(
        on(&ps, &format!("flespi/state/gw/channels/{id}/configuration")).len(),
        1
    );
    assert!(on(&ps, &format!("flespi/state/gw/channels/{id}/name")).is_empty());
    let r = env
        .master(
            "PUT",
            &format!("/gw/channels/{id}"),
            Some(json!({"protocol_id": 2})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());

    // Selectors, fields, pagination, CSV.
    channel(&env, json!({"name": "second", "protocol_id": 1})).await;
    let r = env
        .master("GET", "/gw/channels/name=http*?fields=id,name", None)
        .await;
    assert_eq!(r.json(), json!({"result": [{"id": id, "name": "http-in"}]}));
    let r = env
        .master("GET", "/gw/channels/all?fields=name&limit=1&offset=1", None)
        .await;
    assert_eq!(r.result(), vec![json!({"name": "second"})]);
    assert_eq!(r.json()["pagination"]["count"], 2);
    let r = env
        .call(
            "GET",
            "/gw/channels/all?fields=id,name",
            Some(&env.master),
            &[("accept", "text/csv")],
            None,
        )
        .await;
    assert!(r.text().contains("http-in"), "{}", r.text());

    // A restart keeps the channels, their uri (and secret) and the id counter.
    let env = env.restart(&backend, GwOptions::default()).await;
    let r = env.master("GET", "/gw/channels/all", None).await;
    assert_eq!(r.result().len(), 2);
    assert_eq!(r.result()[0]["uri"], json!(uri));
    let third = channel(&env, json!({"name": "third", "protocol_id": 1})).await;
    assert!(third["id"].as_u64().expect("id") > id + 1);
    let r = ingest(&env, &ingest_path(&item), r#"{"imei": "1"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Delete: empty retained payloads, then `deleted`.
    let mut watch = env.mqtt(ProtocolVersion::V5, "watch2", &env.master).await;
    watch
        .subscribe(&format!("flespi/state/gw/channels/{id}/#"))
        .await;
    drain(&mut watch).await;
    let r = env
        .master("DELETE", &format!("/gw/channels/{id}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ps = drain(&mut watch).await;
    let name = on(&ps, &format!("flespi/state/gw/channels/{id}/name"));
    assert!(name.iter().any(|p| p.payload.is_empty()));
    assert_eq!(
        payload(on(&ps, &format!("flespi/state/gw/channels/{id}/deleted"))[0]),
        true
    );
    let r = env.master("GET", &format!("/gw/channels/{id}"), None).await;
    assert_eq!(r.result(), Vec::<Value>::new());
    let r = ingest(&env, &ingest_path(&item), r#"{"imei": "1"}"#).await;
    assert_eq!(r.status, 404, "{}", r.text());
}

#[tokio::test]
async fn the_http_channel_feeds_devices_and_its_topic() {
    let (env, _backend) = gw_env().await;
    let r = env
        .master(
            "POST",
            "/gw/devices",
            Some(json!({"name": "car", "device_type_id": 1, "configuration": {"ident": "dev1"}})),
        )
        .await;
    let dev = r.result()[0]["id"].as_u64().expect("device");
    let item = channel(&env, json!({"name": "in", "protocol_id": 1})).await;
    let id = item["id"].as_u64().expect("id");
    let path = ingest_path(&item);
    let mut watch = env.mqtt(ProtocolVersion::V5, "watch", &env.master).await;
    watch.subscribe("flespi/message/gw/#").await;

    // An array: one message for the device, one for an ident no device has.
    let r = ingest(
        &env,
        &path,
        r#"[{"ident": "dev1", "timestamp": 1700000000, "speed": 5}, {"ident": "stranger", "x": 1}]"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"result": []}));
    let ps = drain(&mut watch).await;
    let mine = on(&ps, &format!("flespi/message/gw/channels/{id}/dev1"));
    assert_eq!(mine.len(), 1);
    let m = payload(mine[0]);
    assert_eq!(m["speed"], 5);
    assert_eq!(m["channel.id"], id);
    assert_eq!(m["protocol.id"], 1);
    assert!(m["server.timestamp"].is_number());
    assert!(
        m["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:"))
    );
    let other = on(&ps, &format!("flespi/message/gw/channels/{id}/stranger"));
    assert_eq!(
        other.len(),
        1,
        "a message with no device still has its topic"
    );
    let stored = on(&ps, &format!("flespi/message/gw/devices/{dev}"));
    assert_eq!(stored.len(), 1);
    assert_eq!(payload(stored[0])["device.id"], dev);

    let msgs = device_messages(&env, dev).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["timestamp"], 1_700_000_000);
    assert_eq!(msgs[0]["channel.id"], id);
    assert!(msgs[0].get("rest.timestamp").is_none());
    let r = env
        .master("GET", &format!("/gw/devices/{dev}/telemetry/speed"), None)
        .await;
    assert_eq!(
        r.result()[0]["telemetry"]["speed"]["value"],
        5,
        "{}",
        r.text()
    );
    let r = env
        .master(
            "GET",
            &format!("/gw/devices/{dev}?fields=last_active"),
            None,
        )
        .await;
    assert!(r.result()[0]["last_active"].is_number());

    // One object; a number ident.
    let r = ingest(&env, &path, r#"{"ident": "dev1", "speed": 6}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(device_messages(&env, dev).await.len(), 2);

    // Not JSON: 400 with the envelope. Not an array or object: 400.
    let r = ingest(&env, &path, "speed=5").await;
    r.expect_error(400, "not JSON");
    let r = ingest(&env, &path, "5").await;
    r.expect_error(400, "array");
    // skip_invalid false: one bad message refuses them all.
    let r = ingest(
        &env,
        &path,
        r#"[{"ident": "dev1", "speed": 7}, {"speed": 8}]"#,
    )
    .await;
    r.expect_error(400, "message 1");
    assert_eq!(device_messages(&env, dev).await.len(), 2, "nothing kept");
    // A wrong secret, a wrong id: 404, as an unknown channel.
    let wrong = format!("/gw/channels/{id}/ingest/{}", "a".repeat(64));
    assert_eq!(ingest(&env, &wrong, "{}").await.status, 404);
    let wrong = path.replacen(&format!("/{id}/"), "/999/", 1);
    assert_eq!(ingest(&env, &wrong, "{}").await.status, 404);
    drain(&mut watch).await;

    // skip_invalid true: the bad ones are dropped and named, the rest kept (200).
    let r = env
        .master(
            "PATCH",
            &format!("/gw/channels/{id}"),
            Some(json!({"configuration": {"skip_invalid": true}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = ingest(
        &env,
        &path,
        r#"[{"ident": "dev1", "speed": 9}, {"speed": 8}, 5, {"ident": "dev1", "timestamp": "soon"}]"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["result"], json!([]));
    let idx: Vec<u64> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(idx, vec![1, 2, 3]);
    assert_eq!(device_messages(&env, dev).await.len(), 3);

    // ident_field, timestamp_field and json_path.
    let r = env
        .master(
            "PATCH",
            &format!("/gw/channels/{id}"),
            Some(json!({"configuration": {"ident_field": "imei", "timestamp_field": "t", "json_path": "data.items"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = ingest(
        &env,
        &path,
        r#"{"data": {"items": [{"imei": "dev1", "t": 1700000100, "speed": 10}]}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let msgs = device_messages(&env, dev).await;
    let last = msgs
        .iter()
        .find(|m| m["speed"] == 10)
        .expect("the json_path message");
    assert_eq!(last["timestamp"], 1_700_000_100);
    assert_eq!(last["ident"], "dev1");

    // A disabled channel takes nothing.
    env.master(
        "PATCH",
        &format!("/gw/channels/{id}"),
        Some(json!({"enabled": false})),
    )
    .await;
    let r = ingest(&env, &path, r#"{"data": {"items": []}}"#).await;
    r.expect_error(400, "disabled");
}

#[tokio::test]
async fn curl_posts_to_the_channel_uri() {
    let env = Env::start().await;
    let base = format!("http://{}", env.http);
    let auth = format!("Authorization: FlespiToken {}", env.master);
    let out = tokio::task::spawn_blocking(move || {
        let create = std::process::Command::new("curl")
            .args(["-s", "-X", "POST", "-H", &auth, "-d"])
            .arg(r#"{"name": "curl", "protocol_id": 1}"#)
            .arg(format!("{base}/gw/channels"))
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&create.stdout).ok()?;
        let uri = v["result"][0]["uri"].as_str()?.to_string();
        let post = std::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-d"])
            .arg(r#"[{"ident": "c1", "v": 1}]"#)
            .arg(&uri)
            .output()
            .ok()?;
        Some((uri, String::from_utf8_lossy(&post.stdout).into_owned()))
    })
    .await
    .expect("joins");
    let Some((uri, text)) = out else {
        eprintln!("curl is not installed: skipped");
        return;
    };
    assert!(
        uri.starts_with(&format!("http://{}/gw/channels/", env.http)),
        "the uri names the listener asked: {uri}"
    );
    assert_eq!(text, "{\"result\":[]}\n200");
}

const PYTHON_CLIENT: &str = r#"
import asyncio, json, sys, urllib.request
from gmqtt import Client

http, mqtt_host, mqtt_port, token = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def call(method, url, body, auth=True):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method=method)
    if auth:
        req.add_header("Authorization", "FlespiToken " + token)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.loads(r.read())

async def main():
    _, created = call("POST", http + "/gw/channels", {"name": "py", "protocol_id": 1})
    ch = created["result"][0]
    got, subscribed = [], asyncio.Event()
    done = asyncio.Event()
    client = Client("py-handler")
    client.set_auth_credentials("FlespiToken " + token, None)
    client.on_subscribe = lambda *a: subscribed.set()
    def on_message(c, topic, payload, qos, props):
        got.append({"topic": topic, "msg": json.loads(payload)})
        if len(got) == 2:
            done.set()
        return 0
    client.on_message = on_message
    await client.connect(mqtt_host, mqtt_port)
    client.subscribe("flespi/message/gw/channels/%d/+" % ch["id"], qos=1)
    await asyncio.wait_for(subscribed.wait(), 10)
    status, answer = call("POST", ch["uri"], [{"ident": "py1", "n": 1}, {"ident": "py2", "n": 2}], auth=False)
    await asyncio.wait_for(done.wait(), 10)
    await client.disconnect()
    print(json.dumps({"id": ch["id"], "status": status, "answer": answer, "got": got}))

asyncio.run(main())
"#;

#[tokio::test]
async fn a_python_client_posts_and_a_gmqtt_handler_receives() {
    let env = Env::start().await;
    let args = vec![
        "-c".to_string(),
        PYTHON_CLIENT.to_string(),
        format!("http://{}", env.http),
        env.mqtt.ip().to_string(),
        env.mqtt.port().to_string(),
        env.master.clone(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3").args(&args).output()
    })
    .await
    .expect("joins");
    let Ok(out) = out else {
        eprintln!("python3 is not installed: skipped");
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'gmqtt'") {
        eprintln!("gmqtt is not installed: skipped");
        return;
    }
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let id = v["id"].as_u64().expect("id");
    assert_eq!(v["status"], 200);
    assert_eq!(v["answer"], json!({"result": []}));
    let got = v["got"].as_array().expect("got");
    assert_eq!(
        got[0]["topic"],
        format!("flespi/message/gw/channels/{id}/py1")
    );
    assert_eq!(got[1]["msg"]["n"], 2);
    assert_eq!(got[1]["msg"]["channel.id"], id);
}

/// `mosquitto_pub` into tern (off the test's runtime, which serves tern); false when it is not
/// installed or failed.
async fn mosquitto_pub(env: &Env, topic: &str, payload: &str) -> bool {
    let args: Vec<String> = [
        "-h",
        "127.0.0.1",
        "-p",
        &env.mqtt.port().to_string(),
        "-u",
        &env.master,
        "-q",
        "1",
        "-t",
        topic,
        "-m",
        payload,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("mosquitto_pub")
            .args(&args)
            .status()
            .is_ok_and(|s| s.success())
    })
    .await
    .unwrap_or(false)
}

#[tokio::test]
async fn the_internal_mqtt_channel_feeds_devices_from_mosquitto_pub() {
    let (env, _backend) = gw_env().await;
    let r = env
        .master(
            "POST",
            "/gw/devices",
            Some(json!({"name": "m", "device_type_id": 2, "configuration": {"ident": "m1"}})),
        )
        .await;
    let dev = r.result()[0]["id"].as_u64().expect("device");
    let by_level = channel(
        &env,
        json!({"name": "levels", "protocol_name": "mqtt",
               "configuration": {"broker": "internal", "topics": ["trackers/+/data"], "ident_topic_level": 1}}),
    )
    .await;
    let id = by_level["id"].as_u64().expect("id");
    assert_eq!(by_level["connections_count"], 1);
    assert_eq!(by_level["uri"], Value::Null);
    let by_field = channel(
        &env,
        json!({"name": "fields", "protocol_id": 2, "configuration": {"topics": ["bulk/#"], "ident_field": "imei"}}),
    )
    .await;
    let id2 = by_field["id"].as_u64().expect("id");
    let mut watch = env.mqtt(ProtocolVersion::V5, "watch", &env.master).await;
    watch.subscribe("flespi/message/gw/#").await;

    let published = mosquitto_pub(&env, "trackers/m1/data", r#"{"speed": 3}"#).await
        && mosquitto_pub(
            &env,
            "bulk/x",
            r#"[{"imei": "m1", "speed": 4}, {"imei": "nobody", "speed": 5}]"#,
        )
        .await
        && mosquitto_pub(&env, "other/m1/data", r#"{"speed": 6}"#).await
        && mosquitto_pub(&env, "trackers/m1/data", "not json").await;
    if !published {
        eprintln!("mosquitto_pub is not installed or failed: skipped");
        return;
    }
    let mut ps = Vec::new();
    for _ in 0..50 {
        ps.extend(drain(&mut watch).await);
        if on(&ps, &format!("flespi/message/gw/devices/{dev}")).len() >= 2 {
            break;
        }
    }
    let mine = on(&ps, &format!("flespi/message/gw/channels/{id}/m1"));
    assert_eq!(mine.len(), 1, "{ps:?}");
    assert_eq!(payload(mine[0])["speed"], 3);
    assert_eq!(payload(mine[0])["protocol.id"], 2);
    assert_eq!(
        on(&ps, &format!("flespi/message/gw/channels/{id2}/m1")).len(),
        1
    );
    assert_eq!(
        on(&ps, &format!("flespi/message/gw/channels/{id2}/nobody")).len(),
        1
    );
    let speeds: Vec<Value> = device_messages(&env, dev)
        .await
        .iter()
        .map(|m| m["speed"].clone())
        .collect();
    assert_eq!(speeds.len(), 2, "{speeds:?}");
    assert!(speeds.contains(&json!(3)) && speeds.contains(&json!(4)));

    // A disabled channel stops listening.
    env.master(
        "PATCH",
        &format!("/gw/channels/{id}"),
        Some(json!({"enabled": false})),
    )
    .await;
    assert!(mosquitto_pub(&env, "trackers/m1/data", r#"{"speed": 7}"#).await);
    drain(&mut watch).await;
    assert_eq!(device_messages(&env, dev).await.len(), 2);
}

#[tokio::test]
async fn the_channel_buffer_keeps_messages_with_or_without_a_device() {
    let (env, backend) = gw_env().await;
    let item = channel(
        &env,
        json!({"name": "buffered", "protocol_id": 1, "messages_ttl": 3600}),
    )
    .await;
    let id = item["id"].as_u64().expect("id");
    assert_eq!(item["messages_ttl"], 3600);
    let path = ingest_path(&item);
    let r = ingest(
        &env,
        &path,
        r#"[{"ident": "nobody", "timestamp": 5, "v": 1}, {"ident": "nobody", "v": 2}]"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = env
        .master("GET", &format!("/gw/channels/{id}/messages"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let msgs = r.result();
    assert_eq!(msgs.len(), 2, "{}", r.text());
    assert_eq!(msgs[0]["v"], 1);
    assert_eq!(msgs[0]["timestamp"], 5);
    assert_eq!(msgs[0]["ident"], "nobody");
    let server_ts = msgs[0]["server.timestamp"]
        .as_f64()
        .expect("server.timestamp");
    let r = env
        .master(
            "GET",
            &format!("/gw/channels/{id}?fields=messages_size"),
            None,
        )
        .await;
    assert!(
        r.result()[0]["messages_size"]
            .as_u64()
            .is_some_and(|s| s > 0),
        "{}",
        r.text()
    );

    // `data` windows are on server.timestamp, not on the message's timestamp.
    let window = |from: f64, to: f64| {
        format!(
            "/gw/channels/{id}/messages?data={}",
            enc(&json!({"from": from, "to": to}).to_string())
        )
    };
    let r = env.master("GET", &window(0.0, 10.0), None).await;
    assert_eq!(r.result().len(), 0, "{}", r.text());
    let r = env
        .master("GET", &window(server_ts - 1.0, server_ts + 1.0), None)
        .await;
    assert_eq!(r.result().len(), 2, "{}", r.text());
    let r = env
        .master(
            "GET",
            &format!(
                "/gw/channels/{id}/messages?data={}",
                enc(r#"{"reverse": true, "count": 1, "fields": "v"}"#)
            ),
            None,
        )
        .await;
    assert_eq!(r.json(), json!({"result": [{"v": 2}]}));

    // A restart keeps the buffer.
    let env = env.restart(&backend, GwOptions::default()).await;
    let r = env
        .master("GET", &format!("/gw/channels/{id}/messages"), None)
        .await;
    assert_eq!(r.result().len(), 2, "{}", r.text());

    // DELETE with a filter, then all.
    let r = env
        .master(
            "DELETE",
            &format!(
                "/gw/channels/{id}/messages?data={}",
                enc(r#"{"filter": "v=1"}"#)
            ),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = env
        .master("GET", &format!("/gw/channels/{id}/messages"), None)
        .await;
    assert_eq!(r.result().len(), 1, "{}", r.text());
    let r = env
        .master("DELETE", &format!("/gw/channels/{id}/messages"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = env
        .master("GET", &format!("/gw/channels/{id}/messages"), None)
        .await;
    assert_eq!(r.result().len(), 0, "{}", r.text());

    // Retention: a sweep an hour later empties the buffer.
    ingest(&env, &path, r#"{"ident": "nobody", "v": 3}"#).await;
    let swept = env.gateway.sweep(server_ts + 7200.0);
    assert!(swept.expired >= 1, "{swept:?}");
    let r = env
        .master("GET", &format!("/gw/channels/{id}/messages"), None)
        .await;
    assert_eq!(r.result().len(), 0, "{}", r.text());

    // A channel without a buffer keeps nothing.
    let plain = channel(&env, json!({"name": "plain", "protocol_id": 1})).await;
    ingest(&env, &ingest_path(&plain), r#"{"ident": "x"}"#).await;
    let r = env
        .master(
            "GET",
            &format!("/gw/channels/{}/messages", plain["id"]),
            None,
        )
        .await;
    assert_eq!(r.result().len(), 0, "{}", r.text());
}

/// A Mosquitto on a free port (anonymous), killed on drop; `None` when it is not installed.
struct Mosquitto {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Option<Mosquitto> {
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let dir = tempfile::tempdir().ok()?;
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            ),
        )
        .ok()?;
        let child = std::process::Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        Some(Mosquitto {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connections(env: &Env, id: u64) -> Value {
    env.master(
        "GET",
        &format!("/gw/channels/{id}?fields=connections_count"),
        None,
    )
    .await
    .result()[0]["connections_count"]
        .clone()
}

#[tokio::test]
async fn an_external_mqtt_channel_takes_messages_from_mosquitto() {
    let Some(mut mosquitto) = Mosquitto::start() else {
        eprintln!("mosquitto is not installed: skipped");
        return;
    };
    let (env, _backend) = gw_env().await;
    let r = env
        .master(
            "POST",
            "/gw/devices",
            Some(json!({"name": "e", "device_type_id": 2, "configuration": {"ident": "e1"}})),
        )
        .await;
    let dev = r.result()[0]["id"].as_u64().expect("device");
    let mut watch = env.mqtt(ProtocolVersion::V5, "watch", &env.master).await;
    watch
        .subscribe("flespi/state/gw/channels/+/connections_count")
        .await;
    let item = channel(
        &env,
        json!({"name": "bridge", "protocol_id": 2, "configuration": {
            "broker": {"uri": format!("mqtt://127.0.0.1:{}", mosquitto.port), "client_id": "tern-test", "qos": 1},
            "topics": ["ext/+/data"], "ident_topic_level": 1}}),
    )
    .await;
    let id = item["id"].as_u64().expect("id");
    let mut up = false;
    for _ in 0..100 {
        if connections(&env, id).await == 1 {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(up, "the channel connects to mosquitto");
    let ps = drain(&mut watch).await;
    assert!(
        on(
            &ps,
            &format!("flespi/state/gw/channels/{id}/connections_count")
        )
        .iter()
        .any(|p| payload(p) == 1)
    );

    let port = mosquitto.port.to_string();
    let sent = tokio::task::spawn_blocking(move || {
        std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-q",
                "1",
                "-t",
                "ext/e1/data",
            ])
            .args(["-m", r#"{"speed": 11}"#])
            .status()
            .is_ok_and(|s| s.success())
    })
    .await
    .expect("joins");
    assert!(sent, "mosquitto_pub");
    let mut got = Vec::new();
    for _ in 0..100 {
        got = device_messages(&env, dev).await;
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(got.len(), 1, "the message reached the device");
    assert_eq!(got[0]["speed"], 11);
    assert_eq!(got[0]["channel.id"], id);
    assert_eq!(got[0]["peer"], "mqtt:external");

    // The broker goes away: connections_count drops to 0 (the client keeps retrying).
    let _ = mosquitto.child.kill();
    let _ = mosquitto.child.wait();
    let mut down = false;
    for _ in 0..100 {
        if connections(&env, id).await == 0 {
            down = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(down, "connections_count 0 once mosquitto is gone");
    // Deleting the channel stops its client.
    let r = env
        .master("DELETE", &format!("/gw/channels/{id}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn channels_belong_to_accounts() {
    let (env, _backend) = gw_env().await;
    env.subaccount(1001, TOP, "sub").await;
    let top = channel(&env, json!({"name": "top", "protocol_id": 1})).await;
    let r = env
        .call(
            "POST",
            "/gw/channels",
            Some(&env.master),
            &[("x-flespi-cid", "1001")],
            Some(
                json!({"name": "sub", "protocol_id": 1})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sub = r.result()[0].clone();
    assert_eq!(sub["cid"], 1001);
    let sub_key = env.token(json!({"cid": 1001, "access": {"type": 1}})).await;
    let r = env
        .call("GET", "/gw/channels/all", Some(&sub_key), &[], None)
        .await;
    assert_eq!(r.ids(), vec![sub["id"].as_u64().expect("id")]);
    let r = env
        .call(
            "DELETE",
            &format!("/gw/channels/{}", top["id"]),
            Some(&sub_key),
            &[],
            None,
        )
        .await;
    assert!(r.result().is_empty(), "{}", r.text());
    let r = env.master("GET", "/gw/channels/all", None).await;
    assert_eq!(r.result().len(), 2);

    // A device of the parent account is in the sub-account channel's tree: it gets the
    // message.
    let r = env
        .master(
            "POST",
            "/gw/devices",
            Some(json!({"device_type_id": 1, "configuration": {"ident": "t1"}})),
        )
        .await;
    let dev = r.result()[0]["id"].as_u64().expect("device");
    let r = ingest(&env, &ingest_path(&sub), r#"{"ident": "t1", "v": 1}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(device_messages(&env, dev).await.len(), 1);
}
