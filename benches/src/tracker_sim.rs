//! tern-tracker-sim: many simulated Teltonika trackers at once (docs/teltonika.md), for load
//! tests and walkthroughs of a Teltonika channel.
//!
//! Every tracker connects over TCP, sends its IMEI and waits for the server's accept byte; once
//! all have (or failed), they start together. Each sends an AVL frame of `--records` records
//! every `1 / --rate` seconds, the trackers spread evenly over that period (`--rate 0`: the
//! next one as soon as the last was ACKed, no spreading) and waits for the server's record ACK
//! (a 4-byte count) before the next one, as a real device does (one frame in flight), until it
//! has sent `--packets` frames or `--duration` is over.
//! With `--idle` it sends nothing and holds the connection for `--duration` (the cost of an
//! idle connection). A Codec 12 command from the server is answered at any time with a
//! Codec 12 response (`sim: <command>`), as a device answers a configuration command.
//! Positions move slowly around a start point per tracker, so a track shows on a map. At the
//! end it prints one JSON line: trackers connected and refused, frames and records sent and
//! acknowledged, commands answered, and the ACK latency.
//!
//! ```sh
//! tern-tracker-sim --server 127.0.0.1:20100 --trackers 100 --rate 1 --records 1 --duration 60
//! tern-tracker-sim --server 127.0.0.1:20100 --trackers 1000 --packets 10 --records 10 --rate 0
//! tern-tracker-sim --server 127.0.0.1:20100 --trackers 10000 --idle --duration 30
//! tern-tracker-sim --trackers 3 --list-imeis
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::{Buf, BytesMut};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use tern_teltonika::{
    AvlCodec, AvlPacket, CommandType, Frame, FrameDecoder, Gps, Imei, IoElement, IoValue, Record,
    encode_avl, encode_codec12, encode_imei,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Simulated Teltonika trackers: connect, send AVL frames, wait for ACKs.
#[derive(Debug, Clone, Parser)]
#[command(name = "tern-tracker-sim", version, about)]
struct Cli {
    /// The Teltonika channel's address (its `uri`: `host:port`, a name or an IP address).
    #[arg(long, default_value = "127.0.0.1:20100")]
    server: String,
    /// How many trackers connect at once.
    #[arg(long, default_value_t = 10)]
    trackers: u32,
    /// AVL frames per second per tracker; 0: the next frame as soon as the last was ACKed.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Records per frame (1-255).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=255))]
    records: u8,
    /// Frames per tracker; a tracker stops after this many (`--duration` is then a cap).
    #[arg(long)]
    packets: Option<u64>,
    /// Seconds to send for (to hold the connections for, with `--idle`), from the moment every
    /// tracker has connected.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Connect and handshake, then send nothing for `--duration` (commands are still answered):
    /// what an idle tracker connection costs the server.
    #[arg(long)]
    idle: bool,
    /// The codec of the AVL frames.
    #[arg(long, value_enum, default_value_t = CodecArg::Codec8e)]
    codec: CodecArg,
    /// IMEI of the first tracker; the others count up from it (15 digits).
    #[arg(long, default_value_t = 352_093_080_000_000)]
    imei_base: u64,
    /// Print the IMEIs of the `--trackers` trackers, one a line, and exit (to create their
    /// devices first).
    #[arg(long)]
    list_imeis: bool,
    /// Connections opened in parallel at the start.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// How long to wait for an accept byte or an ACK, seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CodecArg {
    #[value(name = "8")]
    Codec8,
    #[value(name = "8e")]
    Codec8e,
    #[value(name = "16")]
    Codec16,
}

impl CodecArg {
    fn codec(self) -> AvlCodec {
        match self {
            CodecArg::Codec8 => AvlCodec::Codec8,
            CodecArg::Codec8e => AvlCodec::Codec8Extended,
            CodecArg::Codec16 => AvlCodec::Codec16,
        }
    }
}

/// The JSON line printed at the end.
#[derive(Debug, Default, Serialize)]
struct Report {
    server: String,
    trackers: u32,
    imei_first: String,
    imei_last: String,
    /// `send` or `idle`.
    mode: &'static str,
    records_per_frame: u8,
    /// Frames per tracker (`--packets`), when set.
    packets: Option<u64>,
    /// Frames per second per tracker; 0: as fast as the ACKs come.
    rate: f64,
    connected: u64,
    refused: u64,
    failed: u64,
    /// The connect phase: the first connect to the last accept byte.
    connect_s: f64,
    frames_sent: u64,
    records_sent: u64,
    /// Records in frames whose ACK carried their count. tern ACKs a frame only once its
    /// records are durable, so against tern this is also the count stored.
    records_acked: u64,
    /// ACKs whose count was not the frame's record count.
    ack_mismatches: u64,
    commands_answered: u64,
    /// The send phase: from the start (every tracker connected) to the last ACK, or the idle
    /// hold.
    window_s: f64,
    records_acked_per_s: f64,
    ack_latency_us: Option<Latency>,
    errors: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Latency {
    count: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

/// Counters shared by every tracker task.
#[derive(Debug, Default)]
struct Counters {
    connected: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    frames_sent: AtomicU64,
    records_sent: AtomicU64,
    records_acked: AtomicU64,
    ack_mismatches: AtomicU64,
    commands_answered: AtomicU64,
}

struct Shared {
    cli: Cli,
    counters: Counters,
    /// Every tracker's ACK latencies, merged in as it ends (never locked across an await).
    latency: std::sync::Mutex<Histogram<u64>>,
    errors: std::sync::Mutex<Vec<String>>,
    connect: Semaphore,
}

impl Shared {
    fn error(&self, n: u32, err: &anyhow::Error) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < 10 {
            errors.push(format!("tracker {n}: {err:#}"));
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.list_imeis {
        for n in 0..cli.trackers {
            println!("{}", imei(&cli, n)?.as_str());
        }
        return Ok(());
    }
    let report = run(cli).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Tracker `n`'s IMEI.
fn imei(cli: &Cli, n: u32) -> Result<Imei> {
    Imei::new(&(cli.imei_base + u64::from(n)).to_string()).context("IMEI (15-17 digits)")
}

async fn run(cli: Cli) -> Result<Report> {
    if !(cli.rate >= 0.0 && cli.rate.is_finite()) {
        bail!("--rate must be 0 or a positive number");
    }
    if cli.trackers == 0 {
        bail!("--trackers must be at least 1");
    }
    let first = imei(&cli, 0)?;
    let last = imei(&cli, cli.trackers - 1)?;
    eprintln!(
        "tern-tracker-sim: {} trackers, IMEIs {}..{}, to {}",
        cli.trackers,
        first.as_str(),
        last.as_str(),
        cli.server
    );
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        latency: std::sync::Mutex::new(Histogram::new(3).context("histogram")?),
        errors: std::sync::Mutex::new(Vec::new()),
        connect: Semaphore::new(cli.connect_concurrency.max(1)),
        cli,
    });

    // Connect phase: every tracker through its handshake, `--connect-concurrency` at a time.
    let connecting = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..shared.cli.trackers {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            match connect(&shared, n).await {
                Ok(stream) => stream,
                Err(err) => {
                    shared.error(n, &err);
                    None
                }
            }
        }));
    }
    let mut streams = Vec::with_capacity(tasks.len());
    for (n, task) in (0..).zip(tasks) {
        if let Some(stream) = task.await.context("connect task")? {
            streams.push((n, stream));
        }
    }
    let connect_s = connecting.elapsed().as_secs_f64();
    let c = &shared.counters;
    eprintln!(
        "tern-tracker-sim: {} connected, {} refused, {} failed in {connect_s:.2} s",
        c.connected.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
    );

    // Send phase (or the idle hold): all trackers start together.
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(shared.cli.duration);
    let mut tasks = Vec::new();
    for (n, stream) in streams {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut rbuf = BytesMut::with_capacity(256);
            let result = if shared.cli.idle {
                hold(&shared, stream, &mut rbuf, deadline).await
            } else {
                send(&shared, n, stream, &mut rbuf, deadline).await
            };
            if let Err(err) = result {
                shared.error(n, &err);
            }
        }));
    }
    for task in tasks {
        task.await.context("tracker task")?;
    }
    let window_s = started.elapsed().as_secs_f64();
    let cli = &shared.cli;
    let latency = shared.latency.lock().unwrap_or_else(|e| e.into_inner());
    let acked = c.records_acked.load(Ordering::Relaxed);
    Ok(Report {
        server: cli.server.clone(),
        trackers: cli.trackers,
        imei_first: first.as_str().to_owned(),
        imei_last: last.as_str().to_owned(),
        mode: if cli.idle { "idle" } else { "send" },
        records_per_frame: cli.records,
        packets: cli.packets,
        rate: cli.rate,
        connected: c.connected.load(Ordering::Relaxed),
        refused: c.refused.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        connect_s,
        frames_sent: c.frames_sent.load(Ordering::Relaxed),
        records_sent: c.records_sent.load(Ordering::Relaxed),
        records_acked: acked,
        ack_mismatches: c.ack_mismatches.load(Ordering::Relaxed),
        commands_answered: c.commands_answered.load(Ordering::Relaxed),
        window_s,
        records_acked_per_s: acked as f64 / window_s.max(1e-9),
        ack_latency_us: (!latency.is_empty()).then(|| Latency {
            count: latency.len(),
            p50: latency.value_at_quantile(0.5),
            p90: latency.value_at_quantile(0.9),
            p99: latency.value_at_quantile(0.99),
            max: latency.max(),
        }),
        errors: shared
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    })
}

/// Tracker `n`'s handshake: its IMEI, then the server's accept byte. `None` when refused.
async fn connect(shared: &Shared, n: u32) -> Result<Option<TcpStream>> {
    let cli = &shared.cli;
    let timeout = Duration::from_secs_f64(cli.timeout);
    let imei = imei(cli, n)?;
    let _permit = shared.connect.acquire().await.context("connect permit")?;
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(cli.server.as_str()))
        .await
        .context("connect timed out")?
        .context("connect")?;
    stream.set_nodelay(true)?;
    let mut hello = BytesMut::new();
    encode_imei(&imei, &mut hello);
    stream.write_all(&hello).await?;
    let answer = tokio::time::timeout(timeout, stream.read_u8())
        .await
        .context("no accept byte")?
        .context("closed during the handshake")?;
    if answer != 1 {
        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        return Ok(None);
    }
    shared.counters.connected.fetch_add(1, Ordering::Relaxed);
    Ok(Some(stream))
}

/// Sends a frame per tick until `deadline` or `--packets` frames, each waiting for its ACK;
/// between frames, answers the commands that come.
async fn send(
    shared: &Shared,
    n: u32,
    mut stream: TcpStream,
    rbuf: &mut BytesMut,
    deadline: Instant,
) -> Result<()> {
    let cli = &shared.cli;
    let timeout = Duration::from_secs_f64(cli.timeout);
    // Paced trackers are spread evenly over one period (tracker n starts n/N of a period after
    // the first), as real trackers are, rather than all sending at the same instant.
    let mut tick = (cli.rate > 0.0).then(|| {
        let period = Duration::from_secs_f64(1.0 / cli.rate);
        let offset = period.mul_f64(f64::from(n) / f64::from(cli.trackers));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    let mut latency = Histogram::<u64>::new(3).context("histogram")?;
    let mut frame = BytesMut::new();
    let mut seq = 0u32;
    let until = tokio::time::Instant::from_std(deadline);
    while cli.packets.is_none_or(|p| u64::from(seq) < p) {
        if let Some(tick) = tick.as_mut() {
            // Wait for the tick, answering commands meanwhile. Both branches are cancel-safe:
            // the buffer lives outside the futures.
            loop {
                tokio::select! {
                    _ = tick.tick() => break,
                    () = tokio::time::sleep_until(until) => break,
                    read = stream.read_buf(rbuf) => {
                        if read? == 0 {
                            bail!("the server closed the connection");
                        }
                        answer_commands(shared, &mut stream, rbuf).await?;
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        frame.clear();
        encode_avl(&packet(cli, n, seq), &mut frame);
        seq = seq.wrapping_add(1);
        let sent = Instant::now();
        stream.write_all(&frame).await?;
        shared.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .records_sent
            .fetch_add(u64::from(cli.records), Ordering::Relaxed);
        let count = tokio::time::timeout(timeout, read_ack(shared, &mut stream, rbuf))
            .await
            .context("no ACK in time")??;
        let us = sent.elapsed().as_micros() as u64;
        latency.record(us.max(1)).ok();
        if count == u32::from(cli.records) {
            shared
                .counters
                .records_acked
                .fetch_add(u64::from(count), Ordering::Relaxed);
        } else {
            shared
                .counters
                .ack_mismatches
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    shared
        .latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .add(&latency)
        .ok();
    stream.shutdown().await.ok();
    Ok(())
}

/// Holds the connection until `deadline`, sending nothing but answers to commands.
async fn hold(
    shared: &Shared,
    mut stream: TcpStream,
    rbuf: &mut BytesMut,
    deadline: Instant,
) -> Result<()> {
    let until = tokio::time::Instant::from_std(deadline);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => break,
            read = stream.read_buf(rbuf) => {
                if read? == 0 {
                    bail!("the server closed the connection");
                }
                answer_commands(shared, &mut stream, rbuf).await?;
            }
        }
    }
    stream.shutdown().await.ok();
    Ok(())
}

/// Answers every complete Codec 12 command in `rbuf`; anything else from the server while no
/// ACK is owed is an error.
async fn answer_commands(
    shared: &Shared,
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
) -> Result<()> {
    while rbuf.len() >= 4 {
        if rbuf[..4] != [0, 0, 0, 0] {
            bail!("an ACK the tracker did not wait for");
        }
        if !answer_command(shared, stream, rbuf).await? {
            break;
        }
    }
    Ok(())
}

/// Decodes one frame at the start of `rbuf` (it starts with a zero preamble) and answers it if
/// it is a command; false when the frame is not complete yet.
async fn answer_command(
    shared: &Shared,
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
) -> Result<bool> {
    match FrameDecoder::default().decode(rbuf) {
        Ok(Some(Frame::Codec12(cmd))) if cmd.kind == CommandType::Command => {
            let mut answer = BytesMut::new();
            let text = format!("sim: {}", cmd.payload_text());
            encode_codec12(CommandType::Response, text.as_bytes(), &mut answer);
            stream.write_all(&answer).await?;
            shared
                .counters
                .commands_answered
                .fetch_add(1, Ordering::Relaxed);
            Ok(true)
        }
        Ok(Some(other)) => bail!("unexpected frame from the server: {other:?}"),
        Ok(None) => Ok(false),
        Err(err) => bail!("bad frame from the server: {err}"),
    }
}

/// Reads until a record ACK arrives, answering any Codec 12 command that comes first. A
/// command frame starts with a zero preamble; an ACK is a non-zero count.
async fn read_ack(shared: &Shared, stream: &mut TcpStream, rbuf: &mut BytesMut) -> Result<u32> {
    loop {
        if rbuf.len() >= 4 && rbuf[..4] != [0, 0, 0, 0] {
            return Ok(rbuf.get_u32());
        }
        if rbuf.len() >= 8 && answer_command(shared, stream, rbuf).await? {
            continue;
        }
        if stream.read_buf(rbuf).await? == 0 {
            bail!("the server closed the connection");
        }
    }
}
/// Frame `seq` of tracker `n`: records one second apart ending now, on a slow circle around a
/// start point of its own.
fn packet(cli: &Cli, n: u32, seq: u32) -> AvlPacket {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let count = u64::from(cli.records);
    let records = (0..count)
        .map(|i| {
            let step = f64::from(seq) * count as f64 + i as f64;
            let angle = step / 60.0;
            // Vilnius, spread by tracker, moving ~100 m per step.
            let lat = 54.687 + f64::from(n % 100) * 0.01 + angle.sin() * 0.01;
            let lon = 25.279 + f64::from(n / 100) * 0.01 + angle.cos() * 0.01;
            Record {
                timestamp_ms: now_ms.saturating_sub((count - 1 - i) * 1000),
                priority: 0,
                gps: Gps {
                    longitude: (lon * 1e7) as i32,
                    latitude: (lat * 1e7) as i32,
                    altitude: 120,
                    angle: ((angle.to_degrees() as i64).rem_euclid(360)) as u16,
                    satellites: 9,
                    speed: 36,
                },
                event_io_id: 0,
                generation_type: (cli.codec == CodecArg::Codec16).then_some(7),
                io: vec![
                    // Ignition on, external voltage 12.6 V, total odometer in metres.
                    IoElement {
                        id: 239,
                        value: IoValue::U8(1),
                    },
                    IoElement {
                        id: 66,
                        value: IoValue::U16(12_600),
                    },
                    IoElement {
                        id: 16,
                        value: IoValue::U32(seq.wrapping_mul(100)),
                    },
                ],
            }
        })
        .collect();
    AvlPacket {
        codec: cli.codec.codec(),
        records,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_teltonika::{decode_imei, encode_ack, encode_command};
    use tokio::net::TcpListener;

    /// A minimal Teltonika server: accepts every IMEI and sends one command at once, expecting
    /// its response, and ACKs every AVL frame with its record count.
    async fn fake_server(listener: TcpListener, responses: Arc<AtomicU64>) {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let responses = responses.clone();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                let decoder = FrameDecoder::default();
                loop {
                    if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if decode_imei(&mut buf).expect("a valid IMEI").is_some() {
                        let mut hello = BytesMut::from(&[1u8][..]);
                        encode_command(b"getinfo", &mut hello);
                        s.write_all(&hello).await.expect("accept");
                        break;
                    }
                }
                loop {
                    while let Some(frame) = decoder.decode(&mut buf).expect("valid frames") {
                        match frame {
                            Frame::Avl(p) => {
                                let mut ack = BytesMut::new();
                                encode_ack(p.ack_count(), &mut ack);
                                s.write_all(&ack).await.expect("ack");
                            }
                            Frame::Codec12(r) => {
                                assert_eq!(r.kind, CommandType::Response);
                                assert_eq!(r.payload_text(), "sim: getinfo");
                                responses.fetch_add(1, Ordering::Relaxed);
                            }
                            Frame::Codec13(_) => panic!("no codec 13 from a tracker"),
                        }
                    }
                    if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
            });
        }
    }

    async fn server() -> (String, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server = listener.local_addr().expect("addr");
        let responses = Arc::new(AtomicU64::new(0));
        tokio::spawn(fake_server(listener, responses.clone()));
        (server.to_string(), responses)
    }

    /// The server saw `n` responses (the last may still be on its way at the end).
    async fn responses_reach(responses: &AtomicU64, n: u64) {
        for _ in 0..100 {
            if responses.load(Ordering::Relaxed) == n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(responses.load(Ordering::Relaxed), n);
    }

    #[tokio::test]
    async fn trackers_send_frames_and_answer_commands() {
        let (server, responses) = server().await;
        for codec in ["8", "8e", "16"] {
            responses.store(0, Ordering::Relaxed);
            let cli = Cli::parse_from([
                "sim",
                "--server",
                &server,
                "--trackers",
                "3",
                "--rate",
                "20",
                "--records",
                "5",
                "--duration",
                "0.5",
                "--codec",
                codec,
            ]);
            let r = run(cli).await.expect("runs");
            assert_eq!(r.connected, 3, "{r:?}");
            assert_eq!(r.failed, 0, "{r:?}");
            assert!(r.frames_sent >= 3, "{r:?}");
            assert_eq!(r.records_sent, r.frames_sent * 5, "{r:?}");
            assert_eq!(r.records_acked, r.records_sent, "{r:?}");
            assert_eq!(r.ack_mismatches, 0, "{r:?}");
            assert_eq!(r.commands_answered, 3, "{r:?}");
            responses_reach(&responses, 3).await;
        }
    }

    #[tokio::test]
    async fn packets_at_rate_zero_stop_after_n_frames() {
        let (server, responses) = server().await;
        let cli = Cli::parse_from([
            "sim",
            "--server",
            &server,
            "--trackers",
            "4",
            "--rate",
            "0",
            "--packets",
            "7",
            "--records",
            "10",
            "--duration",
            "30",
        ]);
        let started = Instant::now();
        let r = run(cli).await.expect("runs");
        assert!(started.elapsed() < Duration::from_secs(10), "{r:?}");
        assert_eq!(r.failed, 0, "{r:?}");
        assert_eq!(r.frames_sent, 4 * 7, "{r:?}");
        assert_eq!(r.records_acked, 4 * 7 * 10, "{r:?}");
        assert_eq!(
            r.ack_latency_us.as_ref().map(|l| l.count),
            Some(28),
            "{r:?}"
        );
        assert_eq!(r.commands_answered, 4, "{r:?}");
        assert_eq!(r.imei_first, "352093080000000");
        assert_eq!(r.imei_last, "352093080000003");
        responses_reach(&responses, 4).await;
    }

    #[tokio::test]
    async fn idle_trackers_hold_the_connection_and_answer_commands() {
        let (server, responses) = server().await;
        let cli = Cli::parse_from([
            "sim",
            "--server",
            &server,
            "--trackers",
            "5",
            "--idle",
            "--duration",
            "0.3",
        ]);
        let r = run(cli).await.expect("runs");
        assert_eq!(r.connected, 5, "{r:?}");
        assert_eq!(r.failed, 0, "{r:?}");
        assert_eq!(r.frames_sent, 0, "{r:?}");
        assert!(r.window_s >= 0.3, "{r:?}");
        assert_eq!(r.commands_answered, 5, "{r:?}");
        responses_reach(&responses, 5).await;
    }
}
