//! Parsing, precedence, canonical printing, error messages and limits.

use super::{num, parse, parse_err};
use crate::ast::{BinaryOp, LogicalOp, NodeKind};
use crate::{Expr, MAX_DEPTH, MAX_SOURCE};

/// Prints the canonical form.
fn canon(src: &str) -> String {
    let printed = parse(src).to_string();
    // The canonical form parses back to an equal tree and prints identically.
    let again = parse(&printed);
    assert_eq!(again, parse(src), "{src:?} -> {printed:?}");
    assert_eq!(again.to_string(), printed);
    printed
}

#[test]
fn canonical_printing() {
    let cases = [
        ("position.speed>60", "position.speed > 60"),
        ("cid=123 || cid=456", "cid == 123 || cid == 456"),
        ("a==1", "a == 1"),
        ("(a + b) * c", "(a + b) * c"),
        ("a + (b * c)", "a + b * c"),
        ("a - (b - c)", "a - (b - c)"),
        ("(a - b) - c", "a - b - c"),
        ("(a || b) || c", "(a || b) || c"),
        ("a || (b || c)", "a || (b || c)"),
        ("a || (b && c)", "a || b && c"),
        ("(a || b) && c", "(a || b) && c"),
        ("a|b^c&d", "a | b ^ c & d"),
        ("(a|b)&c", "(a | b) & c"),
        ("a < b == c > d", "a < b == c > d"),
        ("a == (b < c)", "a == b < c"),
        ("(a == b) < c", "(a == b) < c"),
        ("0x1F", "31"),
        ("1.50", "1.5"),
        (".5", "0.5"),
        ("1e3", "1000"),
        ("1e20", "1e20"),
        ("2.5e-7", "2.5e-7"),
        (r#""a\"b\\c\n\t\u0001é""#, r#""a\"b\\c\n\t\u0001é""#),
        (r#""\/\u00e9""#, r#""/é""#),
        ("-(-x)", "--x"),
        ("!(!x)", "!!x"),
        ("-(a + b)", "-(a + b)"),
        ("(-a)[0]", "(-a)[0]"),
        ("-a[0]", "-a[0]"),
        ("~a", "~a"),
        ("(x).y", "(x).y"),
        ("(true).y", "(true).y"),
        ("a[0].b.c", "a[0].b.c"),
        ("$a[0]", "$a[0]"),
        ("($a)[0]", "$a[0]"),
        ("abs(x)", "abs(x)"),
        ("min( 1 ,2,3 )", "min(1, 2, 3)"),
        ("now( )", "now()"),
        ("exists( \"a.b\" )", "exists(\"a.b\")"),
        ("a ? b : c ? d : e", "a ? b : c ? d : e"),
        ("a ? b : (c ? d : e)", "a ? b : c ? d : e"),
        ("(a ? b : c) ? d : e", "(a ? b : c) ? d : e"),
        ("a ? (b ? c : d) : e", "a ? b ? c : d : e"),
        ("(a ? b : c) + 1", "(a ? b : c) + 1"),
        ("a || b ? c : d", "a || b ? c : d"),
        ("name == \"Andrew*\"", "name == \"Andrew*\""),
        ("\"Andrew*\" != name", "\"Andrew*\" != name"),
        ("(a + b) == \"x?\"", "a + b == \"x?\""),
        ("\"x?\" == (a == b)", "\"x?\" == (a == b)"),
        ("\"a*\" == \"b*\"", "\"a*\" == \"b*\""),
        ("true && false || null", "true && false || null"),
        ("$position.speed", "$position.speed"),
    ];
    for (src, want) in cases {
        assert_eq!(canon(src), want, "{src:?}");
    }
}

#[test]
fn single_equals_is_equality() {
    assert_eq!(parse("cid=123"), parse("cid == 123"));
    assert_eq!(parse("a = \"x*\""), parse("a == \"x*\""));
}

#[test]
fn equality_ignores_positions_but_not_structure() {
    assert_eq!(parse("a+b"), parse("  a  +  b "));
    assert_ne!(parse("a+b"), parse("b+a"));
    assert_ne!(parse("(a || b) || c"), parse("a || b || c"));
}

#[test]
fn tree_shape() {
    let e = parse("a || b || c && d");
    let NodeKind::Logical { op, operands } = &e.root().kind else {
        panic!("not logical: {:?}", e.root());
    };
    assert_eq!(*op, LogicalOp::Or);
    assert_eq!(operands.len(), 3);
    assert!(matches!(
        operands[2].kind,
        NodeKind::Logical {
            op: LogicalOp::And,
            ..
        }
    ));
    let e = parse("x == \"a\"");
    assert!(matches!(
        e.root().kind,
        NodeKind::Binary {
            op: BinaryOp::Eq,
            ..
        }
    ));
    let e = parse("x == \"a*\"");
    assert!(matches!(
        e.root().kind,
        NodeKind::Like { negated: false, .. }
    ));
    let e = parse("x != \"a?\"");
    assert!(matches!(
        e.root().kind,
        NodeKind::Like { negated: true, .. }
    ));
}

#[test]
fn spans_are_byte_offsets() {
    let e = parse("  ab + \"é\" ");
    assert_eq!((e.root().span.start, e.root().span.end), (2, 11));
    let NodeKind::Binary { lhs, rhs, .. } = &e.root().kind else {
        panic!("not binary");
    };
    assert_eq!((lhs.span.start, lhs.span.end), (2, 4));
    assert_eq!((rhs.span.start, rhs.span.end), (7, 11));
}

#[test]
fn precedence_levels() {
    // Each line pins one pair of adjacent levels (docs/expressions.md, lowest first).
    assert_eq!(num("1 || 0 ? 5 : 6"), 5.0); // ?: below ||
    assert_eq!(num("0 || 1 ? 5 : 6"), 5.0);
    assert!(super::boolean("true || false && false")); // && above ||
    assert!(!super::boolean("(true || false) && false"));
    assert!(!super::boolean("1 && 2 & 1")); // & above && : 1 && (2 & 1)
    assert!(super::boolean("0 | 1 && 1")); // | above &&
    assert_eq!(num("1 | 2 ^ 3"), 1.0); // ^ above | : 1 | (2 ^ 3) = 1 | 1
    assert_eq!(num("3 ^ 1 | 1"), 3.0); // (3 ^ 1) | 1, not 3 ^ (1 | 1)
    assert_eq!(num("6 ^ 3 & 1"), 7.0); // & above ^ : 6 ^ (3 & 1)
    assert_eq!(num("6 & 3 == 3"), 0.0); // == above & : 6 & (3 == 3) = 6 & 1
    assert!(!super::boolean("2 == 2 < 3")); // < above == : 2 == (2 < 3) = 2 == 1
    assert!(super::boolean("1 < 2 == true"));
    assert!(super::boolean("1 + 2 < 4")); // + above <
    assert_eq!(num("1 + 2 * 3"), 7.0); // * above +
    assert_eq!(num("(1 + 2) * 3"), 9.0);
    assert_eq!(num("-2 * 3"), -6.0); // unary above *
    assert_eq!(num("-(2 + 3)"), -5.0);
    assert_eq!(num("!0 + 1"), 2.0);
    assert_eq!(num("~5 & 3"), 2.0);
    assert_eq!(num("-arr[0]"), -1.0); // index above unary
    assert_eq!(num("-abs(-2)"), -2.0); // call above unary
}

#[test]
fn associativity() {
    assert_eq!(num("10 - 4 - 3"), 3.0);
    assert_eq!(num("100 / 10 / 5"), 2.0);
    assert_eq!(num("2 * 3 % 4"), 2.0);
    assert_eq!(num("17 % 10 % 4"), 3.0);
    assert_eq!(num("true ? 1 : false ? 2 : 3"), 1.0);
    assert_eq!(num("false ? 1 : false ? 2 : 3"), 3.0);
    assert_eq!(num("false ? 1 : true ? 2 : 3"), 2.0);
    assert_eq!(num("true ? false ? 1 : 2 : 3"), 2.0);
}

#[test]
fn parse_error_messages() {
    let cases = [
        ("", "at 0: expected an expression"),
        ("   ", "at 3: expected an expression"),
        ("a +", "at 3: expected an expression"),
        ("a + )", "at 4: expected an expression"),
        ("a b", "at 2: expected an operator"),
        ("position.speed 60", "at 15: expected an operator"),
        ("a)", "at 1: unmatched ')'"),
        ("(speed > 60 && x", "at 16: expected ')'"),
        ("(speed > 60 &&x 1", "at 16: expected ')'"),
        ("a[1", "at 3: expected ']'"),
        ("a ? b", "at 5: expected ':'"),
        ("a ? b c", "at 6: expected ':'"),
        ("min(1 2)", "at 6: expected ',' or ')'"),
        ("min(1,", "at 6: expected an expression"),
        ("a.", "at 2: expected a name after '.'"),
        ("a[0].", "at 5: expected a name after '.'"),
        ("a[0].5", "at 4: expected an operator"),
        ("0x", "at 0: expected hexadecimal digits after '0x'"),
        ("1 + 0xZ", "at 4: expected hexadecimal digits after '0x'"),
        ("0x10000000000000000", "at 0: number out of range"),
        ("1e999", "at 0: number out of range"),
        ("a == \"abc", "at 5: unterminated string"),
        ("\"\\q\"", "at 1: invalid escape '\\q'"),
        ("x == \"ab\\u12\"", "at 8: invalid unicode escape"),
        ("a # b", "at 2: unexpected character '#'"),
        ("a == 'x'", "at 5: unexpected character '\\''"),
        ("$", "at 0: unexpected character '$'"),
        ("a && ü", "at 5: unexpected character 'ü'"),
        ("foo(1)", "at 0: unknown function 'foo'"),
        (
            "1 + strlen(1, 2)",
            "at 4: function 'strlen' takes 1 argument, found 2",
        ),
        (
            "exists(x)",
            "at 0: exists() takes a string literal naming a field",
        ),
        ("a = = b", "at 4: expected an expression"),
        ("a === b", "at 4: expected an expression"),
    ];
    for (src, want) in cases {
        assert_eq!(parse_err(src), want, "{src:?}");
    }
}

#[test]
fn parse_error_fields() {
    let e = Expr::parse("(a").expect_err("unclosed");
    assert_eq!(e.offset, 2);
    assert_eq!(e.kind, crate::ParseErrorKind::Expected("')'"));
}

#[test]
fn source_length_limit() {
    let name = "a".repeat(MAX_SOURCE);
    assert!(Expr::parse(&name).is_ok());
    let string = format!("\"{}\"", "x".repeat(MAX_SOURCE - 2));
    assert!(Expr::parse(&string).is_ok());
    let long = "a".repeat(MAX_SOURCE + 1);
    assert_eq!(
        parse_err(&long),
        "at 4096: expression longer than 4096 bytes"
    );
}

#[test]
fn nesting_limit_parentheses() {
    let nest = |k: usize| format!("{}1{}", "(".repeat(k), ")".repeat(k));
    // The top level counts as one.
    assert!(Expr::parse(&nest(MAX_DEPTH - 1)).is_ok());
    assert_eq!(
        parse_err(&nest(MAX_DEPTH)),
        "at 64: expression nested deeper than 64 levels"
    );
    // Far deeper input fails the same way, without deep recursion.
    assert_eq!(
        parse_err(&"(".repeat(4000)),
        "at 64: expression nested deeper than 64 levels"
    );
}

#[test]
fn nesting_limit_unary_calls_and_indexes() {
    let unary = |k: usize| format!("{}x", "!".repeat(k));
    assert!(Expr::parse(&unary(MAX_DEPTH - 1)).is_ok());
    assert!(parse_err(&unary(MAX_DEPTH)).ends_with("expression nested deeper than 64 levels"));
    let calls = |k: usize| format!("{}1{}", "abs(".repeat(k), ")".repeat(k));
    assert!(Expr::parse(&calls(MAX_DEPTH - 1)).is_ok());
    assert!(parse_err(&calls(MAX_DEPTH)).ends_with("expression nested deeper than 64 levels"));
    let index = |k: usize| format!("a{}", "[0]".repeat(k));
    assert!(Expr::parse(&index(MAX_DEPTH - 1)).is_ok());
    assert!(parse_err(&index(MAX_DEPTH)).ends_with("expression nested deeper than 64 levels"));
    let inner_index = |k: usize| format!("{}0{}", "a[".repeat(k), "]".repeat(k));
    assert!(Expr::parse(&inner_index(MAX_DEPTH - 1)).is_ok());
    assert!(parse_err(&inner_index(MAX_DEPTH)).ends_with("nested deeper than 64 levels"));
}

#[test]
fn nesting_limit_operator_chains() {
    // A left-leaning chain is built without recursion; its height is checked instead.
    let chain = |k: usize| format!("1{}", "+1".repeat(k));
    assert!(Expr::parse(&chain(MAX_DEPTH - 1)).is_ok());
    assert_eq!(
        parse_err(&chain(MAX_DEPTH)),
        format!(
            "at {}: expression nested deeper than 64 levels",
            2 * MAX_DEPTH - 1
        )
    );
    let right = |k: usize| format!("{}1", "1+(".repeat(k)) + &")".repeat(k);
    assert!(Expr::parse(&right(20)).is_ok());
    assert!(Expr::parse(&right(40)).is_err());
    // `||` and `&&` chains are one node: hundreds of alternatives are fine.
    let alternatives: Vec<String> = (0..400).map(|i| format!("cid={i}")).collect();
    let src = alternatives.join("||");
    assert!(src.len() <= MAX_SOURCE);
    let e = parse(&src);
    assert_eq!(e.root().height(), 3);
}

#[test]
fn canonical_form_can_outgrow_the_source_limit() {
    let src = vec!["a=1"; 800].join("||");
    assert!(src.len() <= MAX_SOURCE);
    let printed = parse(&src).to_string();
    assert!(printed.len() > MAX_SOURCE);
    assert_eq!(
        Expr::parse(&printed).expect_err("too long").kind,
        crate::ParseErrorKind::TooLong { limit: MAX_SOURCE }
    );
}
