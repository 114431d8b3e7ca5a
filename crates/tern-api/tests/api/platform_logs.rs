//! The account's own logs (docs/flespi.md#logs) over real sockets: every REST call of an
//! account, over HTTP and REST over MQTT, in `GET /platform/customer/logs` and on
//! `flespi/log/platform/customer/<cid>/rest`; MQTT session events in `GET /mqtt/logs` and on
//! `flespi/log/mqtt/sessions/<id>/<event>`; `data` (filter, count, reverse, fields), CSV on
//! every log endpoint, retention by `logs_ttl` and `logs_max_bytes`, sub-account isolation.
//!
//! Records reach the store through a queue and a task: tests wait for them with bounded polls
//! of the store.

use std::time::Duration;

use bytestring::ByteString;
use serde_json::{Map, Value, json};
use tern_codec::{ProtocolVersion, PublishProperties};
use tern_gw::GwOptions;
use tern_gw::logs::{Origin, code};
use tern_store::{MemoryBackend, MessageRange, Visit};

use crate::support::*;

async fn gw_env(options: GwOptions) -> (Env, MemoryBackend) {
    let backend = MemoryBackend::new();
    let env = Env::start_with_store(&backend, options).await;
    (env, backend)
}

/// The records stored under `key`, oldest first.
fn stored(env: &Env, key: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let range = MessageRange {
        device: key,
        from: i64::MIN,
        to: i64::MAX,
        reverse: false,
    };
    env.store
        .device_messages(&range, &mut |_, json| {
            out.push(serde_json::from_slice(json).unwrap_or(Value::Null));
            Visit::More
        })
        .expect("read");
    out
}

/// Waits (at most `WAIT`) until the log `key` holds at least `n` records; returns them.
async fn wait_stored(env: &Env, key: u64, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        env.store.flush(Duration::from_secs(5)).await;
        let records = stored(env, key);
        if records.len() >= n || tokio::time::Instant::now() >= deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET <path>?data=<data>` with `key` (and extra headers).
async fn read_logs(
    env: &Env,
    path: &str,
    key: &str,
    headers: &[(&str, &str)],
    data: Value,
) -> Resp {
    env.call(
        "GET",
        &format!("{path}?data={}", enc(&data.to_string())),
        Some(key),
        headers,
        None,
    )
    .await
}

/// The REST call records of `records` that are not reads of the log itself.
fn calls(records: &[Value]) -> Vec<Value> {
    records
        .iter()
        .filter(|r| {
            !r["uri"]
                .as_str()
                .is_some_and(|u| u.starts_with("/platform/customer/logs"))
        })
        .cloned()
        .collect()
}

fn response_topic(topic: &str) -> PublishProperties {
    PublishProperties {
        response_topic: Some(ByteString::from(topic)),
        ..Default::default()
    }
}

#[tokio::test]
async fn rest_calls_are_logged_with_their_fields_and_published() {
    let (env, _backend) = gw_env(GwOptions::default()).await;
    let master_id = env.directory.token_by_key(&env.master).expect("master").id;
    let mut watch = env.mqtt(ProtocolVersion::V5, "watch", &env.master).await;
    watch.subscribe("flespi/log/platform/customer/+/+").await;

    // 200, with the app's name.
    let r = env
        .call(
            "GET",
            "/platform/customer?fields=id",
            Some(&env.master),
            &[("x-flespi-app", "tester-1.0")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // 400.
    let r = env
        .master("GET", "/platform/tokens/all?limit=-1", None)
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // 401: no account, not logged.
    let r = env
        .call("GET", "/platform/customer", Some("not-a-token"), &[], None)
        .await;
    assert_eq!(r.status, 401);
    // 403 for a standard token: logged with its token.
    let standard = env.token(json!({})).await;
    let standard_id = env.directory.token_by_key(&standard).expect("standard").id;
    let r = env
        .call("GET", "/platform/customer", Some(&standard), &[], None)
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // REST over MQTT.
    let mut c = env.mqtt(ProtocolVersion::V5, "rest", &env.master).await;
    c.subscribe("replies/#").await;
    c.publish(
        "flespi/rest/get/platform/customer?fields=name",
        b"",
        false,
        response_topic("replies/1"),
    )
    .await;
    let answer = c.next_publish().await;
    assert_eq!(user_property(&answer, "http_code"), Some("200"));

    let key = Origin::Customer.key(TOP);
    let kept = wait_stored(&env, key, 5).await;
    assert_eq!(kept.len(), 5, "{kept:#?}");
    let r = env.master("GET", "/platform/customer/logs", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let all = calls(&r.result());
    assert_eq!(all, kept, "served as stored");
    let seen: Vec<(&str, &str, u64, u64, &str)> = all
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap_or_default(),
                r["uri"].as_str().unwrap_or_default(),
                r["http_code"].as_u64().unwrap_or_default(),
                r["token_id"].as_u64().unwrap_or_default(),
                r["transport"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                "GET",
                "/platform/customer?fields=id",
                200,
                master_id,
                "http"
            ),
            (
                "GET",
                "/platform/tokens/all?limit=-1",
                400,
                master_id,
                "http"
            ),
            ("POST", "/platform/tokens", 200, master_id, "http"),
            ("GET", "/platform/customer", 403, standard_id, "http"),
            (
                "GET",
                "/platform/customer?fields=name",
                200,
                master_id,
                "mqtt"
            ),
        ]
    );
    for r in &all {
        assert_eq!(r["event_code"], code::REST_CALL);
        assert_eq!(r["origin_type"], 1);
        assert_eq!(r["origin_id"], TOP);
        assert_eq!(r["host"], "127.0.0.1", "{r}");
        assert!(r["timestamp"].as_f64().is_some(), "{r}");
        assert!(r["duration"].as_f64().is_some(), "{r}");
    }
    assert_eq!(all[0]["app"], "tester-1.0");
    assert!(all[1].get("app").is_none(), "no header, no app");

    // The same records, live, on the account's log topic.
    let mut published = Vec::new();
    while published.len() < 5 {
        let p = watch.next_publish().await;
        assert_eq!(&*p.topic, "flespi/log/platform/customer/1000/rest");
        published.push(serde_json::from_slice::<Value>(&p.payload).expect("JSON"));
    }
    assert_eq!(published, kept);
}

#[tokio::test]
async fn customer_logs_take_filter_count_reverse_fields_and_csv() {
    let (env, _backend) = gw_env(GwOptions::default()).await;
    for path in [
        "/platform/customer",
        "/platform/tokens/all?limit=-1",
        "/auth/info",
    ] {
        env.master("GET", path, None).await;
    }
    let key = Origin::Customer.key(TOP);
    assert_eq!(wait_stored(&env, key, 3).await.len(), 3);
    let path = "/platform/customer/logs";

    let r = read_logs(
        &env,
        path,
        &env.master,
        &[],
        json!({"filter": "http_code==400"}),
    )
    .await;
    let bad = r.result();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0]["uri"], "/platform/tokens/all?limit=-1");
    // That read is logged too (after its answer): wait for it.
    assert_eq!(wait_stored(&env, key, 4).await.len(), 4);

    let r = read_logs(
        &env,
        path,
        &env.master,
        &[],
        json!({"reverse": true, "count": 2, "fields": "uri,http_code", "filter": "method==\"GET\""}),
    )
    .await;
    // Newest first: the previous read of the log itself, then /auth/info.
    assert_eq!(
        r.result(),
        vec![
            json!({"uri": format!("{path}?data={}", enc(&json!({"filter": "http_code==400"}).to_string())), "http_code": 200}),
            json!({"uri": "/auth/info", "http_code": 200}),
        ]
    );
    let first = calls(
        &read_logs(&env, path, &env.master, &[], json!({"count": 1}))
            .await
            .result(),
    );
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["uri"], "/platform/customer");
    let from = first[0]["timestamp"].as_f64().expect("timestamp");
    let after = calls(
        &read_logs(
            &env,
            path,
            &env.master,
            &[],
            json!({"from": from + 0.000001, "count": 2}),
        )
        .await
        .result(),
    );
    assert_eq!(after.len(), 2);
    assert_eq!(after[0]["uri"], "/platform/tokens/all?limit=-1");

    let r = read_logs(
        &env,
        path,
        &env.master,
        &[("accept", "text/csv")],
        json!({"fields": "method,uri,http_code", "filter": "http_code==400"}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .is_ok_and(|v| v.starts_with("text/csv"))
    );
    assert_eq!(
        r.text(),
        "method,uri,http_code\r\nGET,/platform/tokens/all?limit=-1,400\r\n"
    );
}

#[tokio::test]
async fn mqtt_sessions_are_logged_and_published() {
    let (env, _backend) = gw_env(GwOptions::default()).await;
    let mut watch = env.mqtt(ProtocolVersion::V5, "watch", &env.master).await;
    watch.subscribe("flespi/log/mqtt/sessions/+/+").await;
    let c = env.mqtt(ProtocolVersion::V5, "logged-1", &env.master).await;
    c.disconnect().await;

    let key = Origin::MqttSessions.key(TOP);
    // watch connected, logged-1 connected and disconnected.
    let kept = wait_stored(&env, key, 3).await;
    assert_eq!(kept.len(), 3, "{kept:#?}");
    let r = env.master("GET", "/mqtt/logs", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.result(), kept, "served as stored");
    let mine: Vec<&Value> = kept
        .iter()
        .filter(|r| r["client_id"] == "logged-1")
        .collect();
    assert_eq!(mine.len(), 2);
    assert_eq!(mine[0]["event_code"], code::SESSION_CONNECTED);
    assert_eq!(mine[0]["event"], "connected");
    assert_eq!(mine[1]["event_code"], code::SESSION_DISCONNECTED);
    assert_eq!(mine[1]["reason"], "client_disconnect");
    for r in &mine {
        assert_eq!(r["origin_type"], 14);
        assert_eq!(r["origin_id"], r["session_id"]);
        assert_eq!(r["cid"], TOP);
        assert_eq!(r["ip"], "127.0.0.1");
    }
    let sid = mine[0]["session_id"].as_u64().expect("session id");

    // The same records on the session event topics.
    let mut published = Vec::new();
    while published.len() < 2 {
        let p = watch.next_publish().await;
        published.push((
            p.topic.to_string(),
            serde_json::from_slice::<Value>(&p.payload).expect("JSON"),
        ));
    }
    assert_eq!(
        published,
        vec![
            (
                format!("flespi/log/mqtt/sessions/{sid}/connected"),
                mine[0].clone()
            ),
            (
                format!("flespi/log/mqtt/sessions/{sid}/disconnected"),
                mine[1].clone()
            ),
        ]
    );

    // data: filter, count, reverse, fields.
    let r = read_logs(
        &env,
        "/mqtt/logs",
        &env.master,
        &[],
        json!({"filter": "event_code==700", "reverse": true, "count": 1, "fields": "client_id,event"}),
    )
    .await;
    assert_eq!(
        r.result(),
        vec![json!({"client_id": "logged-1", "event": "connected"})]
    );

    // A standard token reads its account's too.
    let standard = env.token(json!({})).await;
    let r = env
        .call("GET", "/mqtt/logs", Some(&standard), &[], None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.result().len() >= 3);
}

#[tokio::test]
async fn every_log_endpoint_answers_csv() {
    let (env, _backend) = gw_env(GwOptions::default()).await;
    let r = env
        .master(
            "POST",
            "/gw/devices",
            Some(json!({"name": "d", "device_type_id": 1, "configuration": {"ident": "csv1"}})),
        )
        .await;
    let device = r.result()[0]["id"].as_u64().expect("id");
    let r = env
        .master(
            "POST",
            "/gw/channels",
            Some(json!({"name": "in", "protocol_name": "http"})),
        )
        .await;
    let channel = r.result()[0]["id"].as_u64().expect("id");
    let r = env
        .master(
            "POST",
            "/gw/streams",
            Some(json!({"name": "out", "protocol_name": "http", "configuration": {"uri": "http://127.0.0.1:9/"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let stream = r.result()[0]["id"].as_u64().expect("id");
    for (origin, id) in [(Origin::Channel, channel), (Origin::Stream, stream)] {
        env.gateway.log(TOP, origin, id, ("probe", 999), Map::new());
    }
    drop(env.mqtt(ProtocolVersion::V5, "csv", &env.master).await);
    wait_stored(&env, Origin::MqttSessions.key(TOP), 2).await;
    wait_stored(&env, Origin::Customer.key(TOP), 3).await;

    for (path, first) in [
        (format!("/gw/devices/{device}/logs"), "1,11"),
        (format!("/gw/channels/{channel}/logs"), "999,9"),
        (format!("/gw/streams/{stream}/logs"), "999,12"),
        ("/platform/customer/logs".to_string(), "600,1"),
        ("/mqtt/logs".to_string(), "701,14"),
    ] {
        let r = read_logs(
            &env,
            &path,
            &env.master,
            &[("accept", "text/csv")],
            json!({"fields": "event_code,origin_type", "count": 1, "reverse": true}),
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(
            r.headers["content-type"]
                .to_str()
                .is_ok_and(|v| v.starts_with("text/csv")),
            "{path}"
        );
        assert_eq!(
            r.text(),
            format!("event_code,origin_type\r\n{first}\r\n"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn account_logs_older_than_logs_ttl_go_at_the_sweep() {
    let options = GwOptions {
        logs_ttl: 3600,
        ..GwOptions::default()
    };
    let (env, _backend) = gw_env(options).await;
    let now = env.broker.clock.now() as f64 / 1e6;
    env.master("GET", "/platform/customer", None).await;
    drop(env.mqtt(ProtocolVersion::V5, "ttl", &env.master).await);
    let rest = Origin::Customer.key(TOP);
    let sessions = Origin::MqttSessions.key(TOP);
    assert_eq!(wait_stored(&env, rest, 1).await.len(), 1);
    assert_eq!(wait_stored(&env, sessions, 2).await.len(), 2);
    assert_eq!(env.gateway.sweep(now + 60.0).logs, 0, "not yet");
    let swept = env.gateway.sweep(now + 3700.0);
    assert!(swept.logs >= 2, "{swept:?}");
    env.store.flush(Duration::from_secs(5)).await;
    assert!(stored(&env, rest).is_empty());
    assert!(stored(&env, sessions).is_empty());
}

#[tokio::test]
async fn account_logs_count_against_logs_max_bytes() {
    let options = GwOptions {
        logs_max_bytes: 1500,
        ..GwOptions::default()
    };
    let (env, _backend) = gw_env(options).await;
    for i in 0..12 {
        env.master("GET", &format!("/platform/customer?n={i}"), None)
            .await;
    }
    let key = Origin::Customer.key(TOP);
    let before = wait_stored(&env, key, 12).await;
    assert_eq!(before.len(), 12);
    let bytes = |env: &Env| env.store.message_stats(key).map_or(0, |s| s.bytes);
    assert!(bytes(&env) > 1500, "{}", bytes(&env));
    let now = env.broker.clock.now() as f64 / 1e6;
    assert!(env.gateway.sweep(now).logs >= 1);
    env.store.flush(Duration::from_secs(5)).await;
    let after = stored(&env, key);
    assert!(bytes(&env) <= 1500, "{}", bytes(&env));
    assert!(!after.is_empty());
    assert_eq!(
        after[..],
        before[before.len() - after.len()..],
        "the newest stay"
    );
}

#[tokio::test]
async fn a_sub_account_sees_only_its_own_calls_and_sessions() {
    let (env, _backend) = gw_env(GwOptions::default()).await;
    env.subaccount(1001, TOP, "child").await;
    let child = env.token(json!({"cid": 1001, "access": {"type": 1}})).await;
    // The child's calls and sessions, and a call the parent makes inside the child.
    let r = env
        .call(
            "GET",
            "/platform/customer?who=child",
            Some(&child),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = env
        .call(
            "GET",
            "/platform/customer?who=parent-in-child",
            Some(&env.master),
            &[("x-flespi-cid", "1001")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    env.mqtt(ProtocolVersion::V5, "child-client", &child)
        .await
        .disconnect()
        .await;
    env.mqtt(ProtocolVersion::V5, "parent-client", &env.master)
        .await
        .disconnect()
        .await;
    wait_stored(&env, Origin::Customer.key(1001), 2).await;
    wait_stored(&env, Origin::MqttSessions.key(1001), 2).await;
    wait_stored(&env, Origin::MqttSessions.key(TOP), 2).await;

    let uris = |records: Vec<Value>| -> Vec<String> {
        calls(&records)
            .iter()
            .map(|r| r["uri"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let own = env
        .call("GET", "/platform/customer/logs", Some(&child), &[], None)
        .await;
    assert_eq!(own.status, 200, "{}", own.text());
    assert_eq!(
        uris(own.result()),
        vec![
            "/platform/customer?who=child",
            "/platform/customer?who=parent-in-child"
        ]
    );
    assert!(own.result().iter().all(|r| r["origin_id"] == 1001));
    let parent = env.master("GET", "/platform/customer/logs", None).await;
    let parent_uris = uris(parent.result());
    assert!(
        parent_uris.iter().all(|u| !u.contains("who=")),
        "the parent's log has none of the child's: {parent_uris:?}"
    );

    let clients = |r: Resp| -> Vec<String> {
        r.result()
            .iter()
            .map(|r| r["client_id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let child_sessions = env.call("GET", "/mqtt/logs", Some(&child), &[], None).await;
    assert_eq!(
        clients(child_sessions),
        vec!["child-client", "child-client"]
    );
    let parent_sessions = env.master("GET", "/mqtt/logs", None).await;
    assert_eq!(
        clients(parent_sessions),
        vec!["parent-client", "parent-client"]
    );
    // The parent reads the child's with x-flespi-cid.
    let r = env
        .call(
            "GET",
            "/mqtt/logs",
            Some(&env.master),
            &[("x-flespi-cid", "1001")],
            None,
        )
        .await;
    assert_eq!(clients(r), vec!["child-client", "child-client"]);
}

#[tokio::test]
async fn account_logs_survive_a_restart_and_go_with_their_account() {
    let (env, backend) = gw_env(GwOptions::default()).await;
    env.subaccount(1001, TOP, "short-lived").await;
    let child = env.token(json!({"cid": 1001, "access": {"type": 1}})).await;
    let r = env
        .call("GET", "/platform/customer?kept=1", Some(&child), &[], None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    env.mqtt(ProtocolVersion::V5, "kept", &child)
        .await
        .disconnect()
        .await;
    assert_eq!(
        wait_stored(&env, Origin::Customer.key(1001), 1).await.len(),
        1
    );
    assert_eq!(
        wait_stored(&env, Origin::MqttSessions.key(1001), 2)
            .await
            .len(),
        2
    );

    let env = env.restart(&backend, GwOptions::default()).await;
    let r = env
        .call("GET", "/platform/customer/logs", Some(&child), &[], None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(calls(&r.result())[0]["uri"], "/platform/customer?kept=1");
    let r = env.call("GET", "/mqtt/logs", Some(&child), &[], None).await;
    assert_eq!(r.result().len(), 2, "{}", r.text());

    let r = env
        .master("DELETE", "/platform/subaccounts/1001", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    env.store.flush(Duration::from_secs(5)).await;
    assert!(stored(&env, Origin::Customer.key(1001)).is_empty());
    assert!(stored(&env, Origin::MqttSessions.key(1001)).is_empty());
}
