//! Retained flood: publishers store N retained messages on distinct topics
//! (`tern-bench/retained/000000` ...), then one subscriber subscribes to `#` and is timed until
//! it has received all of them.
//!
//! The topics do not depend on the run, so a second run overwrites the first run's messages
//! instead of adding to them; messages of an earlier run still count as foreign until
//! overwritten. Retained messages on other topics arrive too and are counted as foreign.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::flow::{self, FlowConfig, PubSpec, Shared, Start, SubSpec};
use crate::report::{self, Head};
use crate::rss::{Rss, RssSampler};

/// Topic prefix of the flood; the index follows, zero-padded.
pub const PREFIX: &str = "tern-bench/retained/";

#[derive(Debug, Serialize)]
pub struct RetainedReport {
    #[serde(flatten)]
    pub head: Head,
    pub topics: u64,
    pub publishers: u32,
    pub filter: String,
    /// Publishing phase: until every message was acknowledged (QoS 1/2) or a PINGRESP after
    /// the last one (QoS 0).
    pub store_s: f64,
    pub stored_per_s: f64,
    /// From SUBSCRIBE to the first and to the last retained message.
    pub first_ms: Option<f64>,
    pub deliver_s: Option<f64>,
    pub delivered: u64,
    pub delivered_per_s: Option<f64>,
    pub lost: u64,
    pub duplicates: u64,
    pub foreign: u64,
    /// Why the subscriber stopped: complete, idle, drain, error.
    pub end: &'static str,
    pub rss: Option<Rss>,
    pub errors: Vec<String>,
}

pub struct RetainedParams {
    pub head: Head,
    pub flow: FlowConfig,
    pub topics: u64,
    pub publishers: u32,
    pub filter: String,
    pub timeout: Duration,
    pub broker_pid: Option<u32>,
}

pub async fn run(p: RetainedParams) -> Result<RetainedReport> {
    let rss = RssSampler::start(p.broker_pid);
    let tag = p.flow.tag;
    let width = p.topics.saturating_sub(1).max(1).to_string().len();
    let publishers = p
        .publishers
        .clamp(1, u32::try_from(p.topics).unwrap_or(u32::MAX).max(1));
    let topic = format!("{PREFIX}{}", "0".repeat(width));
    let specs: Vec<PubSpec> = (0..publishers)
        .map(|i| {
            let first = p.topics * u64::from(i) / u64::from(publishers);
            let end = p.topics * u64::from(i + 1) / u64::from(publishers);
            PubSpec {
                id: i,
                client_id: format!("tb-{tag:08x}-retain-{i}"),
                topic: topic.clone(),
                retain: true,
                indexed: Some((first, width)),
                max_messages: end - first,
                rate: 0.0,
            }
        })
        .collect();
    // The subscriber waits for the first message as long as the whole phase may take.
    let cfg = Arc::new(FlowConfig {
        idle: p.timeout,
        drain: p.timeout,
        ..p.flow
    });
    let shared = Shared::new(specs.len());

    let (handles, go) = flow::spawn_publishers(&cfg, &shared, specs).await?;
    let at = Instant::now();
    shared.set_start(at);
    go.send_replace(Some(Start {
        at,
        until: at + p.timeout,
    }));
    let pubs = flow::join(handles).await?;
    let store_s = at.elapsed().as_secs_f64();
    let stored: u64 = if cfg.qos as u8 > 0 {
        pubs.iter().map(|r| r.acked).sum()
    } else {
        pubs.iter().map(|r| r.sent).sum()
    };

    shared.set_start(Instant::now());
    let sub = SubSpec {
        client_id: format!("tb-{tag:08x}-retain-sub"),
        filter: p.filter.clone(),
        publishers: 0..publishers,
    };
    let subs = flow::join(flow::spawn_subscribers(&cfg, &shared, vec![sub]).await?).await?;
    let rss = rss.finish();

    let s = subs.first();
    let since_subscribe = |t: Option<Instant>| {
        let sub_at = s?.subscribed_at?;
        Some(t?.saturating_duration_since(sub_at).as_secs_f64())
    };
    let first_ms = since_subscribe(s.and_then(|s| s.first_at)).map(|t| (t * 1e4).round() / 10.0);
    let deliver_s = since_subscribe(s.and_then(|s| s.last_new_at));
    let delivered = s.map_or(0, |s| s.delivered);
    let sent: u64 = pubs.iter().map(|r| r.sent).sum();
    Ok(RetainedReport {
        head: p.head,
        topics: p.topics,
        publishers,
        filter: p.filter,
        store_s: (store_s * 1000.0).round() / 1000.0,
        stored_per_s: (stored as f64 / store_s).round(),
        first_ms,
        deliver_s: deliver_s.map(|t| (t * 1000.0).round() / 1000.0),
        delivered,
        delivered_per_s: deliver_s
            .filter(|&t| t > 0.0)
            .map(|t| (delivered as f64 / t).round()),
        lost: sent.saturating_sub(delivered),
        duplicates: s.map_or(0, |s| s.tracks.iter().map(|t| t.duplicates).sum()),
        foreign: s.map_or(0, |s| s.foreign),
        end: s.map_or("error", |s| s.end),
        rss,
        errors: report::errors(
            pubs.iter()
                .map(|r| ("publisher", &r.error))
                .chain(subs.iter().map(|s| ("subscriber", &s.error))),
        ),
    })
}
