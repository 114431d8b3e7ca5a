//! `/gw/devices` and `/gw/groups` (docs/flespi.md#devices) over real sockets: CRUD with the state,
//! property and log topics, every selector form of the seed, messages (windows, reverse,
//! filter, fields, truncation, deletes), telemetry (late messages, `position`, the `timestamp`
//! user property), retention, restarts, account scoping and CSV.

use serde_json::{Value, json};
use tern_codec::{ProtocolVersion, Publish};
use tern_gw::GwOptions;
use tern_store::MemoryBackend;

use crate::support::*;

const HTTP_TYPE: u64 = 1;

async fn gw_env() -> (Env, MemoryBackend) {
    let backend = MemoryBackend::new();
    let env = Env::start_with_store(&backend, GwOptions::default()).await;
    (env, backend)
}

async fn create(env: &Env, item: Value) -> Value {
    let r = env.master("POST", "/gw/devices", Some(item)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.result()[0].clone()
}

async fn device(env: &Env, name: &str, ident: &str) -> u64 {
    create(
        env,
        json!({"name": name, "device_type_id": HTTP_TYPE, "configuration": {"ident": ident}}),
    )
    .await["id"]
        .as_u64()
        .expect("id")
}

async fn post(env: &Env, id: u64, messages: Value) {
    let r = env
        .master(
            "POST",
            &format!("/gw/devices/{id}/messages"),
            Some(messages),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"result": []}));
}

async fn messages(env: &Env, id: u64, data: Value) -> Resp {
    env.master(
        "GET",
        &format!("/gw/devices/{id}/messages?data={}", enc(&data.to_string())),
        None,
    )
    .await
}

fn timestamps(r: &Resp) -> Vec<f64> {
    r.result()
        .iter()
        .map(|m| m["timestamp"].as_f64().expect("timestamp"))
        .collect()
}

/// Every PUBLISH until the line is quiet.
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

#[tokio::test]
async fn create_update_delete_publish_state_property_and_log_topics() {
    let (env, _backend) = gw_env().await;
    let mut watch = env.mqtt(ProtocolVersion::V5, "watch", &env.master).await;
    watch.subscribe("flespi/state/gw/devices/#").await;
    watch.subscribe("flespi/log/gw/devices/#").await;

    let item = create(
        &env,
        json!({"name": "truck", "device_type_id": HTTP_TYPE, "configuration": {"ident": "354"}, "metadata": {"fleet_id": 10}}),
    )
    .await;
    let id = item["id"].as_u64().expect("id");
    assert_eq!(item["messages_ttl"], 31_536_000);
    assert_eq!(item["protocol_id"], 1);
    assert_eq!(item["enabled"], true);
    let ps = drain(&mut watch).await;
    let state = on(&ps, &format!("flespi/state/gw/devices/{id}"));
    assert_eq!(state.len(), 1);
    assert_eq!(payload(state[0])["name"], "truck");
    assert!(payload(state[0]).get("telemetry").is_none());
    assert_eq!(user_property(state[0], "cid"), Some("1000"));
    let name = on(&ps, &format!("flespi/state/gw/devices/{id}/name"));
    assert_eq!(payload(name[0]), json!("truck"));
    assert_eq!(
        payload(on(&ps, &format!("flespi/state/gw/devices/{id}/configuration"))[0]),
        json!({"ident": "354"})
    );
    assert!(on(&ps, &format!("flespi/state/gw/devices/{id}/deleted")).is_empty());
    let created = on(&ps, &format!("flespi/log/gw/devices/{id}/created"));
    assert_eq!(payload(created[0])["new"]["name"], "truck");
    assert_eq!(payload(created[0])["origin_type"], 11);

    // Retained: a later subscriber gets the item and each property.
    let mut late = env.mqtt(ProtocolVersion::V5, "late", &env.master).await;
    late.subscribe(&format!("flespi/state/gw/devices/{id}/+"))
        .await;
    let kept = drain(&mut late).await;
    assert!(kept.iter().all(|p| p.retain));
    assert!(kept.iter().any(|p| p.topic.ends_with("/name")));
    assert!(kept.iter().any(|p| p.topic.ends_with("/last_active")));

    // Update: only what changed, and a log record with new and old.
    let r = env
        .master(
            "PATCH",
            &format!("/gw/devices/{id}"),
            Some(json!({"name": "van", "metadata": {"x": 1}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.result()[0]["metadata"], json!({"fleet_id": 10, "x": 1}));
    let ps = drain(&mut watch).await;
    assert_eq!(
        payload(on(&ps, &format!("flespi/state/gw/devices/{id}/name"))[0]),
        json!("van")
    );
    assert!(on(&ps, &format!("flespi/state/gw/devices/{id}/configuration")).is_empty());
    let updated = on(&ps, &format!("flespi/log/gw/devices/{id}/updated"));
    assert_eq!(payload(updated[0])["new"]["name"], "van");
    assert_eq!(payload(updated[0])["old"]["name"], "truck");

    // Read-only fields and unknown fields are refused.
    env.master("PUT", &format!("/gw/devices/{id}"), Some(json!({"id": 5})))
        .await
        .expect_error(400, "cannot be changed");
    env.master(
        "PUT",
        &format!("/gw/devices/{id}"),
        Some(json!({"bogus": 5})),
    )
    .await
    .expect_error(400, "bogus");

    // Delete: empty retained payloads, then `deleted` = true (not retained).
    let r = env
        .master("DELETE", &format!("/gw/devices/{id}"), None)
        .await;
    assert_eq!(r.ids(), vec![id]);
    let ps = drain(&mut watch).await;
    let state = on(&ps, &format!("flespi/state/gw/devices/{id}"));
    assert!(state[0].payload.is_empty());
    assert!(
        on(&ps, &format!("flespi/state/gw/devices/{id}/name"))[0]
            .payload
            .is_empty()
    );
    let deleted = on(&ps, &format!("flespi/state/gw/devices/{id}/deleted"));
    assert_eq!(payload(deleted[0]), json!(true));
    let gone = on(&ps, &format!("flespi/log/gw/devices/{id}/deleted"));
    assert_eq!(payload(gone[0])["old"]["name"], "van");
    assert!(payload(gone[0]).get("new").is_none());
    let mut after = env.mqtt(ProtocolVersion::V5, "after", &env.master).await;
    after
        .subscribe(&format!("flespi/state/gw/devices/{id}/#"))
        .await;
    after.expect_nothing().await;
    let r = env.master("GET", "/gw/devices/all", None).await;
    assert!(r.result().is_empty());
}

#[tokio::test]
async fn idents_are_unique_per_protocol_and_account_tree() {
    let (env, _backend) = gw_env().await;
    env.subaccount(1001, TOP, "sub").await;
    let first = device(&env, "a", "123").await;
    let r = env
        .master(
            "POST",
            "/gw/devices",
            Some(json!({"device_type_id": HTTP_TYPE, "configuration": {"ident": "123"}, "cid": 1001})),
        )
        .await;
    r.expect_error(400, &format!("device {first}"));
    // Another protocol may use it.
    let r = env
        .master(
            "POST",
            "/gw/devices",
            Some(json!({"device_type_id": 2, "configuration": {"ident": "123"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Bad items: nothing created.
    let r = env
        .master(
            "POST",
            "/gw/devices",
            Some(json!([{"device_type_id": HTTP_TYPE, "configuration": {"ident": "9"}}, {"device_type_id": HTTP_TYPE}])),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        env.master("GET", "/gw/devices/all", None)
            .await
            .result()
            .len(),
        2
    );
}

#[tokio::test]
async fn every_selector_form_of_the_seed() {
    let (env, _backend) = gw_env().await;
    env.subaccount(1001, TOP, "sub").await;
    let a = create(
        &env,
        json!({"name": "a", "device_type_id": HTTP_TYPE, "configuration": {"ident": "12345"}, "metadata": {"fleet_id": 10}}),
    )
    .await["id"]
        .as_u64()
        .expect("id");
    let b = create(
        &env,
        json!({"name": "b", "device_type_id": 2, "configuration": {"ident": "99"}, "cid": 1001}),
    )
    .await["id"]
        .as_u64()
        .expect("id");
    let c = device(&env, "c", "55").await;
    post(&env, a, json!([{"position.latitude": 54.7, "position.longitude": 25.3, "can.vehicle.mileage": 1000}])).await;
    post(
        &env,
        b,
        json!([{"position.latitude": 10.0, "position.longitude": 10.0}]),
    )
    .await;
    let g = env
        .master("POST", "/gw/groups", Some(json!({"name": "fleet"})))
        .await;
    assert_eq!(g.status, 200, "{}", g.text());
    let group = g.result()[0]["id"].as_u64().expect("group id");
    let r = env
        .master("POST", &format!("/gw/groups/{group}/devices/{a},{c}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let pick = |sel: &'static str| {
        let env = &env;
        async move {
            let r = env
                .master("GET", &format!("/gw/devices/{}", enc(sel)), None)
                .await;
            assert_eq!(r.status, 200, "{sel}: {}", r.text());
            let mut ids = r.ids();
            ids.sort();
            ids
        }
    };
    assert_eq!(pick("{cid=1000 || cid=1001}").await, vec![a, b, c]);
    assert_eq!(pick("{cid=1001}").await, vec![b]);
    assert_eq!(
        pick("{exists(\"telemetry.can.vehicle.mileage\")}").await,
        vec![a]
    );
    assert_eq!(pick("configuration.ident=1234*").await, vec![a]);
    assert_eq!(pick("metadata.fleet_id=10").await, vec![a]);
    let by_group = format!("groups.id={group}");
    let r = env
        .master("GET", &format!("/gw/devices/{}", enc(&by_group)), None)
        .await;
    let mut ids = r.ids();
    ids.sort();
    assert_eq!(ids, vec![a, c]);
    assert_eq!(pick("protocol_name=\"http\"").await, vec![a, c]);
    assert_eq!(pick("device_type_name=mqtt").await, vec![b]);
    // A device that never sent anything has `last_active` null, which compares as 0: inactive.
    assert_eq!(pick("{last_active < (now() - 86400)}").await, vec![c]);
    assert_eq!(pick("{last_active > (now() - 86400)}").await, vec![a, b]);
    assert_eq!(
        pick("{distance(telemetry.position.latitude, telemetry.position.longitude, 54.72, 25.26) < 100}").await,
        vec![a]
    );
    let r = env
        .master(
            "GET",
            &format!(
                "/gw/devices/{}?fields=id,name,last_active",
                enc("{last_active+86400>now()}")
            ),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.result()[0].clone();
    assert_eq!(first.as_object().map(|o| o.len()), Some(3), "{first}");
    assert!(first["last_active"].is_u64());
    // `fields=telemetry` adds the telemetry; pagination applies.
    let r = env
        .master(
            "GET",
            &format!("/gw/devices/{a}?fields=telemetry.position"),
            None,
        )
        .await;
    assert_eq!(
        r.result()[0]["telemetry"]["position"]["value"]["latitude"],
        54.7
    );
    let r = env
        .master("GET", "/gw/devices/all?limit=1&offset=1", None)
        .await;
    assert_eq!(r.json()["pagination"]["count"], 3);
    assert_eq!(r.ids(), vec![b]);
    // A selector that does not parse.
    env.master("GET", &format!("/gw/devices/{}", enc("{a +}")), None)
        .await
        .expect_error(400, "does not parse");
    // Group membership removed.
    let r = env
        .master("DELETE", &format!("/gw/groups/{group}/devices/{a}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = env
        .master("GET", &format!("/gw/devices/{}", enc(&by_group)), None)
        .await;
    assert_eq!(r.ids(), vec![c]);
}

#[tokio::test]
async fn messages_windows_reverse_filter_fields_and_deletes() {
    let (env, _backend) = gw_env().await;
    let id = device(&env, "d", "777").await;
    let mut watch = env.mqtt(ProtocolVersion::V5, "watch", &env.master).await;
    watch
        .subscribe(&format!("flespi/message/gw/devices/{id}"))
        .await;
    let batch: Vec<Value> = (0..10)
        .map(|i| json!({"timestamp": 1000 + i, "speed": i * 10}))
        .collect();
    post(&env, id, Value::Array(batch)).await;
    // ISO-8601, a missing ident and a missing timestamp.
    post(
        &env,
        id,
        json!({"timestamp": "1970-01-01T00:16:50Z", "speed": 5}),
    )
    .await;
    let live = drain(&mut watch).await;
    assert_eq!(live.len(), 11);
    let first = payload(&live[0]);
    assert_eq!(first["ident"], "777");
    assert_eq!(first["device.id"], id);
    assert_eq!(first["device.name"], "d");
    assert_eq!(first["device.type.id"], 1);
    assert!(first["rest.timestamp"].is_number());

    let r = messages(&env, id, json!({"from": 1002, "to": 1004})).await;
    assert_eq!(timestamps(&r), vec![1002.0, 1003.0, 1004.0]);
    let r = messages(&env, id, json!({"reverse": true, "count": 2})).await;
    assert_eq!(timestamps(&r), vec![1010.0, 1009.0]);
    // Ties keep arrival order (newest first with reverse).
    let ties = device(&env, "ties", "778").await;
    post(
        &env,
        ties,
        json!([{"timestamp": 7, "n": 1}, {"timestamp": 7, "n": 2}]),
    )
    .await;
    let r = messages(&env, ties, json!({"from": 7, "to": 7})).await;
    assert_eq!(
        r.result()
            .iter()
            .map(|m| m["n"].clone())
            .collect::<Vec<_>>(),
        vec![json!(1), json!(2)]
    );
    let r = messages(&env, ties, json!({"reverse": true})).await;
    assert_eq!(
        r.result()
            .iter()
            .map(|m| m["n"].clone())
            .collect::<Vec<_>>(),
        vec![json!(2), json!(1)]
    );
    let r = messages(
        &env,
        id,
        json!({"filter": "speed>=50,speed<80", "fields": "timestamp,speed"}),
    )
    .await;
    assert_eq!(
        r.result(),
        vec![
            json!({"timestamp": 1005, "speed": 50}),
            json!({"timestamp": 1006, "speed": 60}),
            json!({"timestamp": 1007, "speed": 70})
        ]
    );
    // TrackIt's second page: just after the last timestamp.
    let r = messages(&env, id, json!({"from": 1002.000001, "to": 1003})).await;
    assert_eq!(timestamps(&r), vec![1003.0]);
    // data as a GET body (re-register tools).
    let r = env
        .master(
            "GET",
            &format!("/gw/devices/{id}/messages"),
            Some(json!({"from": 1000, "to": 1001})),
        )
        .await;
    assert_eq!(timestamps(&r), vec![1000.0, 1001.0]);
    // CSV.
    let r = env
        .call(
            "GET",
            &format!(
                "/gw/devices/{id}/messages?data={}",
                enc(&json!({"count": 1, "fields": "timestamp,speed"}).to_string())
            ),
            Some(&env.master),
            &[("accept", "text/csv")],
            None,
        )
        .await;
    assert_eq!(r.text(), "timestamp,speed\r\n1000,0\r\n");

    // Bad input: nothing stored.
    env.master(
        "POST",
        &format!("/gw/devices/{id}/messages"),
        Some(json!([{"speed": 1}, {"timestamp": "soon"}])),
    )
    .await
    .expect_error(400, "message 1");
    env.master(
        "POST",
        &format!("/gw/devices/{id}/messages"),
        Some(json!([1])),
    )
    .await
    .expect_error(400, "JSON object");
    messages(&env, id, json!({"filter": "a +"}))
        .await
        .expect_error(400, "does not parse");
    messages(&env, id, json!({"bogus": 1}))
        .await
        .expect_error(400, "bogus");
    assert_eq!(timestamps(&messages(&env, id, json!({})).await).len(), 11);

    // Delete a range.
    let r = env
        .master(
            "DELETE",
            &format!(
                "/gw/devices/{id}/messages?data={}",
                enc(&json!({"from": 1000, "to": 1004}).to_string())
            ),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = messages(&env, id, json!({})).await;
    assert_eq!(
        timestamps(&r),
        vec![1005.0, 1006.0, 1007.0, 1008.0, 1009.0, 1010.0]
    );
    // With a filter: only what passes it.
    let r = env
        .master(
            "DELETE",
            &format!(
                "/gw/devices/{id}/messages?data={}",
                enc(&json!({"from": 1005, "filter": "speed>=70,speed<=80"}).to_string())
            ),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = messages(&env, id, json!({})).await;
    assert_eq!(timestamps(&r), vec![1005.0, 1006.0, 1009.0, 1010.0]);
    let size = env
        .master(
            "GET",
            &format!("/gw/devices/{id}?fields=messages_size"),
            None,
        )
        .await;
    assert!(
        size.result()[0]["messages_size"]
            .as_u64()
            .is_some_and(|s| s > 0)
    );
}

#[tokio::test]
async fn a_truncated_answer_says_so() {
    let backend = MemoryBackend::new();
    let env = Env::start_with_store(
        &backend,
        GwOptions {
            max_messages_per_call: 5,
            ..Default::default()
        },
    )
    .await;
    let id = device(&env, "d", "1").await;
    let batch: Vec<Value> = (0..8).map(|i| json!({"timestamp": i})).collect();
    post(&env, id, Value::Array(batch)).await;
    let r = messages(&env, id, json!({})).await;
    assert_eq!(timestamps(&r).len(), 5);
    assert!(
        r.json()["warnings"][0]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("truncated"))
    );
    let r = messages(&env, id, json!({"count": 3})).await;
    assert_eq!(timestamps(&r).len(), 3);
    assert!(r.json().get("warnings").is_none());
}

#[tokio::test]
async fn telemetry_late_messages_position_and_the_timestamp_property() {
    let (env, _backend) = gw_env().await;
    let id = device(&env, "d", "42").await;
    let mut watch = env.mqtt(ProtocolVersion::V5, "watch", &env.master).await;
    watch
        .subscribe(&format!("flespi/state/gw/devices/{id}/telemetry/+"))
        .await;
    post(&env, id, json!({"timestamp": 1_700_000_100.5, "speed": 10, "position.latitude": 54.7, "position.longitude": 25.2})).await;
    let ps = drain(&mut watch).await;
    let topic = |p: &str| format!("flespi/state/gw/devices/{id}/telemetry/{p}");
    let speed = on(&ps, &topic("speed"));
    assert_eq!(payload(speed[0]), json!(10));
    assert_eq!(
        user_property(speed[0], "timestamp"),
        Some("1700000100.500000")
    );
    assert_eq!(topic("speed").split('/').count(), 7);
    let position = on(&ps, &topic("position"));
    assert_eq!(
        payload(position[0]),
        json!({"latitude": 54.7, "longitude": 25.2})
    );
    assert_eq!(payload(on(&ps, &topic("ident"))[0]), json!("42"));

    // A late message changes nothing it carries that is newer; same values publish nothing.
    post(
        &env,
        id,
        json!({"timestamp": 1_700_000_000, "speed": 1, "fuel": 3}),
    )
    .await;
    let ps = drain(&mut watch).await;
    assert!(on(&ps, &topic("speed")).is_empty());
    assert_eq!(payload(on(&ps, &topic("fuel"))[0]), json!(3));
    assert_eq!(
        user_property(on(&ps, &topic("fuel"))[0], "timestamp"),
        Some("1700000000.000000")
    );

    let r = env
        .master(
            "GET",
            &format!("/gw/devices/{id}/telemetry/speed,position"),
            None,
        )
        .await;
    assert_eq!(
        r.result()[0],
        json!({"id": id, "telemetry": {
            "position": {"value": {"latitude": 54.7, "longitude": 25.2}, "ts": 1_700_000_100.5},
            "speed": {"value": 10, "ts": 1_700_000_100.5}
        }})
    );
    let all = env
        .master("GET", &format!("/gw/devices/{id}/telemetry"), None)
        .await;
    assert!(all.result()[0]["telemetry"]["fuel"].is_object());
    let all = env
        .master("GET", &format!("/gw/devices/{id}/telemetry/all"), None)
        .await;
    assert!(all.result()[0]["telemetry"]["rest.timestamp"].is_object());

    // Deleting a parameter empties its retained topic.
    let r = env
        .master("DELETE", &format!("/gw/devices/{id}/telemetry/fuel"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ps = drain(&mut watch).await;
    assert!(on(&ps, &topic("fuel"))[0].payload.is_empty());
    let r = env
        .master("GET", &format!("/gw/devices/{id}/telemetry/fuel"), None)
        .await;
    assert_eq!(r.result()[0]["telemetry"], json!({}));

    // Retained with the parameter's time for a later subscriber.
    let mut late = env.mqtt(ProtocolVersion::V5, "late", &env.master).await;
    late.subscribe(&topic("speed")).await;
    let p = late.next_publish().await;
    assert!(p.retain);
    assert_eq!(user_property(&p, "timestamp"), Some("1700000100.500000"));
}

#[tokio::test]
async fn retention_by_ttl_and_rotate() {
    let (env, backend) = gw_env().await;
    let now = env.broker.clock.now() as f64 / 1e6;
    let ttl = create(
        &env,
        json!({"device_type_id": HTTP_TYPE, "configuration": {"ident": "t"}, "messages_ttl": 3600}),
    )
    .await["id"]
        .as_u64()
        .expect("id");
    let rot = create(
        &env,
        json!({"device_type_id": HTTP_TYPE, "configuration": {"ident": "r"}, "messages_rotate": 1}),
    )
    .await["id"]
        .as_u64()
        .expect("id");
    let none = create(
        &env,
        json!({"device_type_id": HTTP_TYPE, "configuration": {"ident": "n"}, "messages_ttl": 0}),
    )
    .await["id"]
        .as_u64()
        .expect("id");
    post(
        &env,
        ttl,
        json!([{"timestamp": now - 7200.0}, {"timestamp": now - 10.0}]),
    )
    .await;
    let batch: Vec<Value> = (0..40)
        .map(|i| json!({"timestamp": now - 100.0 + i as f64, "pad": "x".repeat(40)}))
        .collect();
    post(&env, rot, Value::Array(batch)).await;
    post(&env, none, json!({"x": 1})).await;
    assert!(
        timestamps(&messages(&env, none, json!({})).await).is_empty(),
        "ttl 0 keeps nothing"
    );

    let swept = env.gateway.sweep(now);
    assert_eq!((swept.expired, swept.rotated), (1, 1));
    env.store.flush(std::time::Duration::from_secs(5)).await;
    assert_eq!(timestamps(&messages(&env, ttl, json!({})).await).len(), 1);
    let kept = timestamps(&messages(&env, rot, json!({})).await);
    assert!(kept.len() < 40 && !kept.is_empty(), "{kept:?}");
    assert_eq!(kept.last(), Some(&(now - 61.0)), "the newest stay");
    let stats = backend.load().message_stats;
    assert!(stats.iter().any(|(d, s)| *d == rot && s.bytes <= 1024));
    // Nothing more to do.
    assert_eq!(env.gateway.sweep(now), Default::default());
}

#[tokio::test]
async fn a_restart_keeps_devices_groups_telemetry_and_messages() {
    let (env, backend) = gw_env().await;
    let id = device(&env, "kept", "k1").await;
    post(
        &env,
        id,
        json!([{"timestamp": 5, "speed": 1}, {"timestamp": 6, "speed": 2}]),
    )
    .await;
    let g = env
        .master("POST", "/gw/groups", Some(json!({"name": "g"})))
        .await;
    let group = g.result()[0]["id"].as_u64().expect("group");
    env.master("POST", &format!("/gw/groups/{group}/devices/{id}"), None)
        .await;
    let env = env.restart(&backend, GwOptions::default()).await;
    let r = env.master("GET", "/gw/devices/all", None).await;
    assert_eq!(r.result()[0]["name"], "kept");
    assert_eq!(
        timestamps(&messages(&env, id, json!({})).await),
        vec![5.0, 6.0]
    );
    let t = env
        .master("GET", &format!("/gw/devices/{id}/telemetry/speed"), None)
        .await;
    assert_eq!(
        t.result()[0]["telemetry"]["speed"],
        json!({"value": 2, "ts": 6})
    );
    let r = env
        .master(
            "GET",
            &format!("/gw/devices/{}", enc(&format!("groups.id={group}"))),
            None,
        )
        .await;
    assert_eq!(r.ids(), vec![id]);
    assert_eq!(
        env.master("GET", "/gw/groups/all", None).await.result()[0]["name"],
        "g"
    );
    // New ids never reuse old ones, not even the last one deleted.
    let last = device(&env, "last", "k2").await;
    env.master("DELETE", &format!("/gw/devices/{last}"), None)
        .await;
    let env = env.restart(&backend, GwOptions::default()).await;
    let next = device(&env, "new", "k3").await;
    assert!(next > last, "{next} after {last}");
}

#[tokio::test]
async fn a_sub_account_sees_only_its_own_devices() {
    let (env, _backend) = gw_env().await;
    env.subaccount(1001, TOP, "sub").await;
    let parent = device(&env, "parent", "p").await;
    let r = env
        .call(
            "POST",
            "/gw/devices",
            Some(&env.master),
            &[("x-flespi-cid", "1001")],
            Some(
                json!({"device_type_id": HTTP_TYPE, "configuration": {"ident": "s"}})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let child = r.result()[0]["id"].as_u64().expect("id");
    assert_eq!(r.result()[0]["cid"], 1001);
    let sub_key = env.token(json!({"cid": 1001, "access": {"type": 1}})).await;
    let r = env
        .call("GET", "/gw/devices/all", Some(&sub_key), &[], None)
        .await;
    assert_eq!(r.ids(), vec![child]);
    let r = env
        .call(
            "GET",
            &format!("/gw/devices/{parent}/messages"),
            Some(&sub_key),
            &[],
            None,
        )
        .await;
    assert!(r.result().is_empty());
    let r = env
        .call(
            "DELETE",
            &format!("/gw/devices/{parent}"),
            Some(&sub_key),
            &[],
            None,
        )
        .await;
    assert!(r.result().is_empty(), "out of reach");
    // The parent sees both; moving needs a disabled device.
    let mut ids = env.master("GET", "/gw/devices/all", None).await.ids();
    ids.sort();
    assert_eq!(ids, vec![parent, child]);
    env.master(
        "PUT",
        &format!("/gw/devices/{parent}/cid"),
        Some(json!({"cid": 1001})),
    )
    .await
    .expect_error(400, "disabled");
    env.master(
        "PUT",
        &format!("/gw/devices/{parent}"),
        Some(json!({"enabled": false})),
    )
    .await;
    let r = env
        .master(
            "PUT",
            &format!("/gw/devices/{parent}/cid"),
            Some(json!({"cid": 1001})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut ids = env
        .call("GET", "/gw/devices/all", Some(&sub_key), &[], None)
        .await
        .ids();
    ids.sort();
    assert_eq!(ids, vec![parent, child]);
}

#[tokio::test]
async fn devices_as_csv() {
    let (env, _backend) = gw_env().await;
    device(&env, "csv", "c1").await;
    let r = env
        .call(
            "GET",
            "/gw/devices/all?fields=name,configuration.ident",
            Some(&env.master),
            &[("accept", "text/csv")],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "name,configuration.ident\r\ncsv,c1\r\n");
}

#[tokio::test]
async fn deleting_an_account_deletes_its_devices() {
    let (env, backend) = gw_env().await;
    env.subaccount(1001, TOP, "sub").await;
    let kept = device(&env, "kept", "k").await;
    let r = env
        .master(
            "POST",
            "/gw/devices",
            Some(
                json!({"device_type_id": HTTP_TYPE, "configuration": {"ident": "s"}, "cid": 1001}),
            ),
        )
        .await;
    let gone = r.result()[0]["id"].as_u64().expect("id");
    post(&env, gone, json!({"x": 1})).await;
    let r = env
        .master("DELETE", "/platform/subaccounts/1001", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        env.master("GET", "/gw/devices/all", None).await.ids(),
        vec![kept]
    );
    let snapshot = backend.load();
    assert_eq!(snapshot.devices.len(), 1);
    assert!(snapshot.message_stats.iter().all(|(d, _)| *d != gone));
}

#[tokio::test]
async fn devices_over_rest_over_mqtt() {
    let (env, _backend) = gw_env().await;
    let id = device(&env, "bridge", "b1").await;
    post(
        &env,
        id,
        json!([{"timestamp": 1, "v": 1}, {"timestamp": 2, "v": 2}]),
    )
    .await;
    let mut c = env.mqtt(ProtocolVersion::V5, "rest", &env.master).await;
    c.subscribe("replies/#").await;
    let props = tern_codec::PublishProperties {
        response_topic: Some("replies/1".into()),
        ..Default::default()
    };
    // GET data from the payload.
    c.publish(
        &format!("flespi/rest/get/gw/devices/{id}/messages"),
        json!({"reverse": true, "count": 1}).to_string().as_bytes(),
        false,
        props,
    )
    .await;
    let r = c.next_publish().await;
    assert_eq!(user_property(&r, "http_code"), Some("200"));
    let v: Value = serde_json::from_slice(&r.payload).expect("JSON");
    assert_eq!(v["result"][0]["v"], 2);
    assert_eq!(v["result"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn messages_of_several_devices_merge_by_timestamp() {
    let (env, _backend) = gw_env().await;
    let a = device(&env, "a", "a").await;
    let b = device(&env, "b", "b").await;
    post(
        &env,
        a,
        json!([{"timestamp": 1}, {"timestamp": 3}, {"timestamp": 5}]),
    )
    .await;
    post(
        &env,
        b,
        json!([{"timestamp": 2}, {"timestamp": 3}, {"timestamp": 4}]),
    )
    .await;
    let read = |data: Value| {
        let env = &env;
        async move {
            let r = env
                .master(
                    "GET",
                    &format!(
                        "/gw/devices/{a},{b}/messages?data={}",
                        enc(&data.to_string())
                    ),
                    None,
                )
                .await;
            r.result()
                .iter()
                .map(|m| {
                    (
                        m["timestamp"].as_u64().unwrap_or(0),
                        m["device.id"].as_u64().unwrap_or(0),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        read(json!({})).await,
        vec![(1, a), (2, b), (3, a), (3, b), (4, b), (5, a)],
        "ties in arrival order"
    );
    assert_eq!(
        read(json!({"reverse": true, "count": 3})).await,
        vec![(5, a), (4, b), (3, b)]
    );
    assert_eq!(read(json!({"count": 2})).await, vec![(1, a), (2, b)]);
}

#[tokio::test]
async fn connected_and_disconnected_are_logged() {
    let (env, _backend) = gw_env().await;
    let id = device(&env, "d", "c1").await;
    let mut watch = env.mqtt(ProtocolVersion::V5, "watch", &env.master).await;
    watch
        .subscribe(&format!("flespi/log/gw/devices/{id}/+"))
        .await;
    watch
        .subscribe(&format!("flespi/state/gw/devices/{id}/connected"))
        .await;
    drain(&mut watch).await;
    post(&env, id, json!({"x": 1})).await;
    let ps = drain(&mut watch).await;
    let log = on(&ps, &format!("flespi/log/gw/devices/{id}/connected"));
    assert_eq!(payload(log[0])["event_code"], 300);
    let state = on(&ps, &format!("flespi/state/gw/devices/{id}/connected"));
    assert_eq!(payload(state[0]), json!(true));
    // A second message announces nothing new.
    post(&env, id, json!({"x": 2})).await;
    let ps = drain(&mut watch).await;
    assert!(on(&ps, &format!("flespi/log/gw/devices/{id}/connected")).is_empty());

    let now = env.broker.clock.now() as f64 / 1e6;
    assert_eq!(env.gateway.check_activity(now), 0, "still active");
    assert_eq!(env.gateway.check_activity(now + 601.0), 1);
    let ps = drain(&mut watch).await;
    let log = on(&ps, &format!("flespi/log/gw/devices/{id}/disconnected"));
    assert_eq!(payload(log[0])["event_code"], 301);
    let state = on(&ps, &format!("flespi/state/gw/devices/{id}/connected"));
    assert_eq!(payload(state[0]), json!(false));
    assert_eq!(env.gateway.check_activity(now + 602.0), 0, "announced once");
}
