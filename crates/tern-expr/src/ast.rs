//! The typed syntax tree, with byte spans into the source, and its canonical printer.
//!
//! The tree is what the parser resolved once: dotted names are split into segments, calls name
//! a [`Func`] whose arity was checked, `==`/`!=` against a wildcard literal is a [`NodeKind::Like`]
//! with a compiled [`Pattern`], `&&`/`||` chains are one n-ary [`NodeKind::Logical`] node.
//!
//! Node equality ignores spans: two trees are equal when they mean the same thing, wherever
//! their text sat. `Display` prints the canonical source (single spaces around binary
//! operators, parentheses only where precedence needs them, numbers in decimal, strings with
//! escapes) that parses back to an equal tree.

use std::fmt::{self, Write as _};

use smallvec::SmallVec;

pub use crate::span::Span;
use crate::value::{NumBuf, write_number};
use crate::wildcard::Pattern;

/// One node of the tree.
#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    pub span: Span,
}

impl PartialEq for Node {
    /// Spans are not compared.
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Null,
    Bool(bool),
    /// A number literal: finite and non-negative (`-5` is a negation of `5`).
    Number(f64),
    String(Box<str>),
    /// A (dotted) name looked up in the context; `safe` when written `$name`.
    Name {
        path: Path,
        safe: bool,
    },
    /// `base.name` after an index or a parenthesis: `devices[0].name`, `(x).y`.
    Field {
        base: Box<Node>,
        path: Path,
        /// Inherited from a `$name` at the start of the chain: lookup failures give null.
        safe: bool,
    },
    /// `base[index]`.
    Index {
        base: Box<Node>,
        index: Box<Node>,
        safe: bool,
    },
    Unary {
        op: UnaryOp,
        operand: Box<Node>,
    },
    Binary {
        op: BinaryOp,
        lhs: Box<Node>,
        rhs: Box<Node>,
    },
    /// `value == "pat*"` (or `!=`, or with the literal first): a wildcard comparison.
    Like {
        negated: bool,
        value: Box<Node>,
        pattern: Pattern,
        /// The literal was the left operand.
        pattern_first: bool,
    },
    /// `a && b && c` or `a || b || c`: two or more operands, short-circuit.
    Logical {
        op: LogicalOp,
        operands: Vec<Node>,
    },
    /// `cond ? then : otherwise`.
    Conditional {
        cond: Box<Node>,
        then: Box<Node>,
        otherwise: Box<Node>,
    },
    /// A call of a built-in function with a checked number of arguments.
    Call {
        func: Func,
        args: Vec<Node>,
    },
    /// `exists("name")`: the literal name, split once.
    Exists {
        path: Path,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `!`
    Not,
    /// `-`
    Neg,
    /// `~`
    BitNot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    BitOr,
    BitXor,
    BitAnd,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogicalOp {
    Or,
    And,
}

/// The built-in functions (docs/expressions.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Func {
    Not,
    ToNumber,
    ToString,
    ToBoolean,
    IsNull,
    IsNumber,
    IsString,
    IsBoolean,
    Exists,
    StrLen,
    Now,
    Distance,
    If,
    Abs,
    Min,
    Max,
    Round,
    Floor,
    Ceil,
    /// `json(doc, "/pointer")`: RFC 6901 into a JSON value or a string holding JSON.
    Json,
    /// `strescape(s)`: `s` escaped for the inside of a JSON string.
    StrEscape,
}

/// Precedence levels, lowest first (docs/expressions.md). Binary levels are left-associative, the
/// ternary is right-associative.
pub(crate) mod prec {
    pub const TERNARY: u8 = 1;
    pub const OR: u8 = 2;
    pub const AND: u8 = 3;
    pub const BIT_OR: u8 = 4;
    pub const BIT_XOR: u8 = 5;
    pub const BIT_AND: u8 = 6;
    pub const EQUALITY: u8 = 7;
    pub const COMPARISON: u8 = 8;
    pub const ADDITIVE: u8 = 9;
    pub const MULTIPLICATIVE: u8 = 10;
    pub const UNARY: u8 = 11;
    pub const POSTFIX: u8 = 12;
}

impl UnaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            UnaryOp::Not => "!",
            UnaryOp::Neg => "-",
            UnaryOp::BitNot => "~",
        }
    }
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::BitOr => "|",
            BinaryOp::BitXor => "^",
            BinaryOp::BitAnd => "&",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
        }
    }

    pub fn precedence(self) -> u8 {
        match self {
            BinaryOp::BitOr => prec::BIT_OR,
            BinaryOp::BitXor => prec::BIT_XOR,
            BinaryOp::BitAnd => prec::BIT_AND,
            BinaryOp::Eq | BinaryOp::Ne => prec::EQUALITY,
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => prec::COMPARISON,
            BinaryOp::Add | BinaryOp::Sub => prec::ADDITIVE,
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => prec::MULTIPLICATIVE,
        }
    }
}

impl LogicalOp {
    pub fn symbol(self) -> &'static str {
        match self {
            LogicalOp::Or => "||",
            LogicalOp::And => "&&",
        }
    }

    pub fn precedence(self) -> u8 {
        match self {
            LogicalOp::Or => prec::OR,
            LogicalOp::And => prec::AND,
        }
    }
}

/// A dotted name, split into its segments once at parse time. Segments are byte ranges of the
/// text, so every "rest of the name from segment i" is itself a slice (`a.b.c` → `b.c`) and
/// lookups never build strings.
#[derive(Debug, Clone)]
pub struct Path {
    text: Box<str>,
    /// Byte offset where each segment starts.
    starts: SmallVec<[u32; 4]>,
}

impl PartialEq for Path {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Path {
    /// Splits `text` at every `.`; any text is accepted (`exists("a..b")` has an empty segment).
    pub fn new(text: &str) -> Path {
        let mut starts = SmallVec::new();
        starts.push(0);
        for (i, b) in text.bytes().enumerate() {
            if b == b'.' {
                starts.push(u32::try_from(i + 1).unwrap_or(u32::MAX));
            }
        }
        Path {
            text: text.into(),
            starts,
        }
    }

    /// The whole name.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Number of `.`-separated segments (at least 1).
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Never true: a path has at least one (possibly empty) segment.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Segment `i` alone.
    pub fn segment(&self, i: usize) -> &str {
        let start = self.starts.get(i).map_or(self.text.len(), |&s| s as usize);
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.text.len(), |&s| s as usize - 1);
        self.text.get(start..end).unwrap_or("")
    }

    /// Segments `i..` joined by their dots, as written.
    pub fn rest(&self, i: usize) -> &str {
        let start = self.starts.get(i).map_or(self.text.len(), |&s| s as usize);
        self.text.get(start..).unwrap_or("")
    }
}

impl Func {
    /// Every function, for tests and documentation.
    pub const ALL: [Func; 21] = [
        Func::Not,
        Func::ToNumber,
        Func::ToString,
        Func::ToBoolean,
        Func::IsNull,
        Func::IsNumber,
        Func::IsString,
        Func::IsBoolean,
        Func::Exists,
        Func::StrLen,
        Func::Now,
        Func::Distance,
        Func::If,
        Func::Abs,
        Func::Min,
        Func::Max,
        Func::Round,
        Func::Floor,
        Func::Ceil,
        Func::Json,
        Func::StrEscape,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Func::Not => "not",
            Func::ToNumber => "tonumber",
            Func::ToString => "tostring",
            Func::ToBoolean => "toboolean",
            Func::IsNull => "isnull",
            Func::IsNumber => "isnumber",
            Func::IsString => "isstring",
            Func::IsBoolean => "isboolean",
            Func::Exists => "exists",
            Func::StrLen => "strlen",
            Func::Now => "now",
            Func::Distance => "distance",
            Func::If => "if",
            Func::Abs => "abs",
            Func::Min => "min",
            Func::Max => "max",
            Func::Round => "round",
            Func::Floor => "floor",
            Func::Ceil => "ceil",
            Func::Json => "json",
            Func::StrEscape => "strescape",
        }
    }

    pub fn from_name(name: &str) -> Option<Func> {
        Func::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl Node {
    pub(crate) fn new(kind: NodeKind, span: Span) -> Node {
        Node { kind, span }
    }

    /// `lhs op rhs`, turning `==`/`!=` against a wildcard string literal into [`NodeKind::Like`]
    /// (the right operand is checked first).
    pub(crate) fn binary(op: BinaryOp, lhs: Node, rhs: Node) -> Node {
        let span = lhs.span.to(rhs.span);
        if matches!(op, BinaryOp::Eq | BinaryOp::Ne) {
            let negated = op == BinaryOp::Ne;
            if let Some(pattern) = wildcard_literal(&rhs) {
                let kind = NodeKind::Like {
                    negated,
                    value: Box::new(lhs),
                    pattern,
                    pattern_first: false,
                };
                return Node::new(kind, span);
            }
            if let Some(pattern) = wildcard_literal(&lhs) {
                let kind = NodeKind::Like {
                    negated,
                    value: Box::new(rhs),
                    pattern,
                    pattern_first: true,
                };
                return Node::new(kind, span);
            }
        }
        let kind = NodeKind::Binary {
            op,
            lhs: Box::new(lhs),
            rhs: Box::new(rhs),
        };
        Node::new(kind, span)
    }

    /// `base[index]`; null-safe when the chain starts with `$name`.
    pub(crate) fn index(base: Node, index: Node, end: Span) -> Node {
        let span = base.span.to(end);
        let safe = base.is_safe_chain();
        let kind = NodeKind::Index {
            base: Box::new(base),
            index: Box::new(index),
            safe,
        };
        Node::new(kind, span)
    }

    /// `base.path`; null-safe when the chain starts with `$name`.
    pub(crate) fn field(base: Node, path: Path, end: Span) -> Node {
        let span = base.span.to(end);
        let safe = base.is_safe_chain();
        let kind = NodeKind::Field {
            base: Box::new(base),
            path,
            safe,
        };
        Node::new(kind, span)
    }

    fn is_safe_chain(&self) -> bool {
        match &self.kind {
            NodeKind::Name { safe, .. }
            | NodeKind::Field { safe, .. }
            | NodeKind::Index { safe, .. } => *safe,
            _ => false,
        }
    }

    /// The precedence level this node prints at.
    pub(crate) fn precedence(&self) -> u8 {
        match &self.kind {
            NodeKind::Conditional { .. } => prec::TERNARY,
            NodeKind::Logical { op, .. } => op.precedence(),
            NodeKind::Binary { op, .. } => op.precedence(),
            NodeKind::Like { .. } => prec::EQUALITY,
            NodeKind::Unary { .. } => prec::UNARY,
            _ => prec::POSTFIX,
        }
    }

    /// The height of the tree (a leaf is 1). Recursion is bounded by the parse limits.
    pub fn height(&self) -> usize {
        let children = match &self.kind {
            NodeKind::Null
            | NodeKind::Bool(_)
            | NodeKind::Number(_)
            | NodeKind::String(_)
            | NodeKind::Name { .. }
            | NodeKind::Exists { .. } => return 1,
            NodeKind::Field { base, .. } => base.height(),
            NodeKind::Index { base, index, .. } => base.height().max(index.height()),
            NodeKind::Unary { operand, .. } => operand.height(),
            NodeKind::Binary { lhs, rhs, .. } => lhs.height().max(rhs.height()),
            NodeKind::Like { value, .. } => value.height(),
            NodeKind::Logical { operands: args, .. } | NodeKind::Call { args, .. } => {
                args.iter().map(Node::height).max().unwrap_or(0)
            }
            NodeKind::Conditional {
                cond,
                then,
                otherwise,
            } => cond.height().max(then.height()).max(otherwise.height()),
        };
        children + 1
    }
}

fn wildcard_literal(node: &Node) -> Option<Pattern> {
    match &node.kind {
        NodeKind::String(s) => Pattern::new(s),
        _ => None,
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            NodeKind::Null => f.write_str("null"),
            NodeKind::Bool(b) => write!(f, "{b}"),
            NodeKind::Number(n) => {
                let mut buf = NumBuf::new();
                write_number(&mut buf, *n)?;
                f.write_str(buf.as_str())
            }
            NodeKind::String(s) => write_string(f, s),
            NodeKind::Name { path, safe } => {
                if *safe {
                    f.write_char('$')?;
                }
                f.write_str(path.as_str())
            }
            NodeKind::Field { base, path, .. } => {
                // `a.b` would lex as one name, `true.b` too, and `(x).a.b` as one field `a.b`
                // of `(x)`: only these bases print bare.
                let bare = matches!(
                    base.kind,
                    NodeKind::Index { .. }
                        | NodeKind::Call { .. }
                        | NodeKind::Exists { .. }
                        | NodeKind::String(_)
                );
                write_operand(f, base, !bare)?;
                write!(f, ".{}", path.as_str())
            }
            NodeKind::Index { base, index, .. } => {
                write_operand(f, base, base.precedence() < prec::POSTFIX)?;
                write!(f, "[{index}]")
            }
            NodeKind::Unary { op, operand } => {
                f.write_str(op.symbol())?;
                write_operand(f, operand, operand.precedence() < prec::UNARY)
            }
            NodeKind::Binary { op, lhs, rhs } => {
                let p = op.precedence();
                write_operand(f, lhs, lhs.precedence() < p)?;
                write!(f, " {} ", op.symbol())?;
                write_operand(f, rhs, rhs.precedence() <= p)
            }
            NodeKind::Like {
                negated,
                value,
                pattern,
                pattern_first,
            } => {
                let op = if *negated { "!=" } else { "==" };
                let p = prec::EQUALITY;
                if *pattern_first {
                    write_string(f, pattern.as_str())?;
                    write!(f, " {op} ")?;
                    write_operand(f, value, value.precedence() <= p)
                } else {
                    write_operand(f, value, value.precedence() < p)?;
                    write!(f, " {op} ")?;
                    write_string(f, pattern.as_str())
                }
            }
            NodeKind::Logical { op, operands } => {
                let p = op.precedence();
                for (i, operand) in operands.iter().enumerate() {
                    if i > 0 {
                        write!(f, " {} ", op.symbol())?;
                    }
                    // A nested chain of the same operator only exists if it was parenthesized.
                    write_operand(f, operand, operand.precedence() <= p)?;
                }
                Ok(())
            }
            NodeKind::Conditional {
                cond,
                then,
                otherwise,
            } => {
                write_operand(f, cond, cond.precedence() <= prec::TERNARY)?;
                write!(f, " ? {then} : {otherwise}")
            }
            NodeKind::Call { func, args } => {
                write!(f, "{}(", func.name())?;
                for (i, arg) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{arg}")?;
                }
                f.write_char(')')
            }
            NodeKind::Exists { path } => {
                f.write_str("exists(")?;
                write_string(f, path.as_str())?;
                f.write_char(')')
            }
        }
    }
}

fn write_operand(f: &mut fmt::Formatter<'_>, node: &Node, parens: bool) -> fmt::Result {
    if parens {
        write!(f, "({node})")
    } else {
        write!(f, "{node}")
    }
}

/// A double-quoted literal with `\"`, `\\` and control characters escaped.
pub(crate) fn write_string(f: &mut impl fmt::Write, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c if c.is_control() => write!(f, "\\u{:04x}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}
