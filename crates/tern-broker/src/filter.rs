//! What a subscription string asks for beyond its topic filter: `$share/<group>/` (shared
//! subscriptions), `$filter/<params>/` (flespi server-side filtering,
//! docs/flespi.md#subscribing-and-filter) and the SUBSCRIBE user property `cid=<n>`.
//!
//! `$filter` parameters are one topic level of `&`-joined `name=value` pairs whose values are
//! percent-decoded (clients use encodeURIComponent; `+` stays `+`):
//! - `cid=<n>`: only messages published by account n;
//! - `modified_since=<t>` or `modified_since><t>`: only messages whose timestamp is after t
//!   (unix seconds, fractions allowed);
//! - `payload=<expr>`: the expression on the JSON payload (a bare number or string is visible
//!   as `payload`);
//! - `message=<expr>`: the expression on `{topic, topics, cid, timestamp, user_properties,
//!   payload}`.
//!
//! Expressions are compiled once, at subscribe time; a payload is parsed at most once per
//! message however many filters look at it.

use std::cell::OnceCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytestring::ByteString;
use percent_encoding::percent_decode_str;
use tern_expr::{Expr, MessageContext, Payload, UserProperties};
use tern_topic::ShareMode;

use crate::message::{Cid, Message, Micros};
use crate::rights::AclRules;

const SHARE_PREFIX: &str = "$share/";
const FILTER_PREFIX: &str = "$filter/";

/// A subscription string taken apart.
#[derive(Debug, Clone)]
pub struct ParsedFilter {
    /// The shared subscription group name, if any.
    pub share_group: Option<ByteString>,
    /// How the shared group picks a member.
    pub share_mode: ShareMode,
    /// The topic filter the index matches.
    pub topic_filter: ByteString,
    /// The `$filter` conditions, if any.
    pub conditions: Option<Conditions>,
}

/// Why a subscription string was refused (SUBACK 0x8F in v5, 0x80 in 3.1.1; the REST API
/// answers 400 with the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("shared subscription without a filter")]
    ShareWithoutFilter,
    /// [MQTT-4.8.2-2]: a share name is not empty and holds no wildcard.
    #[error("[MQTT-4.8.2-2] invalid share name `{0}`")]
    ShareName(String),
    #[error("$filter without a topic filter")]
    FilterWithoutTopic,
    #[error("$filter without parameters")]
    NoParameters,
    #[error("$filter parameter `{0}` is not UTF-8 after percent-decoding")]
    NotUtf8(String),
    #[error("$filter parameter `{0}` has no value")]
    NoValue(String),
    #[error("$filter cid `{0}` is not an account id")]
    Cid(String),
    #[error("$filter modified_since `{0}` is not a time")]
    ModifiedSince(String),
    #[error("$filter payload: {0}")]
    Payload(tern_expr::ParseError),
    #[error("$filter message: {0}")]
    Message(tern_expr::ParseError),
    #[error("unknown $filter parameter `{0}`")]
    UnknownParameter(String),
    /// The topic filter itself (MQTT 4.7).
    #[error(transparent)]
    TopicFilter(#[from] tern_topic::TopicError),
    /// A stored subscription identity whose `\0cid=<n>` suffix does not parse.
    #[error("bad subscription suffix `{0}`")]
    Suffix(String),
}

/// The conditions a message must meet to be delivered to a subscription.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    /// Only messages of these accounts (every one listed must agree: `$filter/cid=` and the
    /// `cid` user property each add one).
    pub cids: smallvec::SmallVec<[Cid; 1]>,
    /// Only messages published after this time.
    pub modified_since: Option<Micros>,
    pub payload: Option<Expr>,
    pub message: Option<Expr>,
    /// The grants of an ACL token whose subscription only overlaps them: every delivery must
    /// be inside them.
    pub acl: Option<Arc<AclRules>>,
    /// What the conditions were made from (the `$filter` parameters, the `cid` property, the
    /// ACL rules' identity): equal keys are equal conditions, so the broker keeps one copy and
    /// evaluates it once per message however many subscriptions use it.
    pub key: String,
    /// The last verdict: the message's timestamp (unique per message, from the broker clock)
    /// shifted left once, plus the result. Routing asks this first, so the subscriptions that
    /// share these conditions evaluate them once per message.
    memo: Memo,
}

/// See [`Conditions::verdict`]; a clone starts empty.
#[derive(Debug, Default)]
struct Memo(AtomicU64);

impl Clone for Memo {
    fn clone(&self) -> Memo {
        Memo::default()
    }
}

impl Conditions {
    /// Whether nothing is asked for.
    pub fn is_empty(&self) -> bool {
        self.cids.is_empty()
            && self.modified_since.is_none()
            && self.payload.is_none()
            && self.message.is_none()
            && self.acl.is_none()
    }

    /// Whether `msg` passes, evaluated at most once per message (see `memo`); for messages
    /// routed by the broker, which stamps each with a unique timestamp.
    pub fn verdict(&self, msg: &Message, payload: &LazyPayload<'_>, now: f64) -> bool {
        let seen = self.memo.0.load(Ordering::Relaxed);
        if seen >> 1 == msg.timestamp && seen != 0 {
            return seen & 1 == 1;
        }
        let result = self.matches(msg, payload, now);
        self.memo
            .0
            .store(msg.timestamp << 1 | u64::from(result), Ordering::Relaxed);
        result
    }

    /// Whether `msg` passes. `payload` caches the parsed payload across the subscriptions that
    /// look at the same message.
    pub fn matches(&self, msg: &Message, payload: &LazyPayload<'_>, now: f64) -> bool {
        if self.cids.iter().any(|c| *c != msg.cid) {
            return false;
        }
        if self
            .acl
            .as_ref()
            .is_some_and(|acl| !acl.can_receive(&msg.topic))
        {
            return false;
        }
        if self
            .modified_since
            .is_some_and(|since| msg.timestamp <= since)
        {
            return false;
        }
        if let Some(expr) = &self.payload
            && !payload.get().matches(expr, now)
        {
            return false;
        }
        if let Some(expr) = &self.message {
            let props = UserProperties(&msg.properties.user_properties);
            let ctx = MessageContext {
                topic: &msg.topic,
                cid: msg.cid,
                timestamp: msg.timestamp as f64 / 1e6,
                user_properties: &props,
                payload: std::str::from_utf8(&msg.payload).ok(),
                now,
            };
            if !expr.matches(&ctx) {
                return false;
            }
        }
        true
    }
}

/// A message payload parsed on first use.
#[derive(Debug)]
pub struct LazyPayload<'a> {
    bytes: &'a [u8],
    parsed: OnceCell<Payload<'a>>,
}

impl<'a> LazyPayload<'a> {
    pub fn new(bytes: &'a [u8]) -> LazyPayload<'a> {
        LazyPayload {
            bytes,
            parsed: OnceCell::new(),
        }
    }

    fn get(&self) -> &Payload<'a> {
        self.parsed.get_or_init(|| Payload::parse(self.bytes))
    }
}

/// Takes a subscription string apart and compiles its conditions.
pub fn parse(full: &str) -> Result<ParsedFilter, FilterError> {
    let mut rest = full;
    let mut share_group = None;
    let mut share_mode = ShareMode::Random;
    if let Some(after) = rest.strip_prefix(SHARE_PREFIX) {
        let (group, inner) = after
            .split_once('/')
            .ok_or(FilterError::ShareWithoutFilter)?;
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(FilterError::ShareName(group.to_string()));
        }
        share_mode = ShareMode::from_group(group);
        share_group = Some(ByteString::from(group));
        rest = inner;
    }
    let mut conditions = None;
    if let Some(after) = rest.strip_prefix(FILTER_PREFIX) {
        let (params, inner) = after
            .split_once('/')
            .ok_or(FilterError::FilterWithoutTopic)?;
        conditions = Some(parse_params(params)?);
        rest = inner;
    }
    tern_topic::validate_topic_filter(rest)?;
    Ok(ParsedFilter {
        share_group,
        share_mode,
        topic_filter: ByteString::from(rest),
        conditions,
    })
}

/// Parses the `&`-joined parameters of `$filter/<params>/`.
fn parse_params(params: &str) -> Result<Conditions, FilterError> {
    let mut c = Conditions {
        key: params.to_string(),
        ..Conditions::default()
    };
    if params.is_empty() {
        return Err(FilterError::NoParameters);
    }
    for param in params.split('&') {
        let decode = |v: &str| {
            percent_decode_str(v)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| FilterError::NotUtf8(param.to_string()))
        };
        // `name=value` or `modified_since>value`; a client that encoded the whole parameter
        // (`modified_since%3E...`) is understood too.
        let (name, value) = match param.find(['=', '>']) {
            Some(i) => (param[..i].to_string(), decode(&param[i + 1..])?),
            None => {
                let whole = decode(param)?;
                match whole.find(['=', '>']) {
                    Some(i) => (whole[..i].to_string(), whole[i + 1..].to_string()),
                    None => {
                        return Err(FilterError::NoValue(param.to_string()));
                    }
                }
            }
        };
        let name = name.as_str();
        match name {
            "cid" => c
                .cids
                .push(value.parse().map_err(|_| FilterError::Cid(value.clone()))?),
            "modified_since" => {
                let secs: f64 = value
                    .parse()
                    .map_err(|_| FilterError::ModifiedSince(value.clone()))?;
                if !secs.is_finite() || secs < 0.0 {
                    return Err(FilterError::ModifiedSince(value));
                }
                c.modified_since = Some((secs * 1e6) as Micros);
            }
            "payload" => c.payload = Some(Expr::parse(&value).map_err(FilterError::Payload)?),
            "message" => c.message = Some(Expr::parse(&value).map_err(FilterError::Message)?),
            other => return Err(FilterError::UnknownParameter(other.to_string())),
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(topic: &str, payload: &'static [u8], cid: Cid, ts: Micros) -> Arc<Message> {
        Arc::new(Message::plain(
            cid,
            topic,
            Bytes::from_static(payload),
            tern_codec::QoS::AtMostOnce,
            ts,
        ))
    }

    fn passes(filter: &str, m: &Message) -> bool {
        let p = parse(filter).unwrap();
        p.conditions
            .unwrap()
            .matches(m, &LazyPayload::new(&m.payload), 0.0)
    }

    #[test]
    fn the_verdict_is_evaluated_once_per_message() {
        let c = parse("$filter/payload=v%3E10/t")
            .unwrap()
            .conditions
            .unwrap();
        let high = msg("t", br#"{"v": 11}"#, 1, 100);
        let low = msg("t", br#"{"v": 1}"#, 1, 101);
        let verdict = |m: &Message| c.verdict(m, &LazyPayload::new(&m.payload), 0.0);
        assert!(verdict(&high));
        assert!(!verdict(&low), "another message is evaluated again");
        assert!(!verdict(&low), "and remembered");
        // The memo is keyed by the message's unique timestamp: a different payload under the
        // same stamp (which the broker never produces) gets the remembered verdict.
        assert!(!verdict(&msg("t", br#"{"v": 99}"#, 1, 101)));
        assert!(verdict(&msg("t", br#"{"v": 99}"#, 1, 102)));
        assert!(
            !c.clone()
                .verdict(&low, &LazyPayload::new(&low.payload), 0.0)
        );
    }

    #[test]
    fn plain_and_shared_forms() {
        let p = parse("a/+/c").unwrap();
        assert!(p.share_group.is_none() && p.conditions.is_none());
        let p = parse("$share/g:2/$filter/cid=5/a/#").unwrap();
        assert_eq!(p.share_group.as_deref(), Some("g:2"));
        assert_eq!(p.share_mode, ShareMode::Sticky { from: 0, count: 2 });
        assert_eq!(&*p.topic_filter, "a/#");
        assert_eq!(p.conditions.unwrap().cids.to_vec(), vec![5]);
    }

    #[test]
    fn spec_examples() {
        let m = msg(
            "flespi/message/gw/devices/1",
            br#"{"position.speed": 61}"#,
            1,
            0,
        );
        assert!(passes(
            "$filter/payload=position.speed%3E60/flespi/message/gw/devices/+",
            &m
        ));
        let slow = msg(
            "flespi/message/gw/devices/1",
            br#"{"position": {"speed": 12}}"#,
            1,
            0,
        );
        assert!(!passes(
            "$filter/payload=position.speed%3E60/flespi/message/gw/devices/+",
            &slow
        ));

        let f = "$filter/message=(topics%5B1%5D%3D%3D%22kitchen%22)%26%26tonumber(payload)%3C20/temperature/+";
        assert!(passes(f, &msg("temperature/kitchen", b"18", 1, 0)));
        assert!(!passes(f, &msg("temperature/kitchen", b"21", 1, 0)));
        assert!(!passes(f, &msg("temperature/hall", b"18", 1, 0)));

        assert!(passes("$filter/cid=123/x", &msg("x", b"", 123, 0)));
        assert!(!passes("$filter/cid=123/x", &msg("x", b"", 124, 0)));
        assert!(passes(
            "$filter/modified_since=1700000000/x",
            &msg("x", b"", 1, 1_700_000_000_500_000)
        ));
        assert!(!passes(
            "$filter/modified_since>1700000000/x",
            &msg("x", b"", 1, 1_700_000_000_000_000)
        ));
        assert!(passes(
            "$filter/payload=tonumber(payload)%3E14/x",
            &msg("x", b"14.2", 1, 0)
        ));
    }

    #[test]
    fn plus_is_not_a_space_and_params_combine() {
        let m = msg("x", br#"{"a": 3}"#, 7, 0);
        assert!(passes("$filter/payload=a+1%3D%3D4&cid=7/x", &m));
        assert!(!passes("$filter/payload=a+1%3D%3D4&cid=8/x", &m));
    }

    #[test]
    fn non_json_payloads() {
        // Text that is not JSON is visible as `payload`; binary never matches.
        assert!(passes(
            "$filter/payload=payload%3D%3D%22on%22/x",
            &msg("x", b"on", 1, 0)
        ));
        assert!(!passes(
            "$filter/payload=payload%3D%3D%22on%22/x",
            &msg("x", b"\xff\xfe", 1, 0)
        ));
    }

    #[test]
    fn bad_filters_are_refused() {
        for bad in [
            "$filter/payload=(/x",
            "$filter/bogus=1/x",
            "$filter/cid=abc/x",
            "$filter//x",
            "$filter/cid=1",
            "$filter/cid=1/a/#/b",
            "$share//x",
            "$share/g+/x",
            "$filter/modified_since=yesterday/x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
