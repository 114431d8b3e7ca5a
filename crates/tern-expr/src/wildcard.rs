//! Wildcard patterns: `*` matches any run of characters (also none), `?` exactly one character;
//! every other character matches itself. There is no escape: a `*` in the text is matched by the
//! pattern's `*` (or `?`) like any other character.
//!
//! Used by `==`/`!=` against a string literal that contains `*` or `?` (docs/expressions.md) and by
//! the REST layer's `field=value` selectors. The common shapes (`abc*`, `*abc`, `*abc*`) are
//! classified when the pattern is built and matched with `starts_with`/`ends_with`/`memmem`;
//! anything else runs the classic two-pointer glob matcher, whose work is capped by
//! [`MATCH_BUDGET`] (per evaluation of an expression, however many patterns it has) so a
//! pathological pattern against a long text cannot stall the broker.

use std::fmt;

/// Steps the general matcher may take for one match, or for all the matches of one evaluation
/// (about a millisecond of work).
pub const MATCH_BUDGET: u32 = 1 << 20;

/// A compiled wildcard pattern. Build it with [`Pattern::new`], which returns `None` for text
/// without wildcards (plain equality is then the right comparison).
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    text: Box<str>,
    shape: Shape,
}

/// Precomputed shape; literal parts are byte ranges of `text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Only `*`s: matches everything.
    Any,
    /// `lit*`
    Prefix(usize),
    /// `*lit`
    Suffix(usize),
    /// `*lit*`
    Contains(usize, usize),
    General,
}

/// The general matcher ran out of [`MATCH_BUDGET`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooCostly;

impl Pattern {
    /// Whether `text` contains a wildcard character (`*` or `?`).
    pub fn has_wildcards(text: &str) -> bool {
        text.bytes().any(|b| b == b'*' || b == b'?')
    }

    /// Compiles `text`, or `None` when it has no wildcard.
    pub fn new(text: &str) -> Option<Pattern> {
        if !Self::has_wildcards(text) {
            return None;
        }
        let shape = classify(text);
        Some(Pattern {
            text: text.into(),
            shape,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `text` matches. A pathological match that exceeds the step budget counts as no
    /// match (the evaluator reports it as an error instead).
    pub fn matches(&self, text: &str) -> bool {
        self.try_matches(text).unwrap_or(false)
    }

    pub(crate) fn try_matches(&self, text: &str) -> Result<bool, TooCostly> {
        let mut budget = MATCH_BUDGET;
        self.matches_within(text, &mut budget)
    }

    /// Matches, charging the general matcher's steps to `budget` (shared by all the matches of
    /// one evaluation). The precompiled shapes are linear and free.
    pub(crate) fn matches_within(&self, text: &str, budget: &mut u32) -> Result<bool, TooCostly> {
        let p = &*self.text;
        Ok(match self.shape {
            Shape::Any => true,
            Shape::Prefix(end) => text.starts_with(p.get(..end).unwrap_or("")),
            Shape::Suffix(start) => text.ends_with(p.get(start..).unwrap_or("")),
            Shape::Contains(start, end) => {
                let needle = p.get(start..end).unwrap_or("");
                memchr::memmem::find(text.as_bytes(), needle.as_bytes()).is_some()
            }
            Shape::General => glob(p, text, budget)?,
        })
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pattern").field(&self.text).finish()
    }
}

fn classify(p: &str) -> Shape {
    if p.bytes().all(|b| b == b'*') {
        return Shape::Any;
    }
    if p.contains('?') {
        return Shape::General;
    }
    let stars = p.bytes().filter(|&b| b == b'*').count();
    let lead = p.starts_with('*');
    let trail = p.ends_with('*');
    match (stars, lead, trail) {
        (1, false, true) => Shape::Prefix(p.len() - 1),
        (1, true, false) => Shape::Suffix(1),
        (2, true, true) => Shape::Contains(1, p.len() - 1),
        _ => Shape::General,
    }
}

fn next_char(s: &str, i: usize) -> Option<(char, usize)> {
    s.get(i..)?.chars().next().map(|c| (c, i + c.len_utf8()))
}

/// Two-pointer glob match: on a mismatch, resume after the last `*`, which swallows one more
/// character of the text. Worst case O(pattern × text) steps, hence the budget.
fn glob(p: &str, t: &str, budget: &mut u32) -> Result<bool, TooCostly> {
    let (mut pi, mut ti) = (0usize, 0usize);
    // (pattern position after the last `*`, text position that `*` matched up to)
    let mut star: Option<(usize, usize)> = None;
    loop {
        *budget = budget.checked_sub(1).ok_or(TooCostly)?;
        let Some((tc, tn)) = next_char(t, ti) else {
            // Text consumed: only `*`s may remain in the pattern.
            return Ok(p
                .get(pi..)
                .is_some_and(|rest| rest.bytes().all(|b| b == b'*')));
        };
        match next_char(p, pi) {
            Some(('*', pn)) => {
                star = Some((pn, ti));
                pi = pn;
                continue;
            }
            Some((pc, pn)) if pc == '?' || pc == tc => {
                pi = pn;
                ti = tn;
                continue;
            }
            _ => {}
        }
        let Some((sp, st)) = star else {
            return Ok(false);
        };
        let Some((_, stn)) = next_char(t, st) else {
            return Ok(false);
        };
        star = Some((sp, stn));
        pi = sp;
        ti = stn;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Pattern::new(p).expect("pattern has wildcards").matches(t)
    }

    /// A naive recursive model of the same semantics, for the property test.
    fn model(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| model(rest, &t[i..])),
            Some(('?', rest)) => !t.is_empty() && model(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && model(rest, &t[1..]),
        }
    }

    #[test]
    fn plain_text_is_not_a_pattern() {
        assert!(Pattern::new("Andrew").is_none());
        assert!(Pattern::new("").is_none());
        assert!(Pattern::has_wildcards("a?"));
    }

    #[test]
    fn star_matches_any_run() {
        assert!(m("Andrew*", "Andrew"));
        assert!(m("Andrew*", "Andrew Smith"));
        assert!(!m("Andrew*", "andrew"));
        assert!(!m("Andrew*", "Mr Andrew"));
        assert!(m("*Smith", "Andrew Smith"));
        assert!(!m("*Smith", "Smithers"));
        assert!(m("*drew*", "Andrew Smith"));
        assert!(!m("*drew*", "Andy"));
        assert!(m("*", ""));
        assert!(m("**", "anything"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("*a*", "a"));
    }

    #[test]
    fn question_mark_matches_one_character() {
        assert!(m("fmc???", "fmc640"));
        assert!(!m("fmc???", "fmc64"));
        assert!(!m("fmc???", "fmc6400"));
        assert!(m("?", "é"));
        assert!(!m("?", ""));
        assert!(m("?*", "x"));
        assert!(!m("?*", ""));
    }

    #[test]
    fn wildcards_match_themselves() {
        assert!(m("a*", "a*"));
        assert!(m("what?", "what?"));
    }

    #[test]
    fn pathological_pattern_hits_the_budget() {
        let p = Pattern::new(&format!("*{}?b", "a".repeat(300))).expect("pattern");
        let text = "a".repeat(10_000);
        assert_eq!(p.try_matches(&text), Err(TooCostly));
        assert!(!p.matches(&text));
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_naive_model(p in "[ab*?]{1,8}", t in "[ab]{0,10}") {
            let pc: Vec<char> = p.chars().collect();
            let tc: Vec<char> = t.chars().collect();
            if let Some(pat) = Pattern::new(&p) {
                proptest::prop_assert_eq!(pat.matches(&t), model(&pc, &tc));
            }
        }
    }
}
