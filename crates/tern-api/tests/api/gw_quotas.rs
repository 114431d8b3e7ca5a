//! The devices layer's quotas (`devices`, `channels`, `messages_bytes`: docs/flespi.md#devices)
//! over real sockets: creations refused at the limit with the envelope (403 in `errors`, as
//! for tokens and sub-accounts), a sub-account's use counted against its parent, messages
//! refused whole once the account tree's stored bytes are used up and taken again after a
//! delete frees them; and the counters `/metrics` shows moving with ingest and a sweep.

use std::time::Duration;

use serde_json::{Value, json};
use tern_codec::ProtocolVersion;
use tern_gw::GwOptions;
use tern_gw::metrics::{Refusal, Route};
use tern_store::MemoryBackend;

use crate::support::*;

const HTTP_TYPE: u64 = 1;
const TENANT: u64 = 2000;
const CHILD: u64 = 2001;

async fn gw_env() -> Env {
    Env::start_with_store(&MemoryBackend::new(), GwOptions::default()).await
}

/// Sub-account `TENANT` (with `limits`) and its own sub-account `CHILD`.
async fn tenant(env: &Env, limits: Value) {
    let r = env
        .master(
            "POST",
            "/platform/subaccounts",
            Some(json!({"id": TENANT, "name": "tenant", "limits": limits})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    env.subaccount(CHILD, TENANT, "child").await;
}

fn device_item(cid: u64, ident: &str) -> Value {
    json!({"name": ident, "cid": cid, "device_type_id": HTTP_TYPE, "configuration": {"ident": ident}})
}

async fn create_device(env: &Env, cid: u64, ident: &str) -> u64 {
    let r = env
        .master("POST", "/gw/devices", Some(device_item(cid, ident)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.ids()[0]
}

/// Asserts the flespi envelope of one refused item: the call 400, the item's error 403 naming
/// the quota, nothing in `result`.
fn expect_quota_refusal(r: &Resp, quota: &str) {
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.result().is_empty(), "{}", r.text());
    let err = &r.json()["errors"][0];
    assert_eq!(err["code"], 403, "{}", r.text());
    assert_eq!(err["index"], 0, "{}", r.text());
    assert!(
        err["reason"].as_str().is_some_and(|s| s.contains(quota)),
        "{err}"
    );
}

async fn count_devices(env: &Env) -> usize {
    let r = env.master("GET", "/gw/devices/all", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.result().len()
}

async fn history(env: &Env, path: &str) -> Vec<Value> {
    env.store.flush(Duration::from_secs(5)).await;
    let r = env.master("GET", path, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.result()
}

/// `n` messages of about `pad` bytes each.
fn batch(n: usize, pad: usize, ident: Option<&str>) -> Value {
    Value::Array(
        (0..n)
            .map(|i| {
                let mut m = json!({"timestamp": 1_700_000_000 + i, "pad": "x".repeat(pad)});
                if let Some(ident) = ident {
                    m["ident"] = json!(ident);
                }
                m
            })
            .collect(),
    )
}

/// Sets the tenant's `messages_bytes` limit.
async fn limit_bytes(env: &Env, bytes: u64) {
    let r = env
        .master(
            "PATCH",
            &format!("/platform/subaccounts/{TENANT}"),
            Some(json!({"limits": {"messages_bytes": bytes}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

async fn post_messages(env: &Env, id: u64, body: &Value) -> Resp {
    env.master(
        "POST",
        &format!("/gw/devices/{id}/messages"),
        Some(body.clone()),
    )
    .await
}

#[tokio::test]
async fn the_devices_quota_counts_subaccounts_against_their_parent() {
    let env = gw_env().await;
    tenant(&env, json!({"devices": 2})).await;

    // One in the child, one in the tenant: the tenant's quota (2) is used up by both.
    let first = create_device(&env, CHILD, "d1").await;
    create_device(&env, TENANT, "d2").await;
    let r = env
        .master("POST", "/gw/devices", Some(device_item(CHILD, "d3")))
        .await;
    expect_quota_refusal(&r, "the devices quota of account 2000 (2) is used up");
    assert_eq!(count_devices(&env).await, 2, "nothing created");
    assert_eq!(env.gateway.usage(TENANT).0, 2);
    assert_eq!(env.gateway.usage(CHILD).0, 1);

    // A sub-account's limit is never above its parent's.
    let r = env
        .master(
            "PATCH",
            &format!("/platform/subaccounts/{CHILD}"),
            Some(json!({"limits": {"devices": 3}})),
        )
        .await;
    r.expect_error(400, "above the parent account's devices (2)");

    // A token of the tenant is refused the same way.
    let key = env
        .token(json!({"cid": TENANT, "access": {"type": 1}, "info": "tenant"}))
        .await;
    let r = env
        .call(
            "POST",
            "/gw/devices",
            Some(&key),
            &[],
            Some(device_item(TENANT, "d4").to_string().into_bytes()),
        )
        .await;
    expect_quota_refusal(&r, "devices quota of account 2000");

    // Deleting one makes room again.
    let r = env
        .master("DELETE", &format!("/gw/devices/{first}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    create_device(&env, CHILD, "d3").await;
    assert_eq!(count_devices(&env).await, 2);

    // Moving a device into the full tenant is refused the same way; it stays where it was.
    let outside = create_device(&env, TOP, "d5").await;
    let r = env
        .master(
            "PATCH",
            &format!("/gw/devices/{outside}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = env
        .master(
            "PUT",
            &format!("/gw/devices/{outside}/cid"),
            Some(json!({"cid": CHILD})),
        )
        .await;
    assert_eq!(r.json()["errors"][0]["code"], 403, "{}", r.text());
    assert_eq!(env.gateway.device(outside).map(|d| d.cid), Some(TOP));

    // Deleting the child account deletes its device and frees the tenant's quota.
    let r = env
        .master("DELETE", &format!("/platform/subaccounts/{CHILD}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.gateway.usage(TENANT).0, 1);
    let r = env
        .master(
            "PUT",
            &format!("/gw/devices/{outside}/cid"),
            Some(json!({"cid": TENANT})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.gateway.usage(TENANT).0, 2);
    assert_eq!(env.gateway.usage(TOP).0, 2);
}

#[tokio::test]
async fn the_channels_quota_refuses_with_the_envelope() {
    let env = gw_env().await;
    tenant(&env, json!({"channels": 1})).await;
    let item = |name: &str, cid: u64| json!({"name": name, "protocol_id": 1, "cid": cid});
    let r = env
        .master("POST", "/gw/channels", Some(item("a", CHILD)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let a = r.ids()[0];
    let r = env
        .master("POST", "/gw/channels", Some(item("b", TENANT)))
        .await;
    expect_quota_refusal(&r, "the channels quota of account 2000 (1) is used up");
    let r = env.master("GET", "/gw/channels/all", None).await;
    assert_eq!(r.ids(), vec![a], "nothing created");

    // The top account's own channels are not the tenant's.
    let r = env
        .master(
            "POST",
            "/gw/channels",
            Some(json!({"name": "top", "protocol_id": 1})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.gateway.usage(TOP).1, 2);

    env.master("DELETE", &format!("/gw/channels/{a}"), None)
        .await;
    let r = env
        .master("POST", "/gw/channels", Some(item("b", TENANT)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn stored_bytes_refuse_whole_posts_until_a_delete_frees_them() {
    let env = gw_env().await;
    tenant(&env, json!({})).await;
    let id = create_device(&env, CHILD, "bytes").await;
    let path = format!("/gw/devices/{id}/messages");

    // Two batches of ten; the quota is set to two and a half of them.
    let ten = batch(10, 60, None);
    let r = post_messages(&env, id, &ten).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let one = env.gateway.usage(TENANT).2;
    assert!(one > 10 * 60, "{one}");
    limit_bytes(&env, one * 5 / 2).await;
    let r = post_messages(&env, id, &ten).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(history(&env, &path).await.len(), 20);
    let used = env.gateway.usage(TENANT).2;
    assert_eq!(env.gateway.usage(CHILD).2, used);
    // What the quota counts is what the store counts (the device's messages_size).
    let r = env.master("GET", &format!("/gw/devices/{id}"), None).await;
    assert_eq!(r.result()[0]["messages_size"], used);

    // A third batch would pass the quota: refused whole, 403 in the envelope.
    let r = post_messages(&env, id, &ten).await;
    r.expect_error(
        403,
        &format!(
            "the messages_bytes quota of account 2000 ({}) is used up",
            one * 5 / 2
        ),
    );
    assert_eq!(r.json()["errors"][0]["code"], 403);
    assert_eq!(history(&env, &path).await.len(), 20, "nothing partial");
    assert_eq!(env.gateway.usage(TENANT).2, used);

    // A small one still fits.
    let r = post_messages(&env, id, &batch(1, 10, None)).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Deleting part of the history frees its bytes: the batch goes in.
    let r = env
        .call(
            "DELETE",
            &format!("{path}?data={}", enc(r#"{"to": 1700000004}"#)),
            Some(&env.master),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // (five of each batch and the small one)
    assert_eq!(history(&env, &path).await.len(), 21 - 11);
    assert!(env.gateway.usage(TENANT).2 < used);
    let r = post_messages(&env, id, &ten).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(history(&env, &path).await.len(), 20);

    // Deleting everything frees everything.
    let r = env.master("DELETE", &path, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.gateway.usage(TENANT).2, 0);
    assert_eq!(env.gateway.usage(CHILD).2, 0);
    assert!(history(&env, &path).await.is_empty());
}

#[tokio::test]
async fn channel_batches_are_refused_whole_at_the_bytes_quota() {
    let env = gw_env().await;
    tenant(&env, json!({})).await;
    let id = create_device(&env, CHILD, "ch-1").await;
    let r = env
        .master(
            "POST",
            "/gw/channels",
            Some(json!({"name": "in", "protocol_id": 1, "cid": TENANT, "messages_ttl": 3600})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let channel = r.result()[0].clone();
    let cid_path = channel["uri"].as_str().expect("uri");
    let ingest = &cid_path[cid_path.find("/gw/channels/").expect("path")..];
    let buffer = format!("/gw/channels/{}/messages", channel["id"]);
    let device = format!("/gw/devices/{id}/messages");

    // Ten messages go to the buffer and to the device, each counted in its own account,
    // both inside the tenant. The quota is set to twice that.
    let ten = batch(10, 40, Some("ch-1")).to_string().into_bytes();
    let r = env.call("POST", ingest, None, &[], Some(ten.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(history(&env, &buffer).await.len(), 10);
    assert_eq!(history(&env, &device).await.len(), 10);
    let used = env.gateway.usage(TENANT).2;
    let in_device = env.gateway.usage(CHILD).2;
    assert!(in_device > 0 && in_device < used, "{in_device} of {used}");
    limit_bytes(&env, used * 2).await;

    // Twice that passes the quota: nothing kept anywhere, nothing published.
    let mut watch = env.mqtt(ProtocolVersion::V5, "watch", &env.master).await;
    watch.subscribe("flespi/message/gw/#").await;
    let twenty = batch(20, 40, Some("ch-1")).to_string().into_bytes();
    let r = env.call("POST", ingest, None, &[], Some(twenty)).await;
    r.expect_error(
        403,
        &format!(
            "the messages_bytes quota of account 2000 ({}) is used up",
            used * 2
        ),
    );
    watch.expect_nothing().await;
    assert_eq!(history(&env, &buffer).await.len(), 10, "nothing partial");
    assert_eq!(history(&env, &device).await.len(), 10, "nothing partial");
    assert_eq!(env.gateway.usage(TENANT).2, used);

    // Emptying the buffer frees its part.
    let r = env.master("DELETE", &buffer, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = env.call("POST", ingest, None, &[], Some(ten)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(history(&env, &device).await.len(), 20);
}

#[tokio::test]
async fn ingest_refusal_and_sweep_counters_move() {
    let env = gw_env().await;
    tenant(&env, json!({"messages_bytes": 3000})).await;
    let m = &env.gateway.metrics;
    let id = create_device(&env, CHILD, "m1").await;
    let r = env
        .master(
            "PATCH",
            &format!("/gw/devices/{id}"),
            Some(json!({"messages_ttl": 3600})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (devices, channels, bytes) = env.gateway.gauges();
    assert_eq!((devices, channels, bytes), (1, 0, 0));

    // Messages from last year: the sweep expires them.
    let now = env.broker.clock.now() as f64 / 1e6;
    let old: Vec<Value> = (0..5)
        .map(|i| json!({"timestamp": now - 86_400.0 - f64::from(i), "v": i}))
        .collect();
    let r = post_messages(&env, id, &Value::Array(old)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(m.ingested(Route::DevicePost), 5);
    assert!(env.gateway.gauges().2 > 0);

    let r = post_messages(&env, id, &json!([{"bad": true, "timestamp": "yesterday"}])).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(m.refused(Refusal::Invalid), 1);
    let r = post_messages(&env, id, &batch(40, 60, None)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(m.refused(Refusal::Quota), 40);
    assert_eq!(m.ingested(Route::DevicePost), 5);

    // An HTTP channel's messages count by their route.
    let r = env
        .master(
            "POST",
            "/gw/channels",
            Some(json!({"name": "in", "protocol_id": 1})),
        )
        .await;
    let uri = r.result()[0]["uri"].as_str().expect("uri").to_string();
    let ingest = &uri[uri.find("/gw/channels/").expect("path")..];
    let r = env
        .call(
            "POST",
            ingest,
            None,
            &[],
            Some(br#"[{"ident": "x"}, {"ident": "y"}]"#.to_vec()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(m.ingested(Route::HttpChannel), 2);
    assert_eq!(env.gateway.gauges().1, 1);

    // A retention pass: the sweep runs, its deletes are counted, and the stored bytes come
    // back to what the store holds.
    env.store.flush(Duration::from_secs(5)).await;
    let swept = env.gateway.retention_pass(now).await;
    assert_eq!(swept.expired, 1);
    assert_eq!(
        m.sweeps.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one sweep"
    );
    assert_eq!(m.expired.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        m.swept_messages.load(std::sync::atomic::Ordering::Relaxed),
        5
    );
    assert_eq!(env.gateway.gauges().2, 0);
    assert_eq!(env.gateway.usage(TENANT).2, 0);

    // Room again.
    let r = post_messages(&env, id, &batch(10, 60, None)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(m.ingested(Route::DevicePost), 15);
}

#[tokio::test]
async fn what_is_counted_survives_a_restart() {
    let backend = MemoryBackend::new();
    let env = Env::start_with_store(&backend, GwOptions::default()).await;
    tenant(&env, json!({"devices": 1})).await;
    let id = create_device(&env, CHILD, "kept").await;
    let r = post_messages(&env, id, &batch(10, 60, None)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    env.store.flush(Duration::from_secs(5)).await;
    let before = env.gateway.usage(TENANT);
    assert_eq!(before.0, 1);
    assert!(before.2 > 0);

    // Counted again from the store at start: the same totals, the same refusals.
    let env = env.restart(&backend, GwOptions::default()).await;
    assert_eq!(env.gateway.usage(TENANT), before);
    assert_eq!(env.gateway.usage(TOP).2, before.2);
    assert_eq!(env.gateway.gauges(), (1, 0, before.2));
    let r = env
        .master("POST", "/gw/devices", Some(device_item(TENANT, "more")))
        .await;
    expect_quota_refusal(&r, "the devices quota of account 2000 (1) is used up");
}
