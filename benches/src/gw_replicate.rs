//! `gw-replicate` (cluster mode, issue 17): how fast the devices layer of one node reaches
//! another. Over REST on node A (`--http`) it creates a device and times until node B
//! (`--peer-http`) has it; posts `--messages` (100,000) messages to the device on A in POSTs of
//! `--batch` (1,000), one at a time, and times until B applied the last one (B's telemetry
//! of `seq`, set as B applies each message after storing it); then posts `--reads` (20) single
//! messages on A, each once the previous one reached B, and times each from the POST to B
//! showing it (B polled every millisecond). Deletes the device at the end.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::{Value, json};

use crate::http::Http;
use crate::report::Head;

pub struct ReplicateParams {
    pub head: Head,
    pub http: SocketAddr,
    pub peer: SocketAddr,
    pub token: Option<String>,
    pub messages: u64,
    pub batch: usize,
    pub singles: u32,
    pub timeout: Duration,
    pub tag: u32,
}

#[derive(Debug, Serialize)]
pub struct ReplicateReport {
    #[serde(flatten)]
    pub head: Head,
    pub http: String,
    pub peer_http: String,
    pub messages: u64,
    pub batch: usize,
    /// From the device's creation on A (answered) to B answering it, ms.
    pub device_ms: f64,
    /// The POSTs on A (each answered once A stored its messages durably), s.
    pub post_s: f64,
    pub posted_per_s: f64,
    /// From the first POST on A to B having applied the last message, s.
    pub replicated_s: f64,
    pub replicated_per_s: f64,
    /// From the last POST's answer on A to B having applied its last message, ms.
    pub lag_ms: f64,
    /// One message: from its POST on A to B showing it, ms (each run, and the median).
    pub single_ms: Vec<f64>,
    pub single_median_ms: f64,
}

/// B's telemetry value of `seq` for device `id` (`None`: not there yet).
async fn seq_on(peer: &mut Http, id: u64) -> Result<Option<u64>> {
    let a = peer
        .request("GET", &format!("/gw/devices/{id}/telemetry/seq"), b"")
        .await?;
    if a.status != 200 {
        return Ok(None);
    }
    Ok(a.json()?["result"][0]["telemetry"]["seq"]["value"].as_u64())
}

async fn until_seq(peer: &mut Http, id: u64, want: u64, poll: Duration, by: Instant) -> Result<()> {
    loop {
        if seq_on(peer, id).await? == Some(want) {
            return Ok(());
        }
        if Instant::now() > by {
            bail!("node B never showed message {want} of device {id}");
        }
        tokio::time::sleep(poll).await;
    }
}

pub async fn run(p: ReplicateParams) -> Result<ReplicateReport> {
    let mut a = Http::connect(p.http, p.token.as_deref()).await?;
    let mut b = Http::connect(p.peer, p.token.as_deref()).await?;
    let ident = format!("tb-{:08x}-replicate", p.tag);
    let device = json!({"name": ident, "device_type_id": 1, "configuration": {"ident": ident}});
    let answer = a
        .request("POST", "/gw/devices", device.to_string().as_bytes())
        .await?;
    let id = answer.json()?["result"][0]["id"].as_u64().ok_or_else(|| {
        anyhow::anyhow!("no device id: {}", String::from_utf8_lossy(&answer.body))
    })?;
    let outcome = measure(&p, &mut a, &mut b, id).await;
    let _ = a.request("DELETE", &format!("/gw/devices/{id}"), b"").await;
    outcome
}

async fn measure(
    p: &ReplicateParams,
    a: &mut Http,
    b: &mut Http,
    id: u64,
) -> Result<ReplicateReport> {
    let created = Instant::now();
    loop {
        let got = b.request("GET", &format!("/gw/devices/{id}"), b"").await?;
        if got.status == 200
            && got.json()?["result"]
                .as_array()
                .is_some_and(|r| r.len() == 1)
        {
            break;
        }
        if created.elapsed() > p.timeout {
            bail!("node B never showed device {id}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let device_ms = created.elapsed().as_secs_f64() * 1000.0;

    let path = format!("/gw/devices/{id}/messages");
    let t0 = 1_700_000_000u64;
    let start = Instant::now();
    let mut i = 0u64;
    while i < p.messages {
        let n = (p.messages - i).min(p.batch.max(1) as u64);
        let body: Vec<Value> = (i..i + n)
            .map(|k| json!({"timestamp": t0 + k, "position.speed": k % 120, "seq": k}))
            .collect();
        let answer = a
            .request("POST", &path, Value::Array(body).to_string().as_bytes())
            .await?;
        if answer.status != 200 {
            bail!(
                "posting: {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        i += n;
    }
    let posted = start.elapsed();
    until_seq(
        b,
        id,
        p.messages - 1,
        Duration::from_millis(5),
        start + p.timeout,
    )
    .await?;
    let replicated = start.elapsed();

    let mut single_ms = Vec::new();
    for k in 0..p.singles {
        let seq = p.messages + u64::from(k);
        let body = json!([{"timestamp": t0 + seq, "seq": seq}]).to_string();
        let sent = Instant::now();
        let answer = a.request("POST", &path, body.as_bytes()).await?;
        if answer.status != 200 {
            bail!("posting: {}", answer.status);
        }
        until_seq(b, id, seq, Duration::from_millis(1), sent + p.timeout).await?;
        single_ms.push(round3(sent.elapsed().as_secs_f64() * 1000.0));
    }
    let mut sorted = single_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let secs = |d: Duration| round3(d.as_secs_f64());
    Ok(ReplicateReport {
        head: p.head.clone(),
        http: p.http.to_string(),
        peer_http: p.peer.to_string(),
        messages: p.messages,
        batch: p.batch,
        device_ms: round3(device_ms),
        post_s: secs(posted),
        posted_per_s: (p.messages as f64 / posted.as_secs_f64().max(1e-9)).round(),
        replicated_s: secs(replicated),
        replicated_per_s: (p.messages as f64 / replicated.as_secs_f64().max(1e-9)).round(),
        lag_ms: round3((replicated - posted).as_secs_f64() * 1000.0),
        single_median_ms: sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
        single_ms,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
