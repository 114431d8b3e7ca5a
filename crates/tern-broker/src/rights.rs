//! What a principal may do with topics: master and standard tokens may publish and subscribe
//! anywhere in their namespace (the reserved `flespi/` prefix aside); an ACL token only where
//! its `mqtt` entries allow.
//!
//! A subscription by an ACL token is checked per filter: a filter entirely inside a grant is
//! allowed as is; a filter that only overlaps grants (`#` with a grant on `a/#`) is allowed but
//! every delivery is checked against the grants, so it never delivers a topic outside them
//! (mosquitto#744); a filter that overlaps no grant is refused.

use std::sync::Arc;

/// The topic grants of an ACL token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclRules {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

impl AclRules {
    /// Whether a message on `topic` may be delivered to this token's subscriptions.
    pub fn can_receive(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|g| tern_topic::matches(g, topic))
    }
}

/// A principal's rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rights {
    Master,
    Standard,
    Acl(Arc<AclRules>),
}

/// The outcome of a subscription check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeRight {
    /// Everything the filter matches may be delivered.
    All,
    /// Allowed, but each delivery must pass the grants.
    Restricted(Arc<AclRules>),
    /// Refused (0x87).
    Denied,
}

impl Rights {
    pub fn is_master(&self) -> bool {
        matches!(self, Rights::Master)
    }

    /// Whether the principal may publish on `topic` (the reserved prefix is checked apart).
    pub fn can_publish(&self, topic: &str) -> bool {
        match self {
            Rights::Master | Rights::Standard => true,
            Rights::Acl(rules) => rules.publish.iter().any(|g| tern_topic::matches(g, topic)),
        }
    }

    /// Whether and how the principal may subscribe to `filter` (a topic filter without
    /// `$share`/`$filter` prefixes).
    pub fn subscribe(&self, filter: &str) -> SubscribeRight {
        match self {
            Rights::Master | Rights::Standard => SubscribeRight::All,
            Rights::Acl(rules) => {
                if rules.subscribe.iter().any(|g| covers(g, filter)) {
                    SubscribeRight::All
                } else if rules.subscribe.iter().any(|g| intersects(g, filter)) {
                    SubscribeRight::Restricted(rules.clone())
                } else {
                    SubscribeRight::Denied
                }
            }
        }
    }
}

/// Whether every topic `filter` matches is matched by `grant` (conservative: false when
/// unsure).
pub fn covers(grant: &str, filter: &str) -> bool {
    // Only a grant that starts with `$` can match `$` topics.
    if filter.starts_with('$') && !grant.starts_with('$') {
        return false;
    }
    let mut g = grant.split('/');
    let mut f = filter.split('/');
    loop {
        match (g.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some(gl), Some(fl)) => {
                let ok = match (gl, fl) {
                    ("+", "#") => false,
                    ("+", _) => true,
                    (_, "+" | "#") => false,
                    (gl, fl) if gl == fl => true,
                    (gl, fl) if gl.contains(',') && !fl.contains(',') => {
                        gl.split(',').any(|a| a == fl)
                    }
                    (gl, fl) if gl.contains(',') => {
                        fl.split(',').all(|a| gl.split(',').any(|b| a == b))
                    }
                    _ => false,
                };
                if !ok {
                    return false;
                }
            }
            (None, None) => return true,
            // The filter is longer: not covered. The grant is longer: the filter matches a
            // topic the grant does not (unless the rest of the grant is `#`, handled above).
            _ => return false,
        }
    }
}

/// Whether some topic is matched by both filters.
pub fn intersects(a: &str, b: &str) -> bool {
    // `$` topics are matched only by filters whose first level is literally `$...`.
    let a_dollar = a.starts_with('$');
    let b_dollar = b.starts_with('$');
    if a_dollar != b_dollar {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some(xl), Some(yl)) => {
                let ok = xl == "+"
                    || yl == "+"
                    || xl == yl
                    || alternatives(xl).any(|p| alternatives(yl).any(|q| p == q));
                if !ok {
                    return false;
                }
            }
            (None, None) => return true,
            // One filter ended: the other can only still match that topic with a trailing `#`.
            (None, Some(rest)) => return rest == "#" && y.next().is_none(),
            (Some(rest), None) => return rest == "#" && x.next().is_none(),
        }
    }
}

fn alternatives(level: &str) -> impl Iterator<Item = &str> {
    std::iter::once(level).chain(level.split(',').filter(move |_| level.contains(',')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage() {
        assert!(covers("a/#", "a/b/c"));
        assert!(covers("a/#", "a/+"));
        assert!(covers("a/+", "a/b"));
        assert!(covers("#", "x/y"));
        assert!(!covers("#", "$SYS/x"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/#", "#"));
        assert!(covers("a/1,2", "a/1"));
        assert!(!covers("a/1,2", "a/3"));
        assert!(!covers("a/b", "a/b/c"));
    }

    #[test]
    fn intersection() {
        assert!(intersects("#", "a/b"));
        assert!(intersects("a/#", "#"));
        assert!(intersects("a/+/c", "a/b/+"));
        assert!(!intersects("a/b", "a/c"));
        assert!(!intersects("#", "$SYS/x"));
        assert!(intersects("$SYS/#", "$SYS/x"));
        assert!(intersects("a", "a/#"));
        assert!(!intersects("a/b", "a"));
        assert!(intersects("a/1,2", "a/2"));
    }
}
