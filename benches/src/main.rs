//! tern-bench: the load generator for tern (and any MQTT broker), on tokio and `tern-codec`.
//!
//! One run is one scenario and prints one JSON line on stdout; see benches/README.md for the
//! scenarios, the flags and every field. The clients are our own lean ones, not a general MQTT
//! library: PUBLISH packets are encoded once and patched in place, received packets are parsed
//! in place, and writes are batched, so on a shared machine the generator costs the broker as
//! little CPU as it can.
//!
//! Layout:
//! - `wire`: what goes on the wire on the hot paths (templates, stamps, in-place parsing)
//! - `client`: connecting and subscribing
//! - `flow`: publisher and subscriber tasks (fan-in, fan-out, pairs, latency)
//! - `retained`, `storm`: the retained flood, the connection storm and idle memory
//! - `gw`: the devices layer (HTTP channel ingest, a device's history read); `http`: its
//!   HTTP/1.1 client
//! - `track`: exact loss, duplicate and order accounting, timelines, latency percentiles
//! - `relay`: `tern-bench relay --listen ADDR`, the minimal forwarder that measures the floor
//! - `report`: the JSON line; `rss`: the broker's memory from /proc

mod client;
mod flow;
mod gw;
mod gw_replicate;
mod gw_stream;
mod http;
mod relay;
mod report;
mod resume;
mod retained;
mod rss;
mod storm;
mod track;
mod webhook;
mod wire;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use tern_codec::{ProtocolVersion, QoS};

use crate::client::ConnectOptions;
use crate::flow::{FlowConfig, PubSpec, Shared, SubSpec};
use crate::report::{FlowParams, Head};
use crate::rss::RssSampler;

/// Load generator for MQTT brokers: one scenario per run, one JSON line on stdout.
#[derive(Debug, Parser)]
#[command(name = "tern-bench", version, about)]
struct Cli {
    /// The scenario to run.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: SocketAddr,
    /// Subscribers connect here instead of `--broker` (another node of a tern cluster: the
    /// messages cross nodes); several, comma-separated: subscribers take them in turn.
    #[arg(long, value_delimiter = ',')]
    sub_broker: Vec<SocketAddr>,
    /// QoS of every PUBLISH and subscription.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes (at least 24: sequence number and send time live there).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// The "N" of the scenario: fan-in publishers, fan-out subscribers, pairs, retained-flood
    /// publishers.
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// Seconds each publisher publishes (fan-in, fan-out, pairs, latency).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Messages per publisher (default: no limit but the duration); for retained-flood, the
    /// number of retained topics (default 100000).
    #[arg(long)]
    messages: Option<u64>,
    /// Offered rate in msg/s over all publishers; 0 = as fast as flow control allows.
    /// Default: 1000 for latency, 0 otherwise.
    #[arg(long)]
    rate: Option<f64>,
    /// MQTT version.
    #[arg(long, value_enum, default_value = "3.1.1")]
    mqtt: Version,
    /// Unacknowledged QoS 1/2 messages per publisher (capped by the broker's Receive Maximum).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    inflight: u16,
    /// Worker threads of the generator (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// The broker's process id: its RSS is read from /proc/<pid>/status.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// connect-storm, idle-memory: connections to open (idle-memory: default 10000).
    #[arg(long)]
    connections: Option<u32>,
    /// idle-memory: seconds the connections are held idle while the broker's VmRSS is sampled.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// connect-storm, idle-memory: source addresses 127.0.0.2 .. 127.0.0.(1+N); 0 = let the
    /// kernel pick. Raised to one address per 20,000 connections (an address has ~28k
    /// ephemeral ports towards one broker port).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(0..=250))]
    source_ips: u8,
    /// connect-storm: handshakes in parallel.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// retained-flood: the subscriber's filter.
    #[arg(long, default_value = "#")]
    filter: String,
    /// Seconds to wait, after the publishers stop, for acknowledgements and deliveries.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Seconds without a new message after which a subscriber stops once publishers are done.
    #[arg(long, default_value_t = 2.0)]
    idle: f64,
    /// Seconds: bound on connecting, on the storm, and on each retained-flood phase.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Subscribers keep their sessions (clean start off; MQTT 5: expiry 300 s), so a broker
    /// with a durable store writes their QoS 1/2 messages down. The sessions stay on the broker
    /// after the run (MQTT 3.1.1: until it discards them).
    #[arg(long)]
    persistent: bool,
    /// Subscribers subscribe with a persistent session, disconnect while the publishers run,
    /// then reconnect and drain what the broker queued (offline sessions; implies
    /// --persistent).
    #[arg(long)]
    offline: bool,
    /// Payloads are JSON objects `{"s":"<stamp in hex>","v":42,"p":"xx…"}` (at least 70
    /// bytes), so that `$filter/payload=` subscriptions have something to evaluate.
    #[arg(long)]
    json: bool,
    /// Put in front of every subscriber's topic filter, e.g. `$filter/payload=v%3E10/` or
    /// `$share/g/`; `{i}` is replaced by the subscriber's index (distinct filters).
    #[arg(long, default_value = "")]
    sub_prefix: String,
    /// Keep alive in CONNECT, seconds (0: none, so idle clients need no PINGREQ).
    #[arg(long, default_value_t = 0)]
    keep_alive: u16,
    /// Free text copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
    /// gw-ingest, gw-history: tern's HTTP listener (REST and the channels' `uri`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// gw-ingest, gw-history: a master token for REST and the MQTT subscriber
    /// (`--token "$(cat data/master-token)"`).
    #[arg(long)]
    token: Option<String>,
    /// gw-ingest: messages per POST.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// gw-history: timed reads (the median is reported).
    #[arg(long, default_value_t = 5)]
    reads: u32,
    /// gw-replicate: node B's HTTP listener (cluster mode), where node A's changes are read.
    #[arg(long, default_value = "127.0.0.1:8081")]
    peer_http: SocketAddr,
    /// gw-stream-mqtt: the broker the MQTT stream publishes to (e.g. a Mosquitto).
    #[arg(long, default_value = "127.0.0.1:1883")]
    target: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// N publishers -> 1 subscriber, one topic.
    FanIn,
    /// 1 publisher -> N subscribers, one topic.
    FanOut,
    /// N publisher/subscriber pairs, one topic each.
    Pairs,
    /// 1 publisher -> 1 subscriber at a fixed rate; latency percentiles.
    Latency,
    /// K connections as fast as possible; rate and broker RSS per connection.
    ConnectStorm,
    /// K connections held idle; the broker's VmRSS per connection, sampled while held.
    IdleMemory,
    /// Store N retained messages, then time a `#` subscriber receiving them all.
    RetainedFlood,
    /// N clients POST batches to an HTTP channel of tern; stored and published msg/s.
    GwIngest,
    /// Fill a device of tern with N messages, then time reading them all.
    GwHistory,
    /// Queue N messages on an HTTP stream of tern, then time its drain to a local receiver.
    GwStreamHttp,
    /// Queue N messages on an MQTT stream (QoS 1) of tern, then time its drain to `--target`.
    GwStreamMqtt,
    /// N webhooks sharing a name call a local receiver once per device message; calls/s.
    GwWebhook,
    /// Cluster: post N messages to a device on node A (`--http`), time until node B
    /// (`--peer-http`) applied them; one message's way from A to B.
    GwReplicate,
    /// Cluster: N persistent sessions on `--broker` (node A, `--broker-pid`), node A killed,
    /// the clients resume on `--sub-broker`; time from the kill to every session resumed and
    /// its missed message delivered.
    Resume,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::FanIn => "fan-in",
            Scenario::FanOut => "fan-out",
            Scenario::Pairs => "pairs",
            Scenario::Latency => "latency",
            Scenario::ConnectStorm => "connect-storm",
            Scenario::IdleMemory => "idle-memory",
            Scenario::RetainedFlood => "retained-flood",
            Scenario::GwIngest => "gw-ingest",
            Scenario::GwHistory => "gw-history",
            Scenario::GwStreamHttp => "gw-stream-http",
            Scenario::GwStreamMqtt => "gw-stream-mqtt",
            Scenario::GwWebhook => "gw-webhook",
            Scenario::GwReplicate => "gw-replicate",
            Scenario::Resume => "resume",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Version {
    #[value(name = "3.1.1", alias = "311", alias = "4")]
    V311,
    #[value(name = "5", alias = "5.0")]
    V5,
}

/// `tern-bench relay --listen ADDR`: see [`relay`].
#[derive(Debug, Parser)]
#[command(name = "tern-bench relay")]
struct RelayCli {
    /// Address to accept MQTT connections on.
    #[arg(long, default_value = "127.0.0.1:1883")]
    listen: SocketAddr,
}

fn main() -> std::process::ExitCode {
    // The relay is a server, not a scenario: its own arguments, no runtime, no JSON line.
    if std::env::args_os().nth(1).is_some_and(|a| a == "relay") {
        let cli = RelayCli::parse_from(std::env::args_os().skip(1));
        return match relay::run(cli.listen) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tern-bench relay: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let head = Head {
        scenario: cli.scenario.name(),
        label: cli.label.clone(),
        broker: cli.broker.to_string(),
        mqtt: match cli.mqtt {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        },
        qos: cli.qos,
        payload: cli.payload,
        threads,
        persistent: cli.persistent,
    };
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("building the runtime")
        .and_then(|rt| rt.block_on(run(&cli, head.clone())));
    match outcome {
        Ok(line) => {
            // A closed stdout (`| head`) is not worth a panic.
            let _ = writeln!(std::io::stdout(), "{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            // Still one JSON line, so a script collecting lines sees which scenario failed.
            let line = serde_json::json!({
                "scenario": head.scenario,
                "label": head.label,
                "broker": head.broker,
                "qos": head.qos,
                "error": format!("{e:#}"),
            });
            let _ = writeln!(std::io::stdout(), "{line}");
            eprintln!("tern-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn secs(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("--{what} must be a positive number"))
}

async fn run(cli: &Cli, head: Head) -> Result<String> {
    let version = match cli.mqtt {
        Version::V311 => ProtocolVersion::V311,
        Version::V5 => ProtocolVersion::V5,
    };
    let qos = QoS::from_u8(cli.qos).context("--qos must be 0, 1 or 2")?;
    if cli.payload < wire::Stamp::LEN {
        bail!("--payload must be at least {} bytes", wire::Stamp::LEN);
    }
    let timeout = secs(cli.timeout, "timeout")?;
    let connect = ConnectOptions {
        broker: cli.broker,
        version,
        keep_alive: cli.keep_alive,
        clean_start: true,
        session_expiry: 0,
        timeout: timeout.min(Duration::from_secs(30)),
        username: None,
    };
    // Random enough to tell runs apart on a shared broker.
    let tag = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| {
            d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16)
        })
        ^ std::process::id();
    let flow_cfg = FlowConfig {
        connect: connect.clone(),
        qos,
        payload: cli.payload,
        window: cli.inflight,
        drain: secs(cli.drain, "drain")?,
        idle: secs(cli.idle, "idle")?,
        tag,
        persistent: cli.persistent,
        json: cli.json,
        offline: cli.offline,
        sub_broker: cli.sub_broker.clone(),
    };
    let line = match cli.scenario {
        Scenario::ConnectStorm | Scenario::IdleMemory => {
            let idle = cli.scenario == Scenario::IdleMemory;
            let connections = cli.connections.unwrap_or(if idle { 10_000 } else { 5_000 });
            // One descriptor per connection, and a few for the runtime.
            let fd_limit = storm::raise_fd_limit(u64::from(connections) + 256);
            if let Some(limit) = fd_limit
                && limit < u64::from(connections) + 16
            {
                bail!(
                    "the file descriptor limit ({limit}) is below --connections ({connections}): raise the hard limit first (ulimit -Hn, which needs CAP_SYS_RESOURCE)"
                );
            }
            let source_ips = if cli.source_ips == 0 && connections <= 20_000 {
                0
            } else {
                cli.source_ips
                    .max(connections.div_ceil(20_000).min(250) as u8)
            };
            serde_json::to_string(
                &storm::run(storm::StormParams {
                    head,
                    connect,
                    connections,
                    source_ips,
                    concurrency: cli.concurrency,
                    timeout,
                    tag,
                    broker_pid: cli.broker_pid,
                    hold: if idle {
                        secs(cli.hold, "hold")?.max(Duration::from_secs(2))
                    } else {
                        Duration::from_secs(1)
                    },
                    fd_limit,
                })
                .await?,
            )?
        }
        Scenario::RetainedFlood => serde_json::to_string(
            &retained::run(retained::RetainedParams {
                head,
                flow: flow_cfg,
                topics: cli.messages.unwrap_or(100_000).max(1),
                publishers: cli.clients,
                filter: cli.filter.clone(),
                timeout,
                broker_pid: cli.broker_pid,
            })
            .await?,
        )?,
        Scenario::GwIngest | Scenario::GwHistory | Scenario::GwWebhook => {
            let params = gw::GwParams {
                head,
                http: cli.http,
                token: cli.token.clone(),
                connect,
                clients: cli.clients,
                batch: cli.batch,
                duration: secs(cli.duration, "duration")?,
                idle: secs(cli.idle, "idle")?,
                tag,
            };
            if cli.scenario == Scenario::GwIngest {
                serde_json::to_string(&gw::ingest(params).await?)?
            } else if cli.scenario == Scenario::GwWebhook {
                let messages = cli.messages.unwrap_or(10_000).max(1);
                serde_json::to_string(&webhook::run(params, messages).await?)?
            } else {
                let messages = cli.messages.unwrap_or(100_000).max(1);
                serde_json::to_string(&gw::history(params, messages, cli.reads).await?)?
            }
        }
        Scenario::GwStreamHttp | Scenario::GwStreamMqtt => serde_json::to_string(
            &gw_stream::run(gw_stream::StreamParams {
                head,
                http: cli.http,
                token: cli.token.clone(),
                target: cli.target,
                connect,
                messages: cli.messages.unwrap_or(100_000).max(1),
                mqtt: cli.scenario == Scenario::GwStreamMqtt,
                timeout,
                tag,
            })
            .await?,
        )?,
        Scenario::GwReplicate => serde_json::to_string(
            &gw_replicate::run(gw_replicate::ReplicateParams {
                head,
                http: cli.http,
                peer: cli.peer_http,
                token: cli.token.clone(),
                messages: cli.messages.unwrap_or(100_000).max(1),
                batch: cli.batch,
                singles: cli.reads,
                timeout,
                tag,
            })
            .await?,
        )?,
        Scenario::Resume => {
            let (Some(&other), Some(victim)) = (cli.sub_broker.first(), cli.broker_pid) else {
                bail!("resume needs --sub-broker (node B) and --broker-pid (node A, killed)");
            };
            let mut head = head;
            head.mqtt = "5";
            let mut connect = connect;
            connect.version = ProtocolVersion::V5;
            connect.clean_start = false;
            connect.session_expiry = 3600;
            serde_json::to_string(
                &resume::run(resume::ResumeParams {
                    head,
                    connect,
                    other,
                    clients: cli.clients,
                    victim,
                    settle: Duration::from_secs(2),
                    timeout,
                    tag,
                })
                .await?,
            )?
        }
        s => serde_json::to_string(&run_flow(cli, s, head, flow_cfg).await?)?,
    };
    Ok(line)
}

/// Fan-in, fan-out, pairs, latency: the topology, then the flow engine.
async fn run_flow(
    cli: &Cli,
    scenario: Scenario,
    head: Head,
    cfg: FlowConfig,
) -> Result<report::FlowReport> {
    let tag = cfg.tag;
    let n = cli.clients.max(1);
    let base = format!("tern-bench/{tag:08x}");
    let rate = match (scenario, cli.rate) {
        (_, Some(r)) if r > 0.0 => Some(r),
        (Scenario::Latency, None) => Some(1000.0),
        _ => None,
    };
    let (publishers, subscribers) = match scenario {
        Scenario::FanIn => (n, 1),
        Scenario::FanOut => (1, n),
        Scenario::Pairs => (n, n),
        _ => (1, 1),
    };
    let topic = |i: u32| match scenario {
        Scenario::Pairs => format!("{base}/pair/{i}"),
        _ => format!("{base}/{}", scenario.name()),
    };
    let pubs: Vec<PubSpec> = (0..publishers)
        .map(|i| PubSpec {
            id: i,
            client_id: format!("tb-{tag:08x}-pub-{i}"),
            topic: topic(i),
            retain: false,
            indexed: None,
            max_messages: cli.messages.unwrap_or(u64::MAX),
            rate: rate.map_or(0.0, |r| r / f64::from(publishers)),
        })
        .collect();
    let subs: Vec<SubSpec> = (0..subscribers)
        .map(|i| SubSpec {
            client_id: format!("tb-{tag:08x}-sub-{i}"),
            filter: format!(
                "{}{}",
                cli.sub_prefix.replace("{i}", &i.to_string()),
                topic(i)
            ),
            publishers: match scenario {
                Scenario::Pairs => i..i + 1,
                _ => 0..publishers,
            },
        })
        .collect();
    let duration = secs(cli.duration, "duration")?;
    let inflight = (cfg.qos != QoS::AtMostOnce).then_some(cfg.window);
    let cfg = Arc::new(cfg);
    let shared = Shared::new(pubs.len());
    let rss = RssSampler::start(cli.broker_pid);
    let (pubs, subs) = flow::run(&cfg, &shared, pubs, subs, duration).await?;
    let rss = rss.finish();
    Ok(report::flow(
        FlowParams {
            head,
            inflight,
            rate,
            duration_ns: duration.as_nanos() as u64,
        },
        &shared,
        &pubs,
        &subs,
        rss,
    ))
}
