//! `%expr%` templates (flespi-gw §6.1): text with embedded expressions, as in a webhook's URI,
//! header values and body or a stream's topic.
//!
//! Syntax (docs/expressions.md, Templates):
//! - `%<expression>%` — the expression runs up to the next `%`, so it cannot itself contain
//!   a `%` (the modulo operator, a `%` in a string literal);
//! - `%{<expression>}%` — the expression runs up to the next `}%`, and may contain `%`;
//! - `%%` — a literal `%` (so a percent-encoded URI writes `%%20`).
//!
//! A template is parsed once ([`Template::parse`]); every expression is checked then, and an
//! error names the byte offset of its `%` in the template and the expression's text. Rendering
//! writes, for each expression, a string as is (unquoted), a number as `tostring()` writes it,
//! `true`/`false`, `null` for null, an array or object as its JSON text; an expression that
//! fails (a missing field, a type error) renders as `null`, as a missing `$field` would.
//!
//! ```
//! use tern_expr::Template;
//!
//! let t = Template::parse("/devices/%device.id%/speed=%{speed % 100}% 100%%")?;
//! let doc = serde_json::json!({"device": {"id": 7}, "speed": 172});
//! assert_eq!(t.render(&doc, 0.0), "/devices/7/speed=72 100%");
//! # Ok::<(), tern_expr::TemplateError>(())
//! ```

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use crate::context::{Context, JsonContext};
use crate::{Expr, ParseError};

/// A parsed template. Cloning shares the expressions.
#[derive(Clone)]
pub struct Template {
    source: Box<str>,
    parts: Vec<Part>,
    /// Set when the template has no expression and no `%%`: it renders as `source`.
    plain: bool,
}

#[derive(Clone)]
enum Part {
    /// A byte range of the source, copied as is.
    Text(Range<usize>),
    Expr(Expr),
}

/// Why a template does not parse. `offset` is the byte offset of the `%` that opens the
/// expression in the template.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "template at {offset}: '%' without a closing '%' (write %% for a literal %, %{{…}}% for an expression containing %)"
    )]
    Unterminated { offset: usize },
    #[error("template at {offset}: '%{{' without a closing '}}%'")]
    UnterminatedBrace { offset: usize },
    #[error("template at {offset}: expression '{expression}': {error}")]
    Expression {
        offset: usize,
        expression: String,
        error: ParseError,
    },
}

impl TemplateError {
    /// The byte offset in the template of the `%` where the problem starts.
    pub fn offset(&self) -> usize {
        match self {
            TemplateError::Unterminated { offset }
            | TemplateError::UnterminatedBrace { offset }
            | TemplateError::Expression { offset, .. } => *offset,
        }
    }
}

impl Template {
    /// Parses `src` and checks every expression in it.
    pub fn parse(src: &str) -> Result<Template, TemplateError> {
        let bytes = src.as_bytes();
        let mut parts = Vec::new();
        let mut text_start = 0;
        let mut i = 0;
        while let Some(p) = memchr::memchr(b'%', bytes.get(i..).unwrap_or_default()) {
            let at = i + p;
            let (expr_range, next) = match bytes.get(at + 1) {
                Some(b'%') => {
                    // `%%`: the text so far including one `%`.
                    push_text(&mut parts, text_start..at + 1);
                    i = at + 2;
                    text_start = i;
                    continue;
                }
                Some(b'{') => {
                    let from = at + 2;
                    let end = memchr::memmem::find(bytes.get(from..).unwrap_or_default(), b"}%")
                        .ok_or(TemplateError::UnterminatedBrace { offset: at })?;
                    (from..from + end, from + end + 2)
                }
                _ => {
                    let from = at + 1;
                    let end = memchr::memchr(b'%', bytes.get(from..).unwrap_or_default())
                        .ok_or(TemplateError::Unterminated { offset: at })?;
                    (from..from + end, from + end + 1)
                }
            };
            let text = src.get(expr_range).unwrap_or_default();
            let expr = Expr::parse(text).map_err(|error| TemplateError::Expression {
                offset: at,
                expression: text.to_string(),
                error,
            })?;
            push_text(&mut parts, text_start..at);
            parts.push(Part::Expr(expr));
            i = next;
            text_start = next;
        }
        let plain = text_start == 0;
        push_text(&mut parts, text_start..src.len());
        Ok(Template {
            source: src.into(),
            parts,
            plain,
        })
    }

    /// The template as given to [`Template::parse`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template has no expression (it may still have `%%`).
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The expressions of the template, in order.
    pub fn expressions(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e) => Some(e),
            Part::Text(_) => None,
        })
    }

    /// Renders against a JSON document (its members are the fields, see [`JsonContext`]);
    /// `now` is what `now()` returns.
    pub fn render(&self, doc: &serde_json::Value, now: f64) -> String {
        self.render_with(&JsonContext::new(doc, now)).into_owned()
    }

    /// Renders against any context. A template without `%` is returned borrowed, so rendering
    /// it allocates nothing.
    pub fn render_with<C: Context + ?Sized>(&self, ctx: &C) -> Cow<'_, str> {
        if self.plain {
            return Cow::Borrowed(&self.source);
        }
        let mut out = String::with_capacity(self.source.len() + 16);
        self.render_into(ctx, &mut out);
        Cow::Owned(out)
    }

    /// Appends the rendering to `out`.
    pub fn render_into<C: Context + ?Sized>(&self, ctx: &C, out: &mut String) {
        for part in &self.parts {
            match part {
                Part::Text(range) => out.push_str(self.source.get(range.clone()).unwrap_or("")),
                Part::Expr(expr) => crate::eval::render_into(expr.root(), ctx, out),
            }
        }
    }
}

fn push_text(parts: &mut Vec<Part>, range: Range<usize>) {
    if range.is_empty() {
        return;
    }
    if let Some(Part::Text(last)) = parts.last_mut()
        && last.end == range.start
    {
        last.end = range.end;
        return;
    }
    parts.push(Part::Text(range));
}

impl PartialEq for Template {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Template").field(&self.source).finish()
    }
}

impl fmt::Display for Template {
    /// The source as given.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for Template {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Template::parse(s)
    }
}
