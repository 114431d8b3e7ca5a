//! The delivery task of one MQTT stream (docs/flespi.md#streams, spec flespi-gw §6 "mqtt"):
//! each queued message is one PUBLISH to another broker (`configuration.uri`,
//! `mqtt[s]://host:port`), its payload the stored JSON document, its topic the stream's
//! `topic` template (`%expr%` over the message; default
//! `flespi/message/gw/devices/%device.id%`), with `qos` (0 or 1, default 1) and `retain`.
//!
//! The task reads up to [`BATCH`] of the oldest queued messages, queues them in order on a
//! `tern_mqttc` client (up to [`IN_FLIGHT`] waiting for their result at once) and removes from
//! the queue the run of messages the broker accepted (QoS 1: PUBACK; QoS 0: written), so a
//! message leaves the queue only once delivered, and a crash or restart sends again at most
//! one batch (at least once). While the broker cannot be reached the messages wait (the
//! client reconnects with its back-off, 0.5 s to 60 s); each failed attempt and each lost
//! connection is logged on the stream (`delivery/failed` with `reason`), `connected` is false
//! meanwhile, and the first batch delivered after that logs `delivery/resumed` with
//! `message_count` and `ack_latency`.
//!
//! The broker's host is resolved and checked against `[gw] outbound_private_targets`
//! ([`crate::outbound::resolve_allowed`]) and the client connects to the checked address (TLS
//! still verifies the host name). After [`RESOLVE_AFTER`] failed attempts in a row the client
//! is closed and the host resolved again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tern_mqttc::{Client, ClientHandle, ClientOptions, Event, Pending, QoS, Roots};
use tern_store::MessageKey;

use crate::Gateway;
use crate::outbound;
use crate::stream::{Stream, topic_name_ok, topic_template};

/// Messages read from the queue at once (removed together once all are delivered).
pub(crate) const BATCH: usize = 1000;
/// Publishes waiting for their result at once (the client's `max_inflight` is the same).
const IN_FLIGHT: usize = 256;
/// Failed connection attempts in a row after which the host is resolved again.
const RESOLVE_AFTER: u32 = 5;
/// Delay before resolving again after a refused or unresolvable host: doubled up to the max.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The stream's settings, read once.
struct Settings {
    uri: tern_mqttc::BrokerUri,
    qos: QoS,
    retain: bool,
    topic: tern_expr::Template,
}

fn settings(s: &Stream) -> Result<Settings, String> {
    let c = &s.configuration;
    let uri = s
        .uri()
        .parse::<tern_mqttc::BrokerUri>()
        .map_err(|e| e.to_string())?;
    let qos = match c.get("qos").and_then(Value::as_u64) {
        Some(0) => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    };
    let retain = c.get("retain").and_then(Value::as_bool).unwrap_or(false);
    let topic = topic_template(s).map_err(|e| e.to_string())?;
    Ok(Settings {
        uri,
        qos,
        retain,
        topic,
    })
}

/// The client options: the checked address `addr`, the host name for TLS, the stream's
/// credentials and CA.
fn client_options(
    s: &Stream,
    uri: &tern_mqttc::BrokerUri,
    addr: std::net::SocketAddr,
    node: Option<&str>,
) -> Result<ClientOptions, String> {
    let c = &s.configuration;
    let mut client_id = c
        .get("client_id")
        .and_then(Value::as_str)
        .map_or_else(|| format!("tern-stream-{}", s.id), str::to_string);
    // In a cluster every node pushes the messages that came in through it, each with its own
    // client (one client id on several nodes would take each other over).
    if let Some(node) = node {
        client_id.push('-');
        client_id.push_str(node);
    }
    let mut checked = uri.clone();
    checked.host = addr.ip().to_string();
    checked.port = addr.port();
    let mut o = ClientOptions::new(&checked.to_string(), client_id).map_err(|e| e.to_string())?;
    o.tls.server_name = Some(uri.host.clone());
    if let Some(pem) = s.ca() {
        o.tls.roots = Roots::Pem(pem.as_bytes().to_vec());
    }
    o.username = c
        .get("username")
        .and_then(Value::as_str)
        .map(str::to_string);
    o.password = c
        .get("password")
        .and_then(Value::as_str)
        .map(|p| p.as_bytes().to_vec());
    o.max_inflight = IN_FLIGHT as u16;
    o.queue_size = IN_FLIGHT;
    o.event_capacity = 64;
    Ok(o)
}

/// What the connection side tells the delivery loop.
struct Link {
    connected: Arc<AtomicBool>,
    /// Set on a failure; the next delivered batch logs `delivery/resumed`.
    failing: AtomicBool,
    /// Messages of the batch being delivered (for the failure log).
    pending: AtomicUsize,
}

impl Gateway {
    fn stream_connected(&self, s: &Stream, link: &Link, now: bool) {
        if link.connected.swap(now, Ordering::Relaxed) != now {
            self.republish_stream(s.id, now);
        }
    }
}

/// Follows the client's events: `connected`, and a log record per failure. `stale` is told
/// once the client failed [`RESOLVE_AFTER`] attempts in a row.
async fn watch(
    gw: Arc<Gateway>,
    s: Stream,
    link: Arc<Link>,
    mut events: tokio::sync::mpsc::Receiver<Event>,
    stale: Arc<tokio::sync::Notify>,
) {
    while let Some(event) = events.recv().await {
        match event {
            Event::Connected { .. } => gw.stream_connected(&s, &link, true),
            Event::ConnectFailed { reason, attempt } => {
                link.failing.store(true, Ordering::Relaxed);
                gw.stream_failed(
                    &s,
                    format!("cannot connect to the broker: {reason}"),
                    link.pending.load(Ordering::Relaxed),
                    None,
                    0,
                );
                gw.stream_connected(&s, &link, false);
                if attempt >= RESOLVE_AFTER {
                    stale.notify_one();
                }
            }
            Event::Disconnected { reason } => {
                link.failing.store(true, Ordering::Relaxed);
                gw.stream_failed(
                    &s,
                    format!("disconnected from the broker: {reason}"),
                    link.pending.load(Ordering::Relaxed),
                    None,
                    0,
                );
                gw.stream_connected(&s, &link, false);
            }
            Event::Message { .. } | Event::SubscribeFailed { .. } => {}
        }
    }
}

/// Delivers stream `s`'s queue until the task is stopped (the stream changed, was deleted or
/// disabled, or shutdown).
pub(crate) async fn run(
    gw: Arc<Gateway>,
    s: Stream,
    wake: Arc<tokio::sync::Notify>,
    connected: Arc<AtomicBool>,
) {
    let settings = match settings(&s) {
        Ok(v) => v,
        Err(e) => {
            // Checked when the stream was made: not reached.
            tracing::error!(stream = s.id, %e, "an MQTT stream with a bad configuration");
            return;
        }
    };
    let link = Arc::new(Link {
        connected,
        failing: AtomicBool::new(false),
        pending: AtomicUsize::new(0),
    });
    let policy = gw.options.outbound;
    let mut backoff = BACKOFF_MIN;
    loop {
        // Resolve and check the host; connect to the checked address only.
        let host = &settings.uri.host;
        let resolved = match outbound::resolve_allowed(host, settings.uri.port, policy).await {
            Ok(addrs) => reachable(&addrs)
                .await
                .ok_or_else(|| format!("`{host}` resolves to no address")),
            Err(e) => Err(e.to_string()),
        };
        let addr = match resolved {
            Ok(a) => a,
            Err(reason) => {
                link.failing.store(true, Ordering::Relaxed);
                gw.stream_failed(&s, reason, 0, None, backoff.as_secs());
                gw.stream_connected(&s, &link, false);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let started = client_options(&s, &settings.uri, addr, gw.node_suffix()).and_then(|o| {
            Client::start(o, Vec::new()).map_err(|e| format!("the MQTT client: {e}"))
        });
        let (handle, events) = match started {
            Ok(v) => v,
            Err(e) => {
                gw.stream_failed(&s, e, 0, None, backoff.as_secs());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        let stale = Arc::new(tokio::sync::Notify::new());
        let watcher = tokio::spawn(watch(
            gw.clone(),
            s.clone(),
            link.clone(),
            events,
            stale.clone(),
        ));
        tokio::select! {
            () = deliver(&gw, &s, &settings, &handle, &link, &wake) => {}
            () = stale.notified() => {
                tracing::info!(stream = s.id, "resolving the MQTT stream's broker again");
            }
        }
        handle.close().await;
        watcher.abort();
    }
}

/// The first of `addrs` that accepts a TCP connection (closed at once), else the first: a
/// name with an IPv6 and an IPv4 address reaches a broker that listens on one of them.
async fn reachable(addrs: &[std::net::SocketAddr]) -> Option<std::net::SocketAddr> {
    if addrs.len() > 1 {
        for a in addrs {
            let probe = tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(a)).await;
            if matches!(probe, Ok(Ok(_))) {
                return Some(*a);
            }
        }
    }
    addrs.first().copied()
}

/// How long one probe of [`reachable`] may take.
const PROBE: Duration = Duration::from_secs(5);

/// The delivery loop over one client (ends only if the store cannot be read for good).
async fn deliver(
    gw: &Arc<Gateway>,
    s: &Stream,
    settings: &Settings,
    handle: &ClientHandle,
    link: &Link,
    wake: &tokio::sync::Notify,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(queued) = gw.next_queued(s.id, BATCH, wake, BACKOFF_MIN).await else {
            return;
        };
        link.pending.store(queued.len(), Ordering::Relaxed);
        let started = Instant::now();
        let (done, failure) = publish_batch(gw, s, settings, handle, queued).await;
        if !done.is_empty() {
            gw.dequeue(s.id, &done, true).await;
        }
        match failure {
            None => {
                backoff = BACKOFF_MIN;
                if link.failing.swap(false, Ordering::Relaxed) {
                    gw.stream_resumed(s, done.len(), started.elapsed().as_secs_f64());
                }
                gw.stream_connected(s, link, true);
            }
            Some((reason, left)) => {
                link.failing.store(true, Ordering::Relaxed);
                gw.stream_failed(s, reason, left, None, backoff.as_secs());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Publishes `queued` in order, at most [`IN_FLIGHT`] waiting at once. Returns the keys of
/// the run of messages delivered from the first (or that can go nowhere: dropped, logged), and
/// why the rest was not, with how many were left.
async fn publish_batch(
    gw: &Gateway,
    s: &Stream,
    settings: &Settings,
    handle: &ClientHandle,
    queued: Vec<(MessageKey, Bytes)>,
) -> (Vec<MessageKey>, Option<(String, usize)>) {
    let total = queued.len();
    let mut done = Vec::with_capacity(total);
    let mut waiting: VecDeque<(MessageKey, Pending)> = VecDeque::with_capacity(IN_FLIGHT);
    let mut dropped = 0usize;
    let mut failure = None;
    let now = gw.now();
    let constant = settings.topic.is_constant();
    for (key, json) in queued {
        if waiting.len() >= IN_FLIGHT
            && let Some((k, p)) = waiting.pop_front()
        {
            match p.done().await {
                Ok(()) => done.push(k),
                Err(e) => {
                    failure = Some(format!("the broker did not take a message: {e}"));
                    break;
                }
            }
        }
        let topic = if constant {
            settings.topic.source().to_string()
        } else {
            let doc: Value = serde_json::from_slice(&json).unwrap_or(Value::Null);
            settings.topic.render(&doc, now)
        };
        if let Err(why) = topic_name_ok(&topic) {
            // The message cannot go anywhere: it leaves the queue with the run it is in
            // (only if everything before it was delivered).
            if waiting.is_empty() {
                dropped += 1;
                done.push(key);
                gw.stream_dropped(s, format!("the topic `{topic}` is not valid: {why}"), 1);
                continue;
            }
            // Wait for what is before it first; it is dropped on the next turn.
            break;
        }
        match handle
            .enqueue(topic, json, settings.qos, settings.retain)
            .await
        {
            Ok(p) => waiting.push_back((key, p)),
            Err(e) => {
                failure = Some(format!("the MQTT client did not take a message: {e}"));
                break;
            }
        }
    }
    // What was queued on the client: its results, in order.
    while let Some((k, p)) = waiting.pop_front() {
        match p.done().await {
            Ok(()) if failure.is_none() => done.push(k),
            Ok(()) => {}
            Err(e) => {
                failure.get_or_insert(format!("the broker did not take a message: {e}"));
            }
        }
    }
    if dropped > 0 {
        tracing::warn!(
            stream = s.id,
            dropped,
            "messages with no valid topic dropped"
        );
    }
    let left = total - done.len();
    (done, failure.map(|f| (f, left)))
}
