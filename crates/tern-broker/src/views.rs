//! What the outside sees of a session and its subscriptions: one view, taken under the session's
//! lock once, shared by the REST API (`/mqtt/sessions`, `/mqtt/subscriptions`) and the session
//! events (`events.rs`), so both show the same facts the same way.

use crate::message::Cid;
use crate::session::{Session, SessionStats, Subscription};

/// A session as the REST API (docs/flespi.md#the-rest-api `/mqtt/sessions`) and the session
/// events (docs/flespi.md#broker-events) show it.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub id: u64,
    pub client_id: String,
    pub cid: Cid,
    pub connected: bool,
    pub clean: bool,
    pub ip: String,
    /// When an offline session expires (unix seconds); null while connected or never.
    pub expires: Option<f64>,
    /// Session Expiry Interval, seconds.
    pub expiry_interval: u32,
    /// Bytes of queued messages.
    pub size: u64,
    /// Queued and in-flight messages.
    pub queued: u64,
    pub protocol_version: u8,
    pub subscriptions: u64,
    /// Messages the client published, was delivered, and had refused (session events).
    pub stats: SessionStats,
}

/// A subscription as the REST API shows it.
#[derive(Debug, Clone)]
pub struct SubscriptionView {
    /// Stable id derived from the subscription string.
    pub id: u64,
    pub topic: String,
    pub qos: u8,
    pub no_local: bool,
    pub rap: bool,
    pub retain_handling: u8,
    pub subscription_id: Option<u32>,
    /// The `cid` the subscription is restricted to by its user property, if any.
    pub cid: Option<Cid>,
}

fn public_id(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h & ((1 << 53) - 1)).max(1)
}

impl Subscription {
    /// The REST view of this subscription.
    pub fn view(&self) -> SubscriptionView {
        SubscriptionView {
            id: public_id(&self.key.to_stored()),
            topic: self.topic_string().to_string(),
            qos: self.options.qos as u8,
            no_local: self.options.no_local,
            rap: self.options.retain_as_published,
            retain_handling: self.options.retain_handling as u8,
            subscription_id: self.id,
            cid: self.key.cid,
        }
    }
}

impl Session {
    /// The REST view of this session.
    pub fn view(&self) -> SessionView {
        let st = self.lock();
        let ip = st.last_ip();
        let expires = match (st.conn.is_some(), st.disconnected_at) {
            (false, Some(at)) if st.expiry_interval != u32::MAX => {
                Some((at + u64::from(st.expiry_interval) * 1_000_000) as f64 / 1e6)
            }
            _ => None,
        };
        SessionView {
            id: self.public_id(),
            client_id: self.key.client_id.to_string(),
            cid: self.key.cid,
            connected: st.conn.is_some(),
            clean: st.clean,
            ip,
            expires,
            expiry_interval: st.expiry_interval,
            size: st.queued_bytes as u64,
            queued: (st.queue.len() + st.inflight.len()) as u64,
            protocol_version: st.last_protocol,
            subscriptions: st.subscriptions.len() as u64,
            stats: st.stats,
        }
    }

    /// The REST views of this session's subscriptions, ordered by their string.
    pub fn subscription_views(&self) -> Vec<SubscriptionView> {
        let st = self.lock();
        let mut subs: Vec<&Subscription> = st.subscriptions.values().collect();
        subs.sort_by(|a, b| a.key.cmp(&b.key));
        subs.into_iter().map(Subscription::view).collect()
    }
}
