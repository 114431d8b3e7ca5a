//! `/mqtt/messages`: publishing, retained messages by topic selector, recursion into
//! sub-accounts, deletion, CSV.

use serde_json::json;
use tern_codec::ProtocolVersion;

use crate::support::*;

fn topics(r: &Resp) -> Vec<(u64, String)> {
    r.result()
        .iter()
        .map(|m| {
            (
                m["cid"].as_u64().unwrap_or(0),
                m["topic"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn publish_and_read_retained() {
    let env = Env::start().await;
    env.subaccount(1001, TOP, "sub").await;
    let mut watcher = env.mqtt(ProtocolVersion::V5, "watcher", &env.master).await;
    watcher.subscribe("a/#").await;

    let r = env
        .master(
            "POST",
            "/mqtt/messages",
            Some(json!([
                {"topic": "a/b", "payload": "1", "retained": true},
                {"topic": "a/c", "payload": {"x": 1}, "qos": 1, "retained": true, "user_properties": {"k": "v", "n": 2}},
            ])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.result()[1],
        json!({"topic": "a/c", "cid": 1000, "qos": 1, "retained": true, "subscribers": 1})
    );
    let first = watcher.next_publish().await;
    assert_eq!((&*first.topic, &first.payload[..]), ("a/b", &b"1"[..]));
    let second = watcher.next_publish().await;
    assert_eq!(&second.payload[..], br#"{"x":1}"#);
    assert_eq!(user_property(&second, "k"), Some("v"));
    assert_eq!(user_property(&second, "n"), Some("2"));
    assert_eq!(user_property(&second, "cid"), Some("1000"));

    // The Python SDK's single object, into the sub-account.
    let body = Some(
        json!({"topic": "a/b", "payload": "sub", "retained": true})
            .to_string()
            .into_bytes(),
    );
    let r = env
        .call(
            "POST",
            "/mqtt/messages",
            Some(&env.master),
            &[("x-flespi-cid", "1001")],
            body,
        )
        .await;
    assert_eq!(r.result()[0]["cid"], 1001);
    let p = watcher.next_publish().await;
    assert_eq!(
        user_property(&p, "cid"),
        Some("1001"),
        "the parent sees its sub-account's messages"
    );

    let all = env.master("GET", "/mqtt/messages/a%2F%2B", None).await;
    assert_eq!(
        topics(&all),
        vec![
            (1000, "a/b".into()),
            (1000, "a/c".into()),
            (1001, "a/b".into())
        ]
    );
    let item = &all.result()[1];
    assert_eq!(item["payload"], r#"{"x":1}"#);
    assert_eq!(item["retained"], true);
    assert_eq!(item["qos"], 1);
    assert_eq!(item["user_properties"], json!({"k": "v", "n": "2"}));
    assert!(item["timestamp"].as_f64().is_some_and(|t| t > 1.6e9));

    assert_eq!(
        topics(&env.master("GET", "/mqtt/messages/a%2Fb", None).await).len(),
        2,
        "recursive by default"
    );
    let own = env
        .master(
            "GET",
            "/mqtt/messages/a%2Fb?data=%7B%22recursive%22%3Afalse%7D",
            None,
        )
        .await;
    assert_eq!(topics(&own), vec![(1000, "a/b".into())]);
    let own = env
        .master("GET", "/mqtt/messages/a%2Fb,cid=1001", None)
        .await;
    assert_eq!(topics(&own), vec![(1001, "a/b".into())]);
    let expr = env
        .master(
            "GET",
            "/mqtt/messages/a%2F%23,%7Bpayload%20%3D%3D%20%22sub%22%7D",
            None,
        )
        .await;
    assert_eq!(topics(&expr), vec![(1001, "a/b".into())]);
    let inside = env
        .call(
            "GET",
            "/mqtt/messages/%23",
            Some(&env.master),
            &[("x-flespi-cid", "1001")],
            None,
        )
        .await;
    assert!(
        topics(&inside).iter().all(|(cid, _)| *cid == 1001),
        "{}",
        inside.text()
    );

    // A comma inside the topic arrives as %2C; in a filter it lists alternatives that also
    // match the literal level (docs/flespi.md#subscribing-and-filter). A bare comma separates
    // selectors.
    env.master(
        "POST",
        "/mqtt/messages",
        Some(json!({"topic": "x/1,2", "payload": "c", "retained": true})),
    )
    .await;
    env.master(
        "POST",
        "/mqtt/messages",
        Some(json!({"topic": "x/1", "payload": "d", "retained": true})),
    )
    .await;
    env.master(
        "POST",
        "/mqtt/messages",
        Some(json!({"topic": "x/3", "payload": "e", "retained": true})),
    )
    .await;
    let r = env.master("GET", "/mqtt/messages/x%2F1%2C2", None).await;
    assert_eq!(
        topics(&r),
        vec![(1000, "x/1".into()), (1000, "x/1,2".into())]
    );
    env.master("GET", "/mqtt/messages/x%2F1,2", None)
        .await
        .expect_error(400, "invalid selector `2`");

    let csv = env
        .call(
            "GET",
            "/mqtt/messages/a%2Fc",
            Some(&env.master),
            &[("accept", "text/csv")],
            None,
        )
        .await;
    let lines: Vec<&str> = std::str::from_utf8(&csv.body)
        .unwrap_or_default()
        .split("\r\n")
        .collect();
    assert_eq!(
        lines[0],
        "cid,payload,qos,retained,timestamp,topic,user_properties.k,user_properties.n"
    );
    assert!(
        lines[1].starts_with("1000,\"{\"\"x\"\":1}\",1,true,"),
        "{}",
        lines[1]
    );

    let r = env
        .master("DELETE", "/mqtt/messages/a%2F%23,cid=1000", None)
        .await;
    assert_eq!(topics(&r), vec![(1000, "a/b".into()), (1000, "a/c".into())]);
    assert_eq!(
        topics(&env.master("GET", "/mqtt/messages/a%2F%23", None).await),
        vec![(1001, "a/b".into())]
    );
}

#[tokio::test]
async fn publish_refusals() {
    let env = Env::start().await;
    env.master(
        "POST",
        "/mqtt/messages",
        Some(json!({"topic": "flespi/x", "payload": "1"})),
    )
    .await
    .expect_error(400, "reserved");
    env.master(
        "POST",
        "/mqtt/messages",
        Some(json!({"topic": "a/+", "payload": "1"})),
    )
    .await
    .expect_error(400, "a/+");
    let r = env.master("POST", "/mqtt/messages", Some(json!([{"topic": "ok", "retained": true, "payload": "1"}, {"topic": "bad", "qos": 3}]))).await;
    r.expect_error(400, "qos");
    assert_eq!(r.json()["errors"][0]["index"], 1);
    assert!(
        env.master("GET", "/mqtt/messages/ok", None)
            .await
            .result()
            .is_empty(),
        "nothing published"
    );
}
