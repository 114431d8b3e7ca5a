//! Device messages (docs/flespi.md#devices): what a posted message becomes before it is stored, and
//! the `data` of history reads (`from`, `to`, `count`, `reverse`, `fields`, `filter`).

use serde::Deserialize;
use serde_json::{Map, Value};
use tern_expr::{Expr, JsonContext};

use crate::error::GwError;

/// A timestamp in seconds: a number, or an ISO-8601 UTC string (`2024-05-01T12:00:00Z`,
/// `2024-05-01T12:00:00.250+00:00`).
pub fn timestamp_of(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("timestamp {n} is not a finite number")),
        Value::String(s) => iso8601(s)
            .ok_or_else(|| format!("timestamp `{s}` is neither a number nor an ISO-8601 UTC time")),
        other => Err(format!("timestamp must be a number, found {other}")),
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|+00:00)` (a space may stand for `T`).
fn iso8601(s: &str) -> Option<f64> {
    let s = s.trim();
    let body = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix("+00:00"))
        .or_else(|| s.strip_suffix("+0000"))?;
    let (date, time) = body.split_once(['T', ' '])?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) if !frac.is_empty() && frac.bytes().all(|b| b.is_ascii_digit()) => {
            (hms, format!("0.{frac}").parse::<f64>().ok()?)
        }
        Some(_) => return None,
        None => (time, 0.0),
    };
    let mut t = hms.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let m: i64 = t.next()?.parse().ok()?;
    let sec: i64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some((days_from_civil(year, month, day) * 86400 + h * 3600 + m * 60 + sec) as f64 + frac)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds to the microseconds messages are keyed by.
pub fn micros(secs: f64) -> i64 {
    let m = (secs * 1e6).round();
    if m >= i64::MAX as f64 {
        i64::MAX
    } else if m <= i64::MIN as f64 {
        i64::MIN
    } else {
        m as i64
    }
}

/// The `data` of GET /gw/devices/{sel}/messages.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesData {
    pub from: Option<f64>,
    pub to: Option<f64>,
    pub count: Option<u64>,
    #[serde(default)]
    pub reverse: bool,
    /// Comma-separated parameters to keep of each message.
    pub fields: Option<String>,
    /// An expression over the message; top-level commas are AND.
    pub filter: Option<String>,
}

/// The `data` of DELETE /gw/devices/{sel}/messages.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteData {
    pub from: Option<f64>,
    pub to: Option<f64>,
    /// Only the messages of the range that pass this expression (top-level commas are AND).
    pub filter: Option<String>,
}

impl DeleteData {
    /// The range and filter as a history query.
    pub fn query(&self) -> Result<MessageQuery, GwError> {
        MessagesData {
            from: self.from,
            to: self.to,
            filter: self.filter.clone(),
            ..Default::default()
        }
        .query()
    }
}

/// A parsed history read.
#[derive(Debug, Clone)]
pub struct MessageQuery {
    pub from: i64,
    pub to: i64,
    pub count: Option<u64>,
    pub reverse: bool,
    pub fields: Vec<String>,
    pub filter: Vec<Expr>,
}

impl MessagesData {
    pub fn query(&self) -> Result<MessageQuery, GwError> {
        let filter = match self.filter.as_deref() {
            None => Vec::new(),
            Some(f) => split_top(f)
                .into_iter()
                .filter(|p| !p.trim().is_empty())
                .map(|p| {
                    Expr::parse(p.trim()).map_err(|e| {
                        GwError::Invalid(format!("filter `{}` does not parse: {e}", p.trim()))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(MessageQuery {
            from: self.from.map_or(i64::MIN, micros),
            to: self.to.map_or(i64::MAX, micros),
            count: self.count,
            reverse: self.reverse,
            fields: self
                .fields
                .as_deref()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(str::to_string)
                .collect(),
            filter,
        })
    }
}

impl MessageQuery {
    /// Whether a message passes the filter (every part must hold).
    pub fn passes(&self, msg: &Value, now: f64) -> bool {
        self.filter
            .iter()
            .all(|e| e.matches(&JsonContext::new(msg, now)))
    }

    /// The message as answered: only `fields` when given.
    pub fn project(&self, msg: Value) -> Value {
        if self.fields.is_empty() {
            return msg;
        }
        let Value::Object(mut m) = msg else {
            return msg;
        };
        let mut out = Map::new();
        for f in &self.fields {
            if let Some(v) = m.remove(f) {
                out.insert(f.clone(), v);
            }
        }
        Value::Object(out)
    }
}

/// Splits at commas outside parentheses, brackets and quotes.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0usize);
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_are_numbers_or_iso_8601() {
        assert_eq!(timestamp_of(&json!(1.5)), Ok(1.5));
        assert_eq!(timestamp_of(&json!("1970-01-02T00:00:00Z")), Ok(86400.0));
        assert_eq!(
            timestamp_of(&json!("2024-05-01T12:00:00.25+00:00")),
            Ok(1_714_564_800.25)
        );
        assert!(timestamp_of(&json!("yesterday")).is_err());
        assert!(timestamp_of(&json!("2024-13-01T00:00:00Z")).is_err());
        assert!(timestamp_of(&json!(true)).is_err());
    }

    #[test]
    fn filters_split_at_top_level_commas() {
        let q = MessagesData {
            filter: Some("speed>10,min(a,b)<3".into()),
            ..Default::default()
        }
        .query()
        .expect("parses");
        assert_eq!(q.filter.len(), 2);
        assert!(q.passes(&json!({"speed": 11, "a": 1, "b": 5}), 0.0));
        assert!(!q.passes(&json!({"speed": 9, "a": 1, "b": 5}), 0.0));
        assert!(
            MessagesData {
                filter: Some("a +".into()),
                ..Default::default()
            }
            .query()
            .is_err()
        );
    }

    #[test]
    fn microseconds_round() {
        assert_eq!(micros(1.000001), 1_000_001);
        assert_eq!(micros(-0.5), -500_000);
    }
}
