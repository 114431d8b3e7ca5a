//! Bad input: each a clear 400 (413 for a body too large) naming the problem, and nothing
//! changed.

use serde_json::json;

use crate::support::*;

async fn token_count(env: &Env) -> usize {
    env.master("GET", "/platform/tokens/all", None)
        .await
        .result()
        .len()
}

#[tokio::test]
async fn malformed_bodies_change_nothing() {
    let env = Env::start().await;
    let before = token_count(&env).await;
    let raw = |body: &str| Some(body.as_bytes().to_vec());

    env.call(
        "POST",
        "/platform/tokens",
        Some(&env.master),
        &[],
        raw("[{\"info\": "),
    )
    .await
    .expect_error(400, "malformed JSON");
    env.call("POST", "/platform/tokens", Some(&env.master), &[], raw(""))
        .await
        .expect_error(400, "body is required");
    env.call(
        "POST",
        "/platform/tokens",
        Some(&env.master),
        &[],
        raw("42"),
    )
    .await
    .expect_error(400, "array of items");
    let r = env
        .master(
            "POST",
            "/platform/tokens",
            Some(json!([{"info": "fine"}, {"info": "x", "colour": "red"}])),
        )
        .await;
    r.expect_error(400, "unknown field `colour`");
    assert_eq!(r.json()["errors"][0]["index"], 1);
    assert!(r.json().get("result").is_none());
    env.master(
        "POST",
        "/platform/tokens",
        Some(json!({"access": {"type": 7}})),
    )
    .await
    .expect_error(400, "access.type");
    env.master("POST", "/platform/tokens", Some(json!({"key": "short"})))
        .await
        .expect_error(400, "64 characters");
    env.master("POST", "/platform/tokens", Some(json!({"cid": 4242})))
        .await
        .expect_error(400, "not the acting account");
    env.master("POST", "/platform/tokens", Some(json!({"info": 5})))
        .await
        .expect_error(400, "invalid type");
    assert_eq!(token_count(&env).await, before, "nothing created");

    let id = env.master("GET", "/auth/info", None).await.ids()[0];
    env.master(
        "PUT",
        &format!("/platform/tokens/{id}"),
        Some(json!({"key": "x"})),
    )
    .await
    .expect_error(400, "`key` cannot be changed");
    env.master(
        "PATCH",
        &format!("/platform/tokens/{id}"),
        Some(json!({"enabled": false, "shade": 1})),
    )
    .await
    .expect_error(400, "unknown field `shade`");
    env.master("PUT", &format!("/platform/tokens/{id}"), Some(json!([1])))
        .await
        .expect_error(400, "JSON object");
    assert_eq!(
        env.master("GET", "/auth/info", None).await.result()[0]["enabled"],
        true,
        "nothing changed"
    );

    env.master("POST", "/platform/subaccounts", Some(json!({"name": ""})))
        .await
        .expect_error(400, "name");
    env.master("POST", "/platform/subaccounts", Some(json!({})))
        .await
        .expect_error(400, "missing field `name`");
    assert!(
        env.master("GET", "/platform/subaccounts/all", None)
            .await
            .result()
            .is_empty()
    );
}

#[tokio::test]
async fn bad_selectors_and_parameters() {
    let env = Env::start().await;
    env.subaccount(1001, TOP, "keep").await;

    let r = env
        .master("GET", "/platform/subaccounts/%7Bname%20%3D%3D%7D", None)
        .await;
    r.expect_error(400, "does not parse");
    assert!(
        r.reason().contains("expected an expression"),
        "{}",
        r.reason()
    );
    env.master("DELETE", "/platform/subaccounts/%7Bid%20%3E%7D", None)
        .await
        .expect_error(400, "does not parse");
    env.master("DELETE", "/platform/subaccounts/%7Bid%20%3E%200", None)
        .await
        .expect_error(400, "closing");
    env.master("DELETE", "/platform/subaccounts/nonsense", None)
        .await
        .expect_error(400, "invalid selector `nonsense`");
    env.master("GET", "/mqtt/messages/a%2F%23%2Fb", None)
        .await
        .expect_error(400, "topic filter");
    assert_eq!(
        env.master("GET", "/platform/subaccounts/all", None)
            .await
            .ids(),
        vec![1001],
        "nothing deleted"
    );

    env.master("GET", "/platform/subaccounts/all?limit=-1", None)
        .await
        .expect_error(400, "limit must not be negative");
    env.master("GET", "/platform/subaccounts/all?limit=99999999999", None)
        .await
        .expect_error(400, "limit must be at most");
    env.master("GET", "/platform/subaccounts/all?limit=ten", None)
        .await
        .expect_error(400, "whole number");
    env.master("GET", "/platform/subaccounts/all?offset=-5", None)
        .await
        .expect_error(400, "offset must not be negative");
    env.master("GET", "/platform/subaccounts/all?data=nope", None)
        .await
        .expect_error(400, "data is not valid JSON");
    env.master("GET", "/platform/subaccounts/all?data=%5B%5D", None)
        .await
        .expect_error(400, "JSON object");
    env.master("GET", "/mqtt/messages/%23?data=%7B%22bogus%22%3A1%7D", None)
        .await
        .expect_error(400, "unknown field `bogus`");
    env.master(
        "DELETE",
        "/platform/subaccounts/all?data=%7B%22force%22%3Atrue%7D",
        None,
    )
    .await
    .expect_error(400, "unknown field `force`");
    assert_eq!(
        env.master("GET", "/platform/subaccounts/all", None)
            .await
            .ids(),
        vec![1001],
        "nothing deleted"
    );

    env.master("GET", "/platform/nothing", None)
        .await
        .expect_error(404, "unknown URI");
    env.master("GET", "/mqtt/sessions", None)
        .await
        .expect_error(404, "unknown URI");
    env.master("PATCH", "/auth/info", None)
        .await
        .expect_error(405, "not allowed");
    env.master("DELETE", "/platform/customer", None)
        .await
        .expect_error(405, "not allowed");
}

#[tokio::test]
async fn a_10_mib_body_is_refused() {
    let env = Env::start().await;
    let payload = "x".repeat(10 * 1024 * 1024);
    let body = json!({"topic": "big", "payload": payload, "retained": true})
        .to_string()
        .into_bytes();
    let r = env
        .call("POST", "/mqtt/messages", Some(&env.master), &[], Some(body))
        .await;
    r.expect_error(413, "request body larger than");
    assert!(
        env.master("GET", "/mqtt/messages/big", None)
            .await
            .result()
            .is_empty(),
        "nothing published"
    );
}

#[tokio::test]
async fn guessing_keys_is_rate_limited_per_address() {
    let env = Env::start().await;
    let guesser: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
    let other: std::net::IpAddr = "127.0.0.2".parse().expect("ip");
    let wrong = "x".repeat(64);
    let mut statuses = Vec::new();
    // The default burst is 20 failures, refilled at 2 a second.
    for _ in 0..40 {
        let r = env
            .call_from(Some(guesser), "GET", "/auth/info", Some(&wrong), &[], None)
            .await;
        statuses.push(r.status);
        if r.status == 429 {
            r.expect_error(429, "too many failed logins");
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(
        statuses.len() >= 20 && statuses[..statuses.len() - 1].iter().all(|s| *s == 401),
        "{statuses:?}"
    );
    // Refused unchecked: even the right key from that address waits for the bucket.
    env.call_from(
        Some(guesser),
        "GET",
        "/auth/info",
        Some(&env.master),
        &[],
        None,
    )
    .await
    .expect_error(429, "too many");
    // The limit is shared with MQTT CONNECT from the same address...
    assert_eq!(
        Mqtt::connack_code(
            env.mqtt,
            connect_packet(tern_codec::ProtocolVersion::V5, "probe", &env.master)
        )
        .await,
        tern_codec::ReasonCode::CONNECTION_RATE_EXCEEDED
    );
    // ...and nobody else notices.
    let r = env
        .call_from(
            Some(other),
            "GET",
            "/auth/info",
            Some(&env.master),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}
