//! The devices layer's quotas (docs/flespi.md#devices): `devices`, `channels` and
//! `messages_bytes` of tern-broker's `QuotaDefaults`, each bounding an account together with
//! every account below it, as the broker's own quotas do.
//!
//! What each account tree uses lives in [`Usage`], under the gateway's lock, so a check and
//! the change it allows are one step. Devices and channels are counted as they come and go.
//! Stored bytes are a running total per message key (a device, or a channel's buffer): added
//! on every append, taken off on every delete (a range delete reads the range's sizes first).
//! The retention sweep deletes without knowing sizes, so after it the totals are set again
//! from the store's own counters (`Store::message_stats`), key by key, where the store has
//! written everything the gateway sent for that key. No check reads the store.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};
use tern_broker::Cid;
use tern_store::Ticket;

use crate::{Channel, Device, Gateway, GwError, State, Swept};

/// What the devices layer counts against quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    Devices,
    Channels,
}

impl Counted {
    fn name(self) -> &'static str {
        match self {
            Counted::Devices => "devices",
            Counted::Channels => "channels",
        }
    }
}

/// The stored messages of one message key.
#[derive(Debug, Clone, Copy)]
struct KeyUse {
    cid: Cid,
    bytes: u64,
    messages: u64,
    /// The store ticket of the last change sent for this key: once it is durable, the
    /// store's counters for the key are exact.
    ticket: Ticket,
}

/// What an account and every account below it use.
#[derive(Debug, Default, Clone, Copy)]
struct TreeUse {
    devices: u64,
    channels: u64,
    bytes: u64,
}

/// Use per account tree and per message key.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    keys: HashMap<u64, KeyUse>,
    tree: HashMap<Cid, TreeUse>,
    /// Stored bytes of the whole node.
    total_bytes: u64,
}

impl Usage {
    fn count(&mut self, what: Counted, chain: &[Cid], up: bool) {
        for c in chain {
            let t = self.tree.entry(*c).or_default();
            let n = match what {
                Counted::Devices => &mut t.devices,
                Counted::Channels => &mut t.channels,
            };
            *n = if up { *n + 1 } else { n.saturating_sub(1) };
        }
    }

    /// Adds (or with `up` false takes off) bytes and messages of `key` owned by `chain[0]`.
    fn change(&mut self, key: u64, chain: &[Cid], bytes: u64, messages: u64, up: bool) {
        let Some(&cid) = chain.first() else { return };
        let k = self.keys.entry(key).or_insert(KeyUse {
            cid,
            bytes: 0,
            messages: 0,
            ticket: 0,
        });
        let bytes = if up { bytes } else { bytes.min(k.bytes) };
        if up {
            k.bytes += bytes;
            k.messages += messages;
            self.total_bytes += bytes;
        } else {
            k.messages = k.messages.saturating_sub(messages);
            k.bytes -= bytes;
            self.total_bytes = self.total_bytes.saturating_sub(bytes);
        }
        for c in chain {
            let t = self.tree.entry(*c).or_default();
            t.bytes = if up {
                t.bytes + bytes
            } else {
                t.bytes.saturating_sub(bytes)
            };
        }
    }

    /// Stored bytes of the whole node.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.total_bytes
    }
}

/// The bytes a message carries once `prepare` (ingest.rs) added the device's fields: a
/// channel message grows by `,"device.id":..,"device.name":..,"device.type.id":..`.
pub(crate) fn device_fields_len(d: &Device) -> u64 {
    let len = |v: serde_json::Value| v.to_string().len() as u64;
    let name = len(serde_json::json!(d.name));
    let ty = len(serde_json::json!(d.device_type_id));
    // `,"device.id":` (13) + `,"device.name":` (15) + `,"device.type.id":` (18)
    13 + len(serde_json::json!(d.id)) + 15 + name + 18 + ty
}

impl Gateway {
    /// `cid` and its ancestors, nearest first.
    fn chain(&self, cid: Cid) -> impl std::ops::Deref<Target = [Cid]> + use<> {
        self.directory.ancestors(cid)
    }

    /// Counts what the store held at start: devices and channels per account tree, and the
    /// stored bytes per message key from the store's counters.
    pub(crate) fn load_usage(&self, st: &mut State, stats: &[(u64, tern_store::MessageStats)]) {
        let mut usage = Usage::default();
        for d in st.devices.values() {
            usage.count(Counted::Devices, &self.chain(d.cid), true);
        }
        for c in st.channels.values() {
            usage.count(Counted::Channels, &self.chain(c.cid), true);
        }
        for (key, s) in stats {
            let owner = match tern_store::channel_of(*key) {
                Some(c) => st.channels.get(&c).map(|c| c.cid),
                None => st.devices.get(key).map(|d| d.cid),
            };
            if let Some(cid) = owner {
                usage.change(*key, &self.chain(cid), s.bytes, s.count, true);
            }
        }
        st.usage = usage;
    }

    /// Refuses one more device or channel in `cid` when `cid` or an account above it has
    /// used up its quota.
    pub(crate) fn check_count(&self, st: &State, cid: Cid, what: Counted) -> Result<(), GwError> {
        for (c, q) in self.directory.quota_chain(cid) {
            let t = st.usage.tree.get(&c).copied().unwrap_or_default();
            let (used, limit) = match what {
                Counted::Devices => (t.devices, q.devices),
                Counted::Channels => (t.channels, q.channels),
            };
            if used >= limit {
                return Err(GwError::QuotaExceeded {
                    cid: c,
                    quota: what.name(),
                    limit,
                });
            }
        }
        Ok(())
    }

    /// Counts a device or channel of `cid` in, or (`up` false) out.
    pub(crate) fn count_item(&self, st: &mut State, cid: Cid, what: Counted, up: bool) {
        st.usage.count(what, &self.chain(cid), up);
    }

    /// Refuses stored bytes `adds` (per owning account) when any of them would take an
    /// account or an account above it past its `messages_bytes` quota. All or nothing: the
    /// adds of one call are summed per account first.
    pub(crate) fn check_bytes(&self, st: &State, adds: &[(Cid, u64)]) -> Result<(), GwError> {
        if !self.store.enabled() {
            return Ok(());
        }
        let mut per_cid: Vec<(Cid, u64)> = Vec::new();
        for &(cid, bytes) in adds {
            match per_cid.iter_mut().find(|p| p.0 == cid) {
                Some(p) => p.1 += bytes,
                None => per_cid.push((cid, bytes)),
            }
        }
        let mut wanted: Vec<(Cid, u64, u64)> = Vec::new();
        for (cid, bytes) in per_cid {
            if bytes == 0 {
                continue;
            }
            for (c, q) in self.directory.quota_chain(cid) {
                match wanted.iter_mut().find(|w| w.0 == c) {
                    Some(w) => w.1 += bytes,
                    None => wanted.push((c, bytes, q.messages_bytes)),
                }
            }
        }
        for (c, add, limit) in wanted {
            let used = st.usage.tree.get(&c).map_or(0, |t| t.bytes);
            if used.saturating_add(add) > limit {
                return Err(GwError::QuotaExceeded {
                    cid: c,
                    quota: "messages_bytes",
                    limit,
                });
            }
        }
        Ok(())
    }

    /// The `messages_bytes` check of one channel batch, before anything of it is kept: the
    /// channel buffer (with `messages_ttl`) and the devices the messages go to (those that
    /// store messages), each in its own account. A message stored in a device carries the
    /// device's fields too ([`device_fields_len`]).
    pub(crate) fn check_batch_bytes(
        &self,
        st: &State,
        c: &Channel,
        kept: &[(String, Map<String, Value>)],
        jsons: &[Bytes],
    ) -> Result<(), GwError> {
        if !self.store.enabled() || jsons.is_empty() {
            return Ok(());
        }
        let mut adds: Vec<(Cid, u64)> = Vec::new();
        if c.messages_ttl > 0 {
            adds.push((c.cid, jsons.iter().map(|j| j.len() as u64).sum()));
        }
        let root = self.root(c.cid);
        // The device of each ident, looked up once per batch.
        let mut devices: Vec<(&str, Option<(Cid, u64)>)> = Vec::new();
        for ((ident, _), json) in kept.iter().zip(jsons) {
            let device = match devices.iter().find(|(i, _)| *i == ident.as_str()) {
                Some((_, d)) => *d,
                None => {
                    let d = st
                        .devices
                        .values()
                        .find(|d| {
                            d.enabled
                                && d.ident() == ident
                                && d.protocol_id() == c.protocol_id
                                && self.root(d.cid) == root
                        })
                        .filter(|d| d.messages_ttl > 0)
                        .map(|d| (d.cid, device_fields_len(d)));
                    devices.push((ident.as_str(), d));
                    d
                }
            };
            if let Some((cid, extra)) = device {
                adds.push((cid, json.len() as u64 + extra));
            }
        }
        self.check_bytes(st, &adds)
    }

    /// Counts messages appended to `key` (owned by `cid`) with the store's `ticket`.
    pub(crate) fn note_append(
        &self,
        st: &mut State,
        key: u64,
        cid: Cid,
        bytes: u64,
        messages: u64,
        ticket: Ticket,
    ) {
        if !self.store.enabled() {
            return;
        }
        st.usage
            .change(key, &self.chain(cid), bytes, messages, true);
        if let Some(k) = st.usage.keys.get_mut(&key) {
            k.ticket = k.ticket.max(ticket);
        }
    }

    /// Takes deleted messages of `key` off its owner's totals.
    pub(crate) fn note_delete(
        &self,
        st: &mut State,
        key: u64,
        bytes: u64,
        messages: u64,
        ticket: Ticket,
    ) {
        let Some(cid) = st.usage.keys.get(&key).map(|k| k.cid) else {
            return;
        };
        st.usage
            .change(key, &self.chain(cid), bytes, messages, false);
        if let Some(k) = st.usage.keys.get_mut(&key) {
            k.ticket = k.ticket.max(ticket);
        }
    }

    /// Forgets every message of `key` (its device or channel was deleted).
    pub(crate) fn forget_key(&self, st: &mut State, key: u64) {
        if let Some(k) = st.usage.keys.get(&key).copied() {
            st.usage
                .change(key, &self.chain(k.cid), k.bytes, k.messages, false);
            st.usage.keys.remove(&key);
        }
    }

    /// Moves device `id`'s count and stored bytes from account `from` to `to`, refused when
    /// the accounts it joins have no room.
    pub(crate) fn move_usage(
        &self,
        st: &mut State,
        key: u64,
        from: Cid,
        to: Cid,
    ) -> Result<(), GwError> {
        let old = self.chain(from);
        let new = self.chain(to);
        let joined: Vec<(Cid, tern_broker::accounts::QuotaDefaults)> = self
            .directory
            .quota_chain(to)
            .into_iter()
            .filter(|(c, _)| !old.contains(c))
            .collect();
        let (bytes, messages) = st
            .usage
            .keys
            .get(&key)
            .map_or((0, 0), |k| (k.bytes, k.messages));
        for (c, q) in &joined {
            let t = st.usage.tree.get(c).copied().unwrap_or_default();
            if t.devices >= q.devices {
                return Err(GwError::QuotaExceeded {
                    cid: *c,
                    quota: "devices",
                    limit: q.devices,
                });
            }
            if t.bytes.saturating_add(bytes) > q.messages_bytes {
                return Err(GwError::QuotaExceeded {
                    cid: *c,
                    quota: "messages_bytes",
                    limit: q.messages_bytes,
                });
            }
        }
        st.usage.count(Counted::Devices, &old, false);
        st.usage.count(Counted::Devices, &new, true);
        if let Some(k) = st.usage.keys.get(&key).copied() {
            st.usage.change(key, &old, bytes, messages, false);
            st.usage.change(key, &new, bytes, messages, true);
            if let Some(n) = st.usage.keys.get_mut(&key) {
                n.cid = to;
                n.ticket = k.ticket;
            }
        }
        Ok(())
    }

    /// Devices, channels and stored message bytes of the whole node, for `/metrics`.
    pub fn gauges(&self) -> (u64, u64, u64) {
        let st = self.state.lock();
        (
            st.devices.len() as u64,
            st.channels.len() as u64,
            st.usage.total_bytes(),
        )
    }

    /// What account `cid` uses together with every account below it: devices, channels,
    /// stored message bytes.
    pub fn usage(&self, cid: Cid) -> (u64, u64, u64) {
        let st = self.state.lock();
        let t = st.usage.tree.get(&cid).copied().unwrap_or_default();
        (t.devices, t.channels, t.bytes)
    }

    /// Sets each key's stored bytes from the store's counters, where the store has written
    /// every change sent for the key (checked under the gateway's lock, so nothing new comes
    /// meanwhile). Returns the messages that went since the last count (the sweep's deletes).
    /// Blocking (a point read per key).
    pub fn recount(&self) -> u64 {
        let keys: Vec<u64> = self.state.lock().usage.keys.keys().copied().collect();
        let mut gone = 0;
        for key in keys {
            let mut st = self.state.lock();
            let Some(k) = st.usage.keys.get(&key).copied() else {
                continue;
            };
            if self.store.durable() < k.ticket {
                continue;
            }
            let Ok(s) = self.store.message_stats(key) else {
                continue;
            };
            let chain = self.chain(k.cid);
            st.usage.change(key, &chain, k.bytes, k.messages, false);
            st.usage.change(key, &chain, s.bytes, s.count, true);
            gone += k.messages.saturating_sub(s.count);
        }
        gone
    }

    /// One retention pass at `now` as the retention task runs it: the sweep, then, once its
    /// deletes are durable, the stored-bytes totals set again from the store
    /// ([`Gateway::recount`]); the `/metrics` counters move.
    pub async fn retention_pass(self: &Arc<Self>, now: f64) -> Swept {
        let gw = self.clone();
        let swept = match tokio::task::spawn_blocking(move || gw.sweep(now)).await {
            Ok(s) => s,
            Err(err) => {
                tracing::error!(%err, "the retention sweep failed");
                return Swept::default();
            }
        };
        self.settled().await;
        let gw = self.clone();
        let gone = tokio::task::spawn_blocking(move || gw.recount())
            .await
            .unwrap_or(0);
        let m = &self.metrics;
        use std::sync::atomic::Ordering::Relaxed;
        m.sweeps.fetch_add(1, Relaxed);
        m.expired.fetch_add(swept.expired, Relaxed);
        m.rotated.fetch_add(swept.rotated, Relaxed);
        m.swept_messages.fetch_add(gone, Relaxed);
        swept
    }
}
