//! The checker: resolves a call's name to a built-in [`Func`] and checks its number of
//! arguments while parsing, so an unknown function or a wrong arity rejects the expression when
//! it is compiled (SUBACK 0x8F), never per message.

use crate::ast::{Func, Node, NodeKind, Path, Span};
use crate::error::{Arity, ParseError, ParseErrorKind};

impl Func {
    /// The number of arguments the function takes.
    pub fn arity(self) -> Arity {
        match self {
            Func::Now => Arity::Exactly(0),
            Func::Not
            | Func::ToNumber
            | Func::ToString
            | Func::ToBoolean
            | Func::IsNull
            | Func::IsNumber
            | Func::IsString
            | Func::IsBoolean
            | Func::Exists
            | Func::StrLen
            | Func::Abs
            | Func::Round
            | Func::Floor
            | Func::Ceil
            | Func::StrEscape => Arity::Exactly(1),
            Func::Json => Arity::Exactly(2),
            Func::If => Arity::Exactly(3),
            Func::Distance => Arity::Exactly(4),
            Func::Min | Func::Max => Arity::AtLeast(2),
        }
    }
}

/// Builds the node for `name(args)`. `name_span` is where errors point; `span` covers the call.
pub(crate) fn call(
    name: &str,
    name_span: Span,
    mut args: Vec<Node>,
    span: Span,
) -> Result<Node, ParseError> {
    let at = name_span.start as usize;
    let func = Func::from_name(name)
        .ok_or_else(|| ParseError::new(at, ParseErrorKind::UnknownFunction(name.to_string())))?;
    let expected = func.arity();
    if !expected.accepts(args.len()) {
        return Err(ParseError::new(
            at,
            ParseErrorKind::Arity {
                name: func.name(),
                expected,
                found: args.len(),
            },
        ));
    }
    if func == Func::Exists {
        // The field name is a literal so that it is split once, here.
        return match args.pop().map(|a| a.kind) {
            Some(NodeKind::String(s)) => Ok(Node::new(
                NodeKind::Exists {
                    path: Path::new(&s),
                },
                span,
            )),
            _ => Err(ParseError::new(at, ParseErrorKind::ExistsNeedsLiteral)),
        };
    }
    Ok(Node::new(NodeKind::Call { func, args }, span))
}

#[cfg(test)]
mod tests {
    use crate::Expr;

    fn err(src: &str) -> String {
        Expr::parse(src).expect_err("rejected").to_string()
    }

    #[test]
    fn every_function_resolves_with_its_arity() {
        for func in crate::ast::Func::ALL {
            let n = match func.arity() {
                crate::error::Arity::Exactly(n) | crate::error::Arity::AtLeast(n) => n,
            };
            let args = if func == crate::ast::Func::Exists {
                "\"a\"".to_string()
            } else {
                vec!["1"; n].join(", ")
            };
            let src = format!("{}({args})", func.name());
            assert!(Expr::parse(&src).is_ok(), "{src}");
        }
    }

    #[test]
    fn unknown_functions() {
        assert_eq!(err("foo(1)"), "at 0: unknown function 'foo'");
        assert_eq!(err("x + NOW()"), "at 4: unknown function 'NOW'");
        assert_eq!(err("a.b(1)"), "at 0: unknown function 'a.b'");
        assert_eq!(err("$now()"), "at 0: unknown function '$now'");
    }

    #[test]
    fn arity_errors() {
        assert_eq!(
            err("now(1)"),
            "at 0: function 'now' takes no arguments, found 1"
        );
        assert_eq!(
            err("strlen()"),
            "at 0: function 'strlen' takes 1 argument, found 0"
        );
        assert_eq!(
            err("not(1, 2)"),
            "at 0: function 'not' takes 1 argument, found 2"
        );
        assert_eq!(
            err("1 + abs(1, 2)"),
            "at 4: function 'abs' takes 1 argument, found 2"
        );
        assert_eq!(
            err("if(1, 2)"),
            "at 0: function 'if' takes 3 arguments, found 2"
        );
        assert_eq!(
            err("distance(1, 2, 3)"),
            "at 0: function 'distance' takes 4 arguments, found 3"
        );
        assert_eq!(
            err("min(1)"),
            "at 0: function 'min' takes at least 2 arguments, found 1"
        );
        assert_eq!(
            err("max()"),
            "at 0: function 'max' takes at least 2 arguments, found 0"
        );
        for f in [
            "tonumber",
            "tostring",
            "toboolean",
            "isnull",
            "isnumber",
            "isstring",
        ] {
            assert!(
                err(&format!("{f}()")).contains("takes 1 argument, found 0"),
                "{f}"
            );
        }
        for f in ["isboolean", "exists", "round", "floor", "ceil"] {
            assert!(
                err(&format!("{f}(1, 2)")).contains("takes 1 argument, found 2"),
                "{f}"
            );
        }
        assert!(Expr::parse("min(1, 2, 3, 4)").is_ok());
    }

    #[test]
    fn exists_takes_a_literal() {
        assert_eq!(
            err("exists(a.b)"),
            "at 0: exists() takes a string literal naming a field"
        );
        assert_eq!(
            err("exists(\"a\" + \"b\")"),
            "at 0: exists() takes a string literal naming a field"
        );
    }
}
