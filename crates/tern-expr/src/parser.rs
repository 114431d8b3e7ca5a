//! Precedence climbing (Pratt) over the token list.
//!
//! `expr(min, depth)` parses an operand (prefix operators, literals, names, calls, parentheses,
//! then postfix `[i]` and `.name`) and folds in infix operators whose precedence is at least
//! `min`. Each recursive call passes `depth + 1`, and each built node's height is tracked, so
//! both the parser's recursion and the tree's height stay within [`MAX_DEPTH`]; everything that
//! later walks the tree recursively (evaluation, printing, dropping) inherits that bound.

use crate::ast::{BinaryOp, LogicalOp, Node, NodeKind, Path, Span, UnaryOp, prec};
use crate::check;
use crate::error::{ParseError, ParseErrorKind};
use crate::lexer::{self, Token};

/// The longest accepted source, in bytes (docs/expressions.md).
pub const MAX_SOURCE: usize = 4096;
/// The deepest accepted nesting (docs/expressions.md): the parser's recursion (parentheses,
/// operators, calls, indexes) and the height of the tree are each at most this.
pub const MAX_DEPTH: usize = 64;

pub(crate) fn parse(src: &str) -> Result<Node, ParseError> {
    if src.len() > MAX_SOURCE {
        return Err(ParseError::new(
            MAX_SOURCE,
            ParseErrorKind::TooLong { limit: MAX_SOURCE },
        ));
    }
    let tokens = lexer::tokenize(src)?;
    let mut parser = Parser {
        src,
        tokens,
        pos: 0,
    };
    let (node, _) = parser.expr(0, 1)?;
    match parser.peek() {
        None => Ok(node),
        Some((Token::RParen, span)) => Err(parser.error(span, ParseErrorKind::UnmatchedParen)),
        Some((_, span)) => Err(parser.error(span, ParseErrorKind::Expected("an operator"))),
    }
}

struct Parser<'s> {
    src: &'s str,
    tokens: Vec<(Token, Span)>,
    pos: usize,
}

/// A parsed node and its height.
type Parsed = (Node, usize);

/// What an infix token does.
enum Infix {
    Ternary,
    Logical(LogicalOp),
    Binary(BinaryOp),
}

fn infix(token: Token) -> Option<(Infix, u8)> {
    let op = match token {
        Token::Question => return Some((Infix::Ternary, prec::TERNARY)),
        Token::OrOr => return Some((Infix::Logical(LogicalOp::Or), prec::OR)),
        Token::AndAnd => return Some((Infix::Logical(LogicalOp::And), prec::AND)),
        Token::Pipe => BinaryOp::BitOr,
        Token::Caret => BinaryOp::BitXor,
        Token::Amp => BinaryOp::BitAnd,
        Token::Eq => BinaryOp::Eq,
        Token::Ne => BinaryOp::Ne,
        Token::Lt => BinaryOp::Lt,
        Token::Le => BinaryOp::Le,
        Token::Gt => BinaryOp::Gt,
        Token::Ge => BinaryOp::Ge,
        Token::Plus => BinaryOp::Add,
        Token::Minus => BinaryOp::Sub,
        Token::Star => BinaryOp::Mul,
        Token::Slash => BinaryOp::Div,
        Token::Percent => BinaryOp::Mod,
        _ => return None,
    };
    Some((Infix::Binary(op), op.precedence()))
}

impl Parser<'_> {
    fn peek(&self) -> Option<(Token, Span)> {
        self.tokens.get(self.pos).copied()
    }

    fn peek_token(&self) -> Option<Token> {
        self.peek().map(|(t, _)| t)
    }

    fn bump(&mut self) -> Option<(Token, Span)> {
        let t = self.peek();
        self.pos += 1;
        t
    }

    /// Offset of the next token, or the end of the source.
    fn here(&self) -> usize {
        self.peek()
            .map_or(self.src.len(), |(_, span)| span.start as usize)
    }

    fn error(&self, span: Span, kind: ParseErrorKind) -> ParseError {
        ParseError::new(span.start as usize, kind)
    }

    fn text(&self, span: Span) -> &str {
        self.src
            .get(span.start as usize..span.end as usize)
            .unwrap_or("")
    }

    /// Consumes `want` or fails with `expected <what>` at the next token.
    fn expect(&mut self, want: Token, what: &'static str) -> Result<Span, ParseError> {
        match self.peek() {
            Some((t, span)) if t == want => {
                self.pos += 1;
                Ok(span)
            }
            _ => Err(ParseError::new(self.here(), ParseErrorKind::Expected(what))),
        }
    }

    fn too_deep(at: usize) -> ParseError {
        ParseError::new(at, ParseErrorKind::TooDeep { limit: MAX_DEPTH })
    }

    /// Height of a new node over children of height `h`, checked against the limit.
    fn grow(h: usize, at: Span) -> Result<usize, ParseError> {
        if h + 1 > MAX_DEPTH {
            Err(Self::too_deep(at.start as usize))
        } else {
            Ok(h + 1)
        }
    }

    fn expr(&mut self, min: u8, depth: usize) -> Result<Parsed, ParseError> {
        if depth > MAX_DEPTH {
            return Err(Self::too_deep(self.here()));
        }
        let (mut lhs, mut h) = self.operand(depth)?;
        while let Some((token, op_span)) = self.peek() {
            let Some((kind, p)) = infix(token) else { break };
            if p < min {
                break;
            }
            self.pos += 1;
            match kind {
                Infix::Ternary => {
                    // The middle is delimited by `?` and `:`, so it takes any expression;
                    // the last operand at TERNARY makes `a ? b : c ? d : e` nest to the right.
                    let (then, h1) = self.expr(0, depth + 1)?;
                    self.expect(Token::Colon, "':'")?;
                    let (otherwise, h2) = self.expr(prec::TERNARY, depth + 1)?;
                    h = Self::grow(h.max(h1).max(h2), op_span)?;
                    let span = lhs.span.to(otherwise.span);
                    let kind = NodeKind::Conditional {
                        cond: Box::new(lhs),
                        then: Box::new(then),
                        otherwise: Box::new(otherwise),
                    };
                    lhs = Node::new(kind, span);
                }
                Infix::Logical(op) => {
                    // One n-ary node for the whole chain: `a || b || c` is no deeper than
                    // `a || b`, so long lists of alternatives stay within the depth limit.
                    let mut operands = vec![lhs];
                    loop {
                        let (rhs, rh) = self.expr(p + 1, depth + 1)?;
                        h = h.max(rh);
                        operands.push(rhs);
                        if self.peek_token() != Some(token) {
                            break;
                        }
                        self.pos += 1;
                    }
                    h = Self::grow(h, op_span)?;
                    let first = operands.first().map_or(op_span, |n| n.span);
                    let last = operands.last().map_or(op_span, |n| n.span);
                    lhs = Node::new(NodeKind::Logical { op, operands }, first.to(last));
                }
                Infix::Binary(op) => {
                    let (rhs, rh) = self.expr(p + 1, depth + 1)?;
                    h = Self::grow(h.max(rh), op_span)?;
                    lhs = Node::binary(op, lhs, rhs);
                }
            }
        }
        Ok((lhs, h))
    }

    /// A prefix expression followed by any postfix `[index]` and `.name`.
    fn operand(&mut self, depth: usize) -> Result<Parsed, ParseError> {
        let (mut node, mut h) = self.prefix(depth)?;
        loop {
            match self.peek() {
                Some((Token::LBracket, open)) => {
                    self.pos += 1;
                    let (index, ih) = self.expr(0, depth + 1)?;
                    let close = self.expect(Token::RBracket, "']'")?;
                    h = Self::grow(h.max(ih), open)?;
                    node = Node::index(node, index, close);
                }
                Some((Token::Dot, dot)) => {
                    self.pos += 1;
                    let name = match self.bump() {
                        Some((Token::Name | Token::True | Token::False | Token::Null, span)) => {
                            span
                        }
                        _ => {
                            return Err(ParseError::new(
                                dot.end as usize,
                                ParseErrorKind::Expected("a name after '.'"),
                            ));
                        }
                    };
                    h = Self::grow(h, dot)?;
                    node = Node::field(node, Path::new(self.text(name)), name);
                }
                _ => return Ok((node, h)),
            }
        }
    }

    fn prefix(&mut self, depth: usize) -> Result<Parsed, ParseError> {
        let Some((token, span)) = self.bump() else {
            return Err(ParseError::new(
                self.src.len(),
                ParseErrorKind::Expected("an expression"),
            ));
        };
        let at = span.start as usize;
        let leaf = |kind| Ok((Node::new(kind, span), 1));
        match token {
            Token::Decimal => leaf(NodeKind::Number(lexer::decimal(self.text(span), at)?)),
            Token::Hex => leaf(NodeKind::Number(lexer::hex(self.text(span), at)?)),
            Token::BadHex => Err(ParseError::new(at, ParseErrorKind::MissingHexDigits)),
            Token::Str => leaf(NodeKind::String(lexer::string(self.text(span), at)?.into())),
            Token::True => leaf(NodeKind::Bool(true)),
            Token::False => leaf(NodeKind::Bool(false)),
            Token::Null => leaf(NodeKind::Null),
            Token::Name | Token::SafeName if self.peek_token() == Some(Token::LParen) => {
                self.call(span, depth)
            }
            Token::Name => leaf(NodeKind::Name {
                path: Path::new(self.text(span)),
                safe: false,
            }),
            Token::SafeName => leaf(NodeKind::Name {
                path: Path::new(self.text(span).get(1..).unwrap_or("")),
                safe: true,
            }),
            Token::LParen => {
                let inner = self.expr(0, depth + 1)?;
                self.expect(Token::RParen, "')'")?;
                Ok(inner)
            }
            Token::Bang | Token::Minus | Token::Tilde => {
                let op = match token {
                    Token::Bang => UnaryOp::Not,
                    Token::Minus => UnaryOp::Neg,
                    _ => UnaryOp::BitNot,
                };
                let (operand, h) = self.expr(prec::UNARY, depth + 1)?;
                let h = Self::grow(h, span)?;
                let node_span = span.to(operand.span);
                let kind = NodeKind::Unary {
                    op,
                    operand: Box::new(operand),
                };
                Ok((Node::new(kind, node_span), h))
            }
            _ => Err(ParseError::new(
                at,
                ParseErrorKind::Expected("an expression"),
            )),
        }
    }

    /// `name(arg, ...)` with the name already consumed and `(` next.
    fn call(&mut self, name_span: Span, depth: usize) -> Result<Parsed, ParseError> {
        self.pos += 1; // `(`
        let mut args = Vec::new();
        let mut h = 0;
        let close = if let Some((Token::RParen, close)) = self.peek() {
            self.pos += 1;
            close
        } else {
            loop {
                let (arg, ah) = self.expr(0, depth + 1)?;
                h = h.max(ah);
                args.push(arg);
                match self.peek() {
                    Some((Token::Comma, _)) => self.pos += 1,
                    Some((Token::RParen, close)) => {
                        self.pos += 1;
                        break close;
                    }
                    _ => {
                        return Err(ParseError::new(
                            self.here(),
                            ParseErrorKind::Expected("',' or ')'"),
                        ));
                    }
                }
            }
        };
        let h = Self::grow(h, name_span)?;
        let node = check::call(self.text(name_span), name_span, args, name_span.to(close))?;
        Ok((node, h))
    }
}
