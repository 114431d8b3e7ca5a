//! Entity logs (docs/flespi.md#devices) over real sockets: device item events stored and read
//! with `from`/`to`/`count`/`reverse`/`filter`/`fields` (query or GET body) and as CSV; a
//! channel's log; records kept across a restart and gone with their entity; retention by
//! `logs_ttl` and `logs_max_bytes`; and `GET /const/values` without a token.

use serde_json::{Map, Value, json};
use tern_codec::ProtocolVersion;
use tern_gw::GwOptions;
use tern_gw::logs::{Origin, channel_event, close_code, code};
use tern_store::{MemoryBackend, MessageRange, Visit};

use crate::support::*;

const HTTP_TYPE: u64 = 1;

async fn gw_env(options: GwOptions) -> (Env, MemoryBackend) {
    let backend = MemoryBackend::new();
    let env = Env::start_with_store(&backend, options).await;
    (env, backend)
}

async fn device(env: &Env, name: &str, ident: &str) -> u64 {
    let r = env
        .master(
            "POST",
            "/gw/devices",
            Some(json!({"name": name, "device_type_id": HTTP_TYPE, "configuration": {"ident": ident}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.result()[0]["id"].as_u64().expect("id")
}

/// A device of sub-account 1001, created by the top account's master token.
async fn child_device(env: &Env, name: &str, ident: &str) -> u64 {
    let r = env
        .master(
            "POST",
            "/gw/devices",
            Some(json!({"name": name, "device_type_id": HTTP_TYPE, "configuration": {"ident": ident}, "cid": 1001})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.result()[0]["id"].as_u64().expect("id")
}

async fn rename(env: &Env, id: u64, name: &str) {
    let r = env
        .master(
            "PATCH",
            &format!("/gw/devices/{id}"),
            Some(json!({"name": name})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

async fn logs(env: &Env, what: &str, id: u64, data: Value) -> Vec<Value> {
    let r = env
        .master(
            "GET",
            &format!("/gw/{what}/{id}/logs?data={}", enc(&data.to_string())),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.result()
}

fn codes(records: &[Value]) -> Vec<u64> {
    records
        .iter()
        .map(|r| r["event_code"].as_u64().expect("event_code"))
        .collect()
}

/// The records stored under `key` in the store (what the REST API cannot show any more).
fn stored(env: &Env, key: u64) -> usize {
    let mut n = 0;
    let range = MessageRange {
        device: key,
        from: i64::MIN,
        to: i64::MAX,
        reverse: false,
    };
    env.store
        .device_messages(&range, &mut |_, _| {
            n += 1;
            Visit::More
        })
        .expect("read");
    n
}

#[tokio::test]
async fn device_events_are_logged_and_read_like_history() {
    let (env, _backend) = gw_env(GwOptions::default()).await;
    let mut watch = env.mqtt(ProtocolVersion::V5, "watch", &env.master).await;
    watch.subscribe("flespi/log/gw/devices/+/+").await;
    let id = device(&env, "truck", "354").await;
    rename(&env, id, "truck 2").await;
    rename(&env, id, "truck 3").await;
    env.store.flush(std::time::Duration::from_secs(5)).await;

    let all = logs(&env, "devices", id, json!({})).await;
    assert_eq!(
        codes(&all),
        vec![code::CREATED, code::UPDATED, code::UPDATED]
    );
    // What is kept is what was published, on the topics and with the shape they always had.
    let mut published = Vec::new();
    while let Some(p) = watch.publish_within(QUIET).await {
        published.push((
            p.topic.to_string(),
            serde_json::from_slice::<Value>(&p.payload).unwrap_or(Value::Null),
        ));
    }
    let topic = |event: &str| format!("flespi/log/gw/devices/{id}/{event}");
    assert_eq!(
        published,
        vec![
            (topic("created"), all[0].clone()),
            (topic("updated"), all[1].clone()),
            (topic("updated"), all[2].clone()),
        ]
    );
    for r in &all {
        assert_eq!(r["origin_type"], 11);
        assert_eq!(r["origin_id"], id);
        assert!(r["timestamp"].as_f64().is_some(), "{r}");
    }
    assert_eq!(all[0]["new"]["name"], "truck");
    assert!(all[0].get("old").is_none());
    assert_eq!(all[2]["old"]["name"], "truck 2");
    assert_eq!(all[2]["new"]["name"], "truck 3");
    let ts: Vec<f64> = all
        .iter()
        .map(|r| r["timestamp"].as_f64().unwrap_or_default())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "in time order: {ts:?}");

    // count, reverse, from/to, filter, fields; the Toolbox's `item_type` is ignored.
    let last = logs(
        &env,
        "devices",
        id,
        json!({"reverse": true, "count": 1, "item_type": 11}),
    )
    .await;
    assert_eq!(last.len(), 1);
    assert_eq!(last[0]["new"]["name"], "truck 3");
    let window = logs(&env, "devices", id, json!({"from": ts[1], "to": ts[1]})).await;
    assert_eq!(window.len(), 1);
    assert_eq!(window[0]["new"]["name"], "truck 2");
    let after = logs(
        &env,
        "devices",
        id,
        json!({"from": ts[0] + 0.000001, "count": 5}),
    )
    .await;
    assert_eq!(codes(&after), vec![code::UPDATED, code::UPDATED]);
    let created = logs(&env, "devices", id, json!({"filter": "event_code==1"})).await;
    assert_eq!(codes(&created), vec![code::CREATED]);
    let slim = logs(
        &env,
        "devices",
        id,
        json!({"fields": "event_code,origin_id", "count": 1}),
    )
    .await;
    assert_eq!(slim, vec![json!({"event_code": 1, "origin_id": id})]);

    // `data` from a GET body, as re-register tools send it.
    let r = env
        .master(
            "GET",
            &format!("/gw/devices/{id}/logs"),
            Some(json!({"reverse": true, "count": 2})),
        )
        .await;
    assert_eq!(codes(&r.result()), vec![code::UPDATED, code::UPDATED]);

    // A filter that does not parse is a 400.
    let r = env
        .master(
            "GET",
            &format!(
                "/gw/devices/{id}/logs?data={}",
                enc(&json!({"filter": "a +"}).to_string())
            ),
            None,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());

    // CSV, with the columns from `fields`.
    let r = env
        .call(
            "GET",
            &format!(
                "/gw/devices/{id}/logs?data={}",
                enc(&json!({"fields": "event_code,origin_type"}).to_string())
            ),
            Some(&env.master),
            &[("accept", "text/csv")],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "event_code,origin_type\r\n1,11\r\n2,11\r\n2,11\r\n"
    );
}

/// A device's logs read in sub-account 1001 (`x-flespi-cid`).
async fn as_child(env: &Env, id: u64) -> Resp {
    env.call(
        "GET",
        &format!("/gw/devices/{id}/logs"),
        Some(&env.master),
        &[("x-flespi-cid", "1001")],
        None,
    )
    .await
}

#[tokio::test]
async fn a_sub_account_reads_only_its_own_devices_logs() {
    let (env, _backend) = gw_env(GwOptions::default()).await;
    env.subaccount(1001, TOP, "child").await;
    let parent = device(&env, "p", "p1").await;
    let r = env
        .master(
            "POST",
            "/gw/devices",
            Some(json!({"name": "c", "device_type_id": HTTP_TYPE, "configuration": {"ident": "c1"}, "cid": 1001})),
        )
        .await;
    let child = r.result()[0]["id"].as_u64().expect("id");
    env.store.flush(std::time::Duration::from_secs(5)).await;
    assert_eq!(
        codes(&as_child(&env, child).await.result()),
        vec![code::CREATED]
    );
    assert!(
        as_child(&env, parent).await.result().is_empty(),
        "the parent's device is out of the child's scope"
    );
    let both = env
        .master("GET", &format!("/gw/devices/{parent},{child}/logs"), None)
        .await;
    assert_eq!(both.result().len(), 2);
}

#[tokio::test]
async fn logs_survive_a_restart_and_go_with_their_device() {
    let (env, backend) = gw_env(GwOptions::default()).await;
    let id = device(&env, "kept", "k1").await;
    rename(&env, id, "kept 2").await;
    let other = device(&env, "other", "k2").await;
    env.store.flush(std::time::Duration::from_secs(5)).await;
    let env = env.restart(&backend, GwOptions::default()).await;
    let all = logs(&env, "devices", id, json!({})).await;
    assert_eq!(codes(&all), vec![code::CREATED, code::UPDATED]);
    assert_eq!(all[1]["new"]["name"], "kept 2");

    let r = env
        .master("DELETE", &format!("/gw/devices/{id}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    env.store.flush(std::time::Duration::from_secs(5)).await;
    assert_eq!(stored(&env, Origin::Device.key(id)), 0, "the log went");
    assert!(logs(&env, "devices", id, json!({})).await.is_empty());
    assert_eq!(
        codes(&logs(&env, "devices", other, json!({})).await),
        vec![code::CREATED],
        "other devices keep theirs"
    );
    let env = env.restart(&backend, GwOptions::default()).await;
    assert_eq!(stored(&env, Origin::Device.key(id)), 0);
}

#[tokio::test]
async fn a_channels_log_is_read_and_goes_with_the_channel() {
    let (env, _backend) = gw_env(GwOptions::default()).await;
    let r = env
        .master(
            "POST",
            "/gw/channels",
            Some(json!({"name": "in", "protocol_name": "http"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.result()[0]["id"].as_u64().expect("id");
    let mut host = Map::new();
    host.insert("host".into(), json!("10.0.0.5:4000"));
    env.gateway
        .log(TOP, Origin::Channel, id, channel_event::ACCEPTED, host);
    let mut closed = Map::new();
    closed.insert("close_code".into(), json!(close_code::INACTIVITY_TIMEOUT));
    closed.insert("ident".into(), json!("354"));
    env.gateway
        .log(TOP, Origin::Channel, id, channel_event::CLOSED, closed);
    env.store.flush(std::time::Duration::from_secs(5)).await;

    let all = logs(&env, "channels", id, json!({})).await;
    assert_eq!(
        codes(&all),
        vec![code::CONNECTION_ACCEPTED, code::CONNECTION_CLOSED]
    );
    assert_eq!(all[0]["origin_type"], 9);
    assert_eq!(all[0]["origin_id"], id);
    assert_eq!(all[0]["host"], "10.0.0.5:4000");
    assert_eq!(all[1]["close_code"], 17);
    let closes = logs(&env, "channels", id, json!({"filter": "close_code==17"})).await;
    assert_eq!(closes.len(), 1);
    // A device with the same id has a log of its own.
    assert!(logs(&env, "devices", id, json!({})).await.is_empty());

    let r = env
        .master("DELETE", &format!("/gw/channels/{id}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    env.store.flush(std::time::Duration::from_secs(5)).await;
    assert_eq!(stored(&env, Origin::Channel.key(id)), 0);
}

#[tokio::test]
async fn records_older_than_logs_ttl_go_at_the_sweep() {
    let options = GwOptions {
        logs_ttl: 3600,
        ..GwOptions::default()
    };
    let (env, _backend) = gw_env(options).await;
    let now = env.broker.clock.now() as f64 / 1e6;
    let id = device(&env, "old", "o1").await;
    env.store.flush(std::time::Duration::from_secs(5)).await;
    assert_eq!(env.gateway.sweep(now + 60.0).logs, 0, "not yet");
    assert_eq!(logs(&env, "devices", id, json!({})).await.len(), 1);
    // The device's log, and the account's REST call log (platform_logs.rs).
    let swept = env.gateway.sweep(now + 3700.0);
    assert!(swept.logs >= 1, "{swept:?}");
    env.store.flush(std::time::Duration::from_secs(5)).await;
    assert_eq!(stored(&env, Origin::Device.key(id)), 0);
    assert!(logs(&env, "devices", id, json!({})).await.is_empty());
}

#[tokio::test]
async fn logs_ttl_zero_publishes_but_keeps_nothing() {
    let options = GwOptions {
        logs_ttl: 0,
        ..GwOptions::default()
    };
    let (env, _backend) = gw_env(options).await;
    let id = device(&env, "d", "z1").await;
    env.store.flush(std::time::Duration::from_secs(5)).await;
    assert!(logs(&env, "devices", id, json!({})).await.is_empty());
}

#[tokio::test]
async fn an_account_past_logs_max_bytes_loses_its_oldest_records() {
    let options = GwOptions {
        logs_max_bytes: 2000,
        ..GwOptions::default()
    };
    let (env, _backend) = gw_env(options).await;
    // The devices live in a sub-account: the calls below are logged in the top account's
    // REST call log, which would share the cap.
    env.subaccount(1001, TOP, "capped").await;
    let a = child_device(&env, "a", "a1").await;
    let b = child_device(&env, "b", "b1").await;
    for i in 0..4 {
        rename(&env, a, &format!("a{i}")).await;
        rename(&env, b, &format!("b{i}")).await;
    }
    env.store.flush(std::time::Duration::from_secs(5)).await;
    let bytes = |env: &Env| {
        [a, b]
            .iter()
            .map(|d| {
                env.store
                    .message_stats(Origin::Device.key(*d))
                    .map_or(0, |s| s.bytes)
            })
            .sum::<u64>()
    };
    assert!(bytes(&env) > 2000, "{}", bytes(&env));
    let mut before: Vec<f64> = [a, b]
        .iter()
        .flat_map(|d| {
            let key = Origin::Device.key(*d);
            let mut ts = Vec::new();
            let range = MessageRange {
                device: key,
                from: i64::MIN,
                to: i64::MAX,
                reverse: false,
            };
            env.store
                .device_messages(&range, &mut |k, _| {
                    ts.push(k.ts as f64 / 1e6);
                    Visit::More
                })
                .expect("read");
            ts
        })
        .collect();
    before.sort_by(f64::total_cmp);

    let now = env.broker.clock.now() as f64 / 1e6;
    let swept = env.gateway.sweep(now);
    assert!(swept.logs >= 1, "{swept:?}");
    env.store.flush(std::time::Duration::from_secs(5)).await;
    assert!(bytes(&env) <= 2000, "{}", bytes(&env));
    let mut kept: Vec<f64> = Vec::new();
    for d in [a, b] {
        for r in logs(&env, "devices", d, json!({})).await {
            kept.push(r["timestamp"].as_f64().expect("timestamp"));
        }
    }
    kept.sort_by(f64::total_cmp);
    assert!(!kept.is_empty());
    assert_eq!(
        kept[..],
        before[before.len() - kept.len()..],
        "the newest records of the account stay, the oldest went"
    );
    // The top account's REST call log may still be trimmed; the sub-account's logs stay.
    let kept_bytes = bytes(&env);
    env.gateway.sweep(now);
    env.store.flush(std::time::Duration::from_secs(5)).await;
    assert_eq!(bytes(&env), kept_bytes, "under the cap now");
}

#[tokio::test]
async fn const_values_serves_the_code_table_without_a_token() {
    let env = Env::start().await;
    let r = env
        .call(
            "GET",
            "/const/values?names=toolbox%2Fcodes",
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let table = &body["result"][0]["toolbox/codes"];
    for c in [1, 2, 3, 100, 101, 102, 300, 301, 330, 332, 333, 334, 335] {
        let entry = &table["codes"][c.to_string()];
        assert!(entry["description"].is_string(), "{c}: {body}");
        assert!(entry["severity"].is_string(), "{c}");
    }
    assert_eq!(table["codes"]["102"]["extra_name"], "close_code");
    assert_eq!(
        table["codes"]["102"]["extra_codes"]["17"]["description"],
        "inactivity timeout"
    );
    for entity in ["base", "devices", "channels", "streams", "webhooks"] {
        assert!(table["entities"][entity].is_array(), "{entity}");
    }
    assert_eq!(table["entities"]["channels"], json!([100, 101, 102]));
    // With a token it answers the same; a name tern does not know is left out.
    let r = env
        .call(
            "GET",
            "/const/values?names=toolbox/codes,other",
            Some(&env.master),
            &[],
            None,
        )
        .await;
    assert_eq!(r.result().len(), 1);
}
