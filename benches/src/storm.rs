//! Connection storm: K clients connect as fast as `concurrency` handshakes in parallel allow,
//! from several loopback source addresses (each has its own ~28k ephemeral ports), then stay
//! connected and idle while the broker's RSS is read.

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
    /// With every connection open and idle, after a one-second settle.
    pub rss_after_kib: Option<u64>,
    pub rss_per_conn_kib: Option<f64>,
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

    // Let the broker finish whatever it does after CONNACK before reading its memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = p.broker_pid.and_then(vm_rss_kib);

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
        errors,
    })
}
