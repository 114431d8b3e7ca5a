//! Teltonika channels (docs/teltonika.md): every enabled channel of protocol `teltonika` owns a
//! TCP listener served by `tern_net::teltonika::TeltonikaChannel`; this module decides its port,
//! starts and stops it with the channel, and is the layer above its connections
//! ([`TrackerSink`]): it admits IMEIs, sends each frame's records through the channel pipeline
//! ([`Gateway::channel_messages`], ACKed only once durable), keeps the device's `connected` from
//! its TCP connection, and writes the channel and device logs.
//!
//! - **Ports**: `configuration.port`, else the first free port of `gw.channel_ports`, written
//!   back into `configuration.port` so it survives restarts; bound on `gw.channel_bind`. A
//!   channel whose settings change on the same port hands its listening socket to the new
//!   connections' owner (the port never closes); a port in use by another channel or another
//!   process: 400.
//! - **Connected**: a device of a protocol with sessions is connected while a connection with
//!   its ident is open on a channel of its account tree (counted per tree and ident, so an
//!   ident collision's two connections do not flap it).
//! - **Locks**: `running`, `links` and `refusals` are leaves: taken under the gateway's state
//!   lock or alone, never the other way round.

use std::collections::HashMap;
use std::future::ready;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tern_broker::Cid;
use tern_net::teltonika::{
    Admission, StoreFailed, StoreFuture, TeltonikaChannel, TrackerEvent, TrackerSink, close_code,
};
use tern_teltonika::{AvlPacket, Imei};
use tokio::net::TcpSocket;

use crate::channel::Channel;
use crate::logs::{Origin, channel_event};
use crate::types::TELTONIKA;
use crate::{Gateway, GwError, State, publish};

/// Upper bounds of the ACK latency histogram, seconds.
pub const ACK_BUCKETS: [f64; 9] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Counters of the tracker channels, for `/metrics`.
#[derive(Debug, Default)]
pub struct TrackerMetrics {
    pub frames: AtomicU64,
    pub records: AtomicU64,
    /// Refused input by kind (`crc`, `count`, `preamble`, `frame_timeout`, ...).
    pub refused: Mutex<HashMap<&'static str, u64>>,
    /// ACK latency: counts per bucket of [`ACK_BUCKETS`] (the last one: above all), and the sum
    /// in microseconds.
    pub ack_buckets: [AtomicU64; ACK_BUCKETS.len() + 1],
    pub ack_sum_micros: AtomicU64,
    /// Commands by outcome (`executed`, `timeout`, `not_connected`, `closed`, `expired`, ...).
    pub commands: Mutex<HashMap<&'static str, u64>>,
}

impl TrackerMetrics {
    fn acked(&self, records: u32, latency: Duration) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.records
            .fetch_add(u64::from(records), Ordering::Relaxed);
        let secs = latency.as_secs_f64();
        let bucket = ACK_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(ACK_BUCKETS.len());
        self.ack_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.ack_sum_micros.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn command(&self, outcome: &'static str) {
        *self.commands.lock().entry(outcome).or_default() += 1;
    }
}

/// Where tracker listeners bind (from `[gw]`).
#[derive(Debug, Clone)]
pub struct TrackerPorts {
    /// The address listeners bind (`gw.channel_bind`).
    pub bind: IpAddr,
    /// The ports a channel without `configuration.port` takes one from (`gw.channel_ports`).
    pub range: (u16, u16),
    /// The host a channel's `uri` names (`gw.public_host`, else the bind address).
    pub public_host: Option<String>,
    /// Tracker connections on this node, all channels together (`gw.max_channel_connections`).
    pub max_connections: usize,
}

impl Default for TrackerPorts {
    fn default() -> Self {
        TrackerPorts {
            bind: IpAddr::from([127, 0, 0, 1]),
            range: (20100, 20999),
            public_host: None,
            max_connections: 100_000,
        }
    }
}

impl TrackerPorts {
    /// The host of a channel's `uri`: `public_host`; else the bind address; else, when that is
    /// every interface, the host of `base` (the REST address the channel was created through,
    /// as an HTTP channel's `uri` names it).
    pub fn host(&self, base: &str) -> String {
        if let Some(h) = &self.public_host {
            return h.clone();
        }
        if self.bind.is_unspecified() {
            let authority = base.split_once("://").map_or(base, |(_, rest)| rest);
            let authority = authority.split('/').next().unwrap_or(authority);
            // `host:port`, `[v6]:port`, or a bare host.
            let host = match authority.rsplit_once(':') {
                Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => authority,
            };
            if !host.is_empty() {
                return host.to_owned();
            }
        }
        match self.bind {
            IpAddr::V6(a) => format!("[{a}]"),
            IpAddr::V4(a) => a.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_hosts() {
        let any = TrackerPorts {
            bind: IpAddr::from([0, 0, 0, 0]),
            ..TrackerPorts::default()
        };
        assert_eq!(any.host("http://localhost:8080"), "localhost");
        assert_eq!(any.host("https://[::1]:8443"), "[::1]");
        assert_eq!(any.host("https://gw.example.com"), "gw.example.com");
        assert_eq!(
            TrackerPorts::default().host("http://localhost:8080"),
            "127.0.0.1"
        );
        let public = TrackerPorts {
            public_host: Some("trk.example.com".into()),
            ..any
        };
        assert_eq!(public.host("http://localhost:8080"), "trk.example.com");
    }
}

/// One running listener.
#[derive(Debug)]
struct Running {
    port: u16,
    listener: Arc<tokio::net::TcpListener>,
    /// The configuration it was started with (a change restarts it).
    configuration: Map<String, Value>,
    channel: Arc<TeltonikaChannel>,
}

/// The tracker channels of the gateway.
#[derive(Debug, Default)]
pub(crate) struct Trackers {
    running: Mutex<HashMap<u64, Running>>,
    /// Open identified connections per (account tree root, ident).
    links: Mutex<HashMap<(Cid, String), u32>>,
    /// The account tree root of every channel served since start (a connection that closes
    /// after its channel was deleted still finds its device's tree).
    roots: Mutex<HashMap<u64, Cid>>,
    /// The last refusal reason per peer, for the close record that follows it.
    refusals: Mutex<HashMap<SocketAddr, String>>,
    pub(crate) metrics: TrackerMetrics,
}

/// A listening socket bound for a channel, not yet served.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Trackers {
    /// Open tracker connections, all channels.
    pub(crate) fn open(&self) -> usize {
        self.running
            .lock()
            .values()
            .map(|r| r.channel.connections_count())
            .sum()
    }

    pub(crate) fn connections_count(&self, channel: u64) -> Option<u64> {
        self.running
            .lock()
            .get(&channel)
            .map(|r| r.channel.connections_count() as u64)
    }

    pub(crate) fn linked(&self, root: Cid, ident: &str) -> bool {
        self.links
            .lock()
            .get(&(root, ident.to_owned()))
            .is_some_and(|n| *n > 0)
    }

    /// The running channels' handles (to send commands or kick connections).
    pub(crate) fn channels(&self) -> Vec<(u64, Arc<TeltonikaChannel>)> {
        self.running
            .lock()
            .iter()
            .map(|(id, r)| (*id, r.channel.clone()))
            .collect()
    }

    /// Stops channel `id`'s listener and connections (close `code`).
    fn stop(&self, id: u64, code: u8) {
        if let Some(r) = self.running.lock().remove(&id) {
            r.channel.close(code);
        }
    }
}

impl Gateway {
    /// Starts the listener of every enabled Teltonika channel (at start, in the runtime); the
    /// broker's shutdown closes them with code 7. A stored port that cannot be bound is logged
    /// and the channel stays without a listener until it is changed.
    pub fn start_trackers(&self) {
        let st = self.state.lock();
        for c in st.channels.values() {
            // One a cluster's first load started already keeps its listener.
            if c.protocol_id == TELTONIKA
                && c.enabled
                && !self.trackers.running.lock().contains_key(&c.id)
            {
                let addr = SocketAddr::new(self.trackers_ports().bind, c.tracker_port());
                match bind(addr) {
                    Ok(listener) => self.serve_tracker(c, Arc::new(listener)),
                    Err(err) => {
                        tracing::error!(channel = c.id, %addr, %err, "teltonika channel: cannot listen");
                    }
                }
            }
        }
    }

    fn trackers_ports(&self) -> &TrackerPorts {
        &self.options.trackers
    }

    /// A listener for Teltonika channel `c` (under the state lock): on `configuration.port`,
    /// or on a free port of the range, which is then written into `c`.
    pub(crate) fn bind_tracker(
        &self,
        st: &State,
        c: &mut Channel,
    ) -> Result<tokio::net::TcpListener, GwError> {
        let ports = self.trackers_ports();
        let taken = |port: u16| {
            st.channels
                .values()
                .find(|o| o.id != c.id && o.protocol_id == TELTONIKA && o.tracker_port() == port)
                .map(|o| o.id)
        };
        let want = c.tracker_port();
        if want != 0 {
            if let Some(other) = taken(want) {
                return Err(GwError::Invalid(format!(
                    "configuration.port {want} is used by channel {other}"
                )));
            }
            return bind(SocketAddr::new(ports.bind, want)).map_err(|err| {
                GwError::Invalid(format!("configuration.port {want}: cannot listen: {err}"))
            });
        }
        let (lo, hi) = ports.range;
        for port in lo..=hi {
            if port == 0 || taken(port).is_some() {
                continue;
            }
            if let Ok(listener) = bind(SocketAddr::new(ports.bind, port)) {
                c.configuration.insert("port".into(), json!(port));
                return Ok(listener);
            }
        }
        Err(GwError::Invalid(format!(
            "no free port in gw.channel_ports {lo}-{hi}"
        )))
    }

    /// Serves channel `c` on `listener`.
    pub(crate) fn serve_tracker(&self, c: &Channel, listener: Arc<tokio::net::TcpListener>) {
        let sink = Arc::new(Sink {
            gw: self.me.clone(),
            channel: c.id,
        });
        let channel = TeltonikaChannel::new(sink, c.tracker_options());
        self.trackers.roots.lock().insert(c.id, self.root(c.cid));
        let shutdown = self.broker.shutdown_token().clone();
        tokio::spawn(channel.clone().serve(listener.clone(), shutdown));
        let old = self.trackers.running.lock().insert(
            c.id,
            Running {
                port: c.tracker_port(),
                listener,
                configuration: c.configuration.clone(),
                channel,
            },
        );
        if let Some(old) = old {
            old.channel.close(close_code::CHANNEL_UPDATED);
        }
    }

    /// Brings channel `new`'s listener in line after a create or change (under the state
    /// lock): a port is taken for a new channel even while disabled; a changed port or setting
    /// restarts the listener (open connections close with code 8); disabled stops it.
    pub(crate) fn sync_tracker(&self, st: &State, new: &mut Channel) -> Result<(), GwError> {
        if new.protocol_id != TELTONIKA {
            return Ok(());
        }
        // The socket already listening on the wanted port, if any.
        let (same, held) = match self.trackers.running.lock().get(&new.id) {
            Some(r) if r.port == new.tracker_port() => (
                r.configuration == new.configuration,
                Some(r.listener.clone()),
            ),
            _ => (false, None),
        };
        if same && new.enabled {
            return Ok(());
        }
        let old_port = st.channels.get(&new.id).map(Channel::tracker_port);
        if !new.enabled {
            if new.tracker_port() == 0 {
                // Reserve a port all the same, so the channel's `uri` is known.
                drop(self.bind_tracker(st, new)?);
            } else if old_port != Some(new.tracker_port()) {
                drop(self.bind_tracker(st, new)?);
            }
            self.trackers.stop(new.id, close_code::CHANNEL_UPDATED);
            return Ok(());
        }
        let listener = match held {
            Some(l) => l,
            None => Arc::new(self.bind_tracker(st, new)?),
        };
        self.serve_tracker(new, listener);
        Ok(())
    }

    /// Stops channel `id`'s listener (deleted).
    pub(crate) fn stop_tracker(&self, id: u64) {
        self.trackers.stop(id, close_code::CHANNEL_UPDATED);
    }

    /// Closes the connections of `ident` on every channel of `cid`'s tree (the device was
    /// disabled, deleted or its ident changed: code 23).
    pub(crate) fn kick_tracker(&self, st: &State, cid: Cid, ident: &str) {
        let root = self.root(cid);
        for (id, channel) in self.trackers.channels() {
            if st
                .channels
                .get(&id)
                .is_some_and(|c| self.root(c.cid) == root)
            {
                channel.disconnect(ident, close_code::DEVICE_DISABLED);
            }
        }
    }

    /// The open connections of channel `id` (`GET /gw/channels/{sel}/connections`).
    pub fn channel_connections(&self, id: u64) -> Vec<Value> {
        let channel = self
            .trackers
            .running
            .lock()
            .get(&id)
            .map(|r| r.channel.clone());
        channel
            .map(|c| {
                c.connections()
                    .into_iter()
                    .map(|k| {
                        json!({
                            "id": k.id,
                            "channel_id": id,
                            "ident": k.imei,
                            "peer": k.peer.to_string(),
                            "since": k.since,
                            "msgs": k.msgs,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The tracker channels' counters.
    pub fn tracker_metrics(&self) -> &TrackerMetrics {
        &self.trackers.metrics
    }

    /// Tracker connections open now, all channels.
    pub fn tracker_connections(&self) -> usize {
        self.trackers.open()
    }

    /// The handshake: the channel must be enabled and below the node's limit; a disabled
    /// device with this IMEI is refused (23); an unknown IMEI only with `accept_unknown`.
    fn tracker_admit(&self, channel: u64, imei: &str) -> Admission {
        if self.trackers.open() > self.trackers_ports().max_connections {
            return Admission::Reject(close_code::NORMAL);
        }
        let st = self.state.lock();
        let Some(c) = st.channels.get(&channel).filter(|c| c.enabled) else {
            return Admission::Reject(close_code::CHANNEL_UPDATED);
        };
        let root = self.root(c.cid);
        let device = self.device_by_ident(&st, TELTONIKA, imei, root);
        match device {
            Some(d) if !d.enabled => Admission::Reject(close_code::DEVICE_DISABLED),
            Some(_) => Admission::Accept,
            None if c.accept_unknown() => Admission::Accept,
            None => Admission::Reject(close_code::NORMAL),
        }
    }

    /// One frame's records through the pipeline; resolves once durable.
    fn tracker_store(
        &self,
        channel: u64,
        imei: &Imei,
        peer: SocketAddr,
        packet: &AvlPacket,
    ) -> Result<(), GwError> {
        let messages: Vec<Value> = tern_teltonika::packet_to_messages(imei.as_str(), packet)
            .into_iter()
            .map(Value::Object)
            .collect();
        self.channel_messages(channel, messages, &peer.to_string())
            .map(|_| ())
    }

    fn tracker_event(&self, channel: u64, event: TrackerEvent) {
        match event {
            TrackerEvent::Accepted { peer } => {
                self.channel_log(
                    channel,
                    channel_event::ACCEPTED,
                    json!({"host": peer.to_string()}),
                );
                self.republish_channel_state(channel);
            }
            TrackerEvent::Identified { peer, imei } => {
                self.channel_log(
                    channel,
                    channel_event::IDENTIFIED,
                    json!({"host": peer.to_string(), "ident": imei}),
                );
                self.link(channel, &imei, None);
                self.deliver_queued(channel, &imei);
            }
            TrackerEvent::Refused {
                peer,
                imei,
                kind,
                error,
            } => {
                *self
                    .trackers
                    .metrics
                    .refused
                    .lock()
                    .entry(kind)
                    .or_default() += 1;
                tracing::debug!(channel, %peer, imei = imei.as_deref(), kind, %error, "teltonika input refused");
                let mut refusals = self.trackers.refusals.lock();
                if refusals.len() < 65_536 {
                    refusals.insert(peer, error);
                }
            }
            TrackerEvent::Acked { records, latency } => {
                self.trackers.metrics.acked(records, latency);
            }
            TrackerEvent::Closed {
                peer,
                imei,
                close_code,
                duration,
                msgs,
                recv,
                send,
            } => {
                let mut fields = json!({
                    "host": peer.to_string(),
                    "ident": imei,
                    "close_code": close_code,
                    "duration": duration,
                    "msgs": msgs,
                    "recv": recv,
                    "send": send,
                });
                if let Some(reason) = self.trackers.refusals.lock().remove(&peer) {
                    fields["reason"] = json!(reason);
                }
                if let Some(imei) = &imei {
                    self.link(channel, imei, Some(&fields));
                }
                self.channel_log(channel, channel_event::CLOSED, fields);
                self.republish_channel_state(channel);
            }
        }
    }

    /// A connection of `imei` on `channel` opened (`closed` None) or closed (with its close
    /// record): the device's `connected` follows, with its log (300/301) and state.
    fn link(&self, channel: u64, imei: &str, closed: Option<&Value>) {
        let st = self.state.lock();
        let Some(root) = self.trackers.roots.lock().get(&channel).copied() else {
            return;
        };
        let key = (root, imei.to_owned());
        let (was, is) = {
            let mut links = self.trackers.links.lock();
            let n = links.entry(key.clone()).or_default();
            let was = *n > 0;
            match closed {
                None => *n += 1,
                Some(_) => *n = n.saturating_sub(1),
            }
            let is = *n > 0;
            if !is {
                links.remove(&key);
            }
            (was, is)
        };
        if was == is {
            return;
        }
        self.share_link(root, imei, is);
        let device = self.device_by_ident(&st, TELTONIKA, imei, root);
        let Some(d) = device else { return };
        let size = self.messages_size(d.id);
        let (old, new) = (d.item(was, size), d.item(is, size));
        publish::state(&self.broker, d.cid, d.id, Some(&old), &new);
        let mut fields = Map::new();
        let event = if is {
            ("connected", crate::logs::code::CONNECTED)
        } else {
            if let Some(Value::Object(c)) = closed {
                for k in ["close_code", "duration", "msgs", "recv", "send"] {
                    if let Some(v) = c.get(k) {
                        fields.insert(k.into(), v.clone());
                    }
                }
            }
            ("disconnected", crate::logs::code::DISCONNECTED)
        };
        fields.insert("ident".into(), json!(imei));
        fields.insert("channel_id".into(), json!(channel));
        self.log(d.cid, Origin::Device, d.id, event, fields);
    }

    fn channel_log(&self, channel: u64, event: (&str, u64), fields: Value) {
        let cid = self.state.lock().channels.get(&channel).map(|c| c.cid);
        if let (Some(cid), Value::Object(fields)) = (cid, fields) {
            self.log(cid, Origin::Channel, channel, event, fields);
        }
    }

    fn republish_channel_state(&self, channel: u64) {
        let st = self.state.lock();
        if let Some(c) = st.channels.get(&channel) {
            let item = self.channel_item_of(c);
            // Only the count changes: the item and `connections_count` are published.
            let mut old = item.clone();
            old["connections_count"] = Value::Null;
            publish::channel_state(&self.broker, c.cid, channel, Some(&old), &item);
        }
    }
}

/// The layer above one channel's connections.
struct Sink {
    gw: Weak<Gateway>,
    channel: u64,
}

impl TrackerSink for Sink {
    fn admit(&self, imei: &Imei, _peer: SocketAddr) -> Admission {
        match self.gw.upgrade() {
            Some(gw) => gw.tracker_admit(self.channel, imei.as_str()),
            None => Admission::Reject(close_code::SHUTDOWN),
        }
    }

    fn store(&self, imei: &Imei, peer: SocketAddr, packet: AvlPacket) -> StoreFuture {
        let Some(gw) = self.gw.upgrade() else {
            return Box::pin(ready(Err(StoreFailed("shutting down".into()))));
        };
        if let Err(err) = gw.tracker_store(self.channel, imei, peer, &packet) {
            return Box::pin(ready(Err(StoreFailed(err.to_string()))));
        }
        Box::pin(async move {
            if gw.settled().await {
                Ok(())
            } else {
                Err(StoreFailed("the store is failing".into()))
            }
        })
    }

    fn event(&self, event: TrackerEvent) {
        if let Some(gw) = self.gw.upgrade() {
            gw.tracker_event(self.channel, event);
        }
    }
}
