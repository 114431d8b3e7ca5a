//! The rights of a token, read from its document: the access kind becomes [`Rights`], the
//! `mqtt` entries of an ACL token its [`AclRules`]. What the rights allow is in
//! [`crate::rights`].

use std::sync::Arc;

use super::model::{Access, AclEntry};
use crate::rights::{AclRules, Rights};

impl AclRules {
    /// The MQTT grants of ACL entries (entries for other URIs are ignored here).
    pub fn from_entries(entries: &[AclEntry]) -> AclRules {
        let mut rules = AclRules::default();
        for e in entries.iter().filter(|e| e.uri == "mqtt") {
            let Some(topic) = &e.topic else { continue };
            // No actions listed means both.
            let all = e.actions.is_empty();
            if all || e.actions.iter().any(|a| a == "publish") {
                rules.publish.push(topic.clone());
            }
            if all || e.actions.iter().any(|a| a == "subscribe") {
                rules.subscribe.push(topic.clone());
            }
        }
        rules
    }
}

impl Rights {
    /// The rights of a token with `access`.
    pub fn of(access: &Access) -> Rights {
        match access.kind {
            Access::MASTER => Rights::Master,
            Access::ACL => Rights::Acl(Arc::new(AclRules::from_entries(&access.acl))),
            _ => Rights::Standard,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rights::SubscribeRight;

    #[test]
    fn rights() {
        let acl = Access {
            kind: Access::ACL,
            acl: vec![
                serde_json::from_value(
                    serde_json::json!({"uri": "mqtt", "topic": "a/#", "actions": ["subscribe"]}),
                )
                .unwrap(),
            ],
        };
        let r = Rights::of(&acl);
        assert!(!r.can_publish("a/x"));
        assert_eq!(r.subscribe("a/+"), SubscribeRight::All);
        assert!(matches!(r.subscribe("#"), SubscribeRight::Restricted(_)));
        assert_eq!(r.subscribe("b/#"), SubscribeRight::Denied);
    }
}
