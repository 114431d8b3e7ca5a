//! REST selectors (docs/flespi.md#the-rest-api): the `{sel}` path segment that picks the items a
//! call acts on.
//!
//! A selector is a comma-separated list; every part must hold:
//! - `all`;
//! - ids (`1,2,3`): the item's `id` is one of them;
//! - `field=value` on a dotted path (flat key first, then nested objects; an array matches when
//!   one of its elements does), `*` and `?` as wildcards; a value in double quotes is a JSON
//!   string (`protocol_name="teltonika"`); numbers compare as numbers (`10` equals `10.0`);
//! - `{expression}` in the flespi expression language, evaluated on the item (`now()` is the
//!   broker clock).
//!
//! The segment is split before it is percent-decoded: a `%2C` is a literal comma inside a
//! topic. Commas inside `{...}` and inside double quotes never split.

use axum::http::StatusCode;
use serde_json::Value;
use tern_expr::{Expr, JsonContext, Pattern};

use crate::error::{ApiError, ErrorItem};

/// A parsed selector.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selector {
    /// Alternatives for the item's `id`; empty for any id.
    ids: Vec<u64>,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone)]
enum Condition {
    Field { path: String, value: Wanted },
    Expr(Expr),
}

#[derive(Debug, Clone)]
enum Wanted {
    Exact(String),
    Pattern(Pattern),
}

impl Selector {
    /// Parses an item selector.
    pub fn parse(raw: &str) -> Result<Selector, ApiError> {
        let mut sel = Selector::default();
        let mut errors = Vec::new();
        for part in split(raw, true)? {
            let part = part.trim();
            if part == "all" {
                continue;
            }
            if let Ok(id) = part.parse::<u64>() {
                sel.ids.push(id);
                continue;
            }
            match condition(part) {
                Ok(c) => sel.conditions.push(c),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(sel)
        } else {
            Err(ApiError::invalid(errors))
        }
    }

    /// Parses a topic selector: a topic or filter, then conditions on the messages.
    pub fn parse_topic(raw: &str) -> Result<(String, Selector), ApiError> {
        let mut parts = split(raw, false)?.into_iter();
        let topic = parts.next().unwrap_or_default();
        let mut sel = Selector::default();
        let mut errors = Vec::new();
        for part in parts {
            match condition(part.trim()) {
                Ok(c) => sel.conditions.push(c),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok((topic, sel))
        } else {
            Err(ApiError::invalid(errors))
        }
    }

    /// The ids when the selector is nothing but ids (`1,2,3`): the caller can look them up
    /// instead of filtering every item.
    pub fn only_ids(&self) -> Option<&[u64]> {
        (!self.ids.is_empty() && self.conditions.is_empty()).then_some(self.ids.as_slice())
    }

    /// Whether `item` is selected.
    pub fn matches(&self, item: &Value, now: f64) -> bool {
        if !self.ids.is_empty()
            && !item
                .get("id")
                .and_then(Value::as_u64)
                .is_some_and(|id| self.ids.contains(&id))
        {
            return false;
        }
        self.conditions.iter().all(|c| match c {
            Condition::Field { path, value } => field_matches(item, path, value),
            Condition::Expr(expr) => expr.matches(&JsonContext::new(item, now)),
        })
    }

    /// The selected items, in their order.
    pub fn filter(&self, items: Vec<Value>, now: f64) -> Vec<Value> {
        items
            .into_iter()
            .filter(|item| self.matches(item, now))
            .collect()
    }
}

fn invalid(reason: String) -> ErrorItem {
    ErrorItem::new(StatusCode::BAD_REQUEST, reason)
}

/// One `field=value` or `{expression}` part.
fn condition(part: &str) -> Result<Condition, ErrorItem> {
    if let Some(inner) = part.strip_prefix('{') {
        let inner = inner
            .strip_suffix('}')
            .ok_or_else(|| invalid(format!("selector `{part}`: missing closing `}}`")))?;
        return Expr::parse(inner)
            .map(Condition::Expr)
            .map_err(|e| invalid(format!("selector expression `{inner}` does not parse: {e}")));
    }
    let Some((path, value)) = part.split_once('=') else {
        return Err(invalid(format!(
            "invalid selector `{part}`: expected all, ids, field=value or {{expression}}"
        )));
    };
    let path = path.trim();
    if path.is_empty() || path.contains(['{', '}', '"', ' ']) {
        return Err(invalid(format!(
            "invalid selector `{part}`: bad field name `{path}`"
        )));
    }
    let value = value.trim();
    let value = if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        serde_json::from_str::<String>(value)
            .map_err(|e| invalid(format!("selector `{part}`: bad quoted value: {e}")))?
    } else {
        value.to_string()
    };
    let wanted = match Pattern::new(&value) {
        Some(p) => Wanted::Pattern(p),
        None => Wanted::Exact(value),
    };
    Ok(Condition::Field {
        path: path.to_string(),
        value: wanted,
    })
}

/// Splits a raw (percent-encoded) segment at commas outside braces and quotes, then decodes
/// each part. `encoded_commas` also splits at `%2C` (item selectors: ids and fields carry no
/// literal commas); topic selectors keep `%2C` as a comma of the topic.
fn split(raw: &str, encoded_commas: bool) -> Result<Vec<String>, ApiError> {
    let bytes = decode_marked(raw);
    let mut parts = Vec::new();
    let mut current = Vec::new();
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for (b, was_encoded) in bytes {
        if quoted {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => quoted = true,
                b'{' => depth += 1,
                b'}' => depth = depth.saturating_sub(1),
                b',' if depth == 0 && (!was_encoded || encoded_commas) => {
                    parts.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
        }
        current.push(b);
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|p| {
            String::from_utf8(p)
                .map_err(|_| ApiError::bad_request("the selector is not UTF-8 once decoded"))
        })
        .collect()
}

/// Percent-decodes, remembering which bytes were encoded.
fn decode_marked(raw: &str) -> Vec<(u8, bool)> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1).and_then(hex), b.get(i + 2).and_then(hex))
        {
            out.push((h << 4 | l, true));
            i += 3;
            continue;
        }
        out.push((b[i], false));
        i += 1;
    }
    out
}

fn hex(c: &u8) -> Option<u8> {
    (*c as char).to_digit(16).map(|d| d as u8)
}

/// Finds a dotted path in `v`: the whole rest as one key first, then one level deeper. Returns
/// the keys taken.
pub(crate) fn locate<'a>(v: &'a Value, path: &str) -> Option<(Vec<String>, &'a Value)> {
    let obj = v.as_object()?;
    if let Some(x) = obj.get(path) {
        return Some((vec![path.to_string()], x));
    }
    let (head, rest) = path.split_once('.')?;
    let (mut keys, found) = locate(obj.get(head)?, rest)?;
    keys.insert(0, head.to_string());
    Some((keys, found))
}

fn field_matches(v: &Value, path: &str, wanted: &Wanted) -> bool {
    if let Value::Array(items) = v {
        return items.iter().any(|i| field_matches(i, path, wanted));
    }
    let Some(obj) = v.as_object() else {
        return false;
    };
    if let Some(x) = obj.get(path)
        && value_matches(x, wanted)
    {
        return true;
    }
    match path.split_once('.') {
        Some((head, rest)) => obj
            .get(head)
            .is_some_and(|inner| field_matches(inner, rest, wanted)),
        None => false,
    }
}

fn value_matches(v: &Value, wanted: &Wanted) -> bool {
    if let Value::Array(items) = v {
        return items.iter().any(|i| value_matches(i, wanted));
    }
    let Some(text) = scalar_text(v) else {
        return false;
    };
    match wanted {
        Wanted::Pattern(p) => p.matches(&text),
        Wanted::Exact(s) if *s == text => true,
        Wanted::Exact(s) => match (v, s.parse::<f64>()) {
            (Value::Number(n), Ok(want)) => n.as_f64() == Some(want),
            _ => false,
        },
    }
}

/// The text a scalar is compared by; `None` for objects.
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("null".into()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(s: &str) -> Selector {
        Selector::parse(s).expect("parses")
    }

    #[test]
    fn forms() {
        let a = json!({"id": 5, "cid": 1000, "name": "Andrew Smith", "metadata": {"fleet_id": 10}, "groups": [{"id": 7}]});
        assert!(sel("all").matches(&a, 0.0));
        assert!(sel("1,5").matches(&a, 0.0));
        assert!(!sel("1,2").matches(&a, 0.0));
        assert!(sel("5,cid=1000").matches(&a, 0.0));
        assert!(!sel("5,cid=1001").matches(&a, 0.0));
        assert!(sel("all,cid=1000").matches(&a, 0.0));
        assert!(sel("name=Andrew*").matches(&a, 0.0));
        assert!(sel("name=%22Andrew%20Smith%22").matches(&a, 0.0));
        assert!(sel("metadata.fleet_id=10").matches(&a, 0.0));
        assert!(sel("metadata.fleet_id=10.0").matches(&a, 0.0));
        assert!(sel("groups.id=7").matches(&a, 0.0));
        assert!(sel("{cid=1 || cid=1000}").matches(&a, 0.0));
        assert!(
            sel("%7Bmin(id,%203)%20==%203%7D").matches(&a, 0.0),
            "commas inside braces do not split"
        );
        assert!(
            sel("1%2C5").matches(&a, 0.0),
            "encoded commas split item selectors"
        );
        assert!(!sel("{exists(\"nothing\")}").matches(&a, 0.0));
        assert_eq!(sel("1,5").only_ids(), Some(&[1u64, 5][..]));
        assert_eq!(sel("5,cid=1000").only_ids(), None);
        assert_eq!(sel("all").only_ids(), None);
    }

    #[test]
    fn errors() {
        assert!(Selector::parse("{a +}").is_err());
        assert!(Selector::parse("{a").is_err());
        assert!(Selector::parse("abc").is_err());
        assert!(Selector::parse("=x").is_err());
    }

    #[test]
    fn topics() {
        let (t, s) = Selector::parse_topic("a%2Fb,cid=1000").expect("parses");
        assert_eq!(t, "a/b");
        assert!(s.matches(&json!({"cid": 1000}), 0.0));
        let (t, _) = Selector::parse_topic("x%2F1%2C2").expect("parses");
        assert_eq!(t, "x/1,2");
    }

    #[test]
    fn locating() {
        let v = json!({"a": {"b.c": 1, "b": {"c": 2}}, "x.y": 3});
        assert_eq!(
            locate(&v, "a.b.c").map(|(k, v)| (k, v.clone())),
            Some((vec!["a".into(), "b.c".into()], json!(1)))
        );
        assert_eq!(
            locate(&v, "x.y").map(|(k, _)| k),
            Some(vec!["x.y".to_string()])
        );
        assert!(locate(&v, "a.z").is_none());
    }
}
