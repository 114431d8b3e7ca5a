//! The examples of docs/expressions.md and of the `$filter` and selector sections of
//! docs/flespi.md (#subscribing-and-filter, #the-rest-api), and the ready contexts.

use serde_json::json;

use super::parse;
use crate::{
    Composite, CompositeKind, Context, EvalErrorKind, JsonContext, MessageContext, Payload,
    TextContext, UserProperties, Value, ValueRef,
};

const NOW: f64 = 1_700_000_000.0;

fn message<'a>(
    topic: &'a str,
    payload: Option<&'a str>,
    props: &'a dyn Composite,
) -> MessageContext<'a> {
    MessageContext {
        topic,
        cid: 1000,
        timestamp: 1_699_999_999.25,
        user_properties: props,
        payload,
        now: NOW,
    }
}

const NO_PROPS: UserProperties<'static, &str, &str> = UserProperties(&[]);

#[test]
fn payload_filter_speed() {
    // $filter/payload=position.speed%3E60/…
    let e = parse("position.speed>60");
    assert!(Payload::parse(br#"{"position":{"speed":72}}"#).matches(&e, NOW));
    assert!(Payload::parse(br#"{"position.speed":61}"#).matches(&e, NOW));
    assert!(!Payload::parse(br#"{"position":{"speed":50}}"#).matches(&e, NOW));
    assert!(!Payload::parse(br#"{"position":{}}"#).matches(&e, NOW));
    assert!(!Payload::parse(b"72").matches(&e, NOW));
}

#[test]
fn payload_filter_on_a_bare_number() {
    // $filter/payload=tonumber%28payload%29%3E14/flespi/state/gw/devices/+/telemetry/battery.voltage
    let e = parse("tonumber(payload)>14");
    assert!(Payload::parse(b"14.5").matches(&e, NOW));
    assert!(!Payload::parse(b"13.9").matches(&e, NOW));
    assert!(Payload::parse(b"\"15\"").matches(&e, NOW));
    // Not JSON but UTF-8: a bare string.
    assert!(Payload::parse(b"0x10").matches(&e, NOW));
    assert!(!Payload::parse(b"warm").matches(&e, NOW));
    assert!(!Payload::parse(b"").matches(&e, NOW));
    // Not UTF-8: never matches.
    assert_eq!(Payload::parse(b"\xff\x00"), Payload::Binary);
    assert!(!Payload::parse(b"\xff\x00").matches(&parse("true"), NOW));
    // A JSON object payload exposes its own fields; `payload` is then an ordinary key.
    assert!(Payload::parse(br#"{"payload": "15"}"#).matches(&e, NOW));
    assert!(!Payload::parse(br#"{"value": 15}"#).matches(&e, NOW));
}

#[test]
fn payload_forms() {
    assert_eq!(Payload::parse(b" 12 "), Payload::Json(json!(12)));
    assert_eq!(Payload::parse(b"hello world"), Payload::Text("hello world"));
    let e = parse(r#"payload == "hello*""#);
    assert!(Payload::parse(b"hello world").matches(&e, NOW));
    let e = parse("payload[1] == 2");
    assert!(Payload::parse(b"[1, 2, 3]").matches(&e, NOW));
    let e = parse("payload");
    assert!(Payload::parse(b"true").matches(&e, NOW));
    assert!(!Payload::parse(b"false").matches(&e, NOW));
    assert!(!Payload::parse(b"null").matches(&e, NOW));
    let text = TextContext::new("abc", NOW);
    assert_eq!(parse("strlen(payload)").eval(&text), Ok(Value::Number(3.0)));
    assert_eq!(
        parse("other").eval(&text).map_err(|e| e.kind),
        Err(EvalErrorKind::MissingField)
    );
}

#[test]
fn message_filter_kitchen_or_hall() {
    // $filter/message=(topics%5B1%5D%3D%3D%22kitchen%22%7C%7Ctopics%5B1%5D%3D%3D%22hall%22)%26%26tonumber(payload)%3C20/temperature/+
    let e = parse(r#"(topics[1]=="kitchen"||topics[1]=="hall")&&tonumber(payload)<20"#);
    assert!(e.matches(&message("temperature/kitchen", Some("18.5"), &NO_PROPS)));
    assert!(e.matches(&message("temperature/hall", Some("19"), &NO_PROPS)));
    assert!(!e.matches(&message("temperature/bedroom", Some("18"), &NO_PROPS)));
    assert!(!e.matches(&message("temperature/kitchen", Some("25"), &NO_PROPS)));
    assert!(!e.matches(&message("temperature/kitchen", Some("warm"), &NO_PROPS)));
    assert!(!e.matches(&message("temperature/kitchen", None, &NO_PROPS)));
    assert!(!e.matches(&message("temperature", Some("10"), &NO_PROPS)));
}

#[test]
fn seed_encoded_example_quotes_payload() {
    // The seed's URL-encoded form of the same filter ends in `tonumber(%22payload%22)%3C20`,
    // i.e. `tonumber("payload")`: the string literal "payload", which is not a number. It
    // parses, and never matches.
    let e = parse(r#"(topics[1]=="kitchen"||topics[1]=="hall")&&tonumber("payload")<20"#);
    let ctx = message("temperature/kitchen", Some("18"), &NO_PROPS);
    assert!(!e.matches(&ctx));
    assert_eq!(
        e.eval(&ctx).map_err(|e| e.kind),
        Err(EvalErrorKind::NotANumber)
    );
}

#[test]
fn message_context_fields() {
    let props = [("unit", "C"), ("site", "a"), ("site", "b")];
    let up = UserProperties(&props);
    let ctx = message("temperature/kitchen/1", Some("18"), &up);
    let ev = |src: &str| parse(src).eval(&ctx);
    assert_eq!(
        ev("topic"),
        Ok(Value::String("temperature/kitchen/1".into()))
    );
    assert_eq!(ev("topics[0]"), Ok(Value::String("temperature".into())));
    assert_eq!(ev("topics[2]"), Ok(Value::String("1".into())));
    assert_eq!(
        ev("topics[3]").map_err(|e| e.kind),
        Err(EvalErrorKind::MissingElement)
    );
    assert_eq!(ev("$topics[3]"), Ok(Value::Null));
    assert_eq!(ev("cid"), Ok(Value::Number(1000.0)));
    assert_eq!(ev("cid=1000"), Ok(Value::Bool(true)));
    assert_eq!(ev("timestamp"), Ok(Value::Number(1_699_999_999.25)));
    assert_eq!(ev("payload"), Ok(Value::String("18".into())));
    assert_eq!(ev("user_properties.unit"), Ok(Value::String("C".into())));
    assert_eq!(
        ev("user_properties[\"unit\"]"),
        Ok(Value::String("C".into()))
    );
    assert_eq!(ev("user_properties.site"), Ok(Value::String("b".into())));
    assert_eq!(
        ev("user_properties.none").map_err(|e| e.kind),
        Err(EvalErrorKind::MissingField)
    );
    assert_eq!(ev("$user_properties.none"), Ok(Value::Null));
    assert_eq!(
        ev("exists(\"user_properties.unit\")"),
        Ok(Value::Bool(true))
    );
    assert_eq!(
        ev("topics == 1").map_err(|e| e.kind),
        Err(EvalErrorKind::NotAValue(crate::TypeName::Array))
    );
    assert_eq!(
        ev("user_properties[0]").map_err(|e| e.kind),
        Err(EvalErrorKind::MissingElement)
    );
    assert_eq!(ev("timestamp > now() - 60"), Ok(Value::Bool(true)));
    // Empty levels are levels: `/a` is ["", "a"].
    let ctx = message("/a", None, &NO_PROPS);
    assert_eq!(
        parse("topics[0]").eval(&ctx),
        Ok(Value::String(String::new()))
    );
    assert_eq!(parse("$payload").eval(&ctx), Ok(Value::Null));
}

#[test]
fn rest_selector_expressions() {
    // {cid=123 || cid=456}
    let e = parse("cid=123 || cid=456");
    assert!(e.matches(&JsonContext::new(&json!({"cid": 456}), NOW)));
    assert!(!e.matches(&JsonContext::new(&json!({"cid": 789}), NOW)));
    // {exists("telemetry.can.vehicle.mileage")}
    let e = parse(r#"exists("telemetry.can.vehicle.mileage")"#);
    let flat = json!({"telemetry": {"can.vehicle.mileage": 1000}});
    let nested = json!({"telemetry": {"can": {"vehicle": {"mileage": 1000}}}});
    assert!(e.matches(&JsonContext::new(&flat, NOW)));
    assert!(e.matches(&JsonContext::new(&nested, NOW)));
    assert!(!e.matches(&JsonContext::new(&json!({"telemetry": {}}), NOW)));
    // {last_active < (now() - 86400)} and {last_active+86400<now()}
    let stale = json!({"last_active": NOW - 90_000.0});
    let fresh = json!({"last_active": NOW - 60.0});
    for src in [
        "last_active < now() - 86400",
        "last_active < (now() - 86400)",
        "last_active+86400<now()",
    ] {
        let e = parse(src);
        assert!(e.matches(&JsonContext::new(&stale, NOW)), "{src}");
        assert!(!e.matches(&JsonContext::new(&fresh, NOW)), "{src}");
    }
    // {distance(telemetry.position.latitude, telemetry.position.longitude, 54.72, 25.26) < 100}
    let e = parse(
        "distance(telemetry.position.latitude, telemetry.position.longitude, 54.72, 25.26) < 100",
    );
    let near = json!({"telemetry": {"position.latitude": 54.6872, "position.longitude": 25.2797}});
    let far = json!({"telemetry": {"position": {"latitude": 52.52, "longitude": 13.40}}});
    assert!(e.matches(&JsonContext::new(&near, NOW)));
    assert!(!e.matches(&JsonContext::new(&far, NOW)));
    assert!(!e.matches(&JsonContext::new(&json!({"telemetry": {}}), NOW)));
    // field=value selectors written as expressions.
    let item = json!({
        "protocol_name": "teltonika",
        "device_type_name": "fmc640",
        "metadata": {"fleet_id": 10},
        "plugins": {"fields": {"driver.name": "Andrew Smith"}}
    });
    let ctx = JsonContext::new(&item, NOW);
    assert!(parse(r#"protocol_name="teltonika""#).matches(&ctx));
    assert!(parse(r#"device_type_name="fmc640""#).matches(&ctx));
    assert!(parse("metadata.fleet_id=10").matches(&ctx));
    assert!(parse(r#"plugins.fields.driver.name="Andrew*""#).matches(&ctx));
    assert!(!parse(r#"protocol_name="concox""#).matches(&ctx));
}

/// A broker-style context over its own message type, with a lazy array composite.
struct Readings {
    values: [f64; 3],
}

impl Composite for Readings {
    fn kind(&self) -> CompositeKind {
        CompositeKind::Array
    }

    fn element(&self, index: usize) -> Option<ValueRef<'_>> {
        self.values.get(index).map(|v| ValueRef::Num(*v))
    }
}

struct Custom {
    readings: Readings,
    name: String,
}

impl Context for Custom {
    fn lookup(&self, key: &str) -> Option<ValueRef<'_>> {
        match key {
            "readings" => Some(ValueRef::Composite(&self.readings)),
            "name" => Some(ValueRef::Str(&self.name)),
            "dotted.key" => Some(ValueRef::Bool(true)),
            _ => None,
        }
    }

    fn now(&self) -> f64 {
        5.0
    }
}

#[test]
fn custom_contexts_and_composites() {
    let ctx = Custom {
        readings: Readings {
            values: [1.0, 2.5, 4.0],
        },
        name: "sensor-7".into(),
    };
    let ev = |src: &str| parse(src).eval(&ctx);
    assert_eq!(ev("readings[1]"), Ok(Value::Number(2.5)));
    assert_eq!(
        ev("readings[1] + readings[2] > now()"),
        Ok(Value::Bool(true))
    );
    assert_eq!(
        ev("readings[3]").map_err(|e| e.kind),
        Err(EvalErrorKind::MissingElement)
    );
    assert_eq!(
        ev("readings[\"a\"]").map_err(|e| e.kind),
        Err(EvalErrorKind::BadIndex(crate::TypeName::String))
    );
    assert_eq!(ev("name == \"sensor-*\""), Ok(Value::Bool(true)));
    assert_eq!(ev("dotted.key"), Ok(Value::Bool(true)));
    assert_eq!(ev("isnull(readings)"), Ok(Value::Bool(false)));
    // `&C` is a context too.
    assert!(parse("readings[0] == 1").matches(&&ctx));
}

#[test]
fn expressions_are_shareable() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<crate::Expr>();
    let e = parse("n > 1");
    let copy = e.clone();
    assert_eq!(e, copy);
    assert_eq!(copy.source(), "n > 1");
    let from_str: crate::Expr = "n>1".parse().expect("parses");
    assert_eq!(from_str, e);
    assert_eq!(format!("{e:?}"), "Expr(\"n > 1\")");
}
