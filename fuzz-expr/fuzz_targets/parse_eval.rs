//! Parses arbitrary UTF-8 as an expression; whatever parses is evaluated against a fixed JSON
//! document, an MQTT message and a text payload (nothing may panic, `matches` must agree with
//! `eval`), and its canonical `Display` form must parse back to the same tree and print the same
//! (unless it is longer than the source limit).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{Value as Json, json};
use tern_expr::{
    Expr, JsonContext, MAX_SOURCE, MessageContext, ParseErrorKind, TextContext, UserProperties,
    Value,
};

fn doc() -> &'static Json {
    static DOC: OnceLock<Json> = OnceLock::new();
    DOC.get_or_init(|| {
        json!({
            "position": {"speed": 72, "latitude": 54.7, "longitude": 25.3},
            "position.speed": 5,
            "name": "Andrew Smith",
            "n": 10, "s": "12", "hex": "0x10", "t": true, "f": false, "z": null, "e": "",
            "a": [1, "two", {"x": 3}, [4, [5]]],
            "b": {"c": {"d": 1}, "c.d": 2},
            "telemetry": {"position.latitude": 54.72, "can.vehicle.mileage": 1000},
            "big": "x".repeat(40_000),
            "cid": 456,
            "last_active": 1_699_900_000
        })
    })
}

fn check_agrees(expr: &Expr, result: &Result<Value, tern_expr::EvalError>, matched: bool) {
    let truthy = result.as_ref().map(Value::is_truthy).unwrap_or(false);
    assert_eq!(
        matched, truthy,
        "matches() disagrees with eval() for {expr}: {result:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(expr) = Expr::parse(src) else {
        return;
    };

    let json_ctx = JsonContext::new(doc(), 1.7e9);
    let result = expr.eval(&json_ctx);
    check_agrees(&expr, &result, expr.matches(&json_ctx));
    if let Ok(Value::String(s)) = &result {
        assert!(
            s.len() <= tern_expr::MAX_STRING,
            "string of {} bytes",
            s.len()
        );
    }

    let props = [("unit", "C"), ("site", "a"), ("site", "b")];
    let up = UserProperties(&props);
    let msg = MessageContext {
        topic: "temperature/kitchen/1",
        cid: 1000,
        timestamp: 1.7e9,
        user_properties: &up,
        payload: Some("18.5"),
        now: 1.7e9,
    };
    let r = expr.eval(&msg);
    check_agrees(&expr, &r, expr.matches(&msg));
    let text = TextContext::new("0x1F", 0.0);
    let r = expr.eval(&text);
    check_agrees(&expr, &r, expr.matches(&text));

    let printed = expr.to_string();
    let again = match Expr::parse(&printed) {
        Ok(e) => e,
        // The canonical form can be longer than the source (spaces, `==` for `=`, escapes);
        // past the source limit it is rejected for that reason alone.
        Err(e)
            if printed.len() > MAX_SOURCE && matches!(e.kind, ParseErrorKind::TooLong { .. }) =>
        {
            return;
        }
        Err(e) => panic!("{src:?} printed as {printed:?}, which does not parse: {e}"),
    };
    assert_eq!(
        again, expr,
        "{src:?} printed as {printed:?} parses differently"
    );
    assert_eq!(
        again.to_string(),
        printed,
        "printing is not stable for {src:?}"
    );
});
