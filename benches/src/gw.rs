//! The devices layer (tern only): HTTP channel ingest and a device's history read, over tern's
//! REST API and its MQTT listener.
//!
//! - `gw-ingest`: creates a device and an HTTP channel over REST, then N clients POST batches
//!   of `--batch` messages (100) to the channel's `uri` for `--duration`, one request in
//!   flight each; the 200 comes only once the messages are durable, so `acked` counts
//!   messages stored. An MQTT subscriber on `flespi/message/gw/devices/+` (with the token)
//!   counts the device's messages as tern publishes them.
//! - `gw-history`: fills one device with `--messages` (100,000) over
//!   `POST /gw/devices/{id}/messages`, then times `--reads` (5) reads of
//!   `GET /gw/devices/{id}/messages` answering all of them (request sent to last byte read).
//!
//! Both delete what they created at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use serde::Serialize;
use serde_json::{Value, json};
use tern_codec::{Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{self, ConnectOptions};
use crate::http::Http;
use crate::report::Head;
use crate::track::{self, Latency};

pub struct GwParams {
    pub head: Head,
    pub http: SocketAddr,
    pub token: Option<String>,
    pub connect: ConnectOptions,
    pub clients: u32,
    pub batch: usize,
    pub duration: Duration,
    pub idle: Duration,
    pub tag: u32,
}

#[derive(Debug, Serialize)]
pub struct IngestReport {
    #[serde(flatten)]
    pub head: Head,
    pub http: String,
    pub clients: u32,
    pub batch: usize,
    /// From the first request until the last client's last answer.
    pub window_s: f64,
    /// Requests answered 200.
    pub batches: u64,
    /// Messages in the requests answered 200: stored (durable) and published.
    pub acked: u64,
    pub acked_per_s: f64,
    /// Requests answered otherwise, and the first such answer.
    pub failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_failure: Option<String>,
    /// Deliveries of the device's messages to the MQTT subscriber.
    pub published: u64,
    /// Deliveries over the time from the first request to the last delivery.
    pub published_per_s: f64,
    /// Acknowledged messages the subscriber did not get (QoS 0 delivery).
    pub not_published: u64,
    /// One request: sent to answer read.
    pub batch_latency_us: Option<Latency>,
}

/// The `uri`'s path of an HTTP channel (the bench talks to `--http` itself).
fn path_of(uri: &str) -> Result<String> {
    let at = uri
        .find("/gw/channels/")
        .with_context(|| format!("not a channel uri: {uri}"))?;
    Ok(uri[at..].to_string())
}

/// The `id` of the first item of a creation answer.
fn created_id(answer: &crate::http::Answer, what: &str) -> Result<(u64, Value)> {
    let v = answer.json()?;
    if answer.status != 200 {
        bail!("creating the {what}: status {}: {v}", answer.status);
    }
    let item = v["result"][0].clone();
    let id = item["id"]
        .as_u64()
        .with_context(|| format!("no id in {v}"))?;
    Ok((id, item))
}

async fn rest(p: &GwParams) -> Result<Http> {
    Http::connect(p.http, p.token.as_deref()).await
}

pub async fn ingest(p: GwParams) -> Result<IngestReport> {
    let mut api = rest(&p).await?;
    let ident = format!("tb-{:08x}", p.tag);
    let device = json!({"name": ident, "device_type_id": 1, "configuration": {"ident": ident}});
    let (device_id, _) = created_id(
        &api.request("POST", "/gw/devices", device.to_string().as_bytes())
            .await?,
        "device",
    )?;
    let channel = json!({"name": ident, "protocol_id": 1});
    let (channel_id, item) = created_id(
        &api.request("POST", "/gw/channels", channel.to_string().as_bytes())
            .await?,
        "channel",
    )?;
    let path = path_of(item["uri"].as_str().context("no uri")?)?;

    // The subscriber first, so that it sees every message.
    let mut connect = p.connect.clone();
    connect.username = p.token.clone();
    let mut sub = client::connect(&connect, &format!("tb-{:08x}-gw-sub", p.tag), None).await?;
    let filter = "flespi/message/gw/devices/+".to_string();
    sub.stream
        .write_all(&client::subscribe_packet(
            &[filter],
            QoS::AtMostOnce,
            connect.version,
        )?)
        .await?;
    let published = Arc::new(AtomicU64::new(0));
    let last_delivery = Arc::new(LastDelivery::default());
    let stop_sub = Arc::new(AtomicBool::new(false));
    let topic = format!("flespi/message/gw/devices/{device_id}");
    let sub_task = tokio::spawn(subscriber(
        sub,
        topic,
        published.clone(),
        last_delivery.clone(),
        stop_sub.clone(),
    ));

    let start = Instant::now();
    let deadline = start + p.duration;
    let mut tasks = Vec::new();
    for i in 0..p.clients.max(1) {
        let mut http = Http::connect(p.http, None).await?;
        let path = path.clone();
        let ident = ident.clone();
        let batch = p.batch.max(1);
        tasks.push(tokio::spawn(async move {
            let mut r = ClientResult::default();
            let mut hist = track::histogram();
            let mut seq = 0u64;
            let mut body = String::with_capacity(batch * 64);
            while Instant::now() < deadline {
                body.clear();
                body.push('[');
                for k in 0..batch {
                    if k > 0 {
                        body.push(',');
                    }
                    body.push_str(&format!(
                        r#"{{"ident":"{ident}","client":{i},"seq":{seq},"position.speed":{},"battery.voltage":12.6}}"#,
                        seq % 120
                    ));
                    seq += 1;
                }
                body.push(']');
                let sent = Instant::now();
                match http.request("POST", &path, body.as_bytes()).await {
                    Ok(a) if a.status == 200 => {
                        r.batches += 1;
                        r.acked += batch as u64;
                        let _ = hist.record(sent.elapsed().as_nanos().max(1) as u64);
                    }
                    Ok(a) => {
                        r.failed += 1;
                        r.first_failure.get_or_insert_with(|| {
                            format!("{}: {}", a.status, String::from_utf8_lossy(&a.body))
                        });
                    }
                    Err(e) => {
                        r.failed += 1;
                        r.first_failure.get_or_insert_with(|| format!("{e:#}"));
                        break;
                    }
                }
            }
            r.end = start.elapsed();
            (r, hist)
        }));
    }
    let mut total = ClientResult::default();
    let mut hist = track::histogram();
    for t in tasks {
        let (r, h) = t.await?;
        total.batches += r.batches;
        total.acked += r.acked;
        total.failed += r.failed;
        total.end = total.end.max(r.end);
        if total.first_failure.is_none() {
            total.first_failure = r.first_failure;
        }
        hist.add(&h).ok();
    }
    // Deliveries still on their way: until all came or none for `idle`.
    let mut seen = published.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while seen < total.acked && quiet_since.elapsed() < p.idle {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = published.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        }
    }
    stop_sub.store(true, Ordering::Relaxed);
    let _ = sub_task.await;
    let delivered = published.load(Ordering::Relaxed);
    let last = last_delivery.since(start).unwrap_or(total.end);

    let _ = api
        .request("DELETE", &format!("/gw/channels/{channel_id}"), b"")
        .await;
    let _ = api
        .request("DELETE", &format!("/gw/devices/{device_id}"), b"")
        .await;

    let window = total.end.as_secs_f64().max(1e-9);
    Ok(IngestReport {
        head: p.head,
        http: p.http.to_string(),
        clients: p.clients.max(1),
        batch: p.batch.max(1),
        window_s: round3(window),
        batches: total.batches,
        acked: total.acked,
        acked_per_s: (total.acked as f64 / window).round(),
        failed: total.failed,
        first_failure: total.first_failure,
        published: delivered,
        published_per_s: (delivered as f64 / last.as_secs_f64().max(1e-9)).round(),
        not_published: total.acked.saturating_sub(delivered),
        batch_latency_us: Latency::of(&hist),
    })
}

#[derive(Debug, Default)]
struct ClientResult {
    batches: u64,
    acked: u64,
    failed: u64,
    first_failure: Option<String>,
    end: Duration,
}

/// Counts PUBLISH packets on `topic` until `stop`.
async fn subscriber(
    mut conn: client::Conn,
    topic: String,
    published: Arc<AtomicU64>,
    last: Arc<LastDelivery>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let mut rbuf: BytesMut = std::mem::take(&mut conn.rbuf);
    while !stop.load(Ordering::Relaxed) {
        while let Some(packet) = tern_codec::decode(&mut rbuf, u32::MAX, conn.version)? {
            if let Packet::Publish(p) = packet
                && *p.topic == *topic
            {
                published.fetch_add(1, Ordering::Relaxed);
                last.mark();
            }
        }
        match tokio::time::timeout(Duration::from_millis(50), conn.stream.read_buf(&mut rbuf)).await
        {
            Ok(Ok(0)) => bail!("the broker closed the subscriber"),
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The time of the last delivery, shared without a lock (nanoseconds since its creation).
#[derive(Debug)]
struct LastDelivery {
    origin: Instant,
    nanos: AtomicU64,
}

impl Default for LastDelivery {
    fn default() -> Self {
        LastDelivery {
            origin: Instant::now(),
            nanos: AtomicU64::new(0),
        }
    }
}

impl LastDelivery {
    fn mark(&self) {
        let n = self.origin.elapsed().as_nanos() as u64;
        self.nanos.fetch_max(n.max(1), Ordering::Relaxed);
    }

    /// The last mark, as time since `start`; `None` without one.
    fn since(&self, start: Instant) -> Option<Duration> {
        let n = self.nanos.load(Ordering::Relaxed);
        (n > 0).then(|| (self.origin + Duration::from_nanos(n)).saturating_duration_since(start))
    }
}

#[derive(Debug, Serialize)]
pub struct HistoryReport {
    #[serde(flatten)]
    pub head: Head,
    pub http: String,
    pub messages: u64,
    /// Filling the device (POSTs of 10,000, answered before the store writes them).
    pub fill_s: f64,
    /// Until a read answered every message (the store had written them all).
    pub stored_s: f64,
    /// Each timed read, ms: the request sent to the last byte of the answer read.
    pub read_ms: Vec<f64>,
    pub read_median_ms: f64,
    pub answer_bytes: usize,
    /// Messages per second of the median read.
    pub read_messages_per_s: f64,
}

pub async fn history(p: GwParams, messages: u64, reads: u32) -> Result<HistoryReport> {
    let mut api = rest(&p).await?;
    let ident = format!("tb-{:08x}-history", p.tag);
    let device = json!({"name": ident, "device_type_id": 1, "configuration": {"ident": ident}});
    let (id, _) = created_id(
        &api.request("POST", "/gw/devices", device.to_string().as_bytes())
            .await?,
        "device",
    )?;
    let path = format!("/gw/devices/{id}/messages");
    let outcome = fill_and_read(&mut api, &p, &path, messages, reads).await;
    let _ = api
        .request("DELETE", &format!("/gw/devices/{id}"), b"")
        .await;
    let (fill, stored, times, bytes) = outcome?;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    Ok(HistoryReport {
        head: p.head,
        http: p.http.to_string(),
        messages,
        fill_s: round3(fill),
        stored_s: round3(stored),
        read_ms: times.iter().map(|t| round3(*t)).collect(),
        read_median_ms: round3(median),
        answer_bytes: bytes,
        read_messages_per_s: if median > 0.0 {
            (messages as f64 / (median / 1000.0)).round()
        } else {
            0.0
        },
    })
}

/// Fills the device, waits until a read answers all of it, then times the reads: (fill s,
/// stored s, read ms each, answer bytes).
async fn fill_and_read(
    api: &mut Http,
    p: &GwParams,
    path: &str,
    messages: u64,
    reads: u32,
) -> Result<(f64, f64, Vec<f64>, usize)> {
    let start = Instant::now();
    let t0 = 1_700_000_000u64;
    let mut i = 0u64;
    while i < messages {
        let n = (messages - i).min(10_000);
        let body: Vec<Value> = (i..i + n)
            .map(|k| {
                json!({
                    "timestamp": t0 + k,
                    "position.latitude": 54.687 + (k % 1000) as f64 * 1e-5,
                    "position.longitude": 25.279 + (k % 777) as f64 * 1e-5,
                    "position.speed": k % 120,
                    "battery.voltage": 12.6,
                    "seq": k,
                })
            })
            .collect();
        let a = api
            .request("POST", path, Value::Array(body).to_string().as_bytes())
            .await?;
        if a.status != 200 {
            bail!(
                "posting messages: {}: {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        i += n;
    }
    let fill = start.elapsed().as_secs_f64();
    // The device POST answers before the store wrote the messages: read until all are there.
    let count = |a: &crate::http::Answer| -> Result<u64> {
        let v = a.json()?;
        Ok(v["result"].as_array().map_or(0, |r| r.len() as u64))
    };
    loop {
        let a = api.request("GET", path, b"").await?;
        if a.status != 200 {
            bail!(
                "reading: {}: {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        if count(&a)? >= messages {
            break;
        }
        if start.elapsed() > p.idle.max(Duration::from_secs(60)) {
            bail!("the device never held {messages} messages");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored = start.elapsed().as_secs_f64();
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..reads.max(1) {
        let sent = Instant::now();
        let a = api.request("GET", path, b"").await?;
        let ms = sent.elapsed().as_secs_f64() * 1000.0;
        if a.status != 200 || count(&a)? != messages {
            bail!("a read answered {} with {} bytes", a.status, a.body.len());
        }
        bytes = a.body.len();
        times.push(ms);
    }
    Ok((fill, stored, times, bytes))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
