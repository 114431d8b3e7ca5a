//! The publish/subscribe engine behind fan-in, fan-out, pairs, latency and the retained flood.
//!
//! Each client is one task that owns its socket and drives it with non-blocking reads and
//! writes (`try_read`/`try_write`), waiting in `select!` only on readiness and timers, so the
//! buffers live in the task's state, never in a future.
//!
//! - A publisher fills its write buffer (up to 64 KiB) from its [`Template`], stamping each
//!   message with its sequence number and the time, and writes as much as the socket takes. QoS 0
//!   is flow controlled by TCP alone; QoS 1/2 also keep at most `window` messages unacknowledged,
//!   with packet ids from a free list. At the end a QoS 0 publisher sends PINGREQ and waits for
//!   PINGRESP: after it the broker has read every PUBLISH.
//! - A subscriber parses each PUBLISH in place, records its stamp (sequence, latency, arrival
//!   time) and batches its PUBACK/PUBREC/PUBCOMP into one write per read.
//! - [`Shared`] carries the start of the measured window and, once every publisher has stopped,
//!   how many each sent: a subscriber stops when it has everything it should, after `idle`
//!   without a new message, or `drain` after the publishers finished.

use std::ops::Range;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Buf;
use hdrhistogram::Histogram;
use tern_codec::{Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until};

use crate::client::{self, Conn, ConnectOptions};
use crate::track::{self, MAX_SEQ, SeqSet, SeqTrack, Timeline};
use crate::wire::{self, Stamp, Template, kind};

/// Refill the write buffer when less than this is pending.
const LOW_WATER: usize = 1024;
/// Fill the write buffer up to about this much.
const HIGH_WATER: usize = 64 * 1024;
/// Read at most this much per `try_read`.
const READ_CHUNK: usize = 64 * 1024;
/// Marks a free slot of the in-flight table.
const FREE: Slot = Slot {
    seq: u64::MAX,
    sent_ns: 0,
};

/// A message in flight: its sequence number and when it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    seq: u64,
    sent_ns: u64,
}

/// What every client of a flow shares.
#[derive(Debug, Clone)]
pub struct FlowConfig {
    pub connect: ConnectOptions,
    pub qos: QoS,
    pub payload: usize,
    /// Unacknowledged QoS 1/2 messages per publisher (also capped by the broker's Receive
    /// Maximum).
    pub window: u16,
    /// After the publishers stop: how long to wait for outstanding acknowledgements and
    /// deliveries.
    pub drain: Duration,
    /// A subscriber stops this long after its last new message, once the publishers are done.
    pub idle: Duration,
    /// The run's tag, in every stamp.
    pub tag: u32,
    /// Subscribers keep their sessions (clean start off, MQTT 5 expiry 5 minutes).
    pub persistent: bool,
    /// Payloads are JSON objects (`{"s":"<stamp>","v":42,"p":"…"}`), for `$filter` runs.
    pub json: bool,
    /// Subscribers subscribe with a persistent session and stay away while the publishers
    /// run, then reconnect and drain what was queued (fan-in to offline sessions).
    pub offline: bool,
    /// Where the subscribers connect, when not to the publishers' broker (another node of a
    /// cluster: `--sub-broker`).
    /// Subscribers connect to these in turn (other nodes of a tern cluster); empty: the
    /// publishers' broker.
    pub sub_broker: Vec<std::net::SocketAddr>,
}

/// One publisher.
#[derive(Debug, Clone)]
pub struct PubSpec {
    pub id: u32,
    pub client_id: String,
    pub topic: String,
    pub retain: bool,
    /// Write `first + seq`, zero-padded to `width` digits, over the end of the topic.
    pub indexed: Option<(u64, usize)>,
    /// Stop after this many messages.
    pub max_messages: u64,
    /// Messages per second; 0 = as fast as flow control allows.
    pub rate: f64,
}

/// One subscriber and the publishers whose messages it expects.
#[derive(Debug, Clone)]
pub struct SubSpec {
    pub client_id: String,
    pub filter: String,
    pub publishers: Range<u32>,
}

/// When publishers start, and until when they publish.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    pub at: Instant,
    pub until: Instant,
}

/// State shared by the tasks of one run.
#[derive(Debug)]
pub struct Shared {
    /// The origin of every stamp's `sent_ns`.
    pub clock: Instant,
    /// Start of the measured window, ns since `clock`; `u64::MAX` until then.
    start_ns: AtomicU64,
    sent: Vec<AtomicU64>,
    pubs_done: AtomicUsize,
}

impl Shared {
    pub fn new(publishers: usize) -> Arc<Shared> {
        Arc::new(Shared {
            clock: Instant::now(),
            start_ns: AtomicU64::new(u64::MAX),
            sent: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
            pubs_done: AtomicUsize::new(0),
        })
    }

    pub fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.clock).as_nanos() as u64
    }

    /// Start of the measured window, ns since `clock`.
    pub fn start_ns(&self) -> u64 {
        self.start_ns.load(Ordering::Acquire)
    }

    pub fn set_start(&self, at: Instant) {
        self.start_ns.store(self.ns(at), Ordering::Release);
    }

    /// Nanoseconds from the window's start to `now_ns` (0 before the start).
    fn since_start(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.start_ns.load(Ordering::Acquire))
    }

    /// Every publisher has stopped and published its count.
    fn all_done(&self) -> bool {
        self.pubs_done.load(Ordering::Acquire) == self.sent.len()
    }

    fn sent(&self, publisher: u32) -> u64 {
        self.sent
            .get(publisher as usize)
            .map_or(0, |s| s.load(Ordering::Acquire))
    }
}

/// What one publisher did.
#[derive(Debug, Default)]
pub struct PubResult {
    pub sent: u64,
    pub acked: u64,
    /// Acknowledgements with a failure reason code (MQTT 5).
    pub rejected: u64,
    /// Still unacknowledged when the drain ran out.
    pub unacked: u64,
    /// The sequence numbers acknowledged with success.
    pub acked_set: SeqSet,
    /// From the write of a PUBLISH to its PUBACK/PUBREC (QoS 1/2): what the broker makes the
    /// publisher wait, a durable store's commit included.
    pub ack_latency: Option<Histogram<u64>>,
    pub sent_tl: Timeline,
    pub acked_tl: Timeline,
    /// Since the window's start: when it stopped sending, and when the last acknowledgement
    /// (or the closing PINGRESP) arrived.
    pub stopped_ns: u64,
    pub done_ns: u64,
    pub error: Option<String>,
}

/// What one subscriber received.
#[derive(Debug)]
pub struct SubResult {
    pub publishers: Range<u32>,
    pub tracks: Vec<SeqTrack>,
    /// Distinct messages of the run.
    pub delivered: u64,
    /// PUBLISH packets that are not this run's (another tag, a publisher not expected here).
    pub foreign: u64,
    pub delivered_tl: Timeline,
    pub latency: Histogram<u64>,
    pub subscribed_at: Option<Instant>,
    pub first_at: Option<Instant>,
    pub last_new_at: Option<Instant>,
    /// Why it stopped: `complete`, `idle`, `drain`, `error`.
    pub end: &'static str,
    pub error: Option<String>,
}

impl SubResult {
    fn new(publishers: Range<u32>) -> SubResult {
        let n = publishers.len();
        SubResult {
            publishers,
            tracks: vec![SeqTrack::default(); n],
            delivered: 0,
            foreign: 0,
            delivered_tl: Timeline::default(),
            latency: track::histogram(),
            subscribed_at: None,
            first_at: None,
            last_new_at: None,
            end: "error",
            error: None,
        }
    }
}

type Ready = mpsc::Sender<Result<(), String>>;

/// Connects and subscribes every subscriber; returns once all have their SUBACK.
pub async fn spawn_subscribers(
    cfg: &Arc<FlowConfig>,
    shared: &Arc<Shared>,
    specs: Vec<SubSpec>,
) -> Result<Vec<JoinHandle<SubResult>>> {
    let (ready_tx, ready_rx) = mpsc::channel(specs.len().max(1));
    let handles: Vec<_> = specs
        .into_iter()
        .map(|spec| {
            let (cfg, shared, ready) = (Arc::clone(cfg), Arc::clone(shared), ready_tx.clone());
            tokio::spawn(subscriber(cfg, shared, spec, ready))
        })
        .collect();
    wait_ready(ready_rx, handles, cfg.connect.timeout * 2, "subscriber").await
}

/// Connects every publisher; returns once all are connected, with the sender that starts them.
pub async fn spawn_publishers(
    cfg: &Arc<FlowConfig>,
    shared: &Arc<Shared>,
    specs: Vec<PubSpec>,
) -> Result<(Vec<JoinHandle<PubResult>>, watch::Sender<Option<Start>>)> {
    let (ready_tx, ready_rx) = mpsc::channel(specs.len().max(1));
    let (go_tx, go_rx) = watch::channel(None);
    let handles: Vec<_> = specs
        .into_iter()
        .map(|spec| {
            let (cfg, shared, ready) = (Arc::clone(cfg), Arc::clone(shared), ready_tx.clone());
            tokio::spawn(publisher(cfg, shared, spec, ready, go_rx.clone()))
        })
        .collect();
    let handles = wait_ready(ready_rx, handles, cfg.connect.timeout * 2, "publisher").await?;
    Ok((handles, go_tx))
}

async fn wait_ready<T>(
    mut ready: mpsc::Receiver<Result<(), String>>,
    handles: Vec<JoinHandle<T>>,
    timeout: Duration,
    what: &str,
) -> Result<Vec<JoinHandle<T>>> {
    let deadline = tokio::time::Instant::now() + timeout;
    for _ in 0..handles.len() {
        let outcome = tokio::time::timeout_at(deadline, ready.recv()).await;
        let failure = match outcome {
            Ok(Some(Ok(()))) => continue,
            Ok(Some(Err(e))) => format!("a {what} failed to start: {e}"),
            Ok(None) => format!("a {what} ended before it was ready"),
            Err(_) => format!("{what}s not ready within {timeout:?}"),
        };
        for h in &handles {
            h.abort();
        }
        bail!(failure);
    }
    Ok(handles)
}

/// Joins tasks, turning a panic into an error.
pub async fn join<T>(handles: Vec<JoinHandle<T>>) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.context("client task failed")?);
    }
    Ok(out)
}

/// Runs a whole flow: subscribers first, then publishers for `duration` (or their count).
pub async fn run(
    cfg: &Arc<FlowConfig>,
    shared: &Arc<Shared>,
    pubs: Vec<PubSpec>,
    subs: Vec<SubSpec>,
    duration: Duration,
) -> Result<(Vec<PubResult>, Vec<SubResult>)> {
    let sub_handles = spawn_subscribers(cfg, shared, subs).await?;
    let (pub_handles, go) = match spawn_publishers(cfg, shared, pubs).await {
        Ok(p) => p,
        Err(e) => {
            for h in &sub_handles {
                h.abort();
            }
            return Err(e);
        }
    };
    let at = Instant::now();
    shared.set_start(at);
    go.send_replace(Some(Start {
        at,
        until: at + duration,
    }));
    let pubs = join(pub_handles).await?;
    let subs = join(sub_handles).await?;
    Ok((pubs, subs))
}

// ---------------------------------------------------------------------------------------------
// Publisher

async fn publisher(
    cfg: Arc<FlowConfig>,
    shared: Arc<Shared>,
    spec: PubSpec,
    ready: Ready,
    mut go: watch::Receiver<Option<Start>>,
) -> PubResult {
    let mut result = PubResult::default();
    let prepared = match Template::new(
        &spec.topic,
        cfg.qos,
        spec.retain,
        cfg.payload,
        cfg.connect.version,
        cfg.json,
    ) {
        Ok(t) => client::connect(&cfg.connect, &spec.client_id, None)
            .await
            .map(|c| (t, c)),
        Err(e) => Err(e),
    };
    let started = match prepared {
        Ok((template, conn)) => {
            let _ = ready.send(Ok(())).await;
            match go.wait_for(Option::is_some).await.map(|s| *s) {
                Ok(Some(start)) => Some((template, conn, start)),
                _ => None,
            }
        }
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}"))).await;
            result.error = Some(format!("{e:#}"));
            None
        }
    };
    if let Some((template, mut conn, start)) = started {
        let mut p = Publisher::new(&cfg, &shared, &spec, template, start, &conn);
        if let Err(e) = p.run(&mut conn).await {
            p.result.error = Some(format!("{e:#}"));
        }
        p.result.sent = p.seq;
        result = p.result;
        // Best effort: a clean DISCONNECT, so the broker does not log a lost connection.
        let _ = conn.stream.try_write(&wire::DISCONNECT);
    }
    shared.sent[spec.id as usize].store(result.sent, Ordering::Release);
    shared.pubs_done.fetch_add(1, Ordering::AcqRel);
    result
}

struct Publisher<'a> {
    cfg: &'a FlowConfig,
    shared: &'a Shared,
    spec: &'a PubSpec,
    template: Template,
    start: Start,
    start_ns: u64,
    qos: u8,
    /// Free packet ids, and the sequence number each id in flight carries.
    free_ids: Vec<u16>,
    in_flight: Vec<Slot>,
    wbuf: Vec<u8>,
    wpos: usize,
    seq: u64,
    ping_sent: bool,
    pong: bool,
    result: PubResult,
}

impl<'a> Publisher<'a> {
    fn new(
        cfg: &'a FlowConfig,
        shared: &'a Shared,
        spec: &'a PubSpec,
        template: Template,
        start: Start,
        conn: &Conn,
    ) -> Self {
        let window = cfg.window.min(conn.receive_maximum).max(1);
        let qos = cfg.qos as u8;
        let free_ids = if qos > 0 {
            (1..=window).rev().collect()
        } else {
            Vec::new()
        };
        Publisher {
            cfg,
            shared,
            spec,
            template,
            start,
            start_ns: shared.ns(start.at),
            qos,
            free_ids,
            in_flight: vec![FREE; if qos > 0 { usize::from(window) + 1 } else { 1 }],
            wbuf: Vec::with_capacity(HIGH_WATER * 2),
            wpos: 0,
            seq: 0,
            ping_sent: false,
            pong: false,
            result: PubResult {
                ack_latency: (qos > 0).then(track::histogram),
                ..PubResult::default()
            },
        }
    }

    fn pending(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    fn outstanding(&self) -> usize {
        self.in_flight.len() - 1 - self.free_ids.len()
    }

    async fn run(&mut self, conn: &mut Conn) -> Result<()> {
        let mut stopping = false;
        let mut stop_timer = pin!(sleep_until(self.start.until.into()));
        let mut pace = pin!(sleep_until(self.start.at.into()));
        let mut drain_timer = pin!(sleep(Duration::from_secs(86_400)));
        loop {
            let now = Instant::now();
            if !stopping && (now >= self.start.until || self.seq >= self.spec.max_messages) {
                stopping = true;
                self.result.stopped_ns = self.since_start(now);
                drain_timer.as_mut().reset((now + self.cfg.drain).into());
                if self.qos == 0 {
                    self.wbuf.extend_from_slice(&wire::PINGREQ);
                    self.ping_sent = true;
                }
            }
            let mut rate_wait = None;
            if !stopping {
                rate_wait = self.fill(now);
            }
            self.flush(conn)?;
            self.read(conn)?;
            if stopping && self.pending() == 0 && self.outstanding() == 0 && self.pong_ok() {
                self.result.done_ns = self.since_start(Instant::now());
                return Ok(());
            }
            let can_fill =
                !stopping && rate_wait.is_none() && (self.qos == 0 || !self.free_ids.is_empty());
            if can_fill && self.pending() == 0 {
                // The socket took everything and there is more to send: go on, after the
                // other tasks of this worker (subscribers above all) had their turn. A batch is
                // up to 64 KiB, so this costs little and keeps the receiving side measured.
                tokio::task::yield_now().await;
                continue;
            }
            if let Some(due) = rate_wait {
                pace.as_mut().reset(due.into());
            }
            tokio::select! {
                r = conn.stream.readable() => r?,
                r = conn.stream.writable(), if self.pending() > 0 => r?,
                () = &mut stop_timer, if !stopping => {}
                () = &mut pace, if rate_wait.is_some() => {}
                () = &mut drain_timer, if stopping => {
                    self.result.unacked = self.outstanding() as u64;
                    self.result.done_ns = self.since_start(Instant::now());
                    if self.ping_sent && !self.pong {
                        bail!("no PINGRESP within the drain time");
                    }
                    return Ok(());
                }
            }
        }
    }

    fn pong_ok(&self) -> bool {
        !self.ping_sent || self.pong
    }

    fn since_start(&self, t: Instant) -> u64 {
        self.shared.ns(t).saturating_sub(self.start_ns)
    }

    /// Appends as many stamped PUBLISH packets as the buffer, the window, the count and the
    /// rate allow. Returns when the next message is due if the rate holds it back.
    fn fill(&mut self, now: Instant) -> Option<Instant> {
        let pending = self.pending();
        if pending >= LOW_WATER {
            return None;
        }
        let mut n = ((HIGH_WATER - pending) / self.template.len()).max(1) as u64;
        if self.qos > 0 {
            n = n.min(self.free_ids.len() as u64);
        }
        n = n.min(self.spec.max_messages - self.seq);
        if self.spec.rate > 0.0 {
            // Message k is due at start + k / rate.
            let elapsed = now.saturating_duration_since(self.start.at).as_secs_f64();
            let due = (elapsed * self.spec.rate) as u64 + 1;
            let allowed = due.saturating_sub(self.seq);
            if allowed == 0 {
                let next = Duration::from_secs_f64(self.seq as f64 / self.spec.rate);
                return Some(self.start.at + next);
            }
            n = n.min(allowed);
        }
        if n == 0 {
            return None;
        }
        if self.wpos > 0 {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        let sent_ns = self.shared.ns(now);
        for _ in 0..n {
            let packet_id = if self.qos > 0 {
                let id = self.free_ids.pop().unwrap_or(0);
                self.in_flight[usize::from(id)] = Slot {
                    seq: self.seq,
                    sent_ns,
                };
                id
            } else {
                0
            };
            let stamp = Stamp {
                tag: self.cfg.tag,
                publisher: self.spec.id,
                seq: self.seq,
                sent_ns,
            };
            match self.spec.indexed {
                Some((first, width)) => self.template.append_indexed(
                    &mut self.wbuf,
                    packet_id,
                    stamp,
                    first + self.seq,
                    width,
                ),
                None => self.template.append(&mut self.wbuf, packet_id, stamp),
            }
            self.seq += 1;
        }
        let since = self.since_start(now);
        self.result.sent_tl.add(since, n);
        None
    }

    fn flush(&mut self, conn: &Conn) -> Result<()> {
        flush(&conn.stream, &mut self.wbuf, &mut self.wpos)
    }

    fn read(&mut self, conn: &mut Conn) -> Result<()> {
        // Acknowledgements are small: a few reads per turn are plenty.
        for _ in 0..4 {
            if !read_some(conn)? {
                return Ok(());
            }
            self.process(conn)?;
        }
        Ok(())
    }

    fn process(&mut self, conn: &mut Conn) -> Result<()> {
        let now_ns = self.shared.ns(Instant::now());
        let now = now_ns.saturating_sub(self.start_ns);
        let mut off = 0;
        while let Some(f) = wire::frame(&conn.rbuf[off..])? {
            if conn.rbuf.len() - off < f.len {
                break;
            }
            let packet = &conn.rbuf[off..off + f.len];
            match f.kind {
                kind::PUBACK if self.qos == 1 => {
                    let (id, reason) = wire::ack_view(packet, f)?;
                    let slot = self.release(id, "PUBACK")?;
                    self.acked(slot, reason, now_ns, now);
                }
                kind::PUBREC if self.qos == 2 => {
                    let (id, reason) = wire::ack_view(packet, f)?;
                    let slot = *self
                        .in_flight
                        .get(usize::from(id))
                        .filter(|s| **s != FREE)
                        .with_context(|| format!("PUBREC for packet id {id} not in flight"))?;
                    self.acked(slot, reason, now_ns, now);
                    if reason < 0x80 {
                        self.wbuf.extend_from_slice(&wire::ack(kind::PUBREL, id));
                    } else {
                        self.release(id, "PUBREC")?;
                    }
                }
                kind::PUBCOMP if self.qos == 2 => {
                    let (id, _) = wire::ack_view(packet, f)?;
                    self.release(id, "PUBCOMP")?;
                }
                kind::PINGRESP => self.pong = true,
                _ => {
                    conn.rbuf.advance(off);
                    return Err(unexpected(conn));
                }
            }
            off += f.len;
        }
        conn.rbuf.advance(off);
        Ok(())
    }

    /// Frees the packet id `id` and returns what it carried.
    fn release(&mut self, id: u16, what: &str) -> Result<Slot> {
        let slot = self
            .in_flight
            .get_mut(usize::from(id))
            .filter(|s| **s != FREE)
            .with_context(|| format!("{what} for packet id {id} not in flight"))?;
        let seq = std::mem::replace(slot, FREE);
        self.free_ids.push(id);
        Ok(seq)
    }

    fn acked(&mut self, slot: Slot, reason: u8, now_ns: u64, since_start: u64) {
        if reason >= 0x80 {
            self.result.rejected += 1;
            return;
        }
        self.result.acked += 1;
        self.result.acked_set.insert(slot.seq);
        self.result.acked_tl.add(since_start, 1);
        if let Some(h) = &mut self.result.ack_latency {
            h.saturating_record(now_ns.saturating_sub(slot.sent_ns).max(1));
        }
    }
}

/// The error for a packet the hot path does not expect, decoded by the codec for its details.
fn unexpected(conn: &mut Conn) -> anyhow::Error {
    match tern_codec::decode(&mut conn.rbuf, u32::MAX, conn.version) {
        Ok(Some(Packet::Disconnect(d))) => {
            let why = d.properties.reason_string.as_deref().unwrap_or("");
            anyhow::anyhow!("DISCONNECT from the broker: {:?} {why}", d.reason)
        }
        Ok(Some(p)) => anyhow::anyhow!("unexpected {} from the broker", p.packet_type()),
        Ok(None) => anyhow::anyhow!("incomplete packet"),
        Err(e) => anyhow::anyhow!("undecodable packet from the broker: {e}"),
    }
}

/// Writes as much of `wbuf[wpos..]` as the socket takes now.
fn flush(stream: &tokio::net::TcpStream, wbuf: &mut Vec<u8>, wpos: &mut usize) -> Result<()> {
    while *wpos < wbuf.len() {
        match stream.try_write(&wbuf[*wpos..]) {
            Ok(0) => bail!("connection closed while writing"),
            Ok(n) => *wpos += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e).context("write to the broker"),
        }
    }
    if *wpos == wbuf.len() {
        wbuf.clear();
        *wpos = 0;
    }
    Ok(())
}

/// One non-blocking read into the connection's buffer; false when there was nothing to read.
fn read_some(conn: &mut Conn) -> Result<bool> {
    conn.rbuf.reserve(READ_CHUNK);
    match conn.stream.try_read_buf(&mut conn.rbuf) {
        Ok(0) => bail!("connection closed by the broker"),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e).context("read from the broker"),
    }
}

// ---------------------------------------------------------------------------------------------
// Subscriber

async fn subscriber(
    cfg: Arc<FlowConfig>,
    shared: Arc<Shared>,
    spec: SubSpec,
    ready: Ready,
) -> SubResult {
    let mut result = SubResult::new(spec.publishers.clone());
    let mut opts = cfg.connect.clone();
    if !cfg.sub_broker.is_empty() {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        opts.broker = cfg.sub_broker[i % cfg.sub_broker.len()];
    }
    if cfg.persistent || cfg.offline {
        opts.clean_start = false;
        opts.session_expiry = 300;
    }
    let mut ready = Some(ready);
    if cfg.offline {
        // Subscribe, go offline while the publishers run (the broker queues for the session),
        // then come back and drain.
        match subscribe_then_leave(&cfg, &opts, &spec).await {
            Ok(()) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(())).await;
                }
            }
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(format!("{e:#}"))).await;
                }
                result.error = Some(format!("{e:#}"));
                return result;
            }
        }
        while !shared.all_done() {
            sleep(Duration::from_millis(20)).await;
        }
    }
    let mut conn = match client::connect(&opts, &spec.client_id, None).await {
        Ok(c) => c,
        Err(e) => {
            if let Some(ready) = ready {
                let _ = ready.send(Err(format!("{e:#}"))).await;
            }
            result.error = Some(format!("{e:#}"));
            return result;
        }
    };
    let mut s = Subscriber {
        cfg: &cfg,
        shared: &shared,
        v5: conn.version.is_v5(),
        wbuf: Vec::with_capacity(16 * 1024),
        wpos: 0,
        ready,
        result,
    };
    if let Err(e) = s.run(&mut conn, &spec).await {
        if let Some(ready) = s.ready.take() {
            let _ = ready.send(Err(format!("{e:#}"))).await;
        }
        s.result.end = "error";
        s.result.error = Some(format!("{e:#}"));
    }
    let _ = conn.stream.try_write(&wire::DISCONNECT);
    s.result
}

/// Connects with a persistent session, subscribes, waits for SUBACK and disconnects.
async fn subscribe_then_leave(
    cfg: &FlowConfig,
    opts: &ConnectOptions,
    spec: &SubSpec,
) -> Result<()> {
    let mut conn = client::connect(opts, &spec.client_id, None).await?;
    let subscribe =
        client::subscribe_packet(std::slice::from_ref(&spec.filter), cfg.qos, conn.version)?;
    let mut wbuf = subscribe;
    let mut wpos = 0;
    flush(&conn.stream, &mut wbuf, &mut wpos)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::select! {
            r = conn.stream.readable() => r?,
            _ = tokio::time::sleep_until(deadline) => bail!("no SUBACK"),
        }
        read_some(&mut conn)?;
        if let Some(f) = wire::frame(&conn.rbuf)?
            && conn.rbuf.len() >= f.len
        {
            match tern_codec::decode(&mut conn.rbuf, u32::MAX, conn.version)? {
                Some(Packet::SubAck(ack)) if ack.reasons.iter().all(|r| r.0 < 0x80) => break,
                other => bail!("expected SUBACK, got {other:?}"),
            }
        }
    }
    let _ = conn.stream.try_write(&wire::DISCONNECT);
    Ok(())
}

struct Subscriber<'a> {
    cfg: &'a FlowConfig,
    shared: &'a Shared,
    v5: bool,
    wbuf: Vec<u8>,
    wpos: usize,
    ready: Option<Ready>,
    result: SubResult,
}

impl Subscriber<'_> {
    async fn run(&mut self, conn: &mut Conn, spec: &SubSpec) -> Result<()> {
        let subscribe = client::subscribe_packet(
            std::slice::from_ref(&spec.filter),
            self.cfg.qos,
            conn.version,
        )?;
        self.wbuf.extend_from_slice(&subscribe);
        self.flush(conn)?;
        self.result.subscribed_at = Some(Instant::now());
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut done_since: Option<Instant> = None;
        let mut end = None;
        loop {
            let got = self.read(conn)?;
            self.flush(conn)?;
            if self.shared.all_done() {
                let now = Instant::now();
                let since = *done_since.get_or_insert(now);
                let expected: u64 = spec.publishers.clone().map(|p| self.shared.sent(p)).sum();
                let last = self.result.last_new_at.map_or(since, |t| t.max(since));
                if self.result.delivered >= expected {
                    end = Some("complete");
                } else if now.duration_since(last) >= self.cfg.idle {
                    end = end.or(Some("idle"));
                } else if now.duration_since(since) >= self.cfg.drain {
                    end = end.or(Some("drain"));
                }
                if let Some(end) = end.filter(|_| self.pending() == 0) {
                    self.result.end = end;
                    return Ok(());
                }
            }
            if got {
                tokio::task::consume_budget().await;
                continue;
            }
            tokio::select! {
                r = conn.stream.readable() => r?,
                r = conn.stream.writable(), if self.pending() > 0 => r?,
                _ = tick.tick() => {}
            }
        }
    }

    fn pending(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    fn flush(&mut self, conn: &Conn) -> Result<()> {
        flush(&conn.stream, &mut self.wbuf, &mut self.wpos)
    }

    /// Reads what is there (a bounded amount) and handles every whole packet; true if anything
    /// was read.
    fn read(&mut self, conn: &mut Conn) -> Result<bool> {
        let mut got = false;
        for _ in 0..4 {
            if !read_some(conn)? {
                break;
            }
            got = true;
        }
        if got {
            self.process(conn)?;
        }
        Ok(got)
    }

    fn process(&mut self, conn: &mut Conn) -> Result<()> {
        let now = Instant::now();
        let now_ns = self.shared.ns(now);
        let since_start = self.shared.since_start(now_ns);
        let first = self.result.publishers.start;
        let mut new = 0u64;
        let mut off = 0;
        while let Some(f) = wire::frame(&conn.rbuf[off..])? {
            if conn.rbuf.len() - off < f.len {
                break;
            }
            let packet = &conn.rbuf[off..off + f.len];
            match f.kind {
                kind::PUBLISH => {
                    let v = wire::publish_view(packet, f, self.v5)?;
                    let r = &mut self.result;
                    match Stamp::read(v.payload) {
                        Some(s)
                            if s.tag == self.cfg.tag
                                && r.publishers.contains(&s.publisher)
                                && s.seq < MAX_SEQ =>
                        {
                            if r.tracks[(s.publisher - first) as usize].record(s.seq) {
                                new += 1;
                                r.latency
                                    .saturating_record(now_ns.saturating_sub(s.sent_ns).max(1));
                            }
                        }
                        _ => r.foreign += 1,
                    }
                    match v.qos {
                        1 => self
                            .wbuf
                            .extend_from_slice(&wire::ack(kind::PUBACK, v.packet_id)),
                        2 => self
                            .wbuf
                            .extend_from_slice(&wire::ack(kind::PUBREC, v.packet_id)),
                        _ => {}
                    }
                }
                kind::PUBREL => {
                    let (id, _) = wire::ack_view(packet, f)?;
                    self.wbuf.extend_from_slice(&wire::ack(kind::PUBCOMP, id));
                }
                _ => {
                    conn.rbuf.advance(off);
                    off = 0;
                    self.control(conn)?;
                    continue;
                }
            }
            off += f.len;
        }
        conn.rbuf.advance(off);
        if new > 0 {
            let r = &mut self.result;
            r.delivered += new;
            r.delivered_tl.add(since_start, new);
            r.first_at.get_or_insert(now);
            r.last_new_at = Some(now);
        }
        Ok(())
    }

    /// A packet other than PUBLISH/PUBREL at the front of the buffer, through the codec.
    fn control(&mut self, conn: &mut Conn) -> Result<()> {
        match tern_codec::decode(&mut conn.rbuf, u32::MAX, conn.version)? {
            Some(Packet::SubAck(ack)) => {
                if let Some(bad) = ack.reasons.iter().find(|r| r.0 >= 0x80) {
                    bail!("SUBACK refused the subscription: {bad:?}");
                }
                if let Some(ready) = self.ready.take() {
                    // The orchestrator waits on this before it starts the publishers; it may
                    // have gone (retained flood), which is fine.
                    let _ = ready.try_send(Ok(()));
                }
                Ok(())
            }
            Some(Packet::Disconnect(d)) => {
                let why = d.properties.reason_string.as_deref().unwrap_or("");
                bail!("DISCONNECT from the broker: {:?} {why}", d.reason)
            }
            Some(Packet::PingResp) => Ok(()),
            Some(p) => bail!("unexpected {} from the broker", p.packet_type()),
            None => bail!("incomplete packet"),
        }
    }
}
