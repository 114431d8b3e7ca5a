//! tern-tracker-sim: many simulated Teltonika trackers at once (docs/teltonika.md), for load
//! tests and walkthroughs of a Teltonika channel.
//!
//! Each tracker connects over TCP, sends its IMEI and waits for the server's accept byte, then
//! sends an AVL frame of `--records` records every `1 / --rate` seconds and waits for the
//! server's record ACK (a 4-byte count) before the next one, as a real device does (one frame
//! in flight). A Codec 12 command from the server is answered with a Codec 12 response
//! (`sim: <command>`), as a device answers a configuration command. Positions move slowly
//! around a start point per tracker, so a track shows on a map. At the end it prints one JSON
//! line: trackers connected and refused, frames and records sent and acknowledged, commands
//! answered, and the ACK latency.
//!
//! ```sh
//! tern-tracker-sim --server 127.0.0.1:5001 --trackers 100 --rate 1 --records 1 --duration 60
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::{Buf, BytesMut};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use tern_teltonika::{
    AvlCodec, AvlPacket, CommandType, Frame, FrameDecoder, Gps, Imei, IoElement, IoValue, Record,
    encode_avl, encode_codec12, encode_imei,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};

/// Simulated Teltonika trackers: connect, send AVL frames, wait for ACKs.
#[derive(Debug, Clone, Parser)]
#[command(name = "tern-tracker-sim", version, about)]
struct Cli {
    /// The Teltonika channel's address (its `uri`).
    #[arg(long, default_value = "127.0.0.1:5001")]
    server: SocketAddr,
    /// How many trackers connect at once.
    #[arg(long, default_value_t = 10)]
    trackers: u32,
    /// AVL frames per second per tracker.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Records per frame (1-255).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=255))]
    records: u8,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The codec of the AVL frames.
    #[arg(long, value_enum, default_value_t = CodecArg::Codec8e)]
    codec: CodecArg,
    /// IMEI of the first tracker; the others count up from it (15 digits).
    #[arg(long, default_value_t = 352_093_080_000_000)]
    imei_base: u64,
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
    trackers: u32,
    connected: u64,
    refused: u64,
    failed: u64,
    frames_sent: u64,
    records_sent: u64,
    records_acked: u64,
    /// ACKs whose count was not the frame's record count.
    ack_mismatches: u64,
    commands_answered: u64,
    duration_s: f64,
    records_acked_per_s: f64,
    ack_latency_us: Option<Latency>,
    errors: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: u64,
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
    latency: Mutex<hdrhistogram::Histogram<u64>>,
    errors: Mutex<Vec<String>>,
    connect: Semaphore,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let report = run(cli).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn run(cli: Cli) -> Result<Report> {
    if !(cli.rate > 0.0 && cli.rate.is_finite()) {
        bail!("--rate must be a positive number");
    }
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        latency: Mutex::new(hdrhistogram::Histogram::new(3).context("histogram")?),
        errors: Mutex::new(Vec::new()),
        connect: Semaphore::new(cli.connect_concurrency.max(1)),
        cli,
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(shared.cli.duration);
    let mut tasks = Vec::new();
    for n in 0..shared.cli.trackers {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(err) = tracker(&shared, n, deadline).await {
                shared.counters.failed.fetch_add(1, Ordering::Relaxed);
                let mut errors = shared.errors.lock().await;
                if errors.len() < 10 {
                    errors.push(format!("tracker {n}: {err:#}"));
                }
            }
        }));
    }
    for task in tasks {
        task.await.context("tracker task")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let c = &shared.counters;
    let latency = shared.latency.lock().await;
    let acked = c.records_acked.load(Ordering::Relaxed);
    Ok(Report {
        trackers: shared.cli.trackers,
        connected: c.connected.load(Ordering::Relaxed),
        refused: c.refused.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        frames_sent: c.frames_sent.load(Ordering::Relaxed),
        records_sent: c.records_sent.load(Ordering::Relaxed),
        records_acked: acked,
        ack_mismatches: c.ack_mismatches.load(Ordering::Relaxed),
        commands_answered: c.commands_answered.load(Ordering::Relaxed),
        duration_s: elapsed,
        records_acked_per_s: acked as f64 / elapsed.max(1e-9),
        ack_latency_us: (!latency.is_empty()).then(|| Latency {
            p50: latency.value_at_quantile(0.5),
            p99: latency.value_at_quantile(0.99),
            max: latency.max(),
        }),
        errors: shared.errors.lock().await.clone(),
    })
}

/// One tracker: handshake, then a frame per tick until `deadline`, each waiting for its ACK.
async fn tracker(shared: &Shared, n: u32, deadline: Instant) -> Result<()> {
    let cli = &shared.cli;
    let timeout = Duration::from_secs_f64(cli.timeout);
    let imei = Imei::new(&(cli.imei_base + u64::from(n)).to_string()).context("IMEI")?;
    let mut stream = {
        let _permit = shared.connect.acquire().await.context("connect permit")?;
        let mut stream = tokio::time::timeout(timeout, TcpStream::connect(cli.server))
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
            return Ok(());
        }
        stream
    };
    shared.counters.connected.fetch_add(1, Ordering::Relaxed);
    let period = Duration::from_secs_f64(1.0 / cli.rate);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rbuf = BytesMut::with_capacity(256);
    let mut frame = BytesMut::new();
    let mut seq = 0u32;
    loop {
        tick.tick().await;
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
        let count = tokio::time::timeout(timeout, read_ack(shared, &mut stream, &mut rbuf))
            .await
            .context("no ACK in time")??;
        let us = sent.elapsed().as_micros() as u64;
        shared.latency.lock().await.record(us.max(1)).ok();
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
    stream.shutdown().await.ok();
    Ok(())
}

/// Reads until a record ACK arrives, answering any Codec 12 command that comes first. A
/// command frame starts with a zero preamble; an ACK is a non-zero count.
async fn read_ack(shared: &Shared, stream: &mut TcpStream, rbuf: &mut BytesMut) -> Result<u32> {
    let decoder = FrameDecoder::default();
    loop {
        if rbuf.len() >= 4 && rbuf[..4] != [0, 0, 0, 0] {
            return Ok(rbuf.get_u32());
        }
        if rbuf.len() >= 8 {
            match decoder.decode(rbuf) {
                Ok(Some(Frame::Codec12(cmd))) if cmd.kind == CommandType::Command => {
                    let mut answer = BytesMut::new();
                    let text = format!("sim: {}", cmd.payload_text());
                    encode_codec12(CommandType::Response, text.as_bytes(), &mut answer);
                    stream.write_all(&answer).await?;
                    shared
                        .counters
                        .commands_answered
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ok(Some(other)) => bail!("unexpected frame from the server: {other:?}"),
                Ok(None) => {}
                Err(err) => bail!("bad frame from the server: {err}"),
            }
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

    /// A minimal Teltonika server: accepts every IMEI, ACKs every AVL frame with its record
    /// count, and sends one command after the first frame, expecting its response.
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
                        s.write_all(&[1]).await.expect("accept");
                        break;
                    }
                }
                let mut frames = 0;
                loop {
                    while let Some(frame) = decoder.decode(&mut buf).expect("valid frames") {
                        match frame {
                            Frame::Avl(p) => {
                                let mut ack = BytesMut::new();
                                encode_ack(p.ack_count(), &mut ack);
                                if frames == 0 {
                                    encode_command(b"getinfo", &mut ack);
                                }
                                frames += 1;
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

    #[tokio::test]
    async fn trackers_send_frames_and_answer_commands() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server = listener.local_addr().expect("addr");
        let responses = Arc::new(AtomicU64::new(0));
        tokio::spawn(fake_server(listener, responses.clone()));
        for codec in ["8", "8e", "16"] {
            responses.store(0, Ordering::Relaxed);
            let cli = Cli::parse_from([
                "sim",
                "--server",
                &server.to_string(),
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
            // The server saw each response (the last may still be on its way at the end).
            for _ in 0..100 {
                if responses.load(Ordering::Relaxed) == 3 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(responses.load(Ordering::Relaxed), 3);
        }
    }
}
