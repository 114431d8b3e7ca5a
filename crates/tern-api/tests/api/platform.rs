//! `/auth/info`, `/platform/customer`, `/platform/tokens`, `/platform/subaccounts`: tokens,
//! selectors, `fields`, `x-flespi-cid`, who may call what, cascading deletes, state topics.

use serde_json::json;
use tern_codec::{
    ConnectProperties, Packet, ProtocolVersion, ReasonCode, Subscribe, SubscriptionOptions,
};

use crate::support::*;

#[tokio::test]
async fn auth_info_takes_every_token_form() {
    let env = Env::start().await;
    let r = env.master("GET", "/auth/info", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = &r.result()[0];
    assert_eq!(token["cid"], TOP);
    assert_eq!(token["access"]["type"], 1);
    assert_eq!(token["key"], env.master.as_str());

    let bare = env
        .call(
            "GET",
            "/auth/info",
            None,
            &[("authorization", &env.master)],
            None,
        )
        .await;
    assert_eq!(bare.status, 200, "a bare key works: {}", bare.text());

    env.call("GET", "/auth/info", None, &[], None)
        .await
        .expect_error(401, "missing token");
    env.call(
        "GET",
        "/auth/info",
        Some("x".repeat(64).as_str()),
        &[],
        None,
    )
    .await
    .expect_error(401, "invalid");
    let fields = env
        .master("GET", "/auth/info?fields=id,access.type", None)
        .await;
    assert_eq!(
        fields.result()[0],
        json!({"id": token["id"], "access": {"type": 1}})
    );
}

#[tokio::test]
async fn customer_get_put_and_its_state_topic() {
    let env = Env::start().await;
    let mut watcher = env.mqtt(ProtocolVersion::V5, "watcher", &env.master).await;
    watcher.subscribe("flespi/state/platform/customer").await;
    let initial = watcher.next_publish().await;
    assert!(initial.retain, "the state topic is retained");
    let state: serde_json::Value = serde_json::from_slice(&initial.payload).expect("JSON");
    assert_eq!(state["id"], TOP);

    let r = env.master("GET", "/platform/customer", None).await;
    assert_eq!(r.result()[0]["id"], TOP);

    let r = env
        .master(
            "PUT",
            "/platform/customer",
            Some(json!({"name": "acme", "metadata": {"plan": "gold"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.result()[0]["name"], "acme");
    let update = watcher.next_publish().await;
    let state: serde_json::Value = serde_json::from_slice(&update.payload).expect("JSON");
    assert_eq!(state["name"], "acme");
    assert_eq!(state["metadata"]["plan"], "gold");

    env.master("PUT", "/platform/customer", Some(json!({"id": 5})))
        .await
        .expect_error(400, "`id` cannot be changed");
    env.master("PUT", "/platform/customer", Some(json!({"colour": "red"})))
        .await
        .expect_error(400, "unknown field `colour`");
    assert_eq!(
        env.master("GET", "/platform/customer", None).await.result()[0]["name"],
        "acme",
        "nothing changed"
    );
}

#[tokio::test]
async fn tokens_crud_selectors_fields_patch() {
    let env = Env::start().await;
    let r = env
        .master(
            "POST",
            "/platform/tokens",
            Some(json!([
                {"info": "robot one", "metadata": {"a": 1, "b": 2}},
                {"info": "robot two", "access": {"type": 2, "acl": [{"uri": "mqtt", "topic": "a/#", "actions": ["subscribe"]}]}},
            ])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let created = r.result();
    assert_eq!(created.len(), 2);
    assert!(
        created
            .iter()
            .all(|t| t["key"].as_str().is_some_and(|k| k.len() == 64))
    );
    let (one, two) = (
        created[0]["id"].as_u64().expect("id"),
        created[1]["id"].as_u64().expect("id"),
    );

    let all = env.master("GET", "/platform/tokens/all", None).await;
    assert_eq!(all.ids().len(), 3);
    assert_eq!(
        env.master("GET", &format!("/platform/tokens/{one},{two}"), None)
            .await
            .ids(),
        vec![one, two]
    );
    assert_eq!(
        env.master("GET", "/platform/tokens/info=robot*", None)
            .await
            .ids(),
        vec![one, two]
    );
    assert_eq!(
        env.master("GET", "/platform/tokens/info=%22robot%20two%22", None)
            .await
            .ids(),
        vec![two]
    );
    assert_eq!(
        env.master("GET", "/platform/tokens/%7Baccess.type%20==%202%7D", None)
            .await
            .ids(),
        vec![two]
    );
    assert_eq!(
        env.master("GET", "/platform/tokens/all,cid=1000,metadata.a=1", None)
            .await
            .ids(),
        vec![one]
    );
    assert_eq!(
        env.master(
            "GET",
            &format!("/platform/tokens/{one},access.type=2"),
            None
        )
        .await
        .ids(),
        Vec::<u64>::new()
    );
    let trimmed = env
        .master(
            "GET",
            &format!("/platform/tokens/{two}?fields=id,%20access.type"),
            None,
        )
        .await;
    assert_eq!(
        trimmed.result(),
        vec![json!({"id": two, "access": {"type": 2}})]
    );

    let r = env
        .master(
            "PUT",
            &format!("/platform/tokens/{one}"),
            Some(json!({"info": "renamed", "enabled": false})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.result()[0]["info"], "renamed");
    assert_eq!(r.result()[0]["enabled"], false);

    let r = env
        .master(
            "PATCH",
            &format!("/platform/tokens/{one}"),
            Some(json!({"metadata": {"b": null, "c": 3}})),
        )
        .await;
    assert_eq!(
        r.result()[0]["metadata"],
        json!({"a": 1, "c": 3}),
        "PATCH merges"
    );
    let r = env
        .master(
            "PUT",
            &format!("/platform/tokens/{one}"),
            Some(json!({"metadata": {"z": 1}})),
        )
        .await;
    assert_eq!(r.result()[0]["metadata"], json!({"z": 1}), "PUT replaces");

    let key_two = created[1]["key"].as_str().expect("key");
    assert_eq!(
        env.call("GET", "/auth/info", Some(key_two), &[], None)
            .await
            .status,
        200
    );
    let r = env
        .master("DELETE", &format!("/platform/tokens/{two}"), None)
        .await;
    assert_eq!(r.ids(), vec![two]);
    assert_eq!(
        env.master("GET", "/platform/tokens/all", None)
            .await
            .ids()
            .len(),
        2
    );
    env.call("GET", "/auth/info", Some(key_two), &[], None)
        .await
        .expect_error(401, "invalid");
}

#[tokio::test]
async fn only_master_tokens_reach_platform() {
    let env = Env::start().await;
    let standard = env.token(json!({"info": "std"})).await;
    let acl_topics = env
        .token(json!({"access": {"type": 2, "acl": [{"uri": "mqtt", "topic": "#"}]}}))
        .await;
    let acl_rest = env
        .token(json!({"access": {"type": 2, "acl": [
            {"uri": "mqtt/messages", "methods": ["GET"]},
            {"uri": "mqtt", "topic": "open/#"},
        ]}}))
        .await;

    for key in [&standard, &acl_topics, &acl_rest] {
        env.call("GET", "/platform/tokens/all", Some(key), &[], None)
            .await
            .expect_error(403, "only master tokens");
        env.call("GET", "/platform/customer", Some(key), &[], None)
            .await
            .expect_error(403, "only master tokens");
        assert_eq!(
            env.call("GET", "/auth/info", Some(key), &[], None)
                .await
                .status,
            200
        );
    }
    assert_eq!(
        env.call("GET", "/mqtt/sessions/all", Some(&standard), &[], None)
            .await
            .status,
        200
    );
    env.call("GET", "/mqtt/sessions/all", Some(&acl_topics), &[], None)
        .await
        .expect_error(403, "ACL");
    env.call("GET", "/mqtt/sessions/all", Some(&acl_rest), &[], None)
        .await
        .expect_error(403, "ACL");

    // The REST entry allows GET on /mqtt/messages, and the topic grants limit what it sees.
    env.master(
        "POST",
        "/mqtt/messages",
        Some(json!([
            {"topic": "open/a", "payload": "1", "retained": true},
            {"topic": "closed/a", "payload": "2", "retained": true},
        ])),
    )
    .await;
    let r = env
        .call("GET", "/mqtt/messages/%23", Some(&acl_rest), &[], None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let topics: Vec<_> = r
        .result()
        .iter()
        .map(|m| m["topic"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(topics, vec!["open/a"]);
    let body = Some(
        json!({"topic": "open/a", "payload": "x"})
            .to_string()
            .into_bytes(),
    );
    env.call("POST", "/mqtt/messages", Some(&acl_rest), &[], body)
        .await
        .expect_error(403, "ACL");
}

#[tokio::test]
async fn subaccounts_selectors_and_x_flespi_cid() {
    let env = Env::start().await;
    env.subaccount(1001, TOP, "alpha").await;
    env.subaccount(1002, 1001, "beta").await;
    env.subaccount(1003, TOP, "gamma").await;

    assert_eq!(
        env.master("GET", "/platform/subaccounts/all", None)
            .await
            .ids(),
        vec![1001, 1002, 1003]
    );
    assert_eq!(
        env.master("GET", "/platform/subaccounts/all,cid=1000", None)
            .await
            .ids(),
        vec![1001, 1003]
    );
    assert_eq!(
        env.master("GET", "/platform/subaccounts/1001,cid=1000", None)
            .await
            .ids(),
        vec![1001]
    );
    assert_eq!(
        env.master("GET", "/platform/subaccounts/1002,cid=1000", None)
            .await
            .ids(),
        Vec::<u64>::new()
    );
    assert_eq!(
        env.master(
            "GET",
            "/platform/subaccounts/%7Bname%3D%3D%22g*%22%20%7C%7C%20id%3D1002%7D",
            None
        )
        .await
        .ids(),
        vec![1002, 1003]
    );
    let r = env
        .master("GET", "/platform/subaccounts/all?limit=2&offset=1", None)
        .await;
    assert_eq!(r.ids(), vec![1002, 1003]);
    assert_eq!(
        r.json()["pagination"],
        json!({"limit": 2, "offset": 1, "count": 3})
    );

    // x-flespi-cid: the master token acts inside 1001.
    let inside = |path: &'static str| {
        let env = &env;
        async move {
            env.call(
                "GET",
                path,
                Some(&env.master),
                &[("x-flespi-cid", "1001")],
                None,
            )
            .await
        }
    };
    assert_eq!(inside("/platform/customer").await.ids(), vec![1001]);
    assert_eq!(inside("/platform/subaccounts/all").await.ids(), vec![1002]);
    let own = env
        .call(
            "GET",
            "/platform/customer",
            Some(&env.master),
            &[("x-flespi-cid", "1000")],
            None,
        )
        .await;
    assert_eq!(own.ids(), vec![TOP], "clients send their own cid too");
    let body = Some(json!({"info": "in 1001"}).to_string().into_bytes());
    let r = env
        .call(
            "POST",
            "/platform/tokens",
            Some(&env.master),
            &[("x-flespi-cid", "1001")],
            body,
        )
        .await;
    assert_eq!(r.result()[0]["cid"], 1001);
    let sub_master = env.token(json!({"cid": 1001, "access": {"type": 1}})).await;

    env.call(
        "GET",
        "/platform/customer",
        Some(&env.master),
        &[("x-flespi-cid", "999")],
        None,
    )
    .await
    .expect_error(403, "not within");
    env.call(
        "GET",
        "/platform/customer",
        Some(&sub_master),
        &[("x-flespi-cid", "1000")],
        None,
    )
    .await
    .expect_error(403, "not within");
    assert_eq!(
        env.call(
            "GET",
            "/platform/customer",
            Some(&sub_master),
            &[("x-flespi-cid", "1002")],
            None
        )
        .await
        .ids(),
        vec![1002]
    );
    env.call(
        "GET",
        "/platform/customer",
        Some(&env.master),
        &[("x-flespi-cid", "abc")],
        None,
    )
    .await
    .expect_error(400, "x-flespi-cid");
    let standard = env.token(json!({})).await;
    env.call(
        "GET",
        "/mqtt/sessions/all",
        Some(&standard),
        &[("x-flespi-cid", "1001")],
        None,
    )
    .await
    .expect_error(403, "only master");

    // A partial success: one duplicate id, one good item.
    let r = env
        .master(
            "POST",
            "/platform/subaccounts",
            Some(json!([{"id": 1001, "name": "dup"}, {"name": "fresh"}])),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["result"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["result"][0]["name"], "fresh");
    assert_eq!(v["errors"][0]["index"], 0);
    assert!(
        v["errors"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("already exists")),
        "{v}"
    );

    // PUT and PATCH on a selection.
    let r = env
        .master(
            "PUT",
            "/platform/subaccounts/cid=1000",
            Some(json!({"metadata": {"tier": 1, "x": 1}})),
        )
        .await;
    assert_eq!(r.ids().len(), 3, "{}", r.text());
    let r = env
        .master(
            "PATCH",
            "/platform/subaccounts/1003",
            Some(json!({"metadata": {"x": null}, "limits": {"mqtt_sessions": 5}})),
        )
        .await;
    assert_eq!(r.result()[0]["metadata"], json!({"tier": 1}));
    assert_eq!(r.result()[0]["limits"], json!({"mqtt_sessions": 5}));
    env.master(
        "PUT",
        "/platform/subaccounts/1003",
        Some(json!({"cid": 1001})),
    )
    .await
    .expect_error(400, "`cid` cannot be changed");
}

#[tokio::test]
async fn deleting_a_subaccount_cascades() {
    let env = Env::start().await;
    env.subaccount(1001, TOP, "doomed").await;
    env.subaccount(1002, 1001, "doomed child").await;
    env.subaccount(1003, TOP, "survivor").await;
    let key1 = env.token(json!({"cid": 1001, "access": {"type": 1}})).await;
    let key2 = env.token(json!({"cid": 1002})).await;
    let key3 = env.token(json!({"cid": 1003})).await;

    let mut watcher = env.mqtt(ProtocolVersion::V5, "watcher", &env.master).await;
    watcher
        .subscribe("flespi/state/platform/subaccounts/1001")
        .await;
    let state = watcher.next_publish().await;
    assert!(!state.payload.is_empty());

    // A live session in 1001, an offline persistent one in 1002, retained messages in both.
    let mut live = env.mqtt(ProtocolVersion::V5, "live", &key1).await;
    live.subscribe("x/#").await;
    live.publish("r/1", b"one", true, Default::default()).await;
    let mut connect = connect_packet(ProtocolVersion::V5, "offline", &key2);
    connect.clean_start = false;
    connect.properties = ConnectProperties {
        session_expiry_interval: Some(3600),
        ..Default::default()
    };
    let mut offline = Mqtt::open(env.mqtt, connect).await;
    offline.subscribe("y/#").await;
    offline
        .publish("r/2", b"two", true, Default::default())
        .await;
    offline.disconnect().await;
    let survivor = env.mqtt(ProtocolVersion::V5, "survivor", &key3).await;

    let r = env.master("GET", "/mqtt/sessions/all", None).await;
    assert_eq!(r.result().len(), 4, "{}", r.text());
    assert_eq!(
        env.master("GET", "/mqtt/messages/r%2F%2B", None)
            .await
            .result()
            .len(),
        2
    );

    let r = env
        .master("DELETE", "/platform/subaccounts/1001", None)
        .await;
    assert_eq!(r.ids(), vec![1001], "{}", r.text());

    assert!(
        live.closed().await.is_some(),
        "the live session was disconnected with a DISCONNECT"
    );
    let sessions = env.master("GET", "/mqtt/sessions/all", None).await.result();
    let clients: Vec<_> = sessions
        .iter()
        .map(|s| s["client_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(clients, vec!["watcher", "survivor"]);
    assert!(
        env.master("GET", "/mqtt/messages/r%2F%2B", None)
            .await
            .result()
            .is_empty(),
        "retained messages gone"
    );
    assert_eq!(
        env.master("GET", "/platform/subaccounts/all", None)
            .await
            .ids(),
        vec![1003]
    );
    for key in [&key1, &key2] {
        env.call("GET", "/auth/info", Some(key), &[], None)
            .await
            .expect_error(401, "invalid");
    }
    assert_eq!(
        env.call("GET", "/auth/info", Some(&key3), &[], None)
            .await
            .status,
        200
    );
    assert!(
        env.master("GET", "/platform/tokens/cid=1001", None)
            .await
            .result()
            .is_empty()
    );

    let gone = watcher.next_publish().await;
    assert!(
        gone.payload.is_empty(),
        "an empty retained message deletes the state topic"
    );
    let r = env
        .master(
            "GET",
            "/mqtt/messages/flespi%2Fstate%2Fplatform%2Fsubaccounts%2F%2B",
            Some(json!({})),
        )
        .await;
    let ids: Vec<_> = r
        .result()
        .iter()
        .map(|m| m["topic"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids, vec!["flespi/state/platform/subaccounts/1003"]);
    drop(survivor);
}

#[tokio::test]
async fn revoking_a_token_disconnects_its_connections() {
    let env = Env::start().await;
    let disabled = env.token(json!({"info": "to disable"})).await;
    let deleted = env.token(json!({"info": "to delete"})).await;
    let narrowed = env.token(json!({"info": "to narrow"})).await;
    let renamed = env.token(json!({"info": "to rename"})).await;
    let mut ids = Vec::new();
    for key in [&disabled, &deleted, &narrowed, &renamed] {
        let r = env
            .master("GET", &format!("/platform/tokens/key={key}"), None)
            .await;
        assert_eq!(r.ids().len(), 1, "{}", r.text());
        ids.push(r.ids()[0]);
    }
    let (disabled_id, deleted_id, narrowed_id, renamed_id) = (ids[0], ids[1], ids[2], ids[3]);
    let mut c_disabled = env.mqtt(ProtocolVersion::V5, "c-disabled", &disabled).await;
    let mut c_deleted = env.mqtt(ProtocolVersion::V311, "c-deleted", &deleted).await;
    let mut c_narrowed = env.mqtt(ProtocolVersion::V5, "c-narrowed", &narrowed).await;
    let mut c_renamed = env.mqtt(ProtocolVersion::V5, "c-renamed", &renamed).await;

    // A change that takes no rights away leaves the connection alone.
    let r = env
        .master(
            "PUT",
            &format!("/platform/tokens/{renamed_id}"),
            Some(json!({"info": "renamed"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let r = env
        .master(
            "PUT",
            &format!("/platform/tokens/{disabled_id}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        c_disabled.closed().await,
        Some(ReasonCode::NOT_AUTHORIZED),
        "v5 connection told why"
    );
    assert_eq!(
        Mqtt::connack_code(
            env.mqtt,
            connect_packet(ProtocolVersion::V5, "c-disabled", &disabled)
        )
        .await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );

    let r = env
        .master("DELETE", &format!("/platform/tokens/{deleted_id}"), None)
        .await;
    assert_eq!(r.ids(), vec![deleted_id], "{}", r.text());
    assert_eq!(c_deleted.closed().await, None, "v3.1.1 is just closed");

    let r = env
        .master(
            "PUT",
            &format!("/platform/tokens/{narrowed_id}"),
            Some(json!({"access": {"type": 2, "acl": [
                {"uri": "mqtt", "topic": "only/#", "actions": ["subscribe"]}
            ]}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c_narrowed.closed().await, Some(ReasonCode::NOT_AUTHORIZED));
    // The reconnect gets the new rules: `other/#` is refused.
    let mut again = env.mqtt(ProtocolVersion::V5, "c-narrowed", &narrowed).await;
    again
        .send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![("other/#".into(), SubscriptionOptions::default())],
            properties: Default::default(),
        }))
        .await;
    match again.recv().await {
        Some(Packet::SubAck(ack)) => assert_eq!(ack.reasons, vec![ReasonCode::NOT_AUTHORIZED]),
        other => panic!("expected SUBACK, got {other:?}"),
    }

    c_renamed.expect_nothing().await;
    c_renamed.subscribe("still/here").await;
}

#[tokio::test]
async fn disabling_a_subaccount_disconnects_it_and_its_children() {
    let env = Env::start().await;
    env.subaccount(1001, TOP, "parent").await;
    env.subaccount(1002, 1001, "child").await;
    env.subaccount(1003, TOP, "sibling").await;
    let key1 = env.token(json!({"cid": 1001})).await;
    let key2 = env.token(json!({"cid": 1002})).await;
    let key3 = env.token(json!({"cid": 1003})).await;
    let mut parent = env.mqtt(ProtocolVersion::V5, "p", &key1).await;
    let mut child = env.mqtt(ProtocolVersion::V5, "c", &key2).await;
    let mut sibling = env.mqtt(ProtocolVersion::V5, "s", &key3).await;

    let r = env
        .master(
            "PUT",
            "/platform/subaccounts/1001",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(parent.closed().await, Some(ReasonCode::NOT_AUTHORIZED));
    assert_eq!(child.closed().await, Some(ReasonCode::NOT_AUTHORIZED));
    for (id, key) in [("p", &key1), ("c", &key2)] {
        assert_eq!(
            Mqtt::connack_code(env.mqtt, connect_packet(ProtocolVersion::V5, id, key)).await,
            ReasonCode::BANNED,
            "{id}"
        );
    }
    sibling.expect_nothing().await;
    sibling.subscribe("still/here").await;

    let r = env
        .master(
            "PUT",
            "/platform/subaccounts/1001",
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    env.mqtt(ProtocolVersion::V5, "c", &key2)
        .await
        .disconnect()
        .await;
}

#[tokio::test]
async fn a_subaccount_master_cannot_raise_its_limits_or_outgrow_its_quotas() {
    let env = Env::start().await;
    let r = env
        .master(
            "POST",
            "/platform/subaccounts",
            Some(json!({"id": 2000, "name": "tenant",
                "limits": {"mqtt_sessions": 10, "subaccounts": 2, "tokens": 3}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let tenant = env
        .token(json!({"cid": 2000, "access": {"type": 1}, "info": "tenant master"}))
        .await;
    let limits = |env: &Env| env.directory.account(2000).unwrap().limits;

    // Its own account is not among the accounts it manages, by selector or by its own cid...
    let r = call_as(
        &env,
        &tenant,
        "PUT",
        "/platform/subaccounts/2000",
        Some(json!({"limits": {"mqtt_sessions": 1_000_000_000_000_000u64}})),
    )
    .await;
    assert_eq!((r.status, r.ids()), (200, vec![]), "{}", r.text());
    let r = env
        .call(
            "PATCH",
            "/platform/subaccounts/all",
            Some(&tenant),
            &[("x-flespi-cid", "2000")],
            Some(
                json!({"limits": {"mqtt_sessions": 1_000_000u64}})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!((r.status, r.ids()), (200, vec![]), "{}", r.text());
    // ... and /platform/customer changes only name and metadata.
    call_as(
        &env,
        &tenant,
        "PUT",
        "/platform/customer",
        Some(json!({"limits": {"mqtt_sessions": 1_000_000u64}})),
    )
    .await
    .expect_error(400, "limits");
    assert_eq!(limits(&env).mqtt_sessions, Some(10));

    // A sub-account of its own with limits above its parent's: refused, nothing created.
    let r = call_as(
        &env,
        &tenant,
        "POST",
        "/platform/subaccounts",
        Some(json!({"name": "big", "limits": {"mqtt_sessions": 1_000_000_000_000_000u64}})),
    )
    .await;
    r.expect_error(400, "above the parent account's mqtt_sessions (10)");
    assert_eq!(r.json()["errors"][0]["code"], 400);
    assert!(env.directory.accounts().iter().all(|a| a.name != "big"));

    // Within its `subaccounts` quota (2): the third one of an array fails with 403 in the
    // envelope, next to the two created.
    let r = call_as(
        &env,
        &tenant,
        "POST",
        "/platform/subaccounts",
        Some(json!([{"name": "s1", "limits": {"mqtt_sessions": 10}}, {"name": "s2"}, {"name": "s3"}])),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.result().len(), 2, "{}", r.text());
    let err = &r.json()["errors"][0];
    assert_eq!(err["code"], 403, "{}", r.text());
    assert_eq!(err["index"], 2, "{}", r.text());
    assert!(
        err["reason"]
            .as_str()
            .unwrap()
            .contains("subaccounts quota of account 2000 (2)"),
        "{err}"
    );
    // A sub-sub-account counts against the tenant's quota too.
    let s1 = r.result()[0]["id"].as_u64().unwrap();
    let r = env
        .call(
            "POST",
            "/platform/subaccounts",
            Some(&tenant),
            &[],
            Some(json!({"name": "deep", "cid": s1}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.json()["errors"][0]["code"], 403, "{}", r.text());
    assert_eq!(env.directory.descendants(2000).len(), 3);

    // Raising a sub-account's limits over the tenant's: refused with the envelope.
    let r = env
        .call(
            "PATCH",
            &format!("/platform/subaccounts/{s1}"),
            Some(&tenant),
            &[],
            Some(
                json!({"limits": {"mqtt_sessions": 11}})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    r.expect_error(400, "above the parent account's mqtt_sessions (10)");
    assert_eq!(
        env.directory.account(s1).unwrap().limits.mqtt_sessions,
        Some(10)
    );

    // Tokens: the tenant master is one of 3; a token of a sub-account counts too.
    let tok = |cid: u64| json!({"cid": cid, "info": "t"}).to_string().into_bytes();
    let mut statuses = Vec::new();
    let mut r = None;
    for cid in [s1, 2000, 2000] {
        let resp = env
            .call(
                "POST",
                "/platform/tokens",
                Some(&tenant),
                &[],
                Some(tok(cid)),
            )
            .await;
        statuses.push(resp.status);
        r = Some(resp);
    }
    let r = r.expect("three calls");
    assert_eq!(statuses, [200, 200, 400], "{}", r.text());
    assert_eq!(r.json()["errors"][0]["code"], 403, "{}", r.text());
    r.expect_error(400, "tokens quota of account 2000 (3)");
}

/// A call with `key` and a JSON body.
async fn call_as(
    env: &Env,
    key: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Resp {
    env.call(
        method,
        path,
        Some(key),
        &[],
        body.map(|b| b.to_string().into_bytes()),
    )
    .await
}
