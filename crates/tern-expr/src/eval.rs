//! The evaluator: a recursive walk over the checked tree (its height is bounded by
//! [`crate::MAX_DEPTH`], so the recursion is too).
//!
//! Intermediate values are [`Val`]s that borrow from the context and from the expression:
//! reading fields, comparing, arithmetic, `tonumber` and wildcard matching allocate nothing.
//! Only operations that make new strings (`+` on two strings, `tostring` of a number) allocate,
//! and a concatenation longer than [`MAX_STRING`] is an error, so no expression can build large
//! strings. Work is linear in the size of the tree and of the values it reads, except wildcard
//! matching, whose steps are budgeted per evaluation ([`MATCH_BUDGET`]).

use std::cell::Cell;
use std::cmp::Ordering;

use serde_json::Value as Json;

use crate::ast::{BinaryOp, Func, LogicalOp, Node, NodeKind, Path, Span, UnaryOp};
use crate::context::Context;
use crate::error::{EvalError, EvalErrorKind};
use crate::value::{
    Composite, CompositeKind, NumBuf, TypeName, Value, ValueRef, parse_number, truthy_num,
    truthy_str,
};
use crate::wildcard::MATCH_BUDGET;

/// The longest string a concatenation may produce, in bytes.
pub const MAX_STRING: usize = 64 * 1024;

/// Mean Earth radius for `distance()`, in km.
pub const EARTH_RADIUS_KM: f64 = 6371.0;

/// An intermediate value.
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'a str),
    Owned(String),
    Array(&'a [Json]),
    Object(&'a serde_json::Map<String, Json>),
    Levels(&'a str),
    Dyn(&'a dyn Composite),
    /// An array or object that `json()` parsed out of a string: owned, as nothing borrows it.
    Doc(Box<Json>),
}

type Kind = EvalErrorKind;

impl<'a> Val<'a> {
    fn from_ref(v: ValueRef<'a>) -> Val<'a> {
        match v {
            ValueRef::Null => Val::Null,
            ValueRef::Bool(b) => Val::Bool(b),
            ValueRef::Num(n) => Val::Num(n),
            ValueRef::Str(s) => Val::Str(s),
            ValueRef::Json(j) => Val::from_json(j),
            ValueRef::Levels(t) => Val::Levels(t),
            ValueRef::Composite(c) => Val::Dyn(c),
        }
    }

    fn from_json(j: &'a Json) -> Val<'a> {
        match j {
            Json::Null => Val::Null,
            Json::Bool(b) => Val::Bool(*b),
            // Every serde_json number converts (large integers approximately).
            Json::Number(n) => Val::Num(n.as_f64().unwrap_or(f64::NAN)),
            Json::String(s) => Val::Str(s),
            Json::Array(a) => Val::Array(a),
            Json::Object(o) => Val::Object(o),
        }
    }

    /// An owned JSON value: scalars become plain values, arrays and objects a [`Val::Doc`].
    fn from_owned_json(j: Json) -> Val<'a> {
        match j {
            Json::Null => Val::Null,
            Json::Bool(b) => Val::Bool(b),
            Json::Number(n) => Val::Num(n.as_f64().unwrap_or(f64::NAN)),
            Json::String(s) => Val::Owned(s),
            doc => Val::Doc(Box::new(doc)),
        }
    }

    fn type_name(&self) -> TypeName {
        match self {
            Val::Null => TypeName::Null,
            Val::Bool(_) => TypeName::Boolean,
            Val::Num(_) => TypeName::Number,
            Val::Str(_) | Val::Owned(_) => TypeName::String,
            Val::Array(_) | Val::Levels(_) => TypeName::Array,
            Val::Object(_) => TypeName::Object,
            Val::Dyn(c) => match c.kind() {
                CompositeKind::Array => TypeName::Array,
                CompositeKind::Object => TypeName::Object,
            },
            Val::Doc(d) if d.is_array() => TypeName::Array,
            Val::Doc(_) => TypeName::Object,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            Val::Owned(s) => Some(s),
            _ => None,
        }
    }

    fn is_composite(&self) -> bool {
        matches!(
            self,
            Val::Array(_) | Val::Object(_) | Val::Levels(_) | Val::Dyn(_) | Val::Doc(_)
        )
    }

    /// Number conversion: `null`/`false` = 0, `true` = 1, numeric strings parse.
    fn to_number(&self) -> Result<f64, Kind> {
        match self {
            Val::Null => Ok(0.0),
            Val::Bool(b) => Ok(f64::from(u8::from(*b))),
            Val::Num(n) => Ok(*n),
            Val::Str(s) => parse_number(s).ok_or(Kind::NotANumber),
            Val::Owned(s) => parse_number(s).ok_or(Kind::NotANumber),
            other => Err(Kind::NotAValue(other.type_name())),
        }
    }

    /// Integer conversion for bitwise operators: the number, truncated toward zero.
    fn to_int(&self) -> Result<i64, Kind> {
        // -2^63 is i64::MIN; 2^63 is just out of range. Both are exact as f64.
        const LIMIT: f64 = 9_223_372_036_854_775_808.0;
        let n = self.to_number()?.trunc();
        if (-LIMIT..LIMIT).contains(&n) {
            Ok(n as i64)
        } else {
            Err(Kind::IntegerRange)
        }
    }

    /// The predicate rule.
    fn truthy(&self) -> Result<bool, Kind> {
        match self {
            Val::Null => Ok(false),
            Val::Bool(b) => Ok(*b),
            Val::Num(n) => Ok(truthy_num(*n)),
            Val::Str(s) => Ok(truthy_str(s)),
            Val::Owned(s) => Ok(truthy_str(s)),
            other => Err(Kind::NotAValue(other.type_name())),
        }
    }

    fn into_value(self) -> Result<Value, Kind> {
        Ok(match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(b),
            Val::Num(n) => Value::Number(n),
            Val::Str(s) => Value::String(s.to_string()),
            Val::Owned(s) => Value::String(s),
            other => return Err(Kind::NotAValue(other.type_name())),
        })
    }

    /// The member `key` of an object (JSON or composite); `None` for anything else.
    fn member(&self, key: &str) -> Option<Val<'a>> {
        match self {
            Val::Object(map) => map.get(key).map(Val::from_json),
            Val::Dyn(c) if c.kind() == CompositeKind::Object => c.field(key).map(Val::from_ref),
            // Only after `json()` on a string: the member is copied out of the parsed document.
            Val::Doc(d) => d
                .as_object()
                .and_then(|m| m.get(key))
                .map(|v| Val::from_owned_json(v.clone())),
            _ => None,
        }
    }
}

/// The state of one evaluation.
pub(crate) struct Env<'a, C: ?Sized> {
    ctx: &'a C,
    /// Wildcard-matching steps left, shared by every pattern of the expression.
    budget: Cell<u32>,
}

impl<'a, C: Context + ?Sized> Env<'a, C> {
    fn new(ctx: &'a C) -> Self {
        Env {
            ctx,
            budget: Cell::new(MATCH_BUDGET),
        }
    }
}

/// Evaluates `node`; the tree's height bounds the recursion.
pub(crate) fn eval<'a, C: Context + ?Sized>(
    node: &'a Node,
    env: &Env<'a, C>,
) -> Result<Val<'a>, EvalError> {
    let fail = |kind| EvalError {
        span: node.span,
        kind,
    };
    match &node.kind {
        NodeKind::Null => Ok(Val::Null),
        NodeKind::Bool(b) => Ok(Val::Bool(*b)),
        NodeKind::Number(n) => Ok(Val::Num(*n)),
        NodeKind::String(s) => Ok(Val::Str(s)),
        NodeKind::Name { path, safe } => match lookup(env.ctx, path) {
            Some(v) => Ok(v),
            None if *safe => Ok(Val::Null),
            None => Err(fail(Kind::MissingField)),
        },
        NodeKind::Field { base, path, safe } => {
            let base = eval(base, env)?;
            let (composite, type_name) = (base.is_composite(), base.type_name());
            match walk(base, path, 0) {
                Some(v) => Ok(v),
                None if *safe => Ok(Val::Null),
                None if composite => Err(fail(Kind::MissingField)),
                None => Err(fail(Kind::NotIndexable(type_name))),
            }
        }
        NodeKind::Index { base, index, safe } => {
            let base = eval(base, env)?;
            let index = eval(index, env)?;
            match element(&base, &index) {
                Ok(Some(v)) => Ok(v),
                _ if *safe => Ok(Val::Null),
                Ok(None) => Err(fail(Kind::MissingElement)),
                Err(kind) => Err(fail(kind)),
            }
        }
        NodeKind::Unary { op, operand } => {
            let v = eval(operand, env)?;
            let r = match op {
                UnaryOp::Not => v.truthy().map(|b| Val::Bool(!b)),
                UnaryOp::Neg => v.to_number().map(|n| Val::Num(-n)),
                UnaryOp::BitNot => v.to_int().map(|i| Val::Num(!i as f64)),
            };
            r.map_err(fail)
        }
        NodeKind::Binary { op, lhs, rhs } => {
            let a = eval(lhs, env)?;
            let b = eval(rhs, env)?;
            binary(*op, a, b).map_err(fail)
        }
        NodeKind::Like {
            negated,
            value,
            pattern,
            ..
        } => {
            let v = eval(value, env)?;
            let buf: NumBuf;
            let text = match &v {
                Val::Str(s) => s,
                Val::Owned(s) => s.as_str(),
                Val::Null => "",
                Val::Bool(true) => "true",
                Val::Bool(false) => "false",
                Val::Num(n) => {
                    buf = NumBuf::format(*n);
                    buf.as_str()
                }
                other => return Err(fail(Kind::NotAValue(other.type_name()))),
            };
            let mut budget = env.budget.get();
            let matched = pattern.matches_within(text, &mut budget);
            env.budget.set(budget);
            let matched = matched.map_err(|_| fail(Kind::MatchTooCostly))?;
            Ok(Val::Bool(matched != *negated))
        }
        NodeKind::Logical { op, operands } => {
            // Short-circuit: `||` stops at the first truthy operand, `&&` at the first falsy.
            let stop_on = *op == LogicalOp::Or;
            for operand in operands {
                let v = eval(operand, env)?;
                let t = v.truthy().map_err(|k| EvalError {
                    span: operand.span,
                    kind: k,
                })?;
                if t == stop_on {
                    return Ok(Val::Bool(stop_on));
                }
            }
            Ok(Val::Bool(!stop_on))
        }
        NodeKind::Conditional {
            cond,
            then,
            otherwise,
        } => {
            if eval(cond, env)?.truthy().map_err(fail)? {
                eval(then, env)
            } else {
                eval(otherwise, env)
            }
        }
        NodeKind::Exists { path } => Ok(Val::Bool(lookup(env.ctx, path).is_some())),
        NodeKind::Call { func, args } => call(*func, args, node.span, env),
    }
}

/// The dotted-name rule at the top level: the whole name as one key, then the first segment
/// and a [`walk`] through the rest.
fn lookup<'a, C: Context + ?Sized>(ctx: &'a C, path: &Path) -> Option<Val<'a>> {
    if let Some(v) = ctx.lookup(path.as_str()) {
        return Some(Val::from_ref(v));
    }
    if path.len() == 1 {
        return None;
    }
    let first = Val::from_ref(ctx.lookup(path.segment(0))?);
    walk(first, path, 1)
}

/// Walks segments `i..` of `path` down from `cur`: at each object, the rest of the name as one
/// key wins (`{"telemetry": {"position.latitude": 1}}`), otherwise the next segment descends.
/// No backtracking: at most two key lookups per level.
fn walk<'a>(mut cur: Val<'a>, path: &Path, mut i: usize) -> Option<Val<'a>> {
    while i < path.len() {
        if let Some(v) = cur.member(path.rest(i)) {
            return Some(v);
        }
        if i + 1 == path.len() {
            return None;
        }
        cur = cur.member(path.segment(i))?;
        i += 1;
    }
    Some(cur)
}

/// `base[index]`: `Ok(None)` when the element or key is absent.
fn element<'a>(base: &Val<'a>, index: &Val<'_>) -> Result<Option<Val<'a>>, Kind> {
    let array_index = || -> Result<Option<usize>, Kind> {
        match index {
            Val::Num(n) if n.fract() == 0.0 => {
                // Negative indexes are simply absent; huge ones saturate and are absent too.
                Ok((*n >= 0.0).then_some(*n as usize))
            }
            other => Err(Kind::BadIndex(other.type_name())),
        }
    };
    match base {
        Val::Array(items) => Ok(array_index()?
            .and_then(|i| items.get(i))
            .map(Val::from_json)),
        Val::Levels(topic) => Ok(array_index()?
            .and_then(|i| topic.split('/').nth(i))
            .map(Val::Str)),
        Val::Dyn(c) if c.kind() == CompositeKind::Array => {
            Ok(array_index()?.and_then(|i| c.element(i)).map(Val::from_ref))
        }
        Val::Doc(d) if d.is_array() => Ok(array_index()?
            .and_then(|i| d.get(i))
            .map(|v| Val::from_owned_json(v.clone()))),
        Val::Doc(_) => match index {
            Val::Str(key) => Ok(base.member(key)),
            Val::Owned(key) => Ok(base.member(key)),
            Val::Num(n) => Ok(base.member(NumBuf::format(*n).as_str())),
            other => Err(Kind::BadIndex(other.type_name())),
        },
        Val::Object(_) | Val::Dyn(_) => match index {
            Val::Str(key) => Ok(base.member(key)),
            Val::Owned(key) => Ok(base.member(key)),
            Val::Num(n) => Ok(base.member(NumBuf::format(*n).as_str())),
            other => Err(Kind::BadIndex(other.type_name())),
        },
        scalar => Err(Kind::NotIndexable(scalar.type_name())),
    }
}

fn binary<'a>(op: BinaryOp, a: Val<'a>, b: Val<'a>) -> Result<Val<'a>, Kind> {
    let num = |n: f64| Ok(Val::Num(n));
    match op {
        BinaryOp::Add => {
            if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
                return concat(x, y).map(Val::Owned);
            }
            num(a.to_number()? + b.to_number()?)
        }
        BinaryOp::Sub => num(a.to_number()? - b.to_number()?),
        BinaryOp::Mul => num(a.to_number()? * b.to_number()?),
        BinaryOp::Div | BinaryOp::Mod => {
            let (x, y) = (a.to_number()?, b.to_number()?);
            if y == 0.0 {
                return Err(Kind::DivisionByZero);
            }
            num(if op == BinaryOp::Div { x / y } else { x % y })
        }
        BinaryOp::BitAnd => num((a.to_int()? & b.to_int()?) as f64),
        BinaryOp::BitOr => num((a.to_int()? | b.to_int()?) as f64),
        BinaryOp::BitXor => num((a.to_int()? ^ b.to_int()?) as f64),
        BinaryOp::Eq => equals(&a, &b).map(Val::Bool),
        BinaryOp::Ne => equals(&a, &b).map(|e| Val::Bool(!e)),
        BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
            let ord = compare(&a, &b)?;
            let r = match op {
                BinaryOp::Lt => ord == Some(Ordering::Less),
                BinaryOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
                BinaryOp::Gt => ord == Some(Ordering::Greater),
                _ => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
            };
            Ok(Val::Bool(r))
        }
    }
}

fn concat(x: &str, y: &str) -> Result<String, Kind> {
    let len = x.len() + y.len();
    if len > MAX_STRING {
        return Err(Kind::StringTooLong);
    }
    let mut s = String::with_capacity(len);
    s.push_str(x);
    s.push_str(y);
    Ok(s)
}

fn no_composites(a: &Val<'_>, b: &Val<'_>) -> Result<(), Kind> {
    for v in [a, b] {
        if v.is_composite() {
            return Err(Kind::NotAValue(v.type_name()));
        }
    }
    Ok(())
}

/// `==`: two strings compare as strings; anything else as numbers, where a string that is not
/// numeric makes the operands unequal (not an error).
fn equals(a: &Val<'_>, b: &Val<'_>) -> Result<bool, Kind> {
    no_composites(a, b)?;
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        return Ok(x == y);
    }
    match (a.to_number(), b.to_number()) {
        (Ok(x), Ok(y)) => Ok(x == y),
        _ => Ok(false),
    }
}

/// `<` and friends: two strings compare lexicographically (by code point); anything else as
/// numbers, where a non-numeric string is an error. `None` when a NaN is involved.
fn compare(a: &Val<'_>, b: &Val<'_>) -> Result<Option<Ordering>, Kind> {
    no_composites(a, b)?;
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        return Ok(Some(x.cmp(y)));
    }
    Ok(a.to_number()?.partial_cmp(&b.to_number()?))
}

fn call<'a, C: Context + ?Sized>(
    func: Func,
    args: &'a [Node],
    span: Span,
    env: &Env<'a, C>,
) -> Result<Val<'a>, EvalError> {
    let fail = |kind| EvalError { span, kind };
    // The checker guaranteed the arity; a missing argument is still not a panic.
    let arg = |i: usize| -> Result<Val<'a>, EvalError> {
        match args.get(i) {
            Some(node) => eval(node, env),
            None => Ok(Val::Null),
        }
    };
    let number = |i: usize| -> Result<f64, EvalError> {
        let v = arg(i)?;
        v.to_number().map_err(|kind| EvalError {
            span: args.get(i).map_or(span, |n| n.span),
            kind,
        })
    };
    let v = match func {
        Func::Not => Val::Bool(!arg(0)?.truthy().map_err(fail)?),
        Func::ToBoolean => Val::Bool(arg(0)?.truthy().map_err(fail)?),
        Func::ToNumber => Val::Num(number(0)?),
        Func::ToString => match arg(0)? {
            Val::Null => Val::Str(""),
            Val::Bool(true) => Val::Str("true"),
            Val::Bool(false) => Val::Str("false"),
            Val::Num(n) => Val::Owned(NumBuf::format(n).as_str().to_string()),
            s @ (Val::Str(_) | Val::Owned(_)) => s,
            other => return Err(fail(Kind::NotAValue(other.type_name()))),
        },
        Func::IsNull => Val::Bool(matches!(arg(0)?, Val::Null)),
        Func::IsNumber => Val::Bool(matches!(arg(0)?, Val::Num(_))),
        Func::IsString => Val::Bool(matches!(arg(0)?, Val::Str(_) | Val::Owned(_))),
        Func::IsBoolean => Val::Bool(matches!(arg(0)?, Val::Bool(_))),
        Func::StrLen => {
            let n = match arg(0)? {
                Val::Null => 0,
                Val::Bool(b) => {
                    if b {
                        4
                    } else {
                        5
                    }
                }
                Val::Num(n) => NumBuf::format(n).as_str().len(),
                Val::Str(s) => s.chars().count(),
                Val::Owned(s) => s.chars().count(),
                other => return Err(fail(Kind::NotAValue(other.type_name()))),
            };
            Val::Num(n as f64)
        }
        Func::Now => Val::Num(env.ctx.now()),
        Func::Distance => Val::Num(distance_km(number(0)?, number(1)?, number(2)?, number(3)?)),
        Func::If => {
            if arg(0)?.truthy().map_err(fail)? {
                arg(1)?
            } else {
                arg(2)?
            }
        }
        Func::Abs => Val::Num(number(0)?.abs()),
        Func::Round => Val::Num(number(0)?.round()),
        Func::Floor => Val::Num(number(0)?.floor()),
        Func::Ceil => Val::Num(number(0)?.ceil()),
        Func::Min | Func::Max => {
            let mut acc = number(0)?;
            for i in 1..args.len() {
                let n = number(i)?;
                acc = if func == Func::Min {
                    acc.min(n)
                } else {
                    acc.max(n)
                };
            }
            Val::Num(acc)
        }
        Func::Json => {
            let doc = arg(0)?;
            let pointer = arg(1)?;
            let Some(pointer) = pointer.as_str() else {
                return Err(EvalError {
                    span: args.get(1).map_or(span, |n| n.span),
                    kind: Kind::NotAPointer,
                });
            };
            json_pointer(doc, pointer)
        }
        Func::StrEscape => {
            let v = arg(0)?;
            let mut out = String::new();
            match &v {
                Val::Null => {}
                Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                Val::Num(n) => out.push_str(NumBuf::format(*n).as_str()),
                Val::Str(s) => escape_into(&mut out, s),
                Val::Owned(s) => escape_into(&mut out, s),
                other => return Err(fail(Kind::NotAValue(other.type_name()))),
            }
            if out.len() > MAX_STRING {
                return Err(fail(Kind::StringTooLong));
            }
            Val::Owned(out)
        }
        // Resolved to `NodeKind::Exists` by the checker; as a call it would have no literal.
        Func::Exists => Val::Bool(false),
    };
    Ok(v)
}

/// `json(doc, pointer)`: the RFC 6901 `pointer` into `doc`, which is either a JSON value the
/// context lends (walked in place) or a string holding JSON text (parsed, then the target is
/// moved out). `null` when the target is absent, the pointer is not `""` or `/...`, or the
/// string is not JSON.
fn json_pointer<'a>(doc: Val<'a>, pointer: &str) -> Val<'a> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Val::Null;
    }
    let text = match &doc {
        Val::Str(s) => Some(*s),
        Val::Owned(s) => Some(s.as_str()),
        _ => None,
    };
    if let Some(text) = text {
        let Ok(mut parsed) = serde_json::from_str::<Json>(text) else {
            return Val::Null;
        };
        return parsed
            .pointer_mut(pointer)
            .map_or(Val::Null, |v| Val::from_owned_json(v.take()));
    }
    let mut cur = doc;
    for token in pointer.split('/').skip(1) {
        let token = unescape_token(token);
        let next = match cur.type_name() {
            TypeName::Array => {
                // RFC 6901 array indexes: digits, no leading zero (except "0" itself).
                let valid = !token.is_empty()
                    && token.bytes().all(|b| b.is_ascii_digit())
                    && (token == "0" || !token.starts_with('0'));
                match token.parse::<u32>() {
                    Ok(i) if valid => element(&cur, &Val::Num(f64::from(i))).ok().flatten(),
                    _ => None,
                }
            }
            TypeName::Object => cur.member(&token),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return Val::Null,
        }
    }
    cur
}

/// A pointer token with `~1` → `/` and `~0` → `~` (in that order, per RFC 6901).
fn unescape_token(token: &str) -> std::borrow::Cow<'_, str> {
    if token.contains('~') {
        std::borrow::Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
    } else {
        std::borrow::Cow::Borrowed(token)
    }
}

/// Appends `s` escaped as the inside of a JSON string (no quotes): `"`, `\\`, and control
/// characters become escapes.
pub(crate) fn escape_into(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// Great-circle distance in km between two points given in degrees (haversine formula).
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    // Rounding can push `a` a hair above 1 for antipodal points.
    2.0 * EARTH_RADIUS_KM * a.sqrt().clamp(0.0, 1.0).asin()
}

/// The public result of an evaluation.
pub(crate) fn eval_value<C: Context + ?Sized>(root: &Node, ctx: &C) -> Result<Value, EvalError> {
    eval(root, &Env::new(ctx))?
        .into_value()
        .map_err(|kind| EvalError {
            span: root.span,
            kind,
        })
}

/// Appends the template text of `root` evaluated on `ctx` (docs/expressions.md, Templates): a
/// string as is, other scalars as `tostring()` but `null` for null, arrays and objects as their
/// JSON text. An evaluation error writes `null`.
pub(crate) fn render_into<C: Context + ?Sized>(root: &Node, ctx: &C, out: &mut String) {
    let v = match eval(root, &Env::new(ctx)) {
        Ok(v) => v,
        Err(_) => Val::Null,
    };
    match v {
        Val::Null => out.push_str("null"),
        Val::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        Val::Num(n) => out.push_str(NumBuf::format(n).as_str()),
        Val::Str(s) => out.push_str(s),
        Val::Owned(s) => out.push_str(&s),
        // Serializing JSON values into a string cannot fail.
        Val::Array(items) => out.push_str(&serde_json::to_string(items).unwrap_or_default()),
        Val::Object(map) => out.push_str(&serde_json::to_string(map).unwrap_or_default()),
        Val::Doc(doc) => out.push_str(&serde_json::to_string(&*doc).unwrap_or_default()),
        Val::Levels(topic) => {
            out.push('[');
            for (i, level) in topic.split('/').enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('"');
                escape_into(out, level);
                out.push('"');
            }
            out.push(']');
        }
        // A context's own composite cannot be listed: it renders as null.
        Val::Dyn(_) => out.push_str("null"),
    }
}

/// The predicate rule: errors and non-values fail.
pub(crate) fn matches<C: Context + ?Sized>(root: &Node, ctx: &C) -> bool {
    eval(root, &Env::new(ctx)).is_ok_and(|v| v.truthy().unwrap_or(false))
}

/// A comparison of a name with a literal (`speed > 60`, `v > -1`, `name == "x"`): the most
/// common filter, and when a broker holds thousands of distinct ones it evaluates thousands per
/// message. Tested without walking the tree, by the same lookup and operator code, so the
/// result is the tree's.
#[derive(Debug)]
pub(crate) struct Shortcut {
    path: Path,
    op: BinaryOp,
    literal: Literal,
    /// The name is the left operand.
    name_first: bool,
}

#[derive(Debug)]
enum Literal {
    Num(f64),
    Str(Box<str>),
}

impl Shortcut {
    /// The shortcut for `root`, if it is such a comparison.
    pub(crate) fn of(root: &Node) -> Option<Shortcut> {
        let NodeKind::Binary { op, lhs, rhs } = &root.kind else {
            return None;
        };
        if !matches!(
            op,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge
        ) {
            return None;
        }
        let name = |n: &Node| match &n.kind {
            NodeKind::Name { path, safe: false } => Some(path.clone()),
            _ => None,
        };
        let literal = |n: &Node| match &n.kind {
            NodeKind::Number(x) => Some(Literal::Num(*x)),
            NodeKind::Unary {
                op: UnaryOp::Neg,
                operand,
            } => match operand.kind {
                NodeKind::Number(x) => Some(Literal::Num(-x)),
                _ => None,
            },
            NodeKind::String(s) => Some(Literal::Str(s.clone())),
            _ => None,
        };
        let (path, literal, name_first) = match (name(lhs), literal(rhs)) {
            (Some(p), Some(l)) => (p, l, true),
            _ => (name(rhs)?, literal(lhs)?, false),
        };
        Some(Shortcut {
            path,
            op: *op,
            literal,
            name_first,
        })
    }

    /// The predicate rule on `ctx`, as [`matches`] on the tree would give.
    pub(crate) fn matches<C: Context + ?Sized>(&self, ctx: &C) -> bool {
        // A missing name is an error, and an error fails.
        let Some(value) = lookup(ctx, &self.path) else {
            return false;
        };
        let literal = match &self.literal {
            Literal::Num(n) => Val::Num(*n),
            Literal::Str(s) => Val::Str(s),
        };
        let (a, b) = if self.name_first {
            (value, literal)
        } else {
            (literal, value)
        };
        binary(self.op, a, b).is_ok_and(|v| v.truthy().unwrap_or(false))
    }
}

#[cfg(test)]
mod shortcut_tests {
    use super::*;
    use crate::{Expr, JsonContext, TextContext};
    use serde_json::json;

    /// The shortcut gives what the tree gives, for every operator, both operand orders, every
    /// kind of value (and missing names, composites, numeric and non-numeric strings, NaN-free
    /// edge numbers).
    #[test]
    fn the_shortcut_agrees_with_the_tree() {
        let names = ["v", "pos.speed", "missing", "obj", "arr"];
        let literals = [
            "17", "-1", "0", "-0.5", "\"17\"", "\"abc\"", "\"\"", "\"true\"",
        ];
        let ops = ["==", "!=", "<", "<=", ">", ">="];
        let values = [
            json!(17),
            json!(-1),
            json!(0),
            json!(16.9),
            json!("17"),
            json!("abc"),
            json!(""),
            json!("true"),
            json!(null),
            json!(true),
            json!(false),
            json!([1]),
            json!({"a": 1}),
        ];
        let mut checked = 0;
        for value in &values {
            let doc = json!({"v": value, "pos": {"speed": value}, "obj": {"x": 1}, "arr": [1]});
            let ctx = JsonContext::new(&doc, 0.0);
            for name in names {
                for lit in literals {
                    for op in ops {
                        for src in [format!("{name} {op} {lit}"), format!("{lit} {op} {name}")] {
                            let expr = Expr::parse(&src).unwrap();
                            let shortcut = Shortcut::of(expr.root())
                                .unwrap_or_else(|| panic!("no shortcut for {src}"));
                            assert_eq!(
                                shortcut.matches(&ctx),
                                matches(expr.root(), &ctx),
                                "{src} on {doc}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        // Bare payloads: a number or a string is visible as `payload`.
        for (text, src) in [("5", "payload > 4"), ("hello", "payload == \"hello\"")] {
            let expr = Expr::parse(src).unwrap();
            let shortcut = Shortcut::of(expr.root()).unwrap();
            let ctx = TextContext::new(text, 0.0);
            assert_eq!(shortcut.matches(&ctx), matches(expr.root(), &ctx), "{src}");
        }
        assert_eq!(checked, 13 * 5 * 8 * 6 * 2);
    }

    #[test]
    fn only_name_against_literal_takes_the_shortcut() {
        for src in [
            "v > w",
            "v + 1 > 2",
            "$v > 1",
            "v == \"a*\"",
            "f(v) > 1",
            "v",
            "!v",
        ] {
            if let Ok(expr) = Expr::parse(src) {
                assert!(Shortcut::of(expr.root()).is_none(), "{src}");
            }
        }
    }
}
