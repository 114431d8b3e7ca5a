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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone)]
struct KeyUse {
    /// The owner's account and its ancestors, nearest first, as they were when counted (a
    /// deleted account's devices are counted out after the directory forgot its parents).
    chain: Vec<Cid>,
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

/// Use per account tree, per device or channel, and per message key.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    keys: HashMap<u64, KeyUse>,
    /// Each device and channel with the chain it is counted in.
    items: HashMap<(Counted, u64), Vec<Cid>>,
    tree: HashMap<Cid, TreeUse>,
    /// Stored bytes of the whole node.
    total_bytes: u64,
}

impl Usage {
    fn add_item(&mut self, what: Counted, id: u64, chain: Vec<Cid>) {
        self.remove_item(what, id);
        for c in &chain {
            let t = self.tree.entry(*c).or_default();
            match what {
                Counted::Devices => t.devices += 1,
                Counted::Channels => t.channels += 1,
            }
        }
        self.items.insert((what, id), chain);
    }

    fn remove_item(&mut self, what: Counted, id: u64) {
        for c in self.items.remove(&(what, id)).unwrap_or_default() {
            let t = self.tree.entry(c).or_default();
            let n = match what {
                Counted::Devices => &mut t.devices,
                Counted::Channels => &mut t.channels,
            };
            *n = n.saturating_sub(1);
        }
    }

    /// Adds bytes and messages to `key`, counted in `chain` when the key is new.
    /// The bytes counted for `key` (its stored messages, appends in flight included), if any
    /// were counted since the start.
    pub(crate) fn key_bytes(&self, key: u64) -> Option<u64> {
        self.keys.get(&key).map(|k| k.bytes)
    }

    fn add_bytes(&mut self, key: u64, chain: impl FnOnce() -> Vec<Cid>, bytes: u64, n: u64) {
        let Usage {
            keys,
            tree,
            total_bytes,
            ..
        } = self;
        let k = keys.entry(key).or_insert_with(|| KeyUse {
            chain: chain(),
            bytes: 0,
            messages: 0,
            ticket: 0,
        });
        k.bytes += bytes;
        k.messages += n;
        *total_bytes += bytes;
        for c in &k.chain {
            tree.entry(*c).or_default().bytes += bytes;
        }
    }

    /// Takes bytes and messages off `key` (at most what it has).
    fn take_bytes(&mut self, key: u64, bytes: u64, n: u64) {
        let Usage {
            keys,
            tree,
            total_bytes,
            ..
        } = self;
        let Some(k) = keys.get_mut(&key) else { return };
        let bytes = bytes.min(k.bytes);
        k.bytes -= bytes;
        k.messages = k.messages.saturating_sub(n);
        *total_bytes = total_bytes.saturating_sub(bytes);
        for c in &k.chain {
            let t = tree.entry(*c).or_default();
            t.bytes = t.bytes.saturating_sub(bytes);
        }
    }

    /// Takes everything of `key` off and forgets it.
    fn remove_key(&mut self, key: u64) -> Option<KeyUse> {
        let k = self.keys.get(&key)?;
        let (bytes, n) = (k.bytes, k.messages);
        self.take_bytes(key, bytes, n);
        let mut k = self.keys.remove(&key)?;
        (k.bytes, k.messages) = (bytes, n);
        Some(k)
    }

    fn note_ticket(&mut self, key: u64, ticket: Ticket) {
        if let Some(k) = self.keys.get_mut(&key) {
            k.ticket = k.ticket.max(ticket);
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
    fn chain(&self, cid: Cid) -> Vec<Cid> {
        self.directory.ancestors(cid).to_vec()
    }

    /// Counts what the store held at start: devices and channels per account tree, and the
    /// stored bytes per message key from the store's counters.
    pub(crate) fn load_usage(&self, st: &mut State, stats: &[(u64, tern_store::MessageStats)]) {
        let mut usage = Usage::default();
        for d in st.devices.values() {
            usage.add_item(Counted::Devices, d.id, self.chain(d.cid));
        }
        for c in st.channels.values() {
            usage.add_item(Counted::Channels, c.id, self.chain(c.cid));
        }
        for (key, s) in stats {
            let owner = match tern_store::channel_of(*key) {
                Some(c) => st.channels.get(&c).map(|c| c.cid),
                None => st.devices.get(key).map(|d| d.cid),
            };
            if let Some(cid) = owner {
                usage.add_bytes(*key, || self.chain(cid), s.bytes, s.count);
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

    /// Counts device or channel `id` of account `cid` in.
    pub(crate) fn count_in(&self, st: &mut State, what: Counted, id: u64, cid: Cid) {
        st.usage.add_item(what, id, self.chain(cid));
    }

    /// Counts device or channel `id` out (where it was counted in).
    pub(crate) fn count_out(&self, st: &mut State, what: Counted, id: u64) {
        st.usage.remove_item(what, id);
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
                    let d = self
                        .device_by_ident(st, c.protocol_id, ident, root)
                        .filter(|d| d.enabled && d.messages_ttl > 0)
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
        st.usage.add_bytes(key, || self.chain(cid), bytes, messages);
        st.usage.note_ticket(key, ticket);
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
        st.usage.take_bytes(key, bytes, messages);
        st.usage.note_ticket(key, ticket);
    }

    /// Forgets every message of `key` (its device or channel was deleted).
    pub(crate) fn forget_key(&self, st: &mut State, key: u64) {
        st.usage.remove_key(key);
    }

    /// Moves device `id`'s count and stored bytes to account `to`, refused when the accounts
    /// it joins have no room.
    pub(crate) fn move_usage(&self, st: &mut State, id: u64, to: Cid) -> Result<(), GwError> {
        let old = st
            .usage
            .items
            .get(&(Counted::Devices, id))
            .cloned()
            .unwrap_or_default();
        let bytes = st.usage.keys.get(&id).map_or(0, |k| k.bytes);
        for (c, q) in self.directory.quota_chain(to) {
            if old.contains(&c) {
                continue;
            }
            let t = st.usage.tree.get(&c).copied().unwrap_or_default();
            if t.devices >= q.devices {
                return Err(GwError::QuotaExceeded {
                    cid: c,
                    quota: "devices",
                    limit: q.devices,
                });
            }
            if t.bytes.saturating_add(bytes) > q.messages_bytes {
                return Err(GwError::QuotaExceeded {
                    cid: c,
                    quota: "messages_bytes",
                    limit: q.messages_bytes,
                });
            }
        }
        let chain = self.chain(to);
        st.usage.add_item(Counted::Devices, id, chain.clone());
        if let Some(k) = st.usage.remove_key(id) {
            st.usage.add_bytes(id, || chain, k.bytes, k.messages);
            st.usage.note_ticket(id, k.ticket);
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
            let Some((bytes, messages, ticket)) = st
                .usage
                .keys
                .get(&key)
                .map(|k| (k.bytes, k.messages, k.ticket))
            else {
                continue;
            };
            if self.store.durable() < ticket {
                continue;
            }
            let Ok(s) = self.store.message_stats(key) else {
                continue;
            };
            st.usage.take_bytes(key, bytes, messages);
            st.usage.add_bytes(key, Vec::new, s.bytes, s.count);
            gone += messages.saturating_sub(s.count);
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
