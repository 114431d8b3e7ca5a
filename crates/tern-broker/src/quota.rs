//! Account quotas as the broker enforces them: the limits of one account ([`QuotaDefaults`]) and
//! of an account with its ancestors ([`QuotaChain`]), which the [`crate::Authenticator`] hands to
//! the broker.

use smallvec::SmallVec;

use crate::message::Cid;

/// Quotas of one account (its own limits over the defaults); also the defaults for accounts
/// without their own. Each bounds the account together with every account below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaDefaults {
    pub mqtt_sessions: u64,
    pub mqtt_subscriptions: u64,
    pub retained_bytes: u64,
    pub subaccounts: u64,
    pub tokens: u64,
    /// Devices of the devices layer (`/gw/devices`).
    pub devices: u64,
    /// Channels of the devices layer (`/gw/channels`).
    pub channels: u64,
    /// Bytes of stored device messages and channel buffers (the stored JSON).
    pub messages_bytes: u64,
}

impl Default for QuotaDefaults {
    fn default() -> Self {
        QuotaDefaults {
            mqtt_sessions: 100_000,
            mqtt_subscriptions: 1_000_000,
            retained_bytes: 1 << 30,
            subaccounts: 10_000,
            tokens: 100_000,
            devices: 100_000,
            channels: 10_000,
            messages_bytes: 100 << 30,
        }
    }
}

impl QuotaDefaults {
    /// No limit at all.
    pub const UNLIMITED: QuotaDefaults = QuotaDefaults {
        mqtt_sessions: u64::MAX,
        mqtt_subscriptions: u64::MAX,
        retained_bytes: u64::MAX,
        subaccounts: u64::MAX,
        tokens: u64::MAX,
        devices: u64::MAX,
        channels: u64::MAX,
        messages_bytes: u64::MAX,
    };

    /// The lower of each quota.
    pub fn min(&self, o: &QuotaDefaults) -> QuotaDefaults {
        QuotaDefaults {
            mqtt_sessions: self.mqtt_sessions.min(o.mqtt_sessions),
            mqtt_subscriptions: self.mqtt_subscriptions.min(o.mqtt_subscriptions),
            retained_bytes: self.retained_bytes.min(o.retained_bytes),
            subaccounts: self.subaccounts.min(o.subaccounts),
            tokens: self.tokens.min(o.tokens),
            devices: self.devices.min(o.devices),
            channels: self.channels.min(o.channels),
            messages_bytes: self.messages_bytes.min(o.messages_bytes),
        }
    }

    /// Each quota by its name in [`Limits`](crate::accounts::Limits).
    pub fn named(&self) -> [(&'static str, u64); 8] {
        [
            ("mqtt_sessions", self.mqtt_sessions),
            ("mqtt_subscriptions", self.mqtt_subscriptions),
            ("retained_bytes", self.retained_bytes),
            ("subaccounts", self.subaccounts),
            ("tokens", self.tokens),
            ("devices", self.devices),
            ("channels", self.channels),
            ("messages_bytes", self.messages_bytes),
        ]
    }
}

/// The quotas of an account and of each ancestor, nearest first: a use in the account counts
/// against every one of them.
pub type QuotaChain = SmallVec<[(Cid, QuotaDefaults); 4]>;
