//! The two error types: [`ParseError`] (the expression is rejected when it is compiled, e.g. at
//! subscribe time) and [`EvalError`] (one evaluation failed; as a predicate the message does not
//! pass). Both display as `at <offset>: <message>`, the offset being a 0-based byte position in
//! the expression source.

use std::fmt;

use thiserror::Error;

use crate::span::Span;
use crate::value::TypeName;

/// Why an expression was rejected at parse time, and where.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("at {offset}: {kind}")]
pub struct ParseError {
    /// 0-based byte offset into the source where the problem was found.
    pub offset: usize,
    pub kind: ParseErrorKind,
}

impl ParseError {
    pub(crate) fn new(offset: usize, kind: ParseErrorKind) -> Self {
        ParseError { offset, kind }
    }
}

/// What was wrong with the source.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    #[error("expression longer than {limit} bytes")]
    TooLong { limit: usize },
    #[error("expression nested deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("unexpected character {0:?}")]
    UnexpectedChar(char),
    #[error("unterminated string")]
    UnterminatedString,
    #[error("invalid escape '\\{0}'")]
    InvalidEscape(char),
    #[error("invalid unicode escape")]
    InvalidUnicodeEscape,
    #[error("number out of range")]
    NumberOutOfRange,
    #[error("expected hexadecimal digits after '0x'")]
    MissingHexDigits,
    /// `expected <what>`, e.g. `expected ')'` or `expected an expression`.
    #[error("expected {0}")]
    Expected(&'static str),
    #[error("unmatched ')'")]
    UnmatchedParen,
    #[error("unknown function '{0}'")]
    UnknownFunction(String),
    #[error("function '{name}' takes {expected}, found {found}")]
    Arity {
        name: &'static str,
        expected: Arity,
        found: usize,
    },
    #[error("exists() takes a string literal naming a field")]
    ExistsNeedsLiteral,
}

/// How many arguments a function takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    Exactly(usize),
    AtLeast(usize),
}

impl Arity {
    pub fn accepts(self, n: usize) -> bool {
        match self {
            Arity::Exactly(k) => n == k,
            Arity::AtLeast(k) => n >= k,
        }
    }
}

impl fmt::Display for Arity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (prefix, n) = match *self {
            Arity::Exactly(n) => ("", n),
            Arity::AtLeast(n) => ("at least ", n),
        };
        match n {
            0 => write!(f, "{prefix}no arguments"),
            1 => write!(f, "{prefix}1 argument"),
            n => write!(f, "{prefix}{n} arguments"),
        }
    }
}

/// Why one evaluation failed, and the source range of the sub-expression that failed.
///
/// It is `Copy` and holds no strings: a filter that fails on most messages (a field they lack)
/// costs no allocation. To show the offending text, slice [`crate::Expr::source`] with `span`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("at {}: {kind}", span.start)]
pub struct EvalError {
    pub span: Span,
    pub kind: EvalErrorKind,
}

/// The kinds of evaluation failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EvalErrorKind {
    /// A name (without `$`) that the context does not have.
    #[error("field not found")]
    MissingField,
    /// An index past the end of an array, or a key an object lacks.
    #[error("no such element")]
    MissingElement,
    /// A string that does not parse as a number where a number is needed.
    #[error("string is not a number")]
    NotANumber,
    /// An array or object where a number, string, boolean or null is needed.
    #[error("expected a number, string, boolean or null, found {0}")]
    NotAValue(TypeName),
    #[error("cannot index {0}")]
    NotIndexable(TypeName),
    /// An array index that is not an integer-valued number, or an object key that is not a
    /// string or a number. (A negative or too large array index is `MissingElement`.)
    #[error("cannot index with {0}")]
    BadIndex(TypeName),
    #[error("division by zero")]
    DivisionByZero,
    /// A bitwise operand that is not finite or does not fit an i64 after truncation.
    #[error("bitwise operand out of the 64-bit integer range")]
    IntegerRange,
    /// A concatenation whose result would exceed [`crate::MAX_STRING`] bytes.
    #[error("string longer than {} bytes", crate::MAX_STRING)]
    StringTooLong,
    /// A wildcard match that would take more than [`crate::Pattern`]'s step budget.
    #[error("wildcard match too costly")]
    MatchTooCostly,
    /// The second argument of `json()` is not a string.
    #[error("json() takes a string JSON pointer as its second argument")]
    NotAPointer,
}
