//! Property tests: printed trees parse back to themselves; evaluation never panics and agrees
//! with the predicate; arbitrary text never panics the parser.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::Value as Json;

use crate::ast::{BinaryOp, Func, LogicalOp, Node, NodeKind, Path, Span, UnaryOp};
use crate::error::Arity;
use crate::{
    Expr, JsonContext, MAX_SOURCE, MessageContext, ParseErrorKind, TextContext, UserProperties,
    Value, parser,
};

fn node(kind: NodeKind) -> Node {
    Node::new(kind, Span::default())
}

/// Names over a small alphabet, so they often hit the keys of [`json`] documents (and can
/// never spell `true`, `false` or `null`).
fn name_text() -> impl Strategy<Value = String> {
    "[a-d_][a-d0-9]{0,2}(\\.[a-d0-9]{1,2}){0,2}"
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        (0u32..1000).prop_map(f64::from),
        0.0f64..1e6,
        any::<f64>().prop_filter("literal", |n| n.is_finite() && n.is_sign_positive()),
        Just(1e300),
        Just(5e-324),
        Just(9_007_199_254_740_993.0),
    ]
}

fn string_literal() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-d*?\"\\\\\\n]{0,6}"]
}

fn leaf() -> impl Strategy<Value = Node> {
    prop_oneof![
        Just(node(NodeKind::Null)),
        any::<bool>().prop_map(|b| node(NodeKind::Bool(b))),
        number().prop_map(|n| node(NodeKind::Number(n))),
        string_literal().prop_map(|s| node(NodeKind::String(s.into()))),
        (name_text(), any::<bool>()).prop_map(|(n, safe)| node(NodeKind::Name {
            path: Path::new(&n),
            safe
        })),
        string_literal().prop_map(|s| node(NodeKind::Exists {
            path: Path::new(&s)
        })),
        Just(node(NodeKind::Call {
            func: Func::Now,
            args: vec![]
        })),
    ]
}

const UNARY: [UnaryOp; 3] = [UnaryOp::Not, UnaryOp::Neg, UnaryOp::BitNot];
const BINARY: [BinaryOp; 14] = [
    BinaryOp::BitOr,
    BinaryOp::BitXor,
    BinaryOp::BitAnd,
    BinaryOp::Eq,
    BinaryOp::Ne,
    BinaryOp::Lt,
    BinaryOp::Le,
    BinaryOp::Gt,
    BinaryOp::Ge,
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Mod,
];

/// Functions that take ordinary arguments (not `now`, not `exists`).
fn call_func() -> impl Strategy<Value = Func> {
    proptest::sample::select(
        Func::ALL
            .into_iter()
            .filter(|f| !matches!(f, Func::Now | Func::Exists))
            .collect::<Vec<_>>(),
    )
}

/// Random checked trees, built with the parser's own constructors.
pub(crate) fn tree() -> impl Strategy<Value = Node> {
    leaf().prop_recursive(5, 48, 4, |inner| {
        prop_oneof![
            (proptest::sample::select(&UNARY[..]), inner.clone()).prop_map(|(op, operand)| {
                node(NodeKind::Unary {
                    op,
                    operand: Box::new(operand),
                })
            }),
            (
                proptest::sample::select(&BINARY[..]),
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(op, lhs, rhs)| Node::binary(op, lhs, rhs)),
            // A wildcard comparison in either order.
            (
                inner.clone(),
                "[a-c]{0,2}[*?][a-c*?]{0,2}",
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(v, pat, first, ne)| {
                    let lit = node(NodeKind::String(pat.into()));
                    let op = if ne { BinaryOp::Ne } else { BinaryOp::Eq };
                    if first {
                        Node::binary(op, lit, v)
                    } else {
                        Node::binary(op, v, lit)
                    }
                }),
            (any::<bool>(), vec(inner.clone(), 2..4)).prop_map(|(or, operands)| {
                let op = if or { LogicalOp::Or } else { LogicalOp::And };
                node(NodeKind::Logical { op, operands })
            }),
            (inner.clone(), inner.clone(), inner.clone()).prop_map(|(c, t, o)| {
                node(NodeKind::Conditional {
                    cond: Box::new(c),
                    then: Box::new(t),
                    otherwise: Box::new(o),
                })
            }),
            (inner.clone(), inner.clone()).prop_map(|(base, index)| Node::index(
                base,
                index,
                Span::default()
            )),
            (inner.clone(), name_text()).prop_map(|(base, n)| Node::field(
                base,
                Path::new(&n),
                Span::default()
            )),
            (call_func(), vec(inner.clone(), 0..4)).prop_map(|(func, mut args)| {
                match func.arity() {
                    Arity::Exactly(n) => {
                        args.resize(n, node(NodeKind::Number(1.0)));
                    }
                    Arity::AtLeast(n) => {
                        while args.len() < n {
                            args.push(node(NodeKind::Null));
                        }
                    }
                }
                node(NodeKind::Call { func, args })
            }),
        ]
    })
}

/// Random JSON documents whose keys look like the names of [`tree`].
fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        (-50i64..50).prop_map(Json::from),
        any::<f64>().prop_map(|n| serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number)),
        "[a-d0-9*?. ]{0,6}".prop_map(Json::String),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Json::Array),
            btree_map("[a-d_][a-d0-9]{0,2}(\\.[a-d0-9]{1,2})?", inner, 0..5)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

/// Text that is mostly made of the language's tokens.
fn source_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        "[a-d_][a-d0-9.]{0,4}",
        "\\$[a-d][a-d.]{0,3}",
        "[0-9]{1,3}(\\.[0-9])?",
        "0x[0-9a-fA-F]{0,3}",
        "\"[a-d*?\\\\\"]{0,4}\"?",
        proptest::sample::select(vec![
            "(",
            ")",
            "[",
            "]",
            ",",
            ".",
            "?",
            ":",
            "!",
            "~",
            "-",
            "+",
            "*",
            "/",
            "%",
            "&",
            "&&",
            "|",
            "||",
            "^",
            "=",
            "==",
            "!=",
            "<",
            "<=",
            ">",
            ">=",
            " ",
            "true",
            "null",
            "now()",
            "tonumber(",
            "min(",
            "if(",
            "exists(",
            "strlen(",
        ])
        .prop_map(str::to_string),
        any::<char>().prop_map(String::from),
    ];
    vec(token, 0..24).prop_map(|t| t.concat())
}

fn check_round_trip(expr: &Expr) -> Result<(), TestCaseError> {
    let printed = expr.to_string();
    let again = match Expr::parse(&printed) {
        Ok(e) => e,
        Err(e)
            if printed.len() > MAX_SOURCE && matches!(e.kind, ParseErrorKind::TooLong { .. }) =>
        {
            return Ok(());
        }
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "{printed:?} does not reparse: {e}"
            )));
        }
    };
    prop_assert_eq!(&again, expr, "printed as {:?}", printed);
    prop_assert_eq!(again.to_string(), printed);
    Ok(())
}

fn check_eval(expr: &Expr, doc: &Json) -> Result<(), TestCaseError> {
    let ctx = JsonContext::new(doc, 1.7e9);
    let result = expr.eval(&ctx);
    let truthy = result.as_ref().map(Value::is_truthy).unwrap_or(false);
    prop_assert_eq!(expr.matches(&ctx), truthy);
    if let Ok(Value::String(s)) = &result {
        prop_assert!(s.len() <= crate::MAX_STRING);
    }
    let props = [("a", "1"), ("b.c", "x")];
    let up = UserProperties(&props);
    let msg = MessageContext {
        topic: "a/b/c",
        cid: 7,
        timestamp: 1.0,
        user_properties: &up,
        payload: Some("12"),
        now: 2.0,
    };
    let _ = expr.eval(&msg);
    let _ = expr.matches(&TextContext::new("payload", 0.0));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn printed_trees_parse_back(t in tree()) {
        let printed = t.to_string();
        let parsed = parser::parse(&printed)
            .map_err(|e| TestCaseError::fail(format!("{printed:?} does not parse: {e}")))?;
        prop_assert_eq!(&parsed, &t, "printed as {:?}", printed);
        prop_assert_eq!(parsed.to_string(), printed);
    }

    #[test]
    fn evaluation_never_panics(t in tree(), doc in json()) {
        if let Ok(expr) = Expr::parse(&t.to_string()) {
            check_eval(&expr, &doc)?;
        }
    }

    #[test]
    fn arbitrary_text_never_panics(src in source_text(), doc in json()) {
        if let Ok(expr) = Expr::parse(&src) {
            check_round_trip(&expr)?;
            check_eval(&expr, &doc)?;
        }
    }

    #[test]
    fn arbitrary_unicode_never_panics(src in any::<String>()) {
        if let Ok(expr) = Expr::parse(&src) {
            check_round_trip(&expr)?;
        }
    }
}
