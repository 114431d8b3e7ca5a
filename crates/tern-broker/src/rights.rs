//! What a principal may do with topics: master and standard tokens may publish and subscribe
//! anywhere in their namespace (the reserved `flespi/` prefix aside); an ACL token only where
//! its `mqtt` entries allow.
//!
//! A subscription by an ACL token is checked per filter: a filter entirely inside a grant is
//! allowed as is; a filter that only overlaps grants (`#` with a grant on `a/#`) is allowed but
//! every delivery is checked against the grants, so it never delivers a topic outside them
//! (mosquitto#744); a filter that overlaps no grant is refused. "Inside" and "overlaps" are
//! [`tern_topic::covers`] and [`tern_topic::intersects`], exact by the rules of
//! [`tern_topic::matches`].

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
                if rules
                    .subscribe
                    .iter()
                    .any(|g| tern_topic::covers(g, filter))
                {
                    SubscribeRight::All
                } else if rules
                    .subscribe
                    .iter()
                    .any(|g| tern_topic::intersects(g, filter))
                {
                    SubscribeRight::Restricted(rules.clone())
                } else {
                    SubscribeRight::Denied
                }
            }
        }
    }
}
