//! Connection storm: K clients connect as fast as `concurrency` handshakes in parallel allow,
//! from several loopback source addresses (each has its own ~28k ephemeral ports), then stay
//! connected and idle while the broker's RSS is read.
//!
//! The idle-memory scenario is the same storm held longer: the broker's VmRSS is sampled while
//! every connection is open and idle, and the growth over the RSS before the storm, divided by
//! the connections, is what one idle connection costs the broker.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::client::{self, ConnectOptions};
use crate::report::Head;
use crate::rss::vm_rss_kib;
use crate::track::{self, Latency};
use crate::wire;

#[derive(Debug, Serialize)]
pub struct StormReport {
    #[serde(flatten)]
    pub head: Head,
    pub connections: u32,
    pub connected: u32,
    pub failed: u32,
    pub source_ips: u8,
    pub concurrency: usize,
    /// From the first connect to the last CONNACK.
    pub connect_s: f64,
    pub conn_per_s: f64,
    /// TCP connect + CONNECT/CONNACK, per connection.
    pub handshake_us: Option<Latency>,
    pub rss_before_kib: Option<u64>,
    /// With every connection open and idle, after the settle (the median of the samples).
    pub rss_after_kib: Option<u64>,
    pub rss_per_conn_kib: Option<f64>,
    /// idle-memory: the same in bytes, and every VmRSS sample taken while holding (KiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_conn_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rss_samples_kib: Vec<u64>,
    /// The generator's own descriptor limit (it needs one per connection).
    pub fd_limit: Option<u64>,
    pub errors: Vec<String>,
}

pub struct StormParams {
    pub head: Head,
    pub connect: ConnectOptions,
    pub connections: u32,
    pub source_ips: u8,
    pub concurrency: usize,
    pub timeout: Duration,
    pub tag: u32,
    pub broker_pid: Option<u32>,
    /// How long the connections are held idle after the storm, VmRSS read every 500 ms
    /// (the storm: one second, one sample).
    pub hold: Duration,
    pub fd_limit: Option<u64>,
}

struct Worker {
    streams: Vec<TcpStream>,
    handshake: hdrhistogram::Histogram<u64>,
    failed: u32,
    errors: Vec<String>,
}

pub async fn run(p: StormParams) -> Result<StormReport> {
    let rss_before = p.broker_pid.and_then(vm_rss_kib);
    let next = Arc::new(AtomicU32::new(0));
    let connect = Arc::new(p.connect.clone());
    let t0 = Instant::now();
    let deadline = t0 + p.timeout;
    let workers: Vec<_> = (0..p.concurrency.max(1))
        .map(|_| {
            let (next, connect) = (Arc::clone(&next), Arc::clone(&connect));
            let (k, ips, tag) = (p.connections, p.source_ips, p.tag);
            tokio::spawn(async move {
                let mut w = Worker {
                    streams: Vec::new(),
                    handshake: track::histogram(),
                    failed: 0,
                    errors: Vec::new(),
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= k {
                        break;
                    }
                    if Instant::now() >= deadline {
                        w.failed += 1;
                        continue;
                    }
                    // 127.0.0.2, 127.0.0.3, ...: the broker listens on 127.0.0.1.
                    let source = (ips > 0).then(|| {
                        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % u32::from(ips)) as u8))
                    });
                    let started = Instant::now();
                    let id = format!("tb-{tag:08x}-storm-{i}");
                    match client::connect(&connect, &id, source).await {
                        Ok(conn) => {
                            let _ = w
                                .handshake
                                .record(started.elapsed().as_nanos().max(1) as u64);
                            w.streams.push(conn.stream);
                        }
                        Err(e) => {
                            w.failed += 1;
                            if w.errors.len() < 3 {
                                w.errors.push(format!("{e:#}"));
                            }
                        }
                    }
                }
                w
            })
        })
        .collect();
    let mut all = Vec::with_capacity(workers.len());
    for w in workers {
        all.push(w.await?);
    }
    let connect_s = t0.elapsed().as_secs_f64();

    // Let the broker finish whatever it does after CONNACK before reading its memory; a long
    // hold samples it every 500 ms and reports the median.
    let mut samples = Vec::new();
    let held_until = Instant::now() + p.hold;
    loop {
        let left = held_until.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(500))).await;
        if let Some(kib) = p.broker_pid.and_then(vm_rss_kib) {
            samples.push(kib);
        }
        if Instant::now() >= held_until {
            break;
        }
    }
    let rss_after = {
        let mut sorted = samples.clone();
        sorted.sort_unstable();
        sorted.get(sorted.len() / 2).copied()
    };

    let connected: u32 = all.iter().map(|w| w.streams.len() as u32).sum();
    let failed = all.iter().map(|w| w.failed).sum();
    let mut handshake = track::histogram();
    let mut errors = Vec::new();
    for w in &all {
        let _ = handshake.add(&w.handshake);
        for e in &w.errors {
            if errors.len() < 5 && !errors.contains(e) {
                errors.push(e.clone());
            }
        }
    }
    let rss_per_conn_kib = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 => {
            Some(((a as f64 - b as f64) / f64::from(connected) * 100.0).round() / 100.0)
        }
        _ => None,
    };
    let rss_per_conn_bytes = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 && p.hold > Duration::from_secs(1) => {
            Some(a.saturating_sub(b) * 1024 / u64::from(connected))
        }
        _ => None,
    };
    let many = p.hold > Duration::from_secs(1);
    for w in &all {
        for s in &w.streams {
            let _ = s.try_write(&wire::DISCONNECT);
        }
    }
    drop(all);
    Ok(StormReport {
        head: p.head,
        connections: p.connections,
        connected,
        failed,
        source_ips: p.source_ips,
        concurrency: p.concurrency,
        connect_s: (connect_s * 1000.0).round() / 1000.0,
        conn_per_s: (f64::from(connected) / connect_s).round(),
        handshake_us: Latency::of(&handshake),
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_per_conn_kib,
        rss_per_conn_bytes,
        rss_samples_kib: if many { samples } else { Vec::new() },
        fd_limit: p.fd_limit,
        errors,
    })
}

/// Raises the soft descriptor limit to what `wanted` needs: to the hard limit, and above it
/// where the process may (root). Returns the soft limit in force afterwards.
#[cfg(unix)]
pub fn raise_fd_limit(wanted: u64) -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let soft = now.current?;
    if soft >= wanted {
        return Some(soft);
    }
    if now.maximum.is_some_and(|h| h < wanted) {
        let both = Rlimit {
            current: Some(wanted),
            maximum: Some(wanted),
        };
        if setrlimit(Resource::Nofile, both).is_ok() {
            return Some(wanted);
        }
    }
    let target = now.maximum.map_or(wanted, |h| h.min(wanted));
    let raised = Rlimit {
        current: Some(target),
        maximum: now.maximum,
    };
    setrlimit(Resource::Nofile, raised).map_or(Some(soft), |()| Some(target))
}

#[cfg(not(unix))]
pub fn raise_fd_limit(_wanted: u64) -> Option<u64> {
    None
}
