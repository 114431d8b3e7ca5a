//! REST over MQTT (docs/flespi.md#rest-over-mqtt): response topic and correlation data, the request
//! topic for the requester only, errors as envelopes, chunking, `response_cid`.

use bytes::Bytes;
use bytestring::ByteString;
use serde_json::{Value, json};
use tern_codec::{ConnectProperties, ProtocolVersion, PublishProperties, ReasonCode};

use crate::support::*;

fn props(
    response_topic: Option<&str>,
    correlation: Option<&[u8]>,
    user: &[(&str, &str)],
) -> PublishProperties {
    PublishProperties {
        response_topic: response_topic.map(ByteString::from),
        correlation_data: correlation.map(Bytes::copy_from_slice),
        user_properties: user
            .iter()
            .map(|(k, v)| (ByteString::from(*k), ByteString::from(*v)))
            .collect(),
        ..Default::default()
    }
}

fn body(p: &tern_codec::Publish) -> Value {
    serde_json::from_slice(&p.payload).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", p.payload))
}

#[tokio::test]
async fn v5_response_topic_and_correlation_data() {
    let env = Env::start().await;
    let mut c = env.mqtt(ProtocolVersion::V5, "rest", &env.master).await;
    c.subscribe("replies/#").await;
    c.publish(
        "flespi/rest/get/platform/customer?fields=id",
        b"",
        false,
        props(Some("replies/1"), Some(b"corr-1"), &[]),
    )
    .await;
    let r = c.next_publish().await;
    assert_eq!(&*r.topic, "replies/1");
    assert_eq!(
        r.properties.correlation_data.as_deref(),
        Some(&b"corr-1"[..])
    );
    assert_eq!(user_property(&r, "http_code"), Some("200"));
    assert_eq!(body(&r), json!({"result": [{"id": 1000}]}));

    // A POST body, and GET data from the payload.
    let item = json!({"topic": "t/1", "payload": "v", "retained": true}).to_string();
    c.publish(
        "flespi/rest/post/mqtt/messages",
        item.as_bytes(),
        false,
        props(Some("replies/2"), None, &[]),
    )
    .await;
    let r = c.next_publish().await;
    assert_eq!(
        user_property(&r, "http_code"),
        Some("200"),
        "{:?}",
        r.payload
    );
    c.publish(
        "flespi/rest/get/mqtt/messages/t%2F%2B",
        br#"{"recursive": false}"#,
        false,
        props(Some("replies/3"), None, &[]),
    )
    .await;
    let r = c.next_publish().await;
    assert_eq!(body(&r)["result"][0]["payload"], "v");
    // Characters a URI cannot hold are encoded by the bridge.
    c.publish(
        "flespi/rest/get/platform/tokens/{access.type == 1}?fields=id",
        b"",
        false,
        props(Some("replies/4"), None, &[]),
    )
    .await;
    let r = c.next_publish().await;
    assert_eq!(
        user_property(&r, "http_code"),
        Some("200"),
        "{:?}",
        r.payload
    );
    assert_eq!(body(&r)["result"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn the_request_topic_answers_only_the_requester() {
    let env = Env::start().await;
    let mut spy = env.mqtt(ProtocolVersion::V5, "spy", &env.master).await;
    spy.subscribe("flespi/rest/#").await;

    let mut v3 = env.mqtt(ProtocolVersion::V311, "v3", &env.master).await;
    v3.publish(
        "flespi/rest/get/auth/info",
        b"",
        false,
        PublishProperties::default(),
    )
    .await;
    let r = v3.next_publish().await;
    assert_eq!(&*r.topic, "flespi/rest/get/auth/info");
    assert_eq!(body(&r)["result"][0]["cid"], 1000);

    let mut v5 = env.mqtt(ProtocolVersion::V5, "v5", &env.master).await;
    v5.publish(
        "flespi/rest/get/auth/info",
        b"",
        false,
        props(None, Some(b"c"), &[]),
    )
    .await;
    let r = v5.next_publish().await;
    assert_eq!(&*r.topic, "flespi/rest/get/auth/info");
    assert_eq!(user_property(&r, "http_code"), Some("200"));
    assert_eq!(r.properties.correlation_data.as_deref(), Some(&b"c"[..]));

    spy.expect_nothing().await;
    v3.expect_nothing().await;
}

#[tokio::test]
async fn errors_come_back_as_envelopes() {
    let env = Env::start().await;
    let mut c = env.mqtt(ProtocolVersion::V5, "c", &env.master).await;
    let cases: &[(&str, &[u8], &str, &str)] = &[
        ("flespi/rest/fetch/auth/info", b"", "405", "unknown method"),
        ("flespi/rest/get/no/such/uri", b"", "404", "unknown URI"),
        (
            "flespi/rest/get/platform/nothing",
            b"",
            "404",
            "unknown URI",
        ),
        (
            "flespi/rest/post/platform/tokens",
            b"{",
            "400",
            "malformed JSON",
        ),
        (
            "flespi/rest/get/platform/tokens/{id >}",
            b"",
            "400",
            "does not parse",
        ),
        (
            "flespi/rest/get/mqtt/messages/%23",
            b"not json",
            "400",
            "data is not valid JSON",
        ),
        ("flespi/rest/delete/auth/info", b"", "405", "not allowed"),
    ];
    for (topic, payload, code, reason) in cases {
        c.publish(topic, payload, false, PublishProperties::default())
            .await;
        let r = c.next_publish().await;
        assert_eq!(
            user_property(&r, "http_code"),
            Some(*code),
            "{topic}: {:?}",
            r.payload
        );
        let v = body(&r);
        assert!(
            v["errors"][0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(reason)),
            "{topic}: {v}"
        );
    }
    let standard = env.token(json!({})).await;
    let mut s = env.mqtt(ProtocolVersion::V5, "s", &standard).await;
    s.publish(
        "flespi/rest/get/platform/customer",
        b"",
        false,
        PublishProperties::default(),
    )
    .await;
    assert_eq!(
        user_property(&s.next_publish().await, "http_code"),
        Some("403")
    );
}

#[tokio::test]
async fn chunked_answers_fit_the_maximum_packet_size() {
    let env = Env::start().await;
    let many: Vec<Value> = (0..40)
        .map(|i| json!({"info": format!("token number {i} with some words to make it longer")}))
        .collect();
    assert_eq!(
        env.master("POST", "/platform/tokens", Some(Value::Array(many)))
            .await
            .status,
        200
    );
    let max = 1024u32;
    let small = ConnectProperties {
        maximum_packet_size: Some(max),
        ..Default::default()
    };
    let mut c = Mqtt::connect(env.mqtt, ProtocolVersion::V5, "small", &env.master, small).await;

    let topic = "flespi/rest/get/platform/tokens/all";
    c.publish(
        topic,
        b"",
        false,
        props(None, Some(b"big"), &[("response_chunked", "true")]),
    )
    .await;
    let mut whole = Vec::new();
    let mut chunks = 0;
    loop {
        let p = c.next_publish().await;
        assert!(tern_codec::publish_len(&p, ProtocolVersion::V5) <= max as usize);
        assert_eq!(
            p.properties.correlation_data.as_deref(),
            Some(&b"big"[..]),
            "on every chunk"
        );
        whole.extend_from_slice(&p.payload);
        chunks += 1;
        if let Some(code) = user_property(&p, "http_code") {
            assert_eq!(code, "200");
            break;
        }
    }
    assert!(chunks > 5, "{chunks} chunks");
    let v: Value = serde_json::from_slice(&whole).expect("the chunks make the whole body");
    assert_eq!(v["result"].as_array().map(Vec::len), Some(41));
    let ids: Vec<u64> = v["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["id"].as_u64())
        .collect();
    assert_eq!(
        ids,
        env.master("GET", "/platform/tokens/all", None).await.ids(),
        "the same answer as over HTTP"
    );

    // Unchunked, the answer would not fit: an error says so.
    c.publish(topic, b"", false, PublishProperties::default())
        .await;
    let p = c.next_publish().await;
    assert_eq!(user_property(&p, "http_code"), Some("413"));
    assert!(
        body(&p)["errors"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("response_chunked"))
    );
}

#[tokio::test]
async fn response_cid_answers_inside_a_subaccount() {
    let env = Env::start().await;
    env.subaccount(1001, TOP, "target").await;
    env.subaccount(1003, TOP, "sibling").await;
    let key1 = env.token(json!({"cid": 1001})).await;
    let key3 = env.token(json!({"cid": 1003})).await;
    let mut target = env.mqtt(ProtocolVersion::V5, "target", &key1).await;
    target.subscribe("replies/#").await;
    let mut sibling = env.mqtt(ProtocolVersion::V5, "sibling", &key3).await;
    sibling.subscribe("replies/#").await;

    let mut master = env.mqtt(ProtocolVersion::V5, "master", &env.master).await;
    let p = props(Some("replies/x"), Some(b"k"), &[("response_cid", "1001")]);
    master
        .publish("flespi/rest/get/platform/subaccounts/all", b"", false, p)
        .await;
    let r = target.next_publish().await;
    assert_eq!(&*r.topic, "replies/x");
    assert_eq!(
        user_property(&r, "cid"),
        Some("1001"),
        "published in the sub-account's namespace"
    );
    assert_eq!(user_property(&r, "http_code"), Some("200"));
    assert_eq!(r.properties.correlation_data.as_deref(), Some(&b"k"[..]));
    assert_eq!(body(&r)["result"].as_array().map(Vec::len), Some(2));
    sibling.expect_nothing().await;
    master.expect_nothing().await;

    // Without a response topic, the request topic inside the sub-account.
    target.subscribe("flespi/rest/#").await;
    master
        .publish(
            "flespi/rest/get/auth/info",
            b"",
            false,
            props(None, None, &[("response_cid", "1001")]),
        )
        .await;
    let r = target.next_publish().await;
    assert_eq!(&*r.topic, "flespi/rest/get/auth/info");
    master.expect_nothing().await;

    // Only a master token may redirect, and only below itself.
    let mut sub = env.mqtt(ProtocolVersion::V5, "sub", &key1).await;
    sub.publish(
        "flespi/rest/get/auth/info",
        b"",
        false,
        props(None, None, &[("response_cid", "1003")]),
    )
    .await;
    let r = sub.next_publish().await;
    assert_eq!(user_property(&r, "http_code"), Some("403"));
    target.expect_nothing().await;
    sibling.expect_nothing().await;
}

/// Issue 12 item 2: an answer goes only where the requester may publish. A Response Topic
/// under `flespi/` (other than the request topic) or outside an ACL token's publish grants is
/// refused with PUBACK 0x87, and the call does not run.
#[tokio::test]
async fn response_topics_outside_the_requesters_rights_are_refused_unexecuted() {
    let env = Env::start().await;
    let standard = env.token(json!({})).await;
    let acl = env
        .token(json!({"access": {"type": 2, "acl": [
            {"uri": "mqtt", "topic": "a/#", "actions": ["publish", "subscribe"]}
        ]}}))
        .await;
    let mut spy = env.mqtt(ProtocolVersion::V5, "spy", &env.master).await;
    spy.subscribe("kept/#").await;

    // A standard token cannot make the bridge write the broker's own topics.
    let mut s = env.mqtt(ProtocolVersion::V5, "std", &standard).await;
    let item = json!({"topic": "kept/1", "payload": "v", "retained": true}).to_string();
    for forged in [
        "flespi/state/platform/customer",
        "flespi/log/mqtt/sessions/1/connected",
        "flespi/rest/get/auth/info",
    ] {
        let reason = s
            .publish_reason(
                "flespi/rest/post/mqtt/messages",
                item.as_bytes(),
                false,
                props(Some(forged), None, &[]),
            )
            .await;
        assert_eq!(reason, ReasonCode::NOT_AUTHORIZED, "{forged}");
    }
    // Nothing ran: the message was never published.
    let kept = env.master("GET", "/mqtt/messages/kept%2F1", None).await;
    assert_eq!(kept.result(), Vec::<Value>::new(), "{}", kept.text());
    spy.expect_nothing().await;
    s.expect_nothing().await;
    // The request topic itself stays allowed.
    let reason = s
        .publish_reason(
            "flespi/rest/get/auth/info",
            b"",
            false,
            props(Some("flespi/rest/get/auth/info"), None, &[]),
        )
        .await;
    assert_eq!(reason, ReasonCode::SUCCESS);

    // An ACL token: only inside its publish grants.
    let mut a = env.mqtt(ProtocolVersion::V5, "acl", &acl).await;
    a.subscribe("a/#").await;
    let reason = a
        .publish_reason(
            "flespi/rest/get/auth/info",
            b"",
            false,
            props(Some("b/answer"), None, &[]),
        )
        .await;
    assert_eq!(reason, ReasonCode::NOT_AUTHORIZED);
    let reason = a
        .publish_reason(
            "flespi/rest/get/auth/info",
            b"",
            false,
            props(Some("a/answer"), None, &[]),
        )
        .await;
    assert_eq!(reason, ReasonCode::SUCCESS);
    let r = a.next_publish().await;
    assert_eq!(&*r.topic, "a/answer");
    assert!(user_property(&r, "http_code").is_some());
}

/// Issue 12 item 2: an unchunked answer too large for the requester's Maximum Packet Size
/// comes back as a small 413 envelope on its Response Topic too, never dropped.
#[tokio::test]
async fn a_too_large_answer_on_a_response_topic_is_a_413_envelope() {
    let env = Env::start().await;
    let big = "x".repeat(4000);
    let item = json!({"topic": "big/1", "payload": big, "retained": true});
    assert_eq!(
        env.master("POST", "/mqtt/messages", Some(item))
            .await
            .status,
        200
    );
    let small = ConnectProperties {
        maximum_packet_size: Some(1024),
        ..Default::default()
    };
    let mut c = Mqtt::connect(env.mqtt, ProtocolVersion::V5, "small", &env.master, small).await;
    c.subscribe("answers/#").await;
    c.publish(
        "flespi/rest/get/mqtt/messages/big%2F1",
        b"",
        false,
        props(Some("answers/1"), Some(b"k"), &[]),
    )
    .await;
    let p = c.next_publish().await;
    assert_eq!(&*p.topic, "answers/1");
    assert_eq!(user_property(&p, "http_code"), Some("413"));
    assert_eq!(p.properties.correlation_data.as_deref(), Some(&b"k"[..]));
    assert!(
        body(&p)["errors"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("response_chunked"))
    );
}
