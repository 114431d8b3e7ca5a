//! Whole-language tests: syntax and printing, semantics, the spec's examples, and property
//! tests. Module-level unit tests sit beside the code they test.

mod props;
mod semantics;
mod spec;
mod syntax;
mod template;

use serde_json::json;

use crate::{EvalErrorKind, Expr, JsonContext, Value};

/// The document most semantic tests run against.
pub(crate) fn doc() -> serde_json::Value {
    json!({
        "position": {"speed": 72, "latitude": 54.7, "longitude": 25.3},
        "name": "Andrew Smith",
        "pattern": "Andrew*",
        "quoted": "a\"b\\c\n",
        "n": 10,
        "s": "12",
        "hex": "0x10",
        "word": "abc",
        "empty": "",
        "t": true,
        "f": false,
        "z": null,
        "arr": [1, "two", {"x": 3}],
        "nested": {"deep": {"er": "yes"}},
        "telemetry": {
            "position.latitude": 54.72,
            "position.longitude": 25.26,
            "can.vehicle.mileage": 1000
        },
        "cid": 456,
        "last_active": 1_699_900_000
    })
}

/// The `now()` of the standard context.
pub(crate) const NOW: f64 = 1_700_000_000.5;

pub(crate) fn parse(src: &str) -> Expr {
    match Expr::parse(src) {
        Ok(e) => e,
        Err(e) => panic!("{src:?} does not parse: {e}"),
    }
}

pub(crate) fn eval_on(src: &str, doc: &serde_json::Value) -> Result<Value, crate::EvalError> {
    parse(src).eval(&JsonContext::new(doc, NOW))
}

/// Evaluates on [`doc`], expecting success.
pub(crate) fn ev(src: &str) -> Value {
    match eval_on(src, &doc()) {
        Ok(v) => v,
        Err(e) => panic!("{src:?} failed: {e}"),
    }
}

pub(crate) fn num(src: &str) -> f64 {
    match ev(src) {
        Value::Number(n) => n,
        other => panic!("{src:?} gave {other:?}, not a number"),
    }
}

pub(crate) fn boolean(src: &str) -> bool {
    match ev(src) {
        Value::Bool(b) => b,
        other => panic!("{src:?} gave {other:?}, not a boolean"),
    }
}

pub(crate) fn string(src: &str) -> String {
    match ev(src) {
        Value::String(s) => s,
        other => panic!("{src:?} gave {other:?}, not a string"),
    }
}

/// Evaluates on [`doc`], expecting an error; returns its kind.
pub(crate) fn fails(src: &str) -> EvalErrorKind {
    match eval_on(src, &doc()) {
        Ok(v) => panic!("{src:?} gave {v:?}, expected an error"),
        Err(e) => e.kind,
    }
}

/// The predicate rule on [`doc`].
pub(crate) fn passes(src: &str) -> bool {
    parse(src).matches(&JsonContext::new(&doc(), NOW))
}

pub(crate) fn parse_err(src: &str) -> String {
    match Expr::parse(src) {
        Ok(e) => panic!("{src:?} parsed as {e}"),
        Err(e) => e.to_string(),
    }
}
