//! A Teltonika channel's TCP side over real loopback sockets, with a sink in memory standing in
//! for the devices layer: handshake, ACK only after storage, bad input, one connection per
//! IMEI, commands, timeouts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tern_net::teltonika::{
    Admission, Command, CommandError, CommandReply, StoreFailed, StoreFuture, TeltonikaChannel,
    TeltonikaOptions, TrackerEvent, TrackerSink, close_code,
};
use tern_teltonika::{
    AvlCodec, AvlPacket, CommandType, Frame, FrameDecoder, Gps, Imei, IoElement, IoValue, Record,
    encode_avl, encode_codec12, encode_imei,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const IMEI: &str = "356307042441013";

/// What the channel handed up.
#[derive(Default)]
struct Sink {
    stored: Arc<Mutex<Vec<(String, u64)>>>,
    events: Mutex<Vec<TrackerEvent>>,
    /// Stores wait for a permit when set (to hold ACKs back).
    gate: Option<Arc<Semaphore>>,
    fail: bool,
    reject: Option<String>,
}

impl TrackerSink for Sink {
    fn admit(&self, imei: &Imei, _peer: SocketAddr) -> Admission {
        if self.reject.as_deref() == Some(imei.as_str()) {
            Admission::Reject(close_code::DEVICE_DISABLED)
        } else {
            Admission::Accept
        }
    }

    fn store(&self, imei: &Imei, _peer: SocketAddr, packet: AvlPacket) -> StoreFuture {
        let gate = self.gate.clone();
        let fail = self.fail;
        let imei = imei.as_str().to_owned();
        let records: Vec<u64> = packet.records.iter().map(|r| r.timestamp_ms).collect();
        let stored = self.stored.clone();
        Box::pin(async move {
            if let Some(gate) = gate {
                gate.acquire().await.unwrap().forget();
            }
            if fail {
                return Err(StoreFailed("disk full".into()));
            }
            let mut s = stored.lock();
            for ts in records {
                s.push((imei.clone(), ts));
            }
            Ok(())
        })
    }

    fn event(&self, event: TrackerEvent) {
        self.events.lock().push(event);
    }
}

struct Channel {
    addr: SocketAddr,
    channel: Arc<TeltonikaChannel>,
    sink: &'static Sink,
}

async fn start(sink: Sink, options: TeltonikaOptions) -> Channel {
    let sink: &'static Sink = Box::leak(Box::new(sink));
    let channel = TeltonikaChannel::new(Arc::new(SinkRef(sink)), options);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        channel
            .clone()
            .serve(Arc::new(listener), CancellationToken::new()),
    );
    Channel {
        addr,
        channel,
        sink,
    }
}

struct SinkRef(&'static Sink);

impl TrackerSink for SinkRef {
    fn admit(&self, imei: &Imei, peer: SocketAddr) -> Admission {
        self.0.admit(imei, peer)
    }
    fn store(&self, imei: &Imei, peer: SocketAddr, packet: AvlPacket) -> StoreFuture {
        self.0.store(imei, peer, packet)
    }
    fn event(&self, event: TrackerEvent) {
        self.0.event(event)
    }
}

fn frame(records: u64, first_ts: u64) -> BytesMut {
    let packet = AvlPacket {
        codec: AvlCodec::Codec8Extended,
        records: (0..records)
            .map(|i| Record {
                timestamp_ms: first_ts + i * 1000,
                priority: 0,
                gps: Gps {
                    longitude: 252_790_000,
                    latitude: 546_870_000,
                    altitude: 100,
                    angle: 90,
                    satellites: 8,
                    speed: 40,
                },
                event_io_id: 0,
                generation_type: None,
                io: vec![IoElement {
                    id: 66,
                    value: IoValue::U16(12_600),
                }],
            })
            .collect(),
    };
    let mut out = BytesMut::new();
    encode_avl(&packet, &mut out);
    out
}

async fn connect(addr: SocketAddr, imei: &str) -> (TcpStream, u8) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = BytesMut::new();
    encode_imei(&Imei::new(imei).unwrap(), &mut hello);
    s.write_all(&hello).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), s.read_u8())
        .await
        .expect("an answer byte")
        .expect("answer");
    (s, answer)
}

async fn ack(s: &mut TcpStream) -> u32 {
    tokio::time::timeout(Duration::from_secs(5), s.read_u32())
        .await
        .expect("an ACK in time")
        .expect("ACK")
}

/// Waits until the server closed (EOF or reset), discarding what comes.
async fn closed(s: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed in time")
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The close event of the connection of `imei`, waiting for it.
async fn close_code_of(sink: &Sink, imei: Option<&str>) -> u8 {
    for _ in 0..500 {
        let found = sink.events.lock().iter().find_map(|e| match e {
            TrackerEvent::Closed {
                imei: i,
                close_code,
                ..
            } if i.as_deref() == imei => Some(*close_code),
            _ => None,
        });
        if let Some(code) = found {
            return code;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no close event for {imei:?}: {:?}", sink.events.lock());
}

#[tokio::test]
async fn frames_are_acknowledged_after_they_are_stored_in_order() {
    let c = start(Sink::default(), TeltonikaOptions::default()).await;
    let (mut s, answer) = connect(c.addr, IMEI).await;
    assert_eq!(answer, 1);
    s.write_all(&frame(3, 1_700_000_000_000)).await.unwrap();
    assert_eq!(ack(&mut s).await, 3);
    // Two frames in one write: two ACKs, in order.
    let mut two = frame(1, 1_700_000_010_000);
    two.extend_from_slice(&frame(2, 1_700_000_020_000));
    s.write_all(&two).await.unwrap();
    assert_eq!(ack(&mut s).await, 1);
    assert_eq!(ack(&mut s).await, 2);
    let stored: Vec<u64> = c.sink.stored.lock().iter().map(|(_, ts)| *ts).collect();
    assert_eq!(
        stored,
        vec![
            1_700_000_000_000,
            1_700_000_001_000,
            1_700_000_002_000,
            1_700_000_010_000,
            1_700_000_020_000,
            1_700_000_021_000
        ]
    );
    let conns = c.channel.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!((conns[0].imei.as_str(), conns[0].msgs), (IMEI, 6));
    drop(s);
    assert_eq!(close_code_of(c.sink, Some(IMEI)).await, close_code::NORMAL);
    let all = c.sink.events.lock().clone();
    let acked: Vec<u32> = all
        .iter()
        .filter_map(|e| match e {
            TrackerEvent::Acked { records, .. } => Some(*records),
            _ => None,
        })
        .collect();
    assert_eq!(acked.iter().sum::<u32>(), 6, "{all:?}");
    let events: Vec<TrackerEvent> = all
        .into_iter()
        .filter(|e| !matches!(e, TrackerEvent::Acked { .. }))
        .collect();
    assert!(
        matches!(events[0], TrackerEvent::Accepted { .. }),
        "{events:?}"
    );
    assert!(
        matches!(&events[1], TrackerEvent::Identified { imei, .. } if imei == IMEI),
        "{events:?}"
    );
    assert!(
        matches!(&events[2], TrackerEvent::Closed { msgs: 6, .. }),
        "{events:?}"
    );
    assert_eq!(c.channel.connections_count(), 0);
}

#[tokio::test]
async fn no_ack_before_the_records_are_stored() {
    let gate = Arc::new(Semaphore::new(0));
    let c = start(
        Sink {
            gate: Some(gate.clone()),
            ..Sink::default()
        },
        TeltonikaOptions::default(),
    )
    .await;
    let (mut s, _) = connect(c.addr, IMEI).await;
    s.write_all(&frame(2, 1_700_000_000_000)).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), s.read_u32()).await;
    assert!(
        early.is_err(),
        "an ACK before the store finished: {early:?}"
    );
    gate.add_permits(1);
    assert_eq!(ack(&mut s).await, 2);
}

#[tokio::test]
async fn a_failed_store_sends_no_ack_and_closes() {
    let c = start(
        Sink {
            fail: true,
            ..Sink::default()
        },
        TeltonikaOptions::default(),
    )
    .await;
    let (mut s, _) = connect(c.addr, IMEI).await;
    s.write_all(&frame(2, 1_700_000_000_000)).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "no ACK may be sent: {rest:?}");
}

#[tokio::test]
async fn bad_handshakes_and_rejected_imeis_get_zero() {
    let c = start(
        Sink {
            reject: Some("356307042441099".into()),
            ..Sink::default()
        },
        TeltonikaOptions::default(),
    )
    .await;
    // Not digits.
    let mut s = TcpStream::connect(c.addr).await.unwrap();
    s.write_all(b"\x00\x0f35630704244101X").await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), 0);
    closed(&mut s).await;
    assert_eq!(
        close_code_of(c.sink, None).await,
        close_code::PROTOCOL_VIOLATION
    );
    // A device the layer above refuses (disabled).
    let (mut s, answer) = connect(c.addr, "356307042441099").await;
    assert_eq!(answer, 0);
    closed(&mut s).await;
    assert!(c.channel.connections().is_empty());
}

#[tokio::test]
async fn a_bad_frame_closes_without_ack_and_stores_nothing() {
    let c = start(Sink::default(), TeltonikaOptions::default()).await;
    let (mut s, _) = connect(c.addr, IMEI).await;
    let mut bad = frame(2, 1_700_000_000_000);
    let last = bad.len() - 1;
    bad[last] ^= 0xFF; // CRC
    s.write_all(&bad).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "no ACK for a bad frame: {rest:?}");
    assert!(c.sink.stored.lock().is_empty());
    assert_eq!(
        close_code_of(c.sink, Some(IMEI)).await,
        close_code::PROTOCOL_VIOLATION
    );
}

#[tokio::test]
async fn an_oversize_length_closes_at_once() {
    let c = start(
        Sink::default(),
        TeltonikaOptions {
            max_packet_size: 1024,
            ..TeltonikaOptions::default()
        },
    )
    .await;
    let (mut s, _) = connect(c.addr, IMEI).await;
    // Preamble and a length of 1 MiB: closed before any of it is buffered.
    s.write_all(&[0, 0, 0, 0, 0, 0x10, 0, 0, 0x8E])
        .await
        .unwrap();
    closed(&mut s).await;
    assert_eq!(
        close_code_of(c.sink, Some(IMEI)).await,
        close_code::PROTOCOL_VIOLATION
    );
}

#[tokio::test]
async fn a_second_connection_with_the_same_imei_closes_the_first() {
    let c = start(Sink::default(), TeltonikaOptions::default()).await;
    let (mut first, _) = connect(c.addr, IMEI).await;
    let (mut second, answer) = connect(c.addr, IMEI).await;
    assert_eq!(answer, 1);
    closed(&mut first).await;
    assert_eq!(
        close_code_of(c.sink, Some(IMEI)).await,
        close_code::IDENT_COLLISION
    );
    second
        .write_all(&frame(1, 1_700_000_000_000))
        .await
        .unwrap();
    assert_eq!(ack(&mut second).await, 1);
    assert_eq!(c.channel.connections().len(), 1);
}

#[tokio::test]
async fn commands_go_out_and_responses_come_back() {
    let c = start(Sink::default(), TeltonikaOptions::default()).await;
    let command = |timeout: Duration| {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let cmd = Command {
            payload: bytes::Bytes::from_static(b"getinfo"),
            timeout,
            reply,
        };
        (cmd, answer)
    };
    assert_eq!(
        c.channel
            .send_command(IMEI, command(Duration::from_secs(5)).0),
        Err(CommandError::NotConnected)
    );
    let (mut s, _) = connect(c.addr, IMEI).await;
    // Wait until the connection is registered.
    for _ in 0..100 {
        if !c.channel.connections().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (cmd, reply1) = command(Duration::from_secs(5));
    c.channel.send_command(IMEI, cmd).unwrap();
    let mut buf = BytesMut::new();
    let decoder = FrameDecoder::default();
    let cmd = loop {
        if let Some(f) = decoder.decode(&mut buf).unwrap() {
            break f;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_buf(&mut buf))
            .await
            .expect("a command in time")
            .unwrap();
        assert!(n > 0, "closed");
    };
    let Frame::Codec12(cmd) = cmd else {
        panic!("not a command: {cmd:?}")
    };
    assert_eq!(cmd.kind, CommandType::Command);
    assert_eq!(cmd.payload_text(), "getinfo");
    let mut answer = BytesMut::new();
    encode_codec12(CommandType::Response, b"RTC:2026/12/4 OK", &mut answer);
    s.write_all(&answer).await.unwrap();
    // Records still flow after the response.
    s.write_all(&frame(1, 1_700_000_000_000)).await.unwrap();
    assert_eq!(ack(&mut s).await, 1);
    match reply1.await {
        Ok(CommandReply::Response(r)) => assert_eq!(r.payload_text(), "RTC:2026/12/4 OK"),
        other => panic!("no response: {other:?}"),
    }
    // A command the tracker does not answer times out, and the next one goes after it.
    let (cmd, reply2) = command(Duration::from_millis(200));
    c.channel.send_command(IMEI, cmd).unwrap();
    let (cmd3, reply3) = command(Duration::from_secs(5));
    c.channel.send_command(IMEI, cmd3).unwrap();
    assert_eq!(reply2.await.ok(), Some(CommandReply::Timeout));
    let mut seen = 0;
    while seen < 2 {
        if let Some(Frame::Codec12(f)) = decoder.decode(&mut buf).unwrap() {
            assert_eq!(f.payload_text(), "getinfo");
            seen += 1;
            continue;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_buf(&mut buf))
            .await
            .expect("both commands in time")
            .unwrap();
        assert!(n > 0, "closed");
    }
    s.write_all(&answer).await.unwrap();
    match reply3.await {
        Ok(CommandReply::Response(r)) => assert_eq!(r.payload_text(), "RTC:2026/12/4 OK"),
        other => panic!("no response to the second command: {other:?}"),
    }
    // The connection closes: a command waiting for its answer learns it.
    let (cmd4, reply4) = command(Duration::from_secs(30));
    c.channel.send_command(IMEI, cmd4).unwrap();
    drop(s);
    assert!(reply4.await.is_err());
}

#[tokio::test]
async fn a_frame_that_never_completes_times_out() {
    let c = start(
        Sink::default(),
        TeltonikaOptions {
            frame_timeout: Duration::from_millis(300),
            ..TeltonikaOptions::default()
        },
    )
    .await;
    let (mut s, _) = connect(c.addr, IMEI).await;
    let whole = frame(1, 1_700_000_000_000);
    // The first bytes, then one more every 100 ms: the frame is never complete.
    s.write_all(&whole[..10]).await.unwrap();
    for b in &whole[10..14] {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
    }
    closed(&mut s).await;
    assert_eq!(
        close_code_of(c.sink, Some(IMEI)).await,
        close_code::INACTIVITY
    );
    assert!(c.sink.stored.lock().is_empty());
}

#[tokio::test]
async fn closing_the_channel_closes_its_connections() {
    let c = start(Sink::default(), TeltonikaOptions::default()).await;
    let (mut s, _) = connect(c.addr, IMEI).await;
    for _ in 0..100 {
        if !c.channel.connections().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.channel.close(close_code::CHANNEL_UPDATED);
    closed(&mut s).await;
    assert_eq!(
        close_code_of(c.sink, Some(IMEI)).await,
        close_code::CHANNEL_UPDATED
    );
}

/// The shared fake tracker (`tests/tools/teltonika_tracker.py`, a copy of the team's
/// `shared/tools/` one): its `send` and `vectors` modes check every ACK themselves.
#[tokio::test]
async fn the_shared_fake_tracker_gets_its_acks() {
    let tool = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/tools/teltonika_tracker.py");
    if !tool.exists() {
        eprintln!("SKIPPED: {} is not there", tool.display());
        return;
    }
    let c = start(Sink::default(), TeltonikaOptions::default()).await;
    let port = c.addr.port().to_string();
    for args in [
        vec!["send", "--port", &port, "--packets", "5", "--records", "3"],
        vec!["send", "--port", &port, "--codec", "16", "--packets", "2"],
        vec!["vectors", "--port", &port],
    ] {
        let out = tokio::process::Command::new("python3")
            .arg(&tool)
            .args(&args)
            .output()
            .await
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(c.sink.stored.lock().len() >= 17);
}

/// A connection over an in-memory pipe, served by `c`, for tests with the clock paused.
fn piped(c: &Channel) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let task = tokio::spawn(c.channel.clone().connection(theirs, peer));
    (ours, task)
}

/// The server's timeouts at their defaults (30 s handshake, 60 s frame, 600 s inactivity),
/// with the clock paused: tokio moves it on whenever every task waits, so nothing here waits
/// for real time.
#[tokio::test(start_paused = true)]
async fn the_default_timeouts_hold_without_waiting_for_them() {
    let c = start(Sink::default(), TeltonikaOptions::default()).await;
    let t0 = tokio::time::Instant::now();

    // No handshake: answer 00 after handshake_timeout, close with code 4.
    let (mut s, task) = piped(&c);
    s.write_all(&[0x00, 0x0f, b'3']).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), 0, "refused");
    task.await.unwrap();
    assert_eq!(t0.elapsed().as_secs(), 30);

    // A slow but complete frame (one byte every 10 s, within frame_timeout) is a frame.
    let t1 = tokio::time::Instant::now();
    let (mut s, task) = piped(&c);
    let mut hello = BytesMut::new();
    encode_imei(&Imei::new(IMEI).unwrap(), &mut hello);
    s.write_all(&hello).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), 1);
    let small = frame(1, 1_700_000_000_000);
    s.write_all(&small[..small.len() - 4]).await.unwrap();
    for b in &small[small.len() - 4..] {
        tokio::time::sleep(Duration::from_secs(10)).await;
        s.write_all(&[*b]).await.unwrap();
    }
    assert_eq!(s.read_u32().await.unwrap(), 1, "ACKed");
    // A frame that never completes: closed frame_timeout after its first byte (code 17).
    let t2 = tokio::time::Instant::now();
    s.write_all(&small[..10]).await.unwrap();
    let mut rest = [0u8; 8];
    assert_eq!(s.read(&mut rest).await.unwrap(), 0, "closed");
    task.await.unwrap();
    assert_eq!(t2.elapsed().as_secs(), 60);
    assert!(t1.elapsed().as_secs() >= 100);

    // Silence after the handshake: closed after inactivity_timeout (code 17).
    let t3 = tokio::time::Instant::now();
    let (mut s, task) = piped(&c);
    s.write_all(&hello).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), 1);
    assert_eq!(s.read(&mut rest).await.unwrap(), 0, "closed");
    task.await.unwrap();
    assert_eq!(t3.elapsed().as_secs(), 600);
    let codes: Vec<u8> = c
        .sink
        .events
        .lock()
        .iter()
        .filter_map(|e| match e {
            TrackerEvent::Closed { close_code, .. } => Some(*close_code),
            _ => None,
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            close_code::PROTOCOL_VIOLATION,
            close_code::INACTIVITY,
            close_code::INACTIVITY
        ]
    );
}
