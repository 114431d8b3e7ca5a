//! The JSON line each scenario prints, and the arithmetic from raw counts to it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::flow::{PubResult, Shared, SubResult};
use crate::rss::Rss;
use crate::track::{self, Latency, Timeline};

/// The fields every line starts with.
#[derive(Debug, Clone, Serialize)]
pub struct Head {
    pub scenario: &'static str,
    /// Free text from `--label` (compare.sh puts the broker's name here).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub label: String,
    pub broker: String,
    pub mqtt: &'static str,
    pub qos: u8,
    pub payload: usize,
    /// Worker threads of the generator.
    pub threads: usize,
    /// Subscribers kept their sessions (`--persistent`); absent when not.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub persistent: bool,
}

/// Fan-in, fan-out, pairs and latency.
#[derive(Debug, Serialize)]
pub struct FlowReport {
    #[serde(flatten)]
    pub head: Head,
    pub publishers: usize,
    pub subscribers: usize,
    /// QoS 1/2 in-flight window per publisher, as asked (the broker's Receive Maximum may cap it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inflight: Option<u16>,
    /// Offered rate over all publishers, msg/s; absent when publishers run at max rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// The measured window: from the start until the last publisher stopped sending.
    pub window_s: f64,
    pub sent: u64,
    /// QoS 1/2: PUBACK (QoS 1) or PUBREC (QoS 2) with success.
    pub acked: Option<u64>,
    /// Acknowledgements with a failure reason code.
    pub rejected: u64,
    /// Still unacknowledged when the drain time ran out.
    pub unacked: u64,
    /// Deliveries the subscribers should have had: each sent message once per subscriber
    /// expecting its publisher.
    pub expected: u64,
    /// Distinct deliveries, during the window and the drain after it.
    pub delivered: u64,
    pub lost: u64,
    /// QoS 1/2: acknowledged to the publisher, never delivered.
    pub lost_acked: Option<u64>,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Messages not of this run.
    pub foreign: u64,
    pub sent_per_s: f64,
    pub acked_per_s: Option<f64>,
    /// Distinct deliveries within the window, per second of it.
    pub delivered_per_s: f64,
    /// From the end of the window to the last new delivery: the backlog the broker had queued.
    pub drain_s: f64,
    /// Longest time without a delivery inside the window, from the first delivery on.
    pub stall_ms: u64,
    pub latency_us: Option<Latency>,
    /// QoS 1/2: from writing a PUBLISH to its PUBACK/PUBREC.
    pub ack_latency_us: Option<Latency>,
    pub per_second: Series,
    /// Why the subscribers stopped, counted: complete, idle, drain, error.
    pub ends: BTreeMap<&'static str, usize>,
    pub rss: Option<Rss>,
    pub errors: Vec<String>,
}

/// Counts per second of the window.
#[derive(Debug, Serialize)]
pub struct Series {
    pub sent: Vec<u64>,
    pub delivered: Vec<u64>,
}

/// Distinct error messages, with how many clients had each.
pub fn errors<'a>(all: impl Iterator<Item = (&'static str, &'a Option<String>)>) -> Vec<String> {
    let mut counted: BTreeMap<String, usize> = BTreeMap::new();
    for (who, e) in all {
        if let Some(e) = e {
            *counted.entry(format!("{who}: {e}")).or_default() += 1;
        }
    }
    counted
        .into_iter()
        .map(|(e, n)| if n > 1 { format!("{e} (x{n})") } else { e })
        .collect()
}

pub struct FlowParams {
    pub head: Head,
    pub inflight: Option<u16>,
    pub rate: Option<f64>,
    pub duration_ns: u64,
}

pub fn flow(
    p: FlowParams,
    shared: &Shared,
    pubs: &[PubResult],
    subs: &[SubResult],
    rss: Option<Rss>,
) -> FlowReport {
    let qos_acks = p.head.qos > 0;
    let window_ns = pubs
        .iter()
        .map(|r| r.stopped_ns)
        .max()
        .filter(|&n| n > 0)
        .unwrap_or(p.duration_ns);
    let window_s = window_ns as f64 / 1e9;
    let per_s = |n: u64| (n as f64 / window_s).round();

    let mut sent_tl = Timeline::default();
    let mut acked_tl = Timeline::default();
    let mut ack_latency = track::histogram();
    for r in pubs {
        sent_tl.merge(&r.sent_tl);
        acked_tl.merge(&r.acked_tl);
        if let Some(h) = &r.ack_latency {
            let _ = ack_latency.add(h);
        }
    }
    let mut delivered_tl = Timeline::default();
    let mut latency = track::histogram();
    let (mut expected, mut delivered, mut lost_acked, mut duplicates, mut ooo, mut foreign) =
        (0, 0, 0, 0, 0, 0);
    let mut last_new = None;
    let mut ends: BTreeMap<&'static str, usize> = BTreeMap::new();
    for s in subs {
        delivered_tl.merge(&s.delivered_tl);
        let _ = latency.add(&s.latency);
        *ends.entry(s.end).or_default() += 1;
        delivered += s.delivered;
        foreign += s.foreign;
        last_new = last_new.max(s.last_new_at);
        for (publisher, t) in s.publishers.clone().zip(&s.tracks) {
            let Some(pr) = pubs.get(publisher as usize) else {
                continue;
            };
            expected += pr.sent;
            lost_acked += pr.acked_set.missing_from(&t.seen);
            duplicates += t.duplicates;
            ooo += t.out_of_order;
        }
    }
    let first_delivery_ns = delivered_tl.first_ns().unwrap_or(0);
    let start_ns = shared.start_ns();
    let drain_s = last_new
        .map(|t| shared.ns(t).saturating_sub(start_ns))
        .map_or(0.0, |ns| ns.saturating_sub(window_ns) as f64 / 1e9);
    let acked: u64 = pubs.iter().map(|r| r.acked).sum();
    FlowReport {
        publishers: pubs.len(),
        subscribers: subs.len(),
        inflight: p.inflight,
        rate: p.rate,
        window_s: (window_s * 1000.0).round() / 1000.0,
        sent: pubs.iter().map(|r| r.sent).sum(),
        acked: qos_acks.then_some(acked),
        rejected: pubs.iter().map(|r| r.rejected).sum(),
        unacked: pubs.iter().map(|r| r.unacked).sum(),
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        lost_acked: qos_acks.then_some(lost_acked),
        duplicates,
        out_of_order: ooo,
        foreign,
        sent_per_s: per_s(sent_tl.sum_before(window_ns)),
        acked_per_s: qos_acks.then(|| per_s(acked_tl.sum_before(window_ns))),
        delivered_per_s: per_s(delivered_tl.sum_before(window_ns)),
        drain_s: (drain_s * 1000.0).round() / 1000.0,
        stall_ms: delivered_tl.longest_gap_ms(first_delivery_ns, window_ns),
        latency_us: Latency::of(&latency),
        ack_latency_us: Latency::of(&ack_latency),
        per_second: Series {
            sent: sent_tl.per_second(window_ns),
            delivered: delivered_tl.per_second(window_ns),
        },
        ends,
        rss,
        errors: errors(
            pubs.iter()
                .map(|r| ("publisher", &r.error))
                .chain(subs.iter().map(|s| ("subscriber", &s.error))),
        ),
        head: p.head,
    }
}
