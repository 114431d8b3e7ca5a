//! Values: [`Value`], the owned result of an evaluation; [`ValueRef`], what a [`crate::Context`]
//! hands to the evaluator without copying (borrowed JSON, borrowed strings, numbers, and lazily
//! indexed composites such as a topic's levels); and the number conversions the language uses.

use std::fmt;

/// The result of [`crate::Expr::eval`]: the language's four value types.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
}

impl Value {
    /// The predicate rule: `true`, a non-zero number and a "true" string pass (see
    /// [`truthy_str`]); `false`, `0`, NaN and `null` fail.
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => truthy_num(*n),
            Value::String(s) => truthy_str(s),
        }
    }

    pub fn type_name(&self) -> TypeName {
        match self {
            Value::Null => TypeName::Null,
            Value::Bool(_) => TypeName::Boolean,
            Value::Number(_) => TypeName::Number,
            Value::String(_) => TypeName::String,
        }
    }
}

/// The type of a value, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeName {
    Null,
    Boolean,
    Number,
    String,
    Array,
    Object,
}

impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TypeName::Null => "null",
            TypeName::Boolean => "a boolean",
            TypeName::Number => "a number",
            TypeName::String => "a string",
            TypeName::Array => "an array",
            TypeName::Object => "an object",
        })
    }
}

impl fmt::Display for Value {
    /// `tostring()` of the value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => Ok(()),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Number(n) => write_number(f, *n),
            Value::String(s) => f.write_str(s),
        }
    }
}

impl From<Value> for serde_json::Value {
    /// NaN and infinities, which JSON cannot carry, become `null`.
    fn from(v: Value) -> Self {
        match v {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(b),
            Value::Number(n) => serde_json::Number::from_f64(n)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::String(s) => serde_json::Value::String(s),
        }
    }
}

/// A value as a [`crate::Context`] lends it to the evaluator: nothing is copied.
///
/// * `Json` — any borrowed JSON value; scalars inside it are read in place, arrays and objects
///   are indexed and walked in place.
/// * `Str`, `Num`, `Bool`, `Null` — scalars the context has in its own form (a topic string,
///   a `cid`, a timestamp).
/// * `Levels(topic)` — the array of the topic's `/`-separated levels (`topics`), split only
///   when indexed: `topics[1]` of `temperature/kitchen` is `kitchen`.
/// * `Composite` — any other array or object the context can index lazily, e.g. the MQTT user
///   properties ([`crate::UserProperties`]).
#[derive(Clone, Copy)]
pub enum ValueRef<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'a str),
    Json(&'a serde_json::Value),
    Levels(&'a str),
    Composite(&'a dyn Composite),
}

impl fmt::Debug for ValueRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueRef::Null => f.write_str("Null"),
            ValueRef::Bool(b) => f.debug_tuple("Bool").field(b).finish(),
            ValueRef::Num(n) => f.debug_tuple("Num").field(n).finish(),
            ValueRef::Str(s) => f.debug_tuple("Str").field(s).finish(),
            ValueRef::Json(v) => f.debug_tuple("Json").field(v).finish(),
            ValueRef::Levels(t) => f.debug_tuple("Levels").field(t).finish(),
            ValueRef::Composite(c) => f.debug_tuple("Composite").field(&c.kind()).finish(),
        }
    }
}

/// Whether a [`Composite`] behaves as an array (indexed by number) or an object (by key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompositeKind {
    Array,
    Object,
}

/// An array or object that a context exposes without building JSON for it. Only the accessor
/// matching [`Composite::kind`] is called; the other defaults to "absent".
pub trait Composite {
    fn kind(&self) -> CompositeKind;

    /// The value under `key` of an object.
    fn field(&self, key: &str) -> Option<ValueRef<'_>> {
        let _ = key;
        None
    }

    /// Element `index` (zero-based) of an array.
    fn element(&self, index: usize) -> Option<ValueRef<'_>> {
        let _ = index;
        None
    }
}

/// MQTT 5 user properties as the `user_properties` object of a `message=` filter. A name that
/// occurs more than once reads as its last value (as when the list is turned into a JSON object).
pub struct UserProperties<'a, K, V>(pub &'a [(K, V)]);

impl<K, V> fmt::Debug for UserProperties<'_, K, V>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
            .finish()
    }
}

impl<K, V> Composite for UserProperties<'_, K, V>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    fn kind(&self) -> CompositeKind {
        CompositeKind::Object
    }

    fn field(&self, key: &str) -> Option<ValueRef<'_>> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| ValueRef::Str(v.as_ref()))
    }
}

/// The predicate rule for numbers: non-zero and not NaN.
pub(crate) fn truthy_num(n: f64) -> bool {
    n != 0.0 && !n.is_nan()
}

/// The predicate rule for strings: `""` and `"false"` fail, `"true"` passes, a numeric string
/// passes when its number is non-zero (`"0"` fails), and any other non-empty string passes.
pub fn truthy_str(s: &str) -> bool {
    match s {
        "" | "false" => false,
        "true" => true,
        s => parse_number(s).is_none_or(truthy_num),
    }
}

/// Parses a numeric string the way the language converts strings to numbers: optional ASCII
/// whitespace around, an optional sign, then a decimal number (`12`, `1.5`, `.5`, `5.`, `1e3`) or
/// `0x` hex. Words like `inf` or `nan` are not numbers. `None` when it is not a number.
pub fn parse_number(s: &str) -> Option<f64> {
    let s = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, s.get(1..)?),
        Some(b'+') => (false, s.get(1..)?),
        _ => (false, s),
    };
    let n = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        // More than 16 digits overflow u64 and are not a number.
        u64::from_str_radix(hex, 16).ok()? as f64
    } else {
        let valid = body
            .bytes()
            .all(|b| b.is_ascii_digit() || b"eE.+-".contains(&b));
        let has_digit = body
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.')
            && body.bytes().any(|b| b.is_ascii_digit());
        if !valid || !has_digit {
            return None;
        }
        body.parse::<f64>().ok()?
    };
    Some(if negative { -n } else { n })
}

/// Writes a number as `tostring()` shows it: integers below 1e16 without a fraction (`5`,
/// `-12`), anything else in Rust's shortest round-trip form (`0.5`, `1e16`, `1.5e-7`, `inf`,
/// `NaN`).
pub(crate) fn write_number(out: &mut impl fmt::Write, n: f64) -> fmt::Result {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 1e16 {
        // Exact: |n| < 1e16 < 2^63.
        write!(out, "{}", n as i64)
    } else {
        write!(out, "{n:?}")
    }
}

/// A stack buffer for formatting one number without allocating.
pub(crate) struct NumBuf {
    buf: [u8; 48],
    len: usize,
}

impl NumBuf {
    pub(crate) fn new() -> NumBuf {
        NumBuf {
            buf: [0; 48],
            len: 0,
        }
    }

    pub(crate) fn format(n: f64) -> NumBuf {
        let mut buf = NumBuf::new();
        // Cannot fail: the longest f64 Debug form is 24 bytes.
        let _ = write_number(&mut buf, n);
        buf
    }

    pub(crate) fn as_str(&self) -> &str {
        self.buf
            .get(..self.len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }
}

impl fmt::Write for NumBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_strings() {
        assert_eq!(parse_number("12"), Some(12.0));
        assert_eq!(parse_number(" 12.5 "), Some(12.5));
        assert_eq!(parse_number("-3"), Some(-3.0));
        assert_eq!(parse_number("+3"), Some(3.0));
        assert_eq!(parse_number(".5"), Some(0.5));
        assert_eq!(parse_number("5."), Some(5.0));
        assert_eq!(parse_number("1e3"), Some(1000.0));
        assert_eq!(parse_number("1E-3"), Some(0.001));
        assert_eq!(parse_number("0x1F"), Some(31.0));
        assert_eq!(parse_number("-0x10"), Some(-16.0));
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("0x10000000000000000"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("  "), None);
        assert_eq!(parse_number("-"), None);
        assert_eq!(parse_number("."), None);
        assert_eq!(parse_number("e5"), None);
        assert_eq!(parse_number("inf"), None);
        assert_eq!(parse_number("NaN"), None);
        assert_eq!(parse_number("infinity"), None);
        assert_eq!(parse_number("12abc"), None);
        assert_eq!(parse_number("1-2"), None);
        assert_eq!(parse_number("--1"), None);
    }

    #[test]
    fn number_formatting() {
        let s = |n: f64| NumBuf::format(n).as_str().to_string();
        assert_eq!(s(5.0), "5");
        assert_eq!(s(-12.0), "-12");
        assert_eq!(s(-0.0), "0");
        assert_eq!(s(0.5), "0.5");
        assert_eq!(s(1e16), "1e16");
        assert_eq!(s(1.5e-7), "1.5e-7");
        assert_eq!(s(f64::INFINITY), "inf");
        assert_eq!(s(f64::NAN), "NaN");
        assert_eq!(s(-f64::MIN_POSITIVE), "-2.2250738585072014e-308");
    }

    #[test]
    fn string_truthiness() {
        assert!(!truthy_str(""));
        assert!(!truthy_str("false"));
        assert!(!truthy_str("0"));
        assert!(!truthy_str("0.0"));
        assert!(truthy_str("true"));
        assert!(truthy_str("1"));
        assert!(truthy_str("abc"));
        assert!(truthy_str(" "));
    }

    #[test]
    fn user_properties_last_value_wins() {
        let props = [("a", "1"), ("b", "2"), ("a", "3")];
        let up = UserProperties(&props);
        assert_eq!(up.kind(), CompositeKind::Object);
        assert!(matches!(up.field("a"), Some(ValueRef::Str("3"))));
        assert!(up.field("c").is_none());
        assert!(up.element(0).is_none());
    }

    #[test]
    fn values_convert_to_json() {
        assert_eq!(
            serde_json::Value::from(Value::Number(1.5)),
            serde_json::json!(1.5)
        );
        assert_eq!(
            serde_json::Value::from(Value::Number(f64::NAN)),
            serde_json::Value::Null
        );
        assert_eq!(
            serde_json::Value::from(Value::String("x".into())),
            serde_json::json!("x")
        );
        assert_eq!(Value::Number(3.0).to_string(), "3");
        assert_eq!(Value::Null.to_string(), "");
    }
}
