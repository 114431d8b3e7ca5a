//! `/mqtt/sessions/{sel}` and `/mqtt/sessions/{sel}/subscriptions`: live and offline sessions,
//! selectors, pagination, `fields`, CSV.

use serde_json::json;
use tern_codec::{ConnectProperties, ProtocolVersion, ReasonCode};

use crate::support::*;

#[tokio::test]
async fn sessions_list_page_and_delete() {
    let env = Env::start().await;
    let mut alpha = env.mqtt(ProtocolVersion::V5, "alpha", &env.master).await;
    let _beta = env.mqtt(ProtocolVersion::V311, "beta", &env.master).await;
    let _gamma = env.mqtt(ProtocolVersion::V311, "gamma", &env.master).await;

    let r = env.master("GET", "/mqtt/sessions/all", None).await;
    let all = r.result();
    assert_eq!(all.len(), 3);
    assert!(
        all.iter()
            .all(|s| s["connected"] == true && s["cid"] == TOP && s["ip"] == "127.0.0.1"),
        "{all:?}"
    );
    let alpha_id = all[0]["id"].as_u64().expect("id");
    assert_eq!(all[0]["client_id"], "alpha");
    assert_eq!(all[0]["protocol_version"], 5);

    let names = |r: &Resp| {
        r.result()
            .iter()
            .map(|s| s["client_id"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            &env.master("GET", "/mqtt/sessions/client_id=al*", None)
                .await
        ),
        vec!["alpha"]
    );
    assert_eq!(
        names(
            &env.master(
                "GET",
                "/mqtt/sessions/%7Bprotocol_version%20%3C%205%7D",
                None
            )
            .await
        ),
        vec!["beta", "gamma"]
    );
    assert_eq!(
        names(
            &env.master("GET", &format!("/mqtt/sessions/{alpha_id}"), None)
                .await
        ),
        vec!["alpha"]
    );

    let page = env
        .master(
            "GET",
            "/mqtt/sessions/all?limit=1&offset=1&fields=client_id,connected",
            None,
        )
        .await;
    assert_eq!(
        page.result(),
        vec![json!({"client_id": "beta", "connected": true})]
    );
    assert_eq!(
        page.json()["pagination"],
        json!({"limit": 1, "offset": 1, "count": 3})
    );
    let tail = env.master("GET", "/mqtt/sessions/all?offset=2", None).await;
    assert_eq!(names(&tail), vec!["gamma"]);
    assert_eq!(
        tail.json()["pagination"],
        json!({"limit": null, "offset": 2, "count": 3})
    );
    let past = env
        .master("GET", "/mqtt/sessions/all?offset=10&limit=5", None)
        .await;
    assert!(past.result().is_empty());
    assert!(
        env.master("GET", "/mqtt/sessions/all", None)
            .await
            .json()
            .get("pagination")
            .is_none()
    );

    let csv = env
        .call(
            "GET",
            "/mqtt/sessions/all?fields=client_id,protocol_version",
            Some(&env.master),
            &[("accept", "text/csv")],
            None,
        )
        .await;
    assert_eq!(csv.status, 200);
    assert!(
        csv.headers["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/csv")
    );
    assert_eq!(
        csv.text(),
        "client_id,protocol_version\r\nalpha,5\r\nbeta,4\r\ngamma,4\r\n"
    );

    let r = env
        .master("DELETE", "/mqtt/sessions/client_id=alpha", None)
        .await;
    assert_eq!(names(&r), vec!["alpha"]);
    assert_eq!(
        alpha.closed().await,
        Some(ReasonCode(0x98)),
        "administrative action"
    );
    assert_eq!(
        names(&env.master("GET", "/mqtt/sessions/all", None).await),
        vec!["beta", "gamma"]
    );
}

#[tokio::test]
async fn subscriptions_of_live_and_offline_sessions() {
    let env = Env::start().await;
    let mut connect = connect_packet(ProtocolVersion::V5, "c1", &env.master);
    connect.clean_start = false;
    connect.properties = ConnectProperties {
        session_expiry_interval: Some(3600),
        ..Default::default()
    };
    let mut c1 = Mqtt::open(env.mqtt, connect.clone()).await;

    let r = env
        .master(
            "POST",
            "/mqtt/sessions/client_id=c1/subscriptions",
            Some(json!({"topic": "a/#", "qos": 1, "subscription_id": 7})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sub = &r.result()[0];
    assert_eq!(sub["topic"], "a/#");
    assert_eq!(sub["qos"], 1);
    assert_eq!(sub["subscription_id"], 7);

    env.master(
        "POST",
        "/mqtt/messages",
        Some(json!({"topic": "a/b", "payload": "hi", "qos": 1})),
    )
    .await;
    let p = c1.next_publish().await;
    assert_eq!(&*p.topic, "a/b");
    assert_eq!(p.properties.subscription_identifiers.as_slice(), &[7]);

    c1.disconnect().await;
    let r = env.master("GET", "/mqtt/sessions/client_id=c1", None).await;
    assert_eq!(r.result()[0]["connected"], false, "offline now");
    let r = env
        .master(
            "POST",
            "/mqtt/sessions/client_id=c1/subscriptions",
            Some(json!([{"topic": "b/+"}, {"topic": "$share/g/c/#", "cid": 1000}])),
        )
        .await;
    assert_eq!(r.result().len(), 2, "{}", r.text());
    let r = env
        .master("GET", "/mqtt/sessions/client_id=c1/subscriptions/all", None)
        .await;
    let topics: Vec<_> = r
        .result()
        .iter()
        .map(|s| s["topic"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(topics, vec!["$share/g/c/#", "a/#", "b/+"]);
    assert_eq!(
        env.master("GET", "/mqtt/sessions/all/subscriptions/topic=b*", None)
            .await
            .result()
            .len(),
        1
    );

    let r = env
        .master(
            "DELETE",
            "/mqtt/sessions/client_id=c1/subscriptions/topic=a%2F%23",
            None,
        )
        .await;
    assert_eq!(r.result().len(), 1, "{}", r.text());
    let r = env
        .master(
            "DELETE",
            "/mqtt/sessions/client_id=c1/subscriptions/%7Bcid%20%3D%3D%201000%7D",
            None,
        )
        .await;
    assert_eq!(r.result()[0]["topic"], "$share/g/c/#");
    let left = env
        .master("GET", "/mqtt/sessions/client_id=c1/subscriptions/all", None)
        .await;
    assert_eq!(left.result().len(), 1);

    // The subscription works once the session is back.
    connect.clean_start = false;
    let mut c1 = Mqtt::open(env.mqtt, connect).await;
    env.master("POST", "/mqtt/messages", Some(json!([{"topic": "b/x", "payload": "1", "qos": 1}, {"topic": "a/x", "payload": "2", "qos": 1}]))).await;
    assert_eq!(&*c1.next_publish().await.topic, "b/x");
    c1.expect_nothing().await;

    env.master(
        "POST",
        "/mqtt/sessions/client_id=nobody/subscriptions",
        Some(json!({"topic": "a"})),
    )
    .await
    .expect_error(404, "no session");
    env.master(
        "POST",
        "/mqtt/sessions/all/subscriptions",
        Some(json!([{"topic": "ok"}, {"topic": "a/#/b"}])),
    )
    .await
    .expect_error(400, "a/#/b");
    assert_eq!(
        env.master("GET", "/mqtt/sessions/all/subscriptions/all", None)
            .await
            .result()
            .len(),
        1,
        "nothing added"
    );
}

#[tokio::test]
async fn subscriptions_added_over_rest_count_against_the_quota() {
    let env = Env::start().await;
    env.subaccount(1001, TOP, "small").await;
    let r = env
        .master(
            "PUT",
            "/platform/subaccounts/1001",
            Some(json!({"limits": {"mqtt_subscriptions": 2}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let key = env.token(json!({"cid": 1001})).await;
    let mut connect = connect_packet(ProtocolVersion::V5, "q1", &key);
    connect.clean_start = false;
    connect.properties = ConnectProperties {
        session_expiry_interval: Some(3600),
        ..Default::default()
    };
    let mut c = Mqtt::open(env.mqtt, connect).await;
    c.subscribe("mine/1").await;

    let r = env
        .master(
            "POST",
            "/mqtt/sessions/client_id=q1,cid=1001/subscriptions",
            Some(json!([{"topic": "rest/1"}, {"topic": "rest/2"}, {"topic": "mine/1"}])),
        )
        .await;
    // One fits, the second is over the quota; re-adding an existing one is always allowed.
    assert_eq!(r.status, 400, "partial success: {}", r.text());
    let topics: Vec<_> = r
        .result()
        .iter()
        .map(|s| s["topic"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(topics, vec!["rest/1", "mine/1"], "{}", r.text());
    let errors = r.json()["errors"].clone();
    assert_eq!(errors.as_array().map(Vec::len), Some(1), "{}", r.text());
    assert_eq!(errors[0]["index"], 1, "{}", r.text());
    assert!(
        errors[0]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("quota")),
        "{}",
        r.text()
    );
    let r = env
        .master(
            "GET",
            "/mqtt/sessions/client_id=q1,cid=1001/subscriptions/all",
            None,
        )
        .await;
    assert_eq!(r.result().len(), 2, "{}", r.text());
    c.disconnect().await;
}
