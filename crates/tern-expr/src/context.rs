//! What an expression is evaluated on.
//!
//! The evaluator asks a [`Context`] for top-level fields by key and for the current time; the
//! dotted-name rule (flat key first, then nested objects) is applied by the evaluator on top of
//! that, so every context gets it the same way. Ready contexts:
//!
//! * [`JsonContext`] — a JSON document: a `$filter` `payload=` on a JSON payload, or one REST item
//!   for a `{expression}` selector. A payload that is JSON but not an object (a bare number,
//!   string, boolean, array) is visible as `payload`.
//! * [`TextContext`] — a payload that is UTF-8 but not JSON, visible as the string `payload`.
//! * [`Payload`] — parses MQTT payload bytes once into one of the two and tests filters on it.
//! * [`MessageContext`] — the `message=` object `{topic, topics[], cid, timestamp,
//!   user_properties, payload}` built from borrowed message parts, nothing serialized.
//!
//! A broker with its own message type can implement [`Context`] directly: return
//! [`ValueRef::Str`] for the topic, [`ValueRef::Levels`] for `topics`, [`ValueRef::Composite`]
//! for the user properties.

use std::fmt;

use crate::Expr;
use crate::value::{Composite, ValueRef};

/// The environment of one evaluation.
pub trait Context {
    /// The top-level field `key`, or `None` when absent. `key` is a whole key: it may contain
    /// dots (`position.speed`), which the evaluator tries before walking nested objects.
    fn lookup(&self, key: &str) -> Option<ValueRef<'_>>;

    /// Unix time in seconds (with a fraction) for `now()`. Only called when the expression uses
    /// `now()`.
    fn now(&self) -> f64;
}

impl<C: Context + ?Sized> Context for &C {
    fn lookup(&self, key: &str) -> Option<ValueRef<'_>> {
        (**self).lookup(key)
    }

    fn now(&self) -> f64 {
        (**self).now()
    }
}

/// A JSON document as the context: an object's members are the fields; any other JSON value is
/// visible as `payload`.
#[derive(Debug, Clone, Copy)]
pub struct JsonContext<'a> {
    doc: &'a serde_json::Value,
    now: f64,
}

impl<'a> JsonContext<'a> {
    pub fn new(doc: &'a serde_json::Value, now: f64) -> Self {
        JsonContext { doc, now }
    }
}

impl Context for JsonContext<'_> {
    fn lookup(&self, key: &str) -> Option<ValueRef<'_>> {
        match self.doc {
            serde_json::Value::Object(map) => map.get(key).map(ValueRef::Json),
            other if key == "payload" => Some(ValueRef::Json(other)),
            _ => None,
        }
    }

    fn now(&self) -> f64 {
        self.now
    }
}

/// A non-JSON text payload: the only field is the string `payload`.
#[derive(Debug, Clone, Copy)]
pub struct TextContext<'a> {
    text: &'a str,
    now: f64,
}

impl<'a> TextContext<'a> {
    pub fn new(text: &'a str, now: f64) -> Self {
        TextContext { text, now }
    }
}

impl Context for TextContext<'_> {
    fn lookup(&self, key: &str) -> Option<ValueRef<'_>> {
        (key == "payload").then_some(ValueRef::Str(self.text))
    }

    fn now(&self) -> f64 {
        self.now
    }
}

/// An MQTT payload prepared once for any number of `payload=` filters.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload<'a> {
    /// The payload parsed as JSON.
    Json(serde_json::Value),
    /// UTF-8 that is not JSON (`hello`, `0x1F`): a bare string.
    Text(&'a str),
    /// Not UTF-8: no payload filter matches it.
    Binary,
}

impl<'a> Payload<'a> {
    pub fn parse(bytes: &'a [u8]) -> Payload<'a> {
        match std::str::from_utf8(bytes) {
            Err(_) => Payload::Binary,
            Ok(text) => match serde_json::from_str(text) {
                Ok(json) => Payload::Json(json),
                Err(_) => Payload::Text(text),
            },
        }
    }

    /// Whether `expr` passes on this payload (the predicate rule; never for `Binary`).
    pub fn matches(&self, expr: &Expr, now: f64) -> bool {
        match self {
            Payload::Json(doc) => expr.matches(&JsonContext::new(doc, now)),
            Payload::Text(text) => expr.matches(&TextContext::new(text, now)),
            Payload::Binary => false,
        }
    }
}

/// The `message=` filter's object, borrowed from the message: `topic` (string), `topics` (its
/// levels), `cid`, `timestamp` (unix seconds), `user_properties` (object) and `payload` (string;
/// absent when the payload is not UTF-8, so `payload` then fails and `$payload` is null).
#[derive(Clone, Copy)]
pub struct MessageContext<'a> {
    pub topic: &'a str,
    pub cid: u64,
    pub timestamp: f64,
    pub user_properties: &'a dyn Composite,
    pub payload: Option<&'a str>,
    pub now: f64,
}

impl fmt::Debug for MessageContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageContext")
            .field("topic", &self.topic)
            .field("cid", &self.cid)
            .field("timestamp", &self.timestamp)
            .field("payload", &self.payload)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl Context for MessageContext<'_> {
    fn lookup(&self, key: &str) -> Option<ValueRef<'_>> {
        Some(match key {
            "topic" => ValueRef::Str(self.topic),
            "topics" => ValueRef::Levels(self.topic),
            // Account ids are far below 2^53: exact as f64.
            "cid" => ValueRef::Num(self.cid as f64),
            "timestamp" => ValueRef::Num(self.timestamp),
            "user_properties" => ValueRef::Composite(self.user_properties),
            "payload" => ValueRef::Str(self.payload?),
            _ => return None,
        })
    }

    fn now(&self) -> f64 {
        self.now
    }
}
