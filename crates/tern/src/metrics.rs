//! Prometheus metrics: a collector that reads the broker's and the listeners' atomics at scrape
//! time (nothing is counted twice), encoded by `prometheus-client` as OpenMetrics or the
//! Prometheus text format, whichever the scraper asks for.
//!
//! Families (counters get `_total` appended by the encoder):
//! - `tern_connections{listener, protocol}`: MQTT clients connected now (CONNECT accepted);
//!   `tern_connects{listener, protocol}`: CONNECTs accepted
//! - `tern_network_connections`: MQTT network connections open, connected or not
//! - `tern_listener_accepted{listener}`, `tern_listener_refused{listener}` (connection limit),
//!   `tern_tls_handshake_failures{listener}`, `tern_tls_reloads{result}`
//! - `tern_sessions`, `tern_subscriptions`, `tern_retained_messages`
//! - `tern_messages_received`, `tern_messages_sent`, `tern_payload_bytes_received`,
//!   `tern_payload_bytes_sent`, `tern_publishes_rejected`
//! - `tern_messages_dropped{reason}`, `tern_connections_closed{reason}`
//! - `tern_messages_queued`, `tern_messages_inflight`
//! - `tern_queued_bytes`, `tern_queued_bytes_limit` (`session.max_total_queued_bytes`),
//!   `tern_queue_budget_evictions`
//! - `tern_backpressure_pauses`, `tern_backpressure_timeouts`
//! - `tern_incomplete_packet_timeouts`: closed at the keep-alive or CONNECT deadline mid-packet
//! - `tern_auth{result}` (ok, failed, rate_limited)
//! - `tern_store_batches`, `tern_store_syncs`, `tern_store_queued_ops` (with the store on)
//! - the devices layer: `tern_gw_messages_ingested{route}`, `tern_gw_messages_refused{reason}`,
//!   `tern_gw_stored_bytes`, `tern_gw_devices`, `tern_gw_channels`,
//!   `tern_gw_retention_sweeps`, `tern_gw_retention_devices{action}`,
//!   `tern_gw_retention_messages`, the streams' `tern_gw_stream_messages{event}`, the account
//!   logs' `tern_gw_account_logs{event}`
//! - Teltonika channels: `tern_teltonika_connections`, `tern_teltonika_frames`,
//!   `tern_teltonika_records`, `tern_teltonika_refused{kind}`, `tern_teltonika_commands{outcome}`,
//!   `tern_teltonika_ack_latency_seconds` (histogram)
//! - cluster mode: `tern_cluster_nats_connected`, `tern_cluster_unavailable`,
//!   `tern_cluster_unavailable_periods`, `tern_cluster_messages_sent`,
//!   `tern_cluster_messages_received`, `tern_cluster_messages_stored`,
//!   `tern_cluster_store_retries`, `tern_cluster_takeovers`, `tern_cluster_dropped{queue}`, `tern_cluster_undecodable`,
//!   `tern_cluster_retained_written`, `tern_cluster_retained_applied`,
//!   `tern_cluster_sessions_resumed`, `tern_cluster_sessions_replayed`,
//!   `tern_cluster_sessions_lost`, `tern_cluster_session_writes`,
//!   `tern_cluster_wills_published`, `tern_cluster_errors`,
//!   `tern_cluster_cfg_written`, `tern_cluster_cfg_applied`, `tern_cluster_cfg_id_blocks`,
//!   `tern_cluster_share_redelivered`, `tern_cluster_share_kept`, `tern_cluster_gw_written`,
//!   `tern_cluster_gw_applied`, `tern_cluster_gw_position`, `tern_cluster_interest_accounts`
//! - `tern_build_info{version}`, `tern_start_time_seconds`, `process_resident_memory_bytes`,
//!   `process_open_fds`

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tern_broker::accounts::Directory;
use tern_broker::{Broker, DropReason};
use tern_gw::Gateway;
use tern_gw::metrics::{Refusal, Route};
use tern_net::metrics::{PROTOCOL_VERSIONS, version_label};
use tern_net::{Listener, NetMetrics, TlsContext};

/// The `Content-Type` of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Renders the metrics of one server.
#[derive(Debug)]
pub struct Exporter {
    registry: Registry,
}

impl Exporter {
    pub fn new(
        broker: Arc<Broker>,
        net: Arc<NetMetrics>,
        tls: Option<Arc<TlsContext>>,
        directory: Arc<Directory>,
        gateway: Arc<Gateway>,
        cluster: Option<Arc<tern_cluster::Cluster>>,
    ) -> Exporter {
        let mut registry = Registry::default();
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        registry.register_collector(Box::new(TernCollector {
            broker,
            net,
            tls,
            directory,
            gateway,
            cluster,
            started,
        }));
        Exporter { registry }
    }

    /// The metrics as text: OpenMetrics when `openmetrics`, else Prometheus 0.0.4.
    pub fn render(&self, openmetrics: bool) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        }
        Ok(out)
    }
}

#[derive(Debug)]
struct TernCollector {
    broker: Arc<Broker>,
    net: Arc<NetMetrics>,
    tls: Option<Arc<TlsContext>>,
    directory: Arc<Directory>,
    gateway: Arc<Gateway>,
    cluster: Option<Arc<tern_cluster::Cluster>>,
    started: f64,
}

fn load_u(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn load_i(g: &AtomicI64) -> i64 {
    g.load(Ordering::Relaxed)
}

fn gauge<N>(enc: &mut DescriptorEncoder, name: &str, help: &str, value: N) -> fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    let g = ConstGauge::new(value);
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let c = ConstCounter::new(value);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    series: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in series {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for TernCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let b = &self.broker.metrics;
        let net = &self.net;
        let by_listener_version = || {
            Listener::ALL.into_iter().flat_map(|l| {
                PROTOCOL_VERSIONS.into_iter().map(move |v| {
                    (
                        l,
                        v,
                        [("listener", l.name()), ("protocol", version_label(v))],
                    )
                })
            })
        };
        family(
            &mut enc,
            "tern_connections",
            "MQTT clients connected (CONNECT accepted), by listener and protocol version",
            MetricType::Gauge,
            by_listener_version()
                .map(|(l, v, labels)| (labels, ConstGauge::new(net.connected(l, v)))),
        )?;
        family(
            &mut enc,
            "tern_connects",
            "CONNECTs accepted, by listener and protocol version",
            MetricType::Counter,
            by_listener_version()
                .map(|(l, v, labels)| (labels, ConstCounter::new(net.connects_total(l, v)))),
        )?;
        gauge(
            &mut enc,
            "tern_network_connections",
            "MQTT network connections open, connected or not yet",
            load_i(&b.connections),
        )?;
        family(
            &mut enc,
            "tern_listener_accepted",
            "Sockets accepted, by listener",
            MetricType::Counter,
            Listener::ALL.map(|l| {
                (
                    [("listener", l.name())],
                    ConstCounter::new(net.accepted_total(l)),
                )
            }),
        )?;
        family(
            &mut enc,
            "tern_listener_refused",
            "Sockets closed at once because listeners.max_connections was reached",
            MetricType::Counter,
            Listener::ALL.map(|l| {
                (
                    [("listener", l.name())],
                    ConstCounter::new(net.refused_total(l)),
                )
            }),
        )?;
        if let Some(tls) = &self.tls {
            family(
                &mut enc,
                "tern_tls_handshake_failures",
                "TLS handshakes that failed or timed out, by listener",
                MetricType::Counter,
                [Listener::Mqtts, Listener::Https].map(|l| {
                    (
                        [("listener", l.name())],
                        ConstCounter::new(net.tls_failures_total(l)),
                    )
                }),
            )?;
            let (ok, failed) = tls.reload_counts();
            family(
                &mut enc,
                "tern_tls_reloads",
                "Certificate reloads (SIGHUP), by result",
                MetricType::Counter,
                [
                    ([("result", "ok")], ConstCounter::new(ok)),
                    ([("result", "error")], ConstCounter::new(failed)),
                ],
            )?;
        }
        gauge(
            &mut enc,
            "tern_sessions",
            "MQTT sessions, connected or not",
            load_i(&b.sessions),
        )?;
        gauge(
            &mut enc,
            "tern_subscriptions",
            "Subscriptions over every session",
            load_i(&b.subscriptions),
        )?;
        gauge(
            &mut enc,
            "tern_retained_messages",
            "Retained messages",
            load_i(&b.retained),
        )?;
        counter(
            &mut enc,
            "tern_messages_received",
            "PUBLISH packets received from clients",
            load_u(&b.messages_in),
        )?;
        counter(
            &mut enc,
            "tern_messages_sent",
            "PUBLISH packets sent to clients",
            load_u(&b.messages_out),
        )?;
        counter(
            &mut enc,
            "tern_payload_bytes_received",
            "Payload bytes of PUBLISH packets received",
            load_u(&b.bytes_in),
        )?;
        counter(
            &mut enc,
            "tern_payload_bytes_sent",
            "Payload bytes of PUBLISH packets sent",
            load_u(&b.bytes_out),
        )?;
        counter(
            &mut enc,
            "tern_publishes_rejected",
            "Publishes refused (reserved topic, access rights, invalid)",
            load_u(&b.publishes_rejected),
        )?;
        let auth = &self.directory.metrics;
        family(
            &mut enc,
            "tern_auth",
            "Token checks of MQTT CONNECT and REST calls, by result (rate_limited: refused unchecked, too many failures from that address)",
            MetricType::Counter,
            [
                ("ok", &auth.successes),
                ("failed", &auth.failures),
                ("rate_limited", &auth.rate_limited),
            ]
            .map(|(result, c)| ([("result", result)], ConstCounter::new(load_u(c)))),
        )?;
        let store = self.broker.store();
        if store.enabled() {
            let (batches, syncs) = store.stats();
            counter(
                &mut enc,
                "tern_store_batches",
                "Group commits written by the store",
                batches,
            )?;
            counter(
                &mut enc,
                "tern_store_syncs",
                "fsyncs done by the store",
                syncs,
            )?;
            gauge(
                &mut enc,
                "tern_store_queued_ops",
                "Changes waiting for the store's writer",
                store.queued() as i64,
            )?;
            let (failures, recoveries, refused) = store.failure_stats();
            gauge(
                &mut enc,
                "tern_store_failing",
                "1 while the store cannot write (disk full, I/O error) and retries, else 0",
                i64::from(store.failing()),
            )?;
            counter(
                &mut enc,
                "tern_store_write_failures",
                "Store writes or syncs that failed (each retry counts)",
                failures,
            )?;
            counter(
                &mut enc,
                "tern_store_recoveries",
                "Times the store wrote again after failing",
                recoveries,
            )?;
            counter(
                &mut enc,
                "tern_store_refused",
                "QoS 1/2 messages, persistent sessions, subscriptions and REST changes refused \
                 because the store was failing or too far behind",
                refused,
            )?;
        }
        family(
            &mut enc,
            "tern_messages_dropped",
            "Messages not delivered to a subscriber, by reason",
            MetricType::Counter,
            DropReason::ALL.map(|r| ([("reason", r.label())], ConstCounter::new(b.drops(r)))),
        )?;
        family(
            &mut enc,
            "tern_connections_closed",
            "Connections closed, by reason",
            MetricType::Counter,
            b.closes()
                .map(|(label, n)| ([("reason", label)], ConstCounter::new(n))),
        )?;
        gauge(
            &mut enc,
            "tern_messages_queued",
            "Deliveries waiting in session outboxes",
            load_i(&b.queued),
        )?;
        gauge(
            &mut enc,
            "tern_queued_bytes",
            "Bytes queued in every session outbox together",
            self.broker.queue_budget.queued() as i64,
        )?;
        gauge(
            &mut enc,
            "tern_queued_bytes_limit",
            "The broker-wide budget of queued bytes (session.max_total_queued_bytes)",
            self.broker.queue_budget.limit() as i64,
        )?;
        counter(
            &mut enc,
            "tern_queue_budget_evictions",
            "Queues dropped, largest first, and their clients closed as slow consumers because every queue together went past session.max_total_queued_bytes",
            load_u(&b.budget_evictions),
        )?;
        counter(
            &mut enc,
            "tern_backpressure_pauses",
            "Times a publisher stopped reading because a subscriber it publishes to was congested",
            load_u(&b.backpressure_pauses),
        )?;
        counter(
            &mut enc,
            "tern_backpressure_timeouts",
            "Publisher pauses that ran out (session.backpressure_timeout_ms); the subscriber's queue budgets decide from then on",
            load_u(&b.backpressure_timeouts),
        )?;
        counter(
            &mut enc,
            "tern_incomplete_packet_timeouts",
            "Connections closed at their keep-alive or CONNECT deadline with part of a packet received and the rest missing",
            load_u(&b.incomplete_packet_timeouts),
        )?;
        gauge(
            &mut enc,
            "tern_messages_inflight",
            "QoS 1/2 deliveries sent and not yet acknowledged",
            load_i(&b.inflight),
        )?;
        self.encode_gw(&mut enc)?;
        self.encode_cluster(&mut enc)?;
        family(
            &mut enc,
            "tern_build_info",
            "The running version of tern",
            MetricType::Gauge,
            [(
                [("version", env!("CARGO_PKG_VERSION"))],
                ConstGauge::new(1i64),
            )],
        )?;
        gauge(
            &mut enc,
            "tern_start_time_seconds",
            "When the server started, unix seconds",
            self.started,
        )?;
        if let Some(rss) = resident_memory_bytes() {
            gauge(
                &mut enc,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                rss,
            )?;
        }
        if let Some(fds) = open_fds() {
            gauge(&mut enc, "process_open_fds", "Open file descriptors", fds)?;
        }
        Ok(())
    }
}

impl TernCollector {
    /// Cluster mode's families (`tern_cluster_*`), only in cluster mode.
    fn encode_cluster(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let m = &cluster.metrics;
        gauge(
            enc,
            "tern_cluster_nats_connected",
            "1 while this node is connected to a NATS server",
            i64::from(m.connected.load(Ordering::Relaxed)),
        )?;
        gauge(
            enc,
            "tern_cluster_unavailable",
            "1 while this node is cut off from the cluster (clients closed with 0x88, /health 503)",
            i64::from(self.broker.is_unavailable()),
        )?;
        counter(
            enc,
            "tern_cluster_unavailable_periods",
            "Times this node marked itself unavailable (cluster.unavailable_after)",
            load_u(&m.unavailable_total),
        )?;
        counter(
            enc,
            "tern_cluster_messages_sent",
            "Publications of this node sent to the other nodes",
            load_u(&m.sent),
        )?;
        counter(
            enc,
            "tern_cluster_messages_received",
            "Publications of other nodes received and routed here",
            load_u(&m.received),
        )?;
        counter(
            enc,
            "tern_cluster_undecodable",
            "Messages or retained entries from NATS that did not decode (skipped)",
            load_u(&m.undecodable),
        )?;
        family(
            enc,
            "tern_cluster_dropped",
            "Publications (and, queue cfg, account and token changes; queue sessions, session changes for the record writer, whose next checkpoint then writes every record; queue gw, devices-layer changes, also when given up after retries) not sent to the other nodes because the outgoing queue was full (cluster.queue; the newest is dropped)",
            MetricType::Counter,
            [
                (
                    [("queue", "live")],
                    ConstCounter::new(load_u(&m.dropped_live)),
                ),
                (
                    [("queue", "retained")],
                    ConstCounter::new(load_u(&m.dropped_retained)),
                ),
                (
                    [("queue", "durable")],
                    ConstCounter::new(load_u(&m.dropped_durable)),
                ),
                (
                    [("queue", "cfg")],
                    ConstCounter::new(load_u(&m.dropped_cfg)),
                ),
                (
                    [("queue", "share")],
                    ConstCounter::new(load_u(&m.dropped_share)),
                ),
                (
                    [("queue", "sessions")],
                    ConstCounter::new(load_u(&m.dropped_sessions)),
                ),
                ([("queue", "gw")], ConstCounter::new(load_u(&m.dropped_gw))),
            ],
        )?;
        counter(
            enc,
            "tern_cluster_messages_stored",
            "QoS 1/2 publications of this node stored in the cluster's shard streams",
            load_u(&m.stored),
        )?;
        counter(
            enc,
            "tern_cluster_store_retries",
            "Appends to a shard stream sent again after an error or a missing acknowledgement",
            load_u(&m.store_retries),
        )?;
        counter(
            enc,
            "tern_cluster_takeovers",
            "Sessions ended here because their client connected to another node (its connection closed with 0x8E)",
            load_u(&m.takeovers),
        )?;
        counter(
            enc,
            "tern_cluster_retained_written",
            "Retained puts and deletes written to the cluster's retained bucket",
            load_u(&m.retained_written),
        )?;
        counter(
            enc,
            "tern_cluster_retained_applied",
            "Retained puts and deletes applied from the cluster's retained bucket",
            load_u(&m.retained_applied),
        )?;
        counter(
            enc,
            "tern_cluster_sessions_resumed",
            "Persistent sessions resumed on this node from the cluster's record (their client was last on another node, or on this one before a restart)",
            load_u(&m.sessions_adopted),
        )?;
        counter(
            enc,
            "tern_cluster_sessions_replayed",
            "Messages queued by the replays of resumed sessions (from their cursors in the shard streams)",
            load_u(&m.sessions_replayed),
        )?;
        counter(
            enc,
            "tern_cluster_sessions_lost",
            "Sessions this node gave up because another node's record of them was newer",
            load_u(&m.sessions_lost),
        )?;
        counter(
            enc,
            "tern_cluster_session_writes",
            "Session record writes and deletes (connects, subscriptions, cursor checkpoints)",
            load_u(&m.session_writes),
        )?;
        counter(
            enc,
            "tern_cluster_wills_published",
            "Wills of clients whose node died (or of sessions left after a restart) published by this node",
            load_u(&m.wills_published),
        )?;
        counter(
            enc,
            "tern_cluster_cfg_written",
            "Account and token changes of this node written to the cluster's config bucket (tern_cfg)",
            load_u(&m.cfg_written),
        )?;
        counter(
            enc,
            "tern_cluster_cfg_applied",
            "Account and token changes of other nodes applied here from the config bucket",
            load_u(&m.cfg_applied),
        )?;
        counter(
            enc,
            "tern_cluster_share_redelivered",
            "$share QoS 1/2 messages chosen for a node that went away before its members acknowledged them, delivered here",
            load_u(&m.share_redelivered),
        )?;
        gauge(
            enc,
            "tern_cluster_share_kept",
            "$share QoS 1/2 messages kept for other nodes until their members acknowledge them (at most cluster.queue)",
            load_u(&m.share_kept),
        )?;
        counter(
            enc,
            "tern_cluster_gw_written",
            "Devices-layer changes of this node appended to the cluster's devices log (TERN_GW)",
            load_u(&m.gw_written),
        )?;
        counter(
            enc,
            "tern_cluster_gw_applied",
            "Devices-layer changes of other nodes applied here (from the devices log, or the tern_gw bucket at start)",
            load_u(&m.gw_applied),
        )?;
        gauge(
            enc,
            "tern_cluster_interest_accounts",
            "Accounts whose QoS 0 messages this node takes from the other nodes (those with subscribers here, and the accounts below them)",
            load_u(&m.interest_accounts),
        )?;
        gauge(
            enc,
            "tern_cluster_gw_position",
            "The position in the devices log (TERN_GW) read up to here",
            load_u(&m.gw_position),
        )?;
        counter(
            enc,
            "tern_cluster_cfg_id_blocks",
            "Blocks of account or token ids this node reserved in the config bucket",
            load_u(&m.cfg_id_blocks),
        )?;
        counter(
            enc,
            "tern_cluster_errors",
            "Failed NATS operations (publish, retained write, watch)",
            load_u(&m.errors),
        )
    }

    /// The devices layer's families (`tern_gw_*`).
    fn encode_gw(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let m = &self.gateway.metrics;
        family(
            enc,
            "tern_gw_messages_ingested",
            "Device and channel messages taken in (stored where their device keeps messages, published), by route",
            MetricType::Counter,
            Route::ALL.map(|r| ([("route", r.label())], ConstCounter::new(m.ingested(r)))),
        )?;
        family(
            enc,
            "tern_gw_messages_refused",
            "Device and channel messages refused, by reason (quota: messages_bytes used up; invalid: a bad message, too many, or a disabled channel)",
            MetricType::Counter,
            Refusal::ALL.map(|r| ([("reason", r.label())], ConstCounter::new(m.refused(r)))),
        )?;
        let (devices, channels, bytes) = self.gateway.gauges();
        gauge(
            enc,
            "tern_gw_stored_bytes",
            "Bytes of stored device messages and channel buffers on this node (as the messages_bytes quota counts them)",
            bytes as i64,
        )?;
        gauge(enc, "tern_gw_devices", "Devices", devices as i64)?;
        gauge(enc, "tern_gw_channels", "Channels", channels as i64)?;
        counter(
            enc,
            "tern_gw_retention_sweeps",
            "Retention sweeps run (every gw.retention_interval)",
            load_u(&m.sweeps),
        )?;
        family(
            enc,
            "tern_gw_retention_devices",
            "Devices (and channel buffers) whose messages a sweep deleted, by action (expired: past messages_ttl; rotated: beyond messages_rotate)",
            MetricType::Counter,
            [
                (
                    [("action", "expired")],
                    ConstCounter::new(load_u(&m.expired)),
                ),
                (
                    [("action", "rotated")],
                    ConstCounter::new(load_u(&m.rotated)),
                ),
            ],
        )?;
        counter(
            enc,
            "tern_gw_retention_messages",
            "Messages the retention sweeps deleted, expired or rotated",
            load_u(&m.swept_messages),
        )?;
        let sm = &self.gateway.stream_metrics;
        family(
            enc,
            "tern_gw_stream_messages",
            "Stream queue events (queued, delivered: a 200 answer, not_valid: kept out by validate_message) in messages; failures (POSTs not answered 200), overflows (queue_max_bytes passed, oldest dropped) and expiries (queue_ttl) in occurrences",
            MetricType::Counter,
            [
                ("queued", &sm.queued),
                ("delivered", &sm.delivered),
                ("not_valid", &sm.not_valid),
                ("failures", &sm.failures),
                ("overflows", &sm.overflows),
                ("expiries", &sm.expiries),
            ]
            .map(|(e, v)| ([("event", e)], ConstCounter::new(load_u(v)))),
        )?;
        let am = self.gateway.account_log_metrics();
        family(
            enc,
            "tern_gw_account_logs",
            "Records of the REST call and MQTT sessions logs: queued, stored, and dropped because the log queue was full (overflow policy: drop the newest)",
            MetricType::Counter,
            [
                ("queued", &am.queued),
                ("stored", &am.stored),
                ("dropped", &am.dropped),
            ]
            .map(|(e, v)| ([("event", e)], ConstCounter::new(load_u(v)))),
        )?;
        let wm = self.gateway.webhook_metrics();
        family(
            enc,
            "tern_gw_webhook_calls",
            "Webhook calls by outcome: queued (a trigger matched), done (every step answered), failed (4xx or validate break: dropped), dropped (still failing after 5 retries), overflow (pending queue full: not queued, policy drop-newest); retries counts step attempts retried",
            MetricType::Counter,
            [
                ("queued", &wm.queued),
                ("done", &wm.done),
                ("failed", &wm.failed),
                ("dropped", &wm.dropped),
                ("overflow", &wm.overflow),
                ("retries", &wm.retries),
            ]
            .map(|(e, v)| ([("outcome", e)], ConstCounter::new(load_u(v)))),
        )?;
        gauge(
            enc,
            "tern_gw_webhook_pending",
            "Webhook calls queued durably and not yet done, all webhooks",
            load_u(&wm.pending) as i64,
        )?;
        self.encode_trackers(enc)
    }

    /// The Teltonika channels' families (`tern_teltonika_*`).
    fn encode_trackers(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let t = self.gateway.tracker_metrics();
        gauge(
            enc,
            "tern_teltonika_connections",
            "Open tracker connections, all Teltonika channels",
            self.gateway.tracker_connections() as i64,
        )?;
        counter(
            enc,
            "tern_teltonika_frames",
            "AVL frames stored and ACKed",
            load_u(&t.frames),
        )?;
        counter(
            enc,
            "tern_teltonika_records",
            "AVL records stored and ACKed",
            load_u(&t.records),
        )?;
        let refused: Vec<(&'static str, u64)> = {
            let mut v: Vec<_> = t.refused.lock().iter().map(|(k, n)| (*k, *n)).collect();
            v.sort_unstable();
            v
        };
        family(
            enc,
            "tern_teltonika_refused",
            "Bad tracker input refused (no ACK, connection closed), by kind (crc, count, preamble, oversize, codec, truncated, frame_timeout, handshake_timeout, ...)",
            MetricType::Counter,
            refused
                .into_iter()
                .map(|(k, n)| ([("kind", k)], ConstCounter::new(n))),
        )?;
        let commands: Vec<(&'static str, u64)> = {
            let mut v: Vec<_> = t.commands.lock().iter().map(|(k, n)| (*k, *n)).collect();
            v.sort_unstable();
            v
        };
        family(
            enc,
            "tern_teltonika_commands",
            "Codec 12 commands by outcome (executed, timeout, closed, not_connected, busy, expired)",
            MetricType::Counter,
            commands
                .into_iter()
                .map(|(k, n)| ([("outcome", k)], ConstCounter::new(n))),
        )?;
        let mut buckets: Vec<(f64, u64)> = tern_gw::ACK_BUCKETS
            .iter()
            .zip(&t.ack_buckets)
            .map(|(le, n)| (*le, load_u(n)))
            .collect();
        buckets.push((
            f64::INFINITY,
            load_u(&t.ack_buckets[tern_gw::ACK_BUCKETS.len()]),
        ));
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = load_u(&t.ack_sum_micros) as f64 / 1e6;
        let mut m = enc.encode_descriptor(
            "tern_teltonika_ack_latency_seconds",
            "From a frame's last byte to its ACK written (the records stored durably in between)",
            None,
            MetricType::Histogram,
        )?;
        m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }
}

/// VmRSS from /proc (Linux); `None` elsewhere.
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Entries of /proc/self/fd (Linux); `None` elsewhere.
fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}
