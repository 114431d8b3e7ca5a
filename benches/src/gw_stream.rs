//! Streams (tern only): how fast a stream drains its queue to a local receiver.
//!
//! - `gw-stream-http`: an HTTP stream (batches of up to 1,000 messages, one POST in flight) to
//!   a small receiver in this process answering every POST 200 at once;
//! - `gw-stream-mqtt`: an MQTT stream (QoS 1, one PUBLISH per message, up to 1,000 read from
//!   the queue at once) to the broker at `--target` (e.g. Mosquitto), where a subscriber of
//!   this process counts them.
//!
//! Both: a device and a stream are created over REST, the stream first pointing at a closed
//! port so that `--messages` (100,000) messages posted to the device (10,000 per POST) wait in
//! its queue; then the stream's `uri` is changed to the receiver and the time from that PATCH
//! to the last message received is the drain (`drained_per_s`). Messages are counted by their
//! `"seq":` field, so duplicates (at least once) would show as `received` above `messages`.
//! Everything created is deleted at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use serde::Serialize;
use serde_json::{Value, json};
use tern_codec::{Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client::{self, ConnectOptions};
use crate::http::Http;
use crate::report::Head;

pub struct StreamParams {
    pub head: Head,
    pub http: SocketAddr,
    pub token: Option<String>,
    /// gw-stream-mqtt: the broker the stream publishes to.
    pub target: SocketAddr,
    pub connect: ConnectOptions,
    pub messages: u64,
    pub mqtt: bool,
    /// How long to wait for the drain at most.
    pub timeout: Duration,
    pub tag: u32,
}

#[derive(Debug, Serialize)]
pub struct StreamReport {
    #[serde(flatten)]
    pub head: Head,
    pub http: String,
    pub protocol: &'static str,
    /// Where the stream delivered (the receiver, or `--target`).
    pub target: String,
    pub messages: u64,
    /// Filling the queue (the POSTs, each answered once its messages are queued, durable).
    pub fill_s: f64,
    /// From the PATCH pointing the stream at the receiver to the last message received.
    pub drain_s: f64,
    pub drained_per_s: f64,
    /// From the PATCH to the first message received.
    pub first_ms: f64,
    /// Messages received (more than `messages`: some sent twice).
    pub received: u64,
    /// HTTP: POSTs received (batches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batches: Option<u64>,
}

/// What the receiver saw: messages, requests, and the first and last arrival (ns since
/// `origin`).
#[derive(Debug)]
struct Seen {
    origin: Instant,
    messages: AtomicU64,
    requests: AtomicU64,
    first: AtomicU64,
    last: AtomicU64,
}

impl Seen {
    fn new() -> Arc<Seen> {
        Arc::new(Seen {
            origin: Instant::now(),
            messages: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            first: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(0),
        })
    }

    fn got(&self, n: u64) {
        if n == 0 {
            return;
        }
        let t = self.origin.elapsed().as_nanos() as u64;
        self.first.fetch_min(t, Ordering::Relaxed);
        self.last.fetch_max(t, Ordering::Relaxed);
        self.messages.fetch_add(n, Ordering::Relaxed);
    }

    fn at(&self, v: &AtomicU64) -> Instant {
        self.origin + Duration::from_nanos(v.load(Ordering::Relaxed))
    }
}

/// Messages in a body: occurrences of the `"seq":` every message carries.
fn count_messages(body: &[u8]) -> u64 {
    body.windows(6).filter(|w| *w == b"\"seq\":").count() as u64
}

/// The HTTP receiver: HTTP/1.1 keep-alive, every POST answered 200 once its body is read.
async fn receiver(listener: TcpListener, seen: Arc<Seen>) {
    while let Ok((conn, _)) = listener.accept().await {
        let seen = seen.clone();
        tokio::spawn(async move {
            let _ = serve(conn, &seen).await;
        });
    }
}

async fn serve(mut conn: TcpStream, seen: &Seen) -> Result<()> {
    conn.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(256 * 1024);
    loop {
        // The head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if conn.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            if conn.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body = buf.split_to(head_end + length);
        seen.requests.fetch_add(1, Ordering::Relaxed);
        seen.got(count_messages(&body[head_end..]));
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await?;
    }
}

/// The MQTT subscriber at the target: counts PUBLISH packets on `topic`.
async fn subscriber(mut conn: client::Conn, topic: String, seen: Arc<Seen>) -> Result<()> {
    let mut rbuf: BytesMut = std::mem::take(&mut conn.rbuf);
    loop {
        while let Some(packet) = tern_codec::decode(&mut rbuf, u32::MAX, conn.version)? {
            if let Packet::Publish(p) = packet
                && *p.topic == *topic
            {
                seen.got(1);
            }
        }
        if conn.stream.read_buf(&mut rbuf).await? == 0 {
            bail!("the target broker closed the subscriber");
        }
    }
}

fn created_id(answer: &crate::http::Answer, what: &str) -> Result<u64> {
    let v = answer.json()?;
    if answer.status != 200 {
        bail!("creating the {what}: status {}: {v}", answer.status);
    }
    v["result"][0]["id"]
        .as_u64()
        .with_context(|| format!("no id in {v}"))
}

fn ok(answer: &crate::http::Answer, what: &str) -> Result<()> {
    if answer.status != 200 {
        bail!(
            "{what}: status {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    Ok(())
}

pub async fn run(p: StreamParams) -> Result<StreamReport> {
    let mut api = Http::connect(p.http, p.token.as_deref()).await?;
    let ident = format!("tb-{:08x}-stream", p.tag);
    let topic = format!("tern-bench/stream/{:08x}", p.tag);
    // A port nothing listens on: the queue fills.
    let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let (protocol, parked, target) = if p.mqtt {
        (
            "mqtt",
            format!("mqtt://{closed}"),
            format!("mqtt://{}", p.target),
        )
    } else {
        ("http", format!("http://{closed}/"), String::new())
    };
    let seen = Seen::new();
    let target = if p.mqtt {
        let mut opts = p.connect.clone();
        opts.broker = p.target;
        opts.username = None;
        let mut conn =
            client::connect(&opts, &format!("tb-{:08x}-stream-sub", p.tag), None).await?;
        conn.stream
            .write_all(&client::subscribe_packet(
                std::slice::from_ref(&topic),
                QoS::AtMostOnce,
                p.connect.version,
            )?)
            .await?;
        tokio::spawn(subscriber(conn, topic.clone(), seen.clone()));
        target
    } else {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let at = listener.local_addr()?;
        tokio::spawn(receiver(listener, seen.clone()));
        format!("http://{at}/")
    };
    let mut configuration = json!({"uri": parked});
    if p.mqtt {
        configuration["topic"] = json!(topic);
        configuration["qos"] = json!(1);
    } else {
        configuration["limit_messages"] = json!(1000);
    }
    let stream = created_id(
        &api.request(
            "POST",
            "/gw/streams",
            json!({"name": ident, "protocol_name": protocol, "configuration": configuration})
                .to_string()
                .as_bytes(),
        )
        .await?,
        "stream",
    )?;
    let device = json!({"name": ident, "device_type_id": 1, "configuration": {"ident": ident}});
    let device = created_id(
        &api.request("POST", "/gw/devices", device.to_string().as_bytes())
            .await?,
        "device",
    );
    let outcome = match device {
        Ok(device) => {
            let r = drain(&mut api, &p, stream, device, &target, &seen).await;
            let _ = api
                .request("DELETE", &format!("/gw/devices/{device}"), b"")
                .await;
            r
        }
        Err(e) => Err(e),
    };
    let _ = api
        .request("DELETE", &format!("/gw/streams/{stream}"), b"")
        .await;
    let (fill, patched) = outcome?;
    let received = seen.messages.load(Ordering::Relaxed);
    let drain = seen
        .at(&seen.last)
        .saturating_duration_since(patched)
        .as_secs_f64();
    let first = seen
        .at(&seen.first)
        .saturating_duration_since(patched)
        .as_secs_f64();
    Ok(StreamReport {
        head: p.head,
        http: p.http.to_string(),
        protocol,
        target: target.clone(),
        messages: p.messages,
        fill_s: round3(fill),
        drain_s: round3(drain),
        drained_per_s: (p.messages.min(received) as f64 / drain.max(1e-9)).round(),
        first_ms: round3(first * 1000.0),
        received,
        batches: (!p.mqtt).then(|| seen.requests.load(Ordering::Relaxed)),
    })
}

/// Fills the queue, points the stream at `target`, waits for every message: (fill s, the
/// PATCH's time).
async fn drain(
    api: &mut Http,
    p: &StreamParams,
    stream: u64,
    device: u64,
    target: &str,
    seen: &Seen,
) -> Result<(f64, Instant)> {
    ok(
        &api.request(
            "POST",
            &format!("/gw/streams/{stream}/devices/{device}"),
            b"",
        )
        .await?,
        "adding the device to the stream",
    )?;
    let start = Instant::now();
    let path = format!("/gw/devices/{device}/messages");
    let mut i = 0u64;
    while i < p.messages {
        let n = (p.messages - i).min(10_000);
        let body: Vec<Value> = (i..i + n)
            .map(|k| {
                json!({
                    "seq": k,
                    "position.latitude": 54.687 + (k % 1000) as f64 * 1e-5,
                    "position.longitude": 25.279 + (k % 777) as f64 * 1e-5,
                    "position.speed": k % 120,
                    "battery.voltage": 12.6,
                })
            })
            .collect();
        ok(
            &api.request("POST", &path, Value::Array(body).to_string().as_bytes())
                .await?,
            "posting messages",
        )?;
        i += n;
    }
    let fill = start.elapsed().as_secs_f64();
    let patched = Instant::now();
    ok(
        &api.request(
            "PATCH",
            &format!("/gw/streams/{stream}"),
            json!({"configuration": {"uri": target}})
                .to_string()
                .as_bytes(),
        )
        .await?,
        "pointing the stream at the receiver",
    )?;
    while seen.messages.load(Ordering::Relaxed) < p.messages {
        if patched.elapsed() > p.timeout {
            bail!(
                "{} of {} messages after {:?}",
                seen.messages.load(Ordering::Relaxed),
                p.messages,
                p.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((fill, patched))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_are_counted_by_their_seq() {
        assert_eq!(super::count_messages(br#"[{"seq":1},{"a":2,"seq":3}]"#), 2);
        assert_eq!(super::count_messages(b"[]"), 0);
    }
}
