//! `gw-webhook` (tern only): webhook calls per second to a local receiver.
//!
//! Starts a receiver in this process (HTTP/1.1 keep-alive on 127.0.0.1, answering every request
//! 200 with an empty body), creates a device and `--clients` webhooks sharing one name (so they
//! share the load) triggered by the device's `flespi/message/gw/devices/<id>` topic, each a
//! custom-server step POSTing `%payload%` to the receiver; then POSTs `--messages` (10,000)
//! messages to the device in batches of `--batch` (100 by default; at most 10,000 pending calls
//! per webhook) and waits until the receiver got one call per message (or none came for
//! `--idle`). The rate is calls over the time from the first POST to the last call. Deletes
//! what it created at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::gw::GwParams;
use crate::http::Http;
use crate::report::Head;

#[derive(Debug, Serialize)]
pub struct WebhookReport {
    #[serde(flatten)]
    pub head: Head,
    pub http: String,
    /// Webhooks sharing the load.
    pub webhooks: u32,
    pub messages: u64,
    /// Calls the receiver got.
    pub calls: u64,
    /// From the first POST to the last call.
    pub window_s: f64,
    pub calls_per_s: f64,
}

/// Counts requests; the time of the last one since `start`, in microseconds.
#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    last_us: AtomicU64,
}

async fn receiver(counts: Arc<Counts>, start: Instant) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let counts = counts.clone();
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(8192);
                let mut chunk = [0u8; 8192];
                loop {
                    // One request: the head, then Content-Length bytes.
                    let (head_end, len) = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (i + 4, len);
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buf.len() < head_end + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    counts.calls.fetch_add(1, Ordering::Relaxed);
                    counts
                        .last_us
                        .store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                    if sock
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

pub async fn run(p: GwParams, messages: u64) -> Result<WebhookReport> {
    let mut api = Http::connect(p.http, p.token.as_deref()).await?;
    let start = Instant::now();
    let counts = Arc::new(Counts::default());
    let rx = receiver(counts.clone(), start).await?;
    let ident = format!("tb-{:08x}", p.tag);
    let device = json!({"name": ident, "device_type_id": 1, "configuration": {"ident": ident}});
    let a = api
        .request("POST", "/gw/devices", device.to_string().as_bytes())
        .await?;
    let v = a.json()?;
    if a.status != 200 {
        bail!("creating the device: status {}: {v}", a.status);
    }
    let device_id = v["result"][0]["id"].as_u64().context("no device id")?;
    let n = p.clients.max(1);
    let mut hooks = Vec::new();
    for _ in 0..n {
        let w = json!({
            "name": ident,
            "triggers": [{"topic": format!("flespi/message/gw/devices/{device_id}")}],
            "configuration": {"type": "custom-server", "method": "POST",
                              "uri": format!("http://{rx}/hook"), "body": "%payload%"}
        });
        let a = api
            .request("POST", "/platform/webhooks", w.to_string().as_bytes())
            .await?;
        let v = a.json()?;
        if a.status != 200 {
            bail!("creating a webhook: status {}: {v}", a.status);
        }
        hooks.push(v["result"][0]["id"].as_u64().context("no webhook id")?);
    }
    let batch = p.batch.clamp(1, 10_000) as u64;
    let first = start.elapsed();
    let mut sent = 0u64;
    while sent < messages {
        let k = batch.min(messages - sent);
        let body: Vec<_> = (sent..sent + k).map(|i| json!({"seq": i})).collect();
        let a = api
            .request(
                "POST",
                &format!("/gw/devices/{device_id}/messages"),
                serde_json::Value::Array(body).to_string().as_bytes(),
            )
            .await?;
        if a.status != 200 {
            bail!("posting messages: status {}", a.status);
        }
        sent += k;
    }
    let mut seen = counts.calls.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while seen < messages && quiet_since.elapsed() < p.idle {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = counts.calls.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        }
    }
    for id in &hooks {
        let _ = api
            .request("DELETE", &format!("/platform/webhooks/{id}"), b"")
            .await;
    }
    let _ = api
        .request("DELETE", &format!("/gw/devices/{device_id}"), b"")
        .await;
    let calls = counts.calls.load(Ordering::Relaxed);
    let last = Duration::from_micros(counts.last_us.load(Ordering::Relaxed));
    let window = last.saturating_sub(first).as_secs_f64().max(1e-9);
    Ok(WebhookReport {
        head: p.head,
        http: p.http.to_string(),
        webhooks: n,
        messages,
        calls,
        window_s: (window * 1000.0).round() / 1000.0,
        calls_per_s: (calls as f64 / window).round(),
    })
}
