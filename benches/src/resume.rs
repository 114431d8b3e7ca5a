//! Node death to sessions resumed (cluster mode, issue 17): N persistent sessions (MQTT 5,
//! expiry an hour) connect to node A (`--broker`) and subscribe to a topic each; node A is
//! killed (`kill -9 --broker-pid`); each client reconnects to node B (`--sub-broker`) at once,
//! and a publisher on node B sends one QoS 1 message to every topic right after the kill. The
//! report says how long after the kill every client had its CONNACK (session present) and its
//! message, the per-client times, and how many sessions did not come back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use serde::Serialize;
use tern_codec::{Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{self, ConnectOptions};
use crate::report::Head;
use crate::track::Latency;
use crate::wire;

#[derive(Debug, Serialize)]
pub struct ResumeReport {
    #[serde(flatten)]
    pub head: Head,
    pub clients: u32,
    /// Reconnected to node B with session present.
    pub resumed: u32,
    /// Reconnected, but the session was not present.
    pub not_present: u32,
    /// Got the message published after the kill.
    pub delivered: u32,
    /// From the kill to the last CONNACK, and to the last message.
    pub all_connacks_ms: Option<f64>,
    pub all_delivered_ms: Option<f64>,
    /// Per client, from the kill.
    pub connack_us: Option<Latency>,
    pub delivered_us: Option<Latency>,
    pub errors: Vec<String>,
}

pub struct ResumeParams {
    pub head: Head,
    /// To node A, persistent (the sessions to resume).
    pub connect: ConnectOptions,
    /// Node B.
    pub other: SocketAddr,
    pub clients: u32,
    /// Node A's pid: killed with SIGKILL.
    pub victim: u32,
    /// Seconds to let the nodes write the sessions' records before the kill.
    pub settle: Duration,
    pub timeout: Duration,
    pub tag: u32,
}

/// One client's times after the kill.
#[derive(Default)]
struct Outcome {
    connack: Option<Duration>,
    present: bool,
    delivered: Option<Duration>,
    error: Option<String>,
}

pub async fn run(p: ResumeParams) -> Result<ResumeReport> {
    // Every session on node A, subscribed.
    let mut conns = Vec::with_capacity(p.clients as usize);
    for i in 0..p.clients {
        let id = format!("resume-{}-{i}", p.tag);
        let mut c = client::connect(&p.connect, &id, None)
            .await
            .with_context(|| format!("{id} connecting to node A"))?;
        let topic = format!("resume/{}/{i}", p.tag);
        c.stream
            .write_all(&client::subscribe_packet(
                &[topic],
                QoS::AtLeastOnce,
                p.connect.version,
            )?)
            .await?;
        loop {
            if let Some(packet) = tern_codec::decode(&mut c.rbuf, u32::MAX, p.connect.version)? {
                match packet {
                    Packet::SubAck(_) => break,
                    other => bail!("{id}: expected SUBACK, got {}", other.packet_type()),
                }
            }
            if c.stream.read_buf(&mut c.rbuf).await? == 0 {
                bail!("{id}: node A closed before SUBACK");
            }
        }
        conns.push(c);
    }
    tokio::time::sleep(p.settle).await;

    let killed = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-9", &p.victim.to_string()])
        .status()
        .context("kill -9 node A")?;
    if !status.success() {
        bail!("kill -9 {} failed", p.victim);
    }
    let deadline = killed + p.timeout;
    let mut to_b = p.connect.clone();
    to_b.broker = p.other;
    let to_b = Arc::new(to_b);

    let mut tasks = Vec::with_capacity(conns.len());
    for (i, mut old) in conns.into_iter().enumerate() {
        let to_b = to_b.clone();
        let id = format!("resume-{}-{i}", p.tag);
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            // Node A's death: the socket closes.
            let mut scratch = [0u8; 4096];
            while let Ok(n) = old.stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
            let mut conn = loop {
                match client::connect(&to_b, &id, None).await {
                    Ok(c) => break c,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => {
                        out.error = Some(format!("{id}: {e:#}"));
                        return out;
                    }
                }
            };
            out.connack = Some(killed.elapsed());
            out.present = conn.session_present;
            let version = conn.version;
            let res =
                tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), async {
                    loop {
                        while let Some(packet) =
                            tern_codec::decode(&mut conn.rbuf, u32::MAX, version)?
                        {
                            if let Packet::Publish(m) = packet {
                                if let Some(pid) = m.packet_id {
                                    conn.stream
                                        .write_all(&wire::ack(wire::kind::PUBACK, pid))
                                        .await?;
                                }
                                return anyhow::Ok(());
                            }
                        }
                        if conn.stream.read_buf(&mut conn.rbuf).await? == 0 {
                            bail!("node B closed the connection");
                        }
                    }
                })
                .await;
            match res {
                Ok(Ok(())) => out.delivered = Some(killed.elapsed()),
                Ok(Err(e)) => out.error = Some(format!("{id}: {e:#}")),
                Err(_) => out.error = Some(format!("{id}: no message within the timeout")),
            }
            let _ = conn.stream.write_all(&wire::DISCONNECT).await;
            out
        }));
    }

    // The messages the sessions missed: published on node B while their clients come back.
    let mut publisher_opts = (*to_b).clone();
    publisher_opts.clean_start = true;
    let mut publisher = client::connect(&publisher_opts, &format!("resume-pub-{}", p.tag), None)
        .await
        .context("the publisher connecting to node B")?;
    let mut errors = Vec::new();
    for i in 0..p.clients {
        let pid = (i % 65_535 + 1) as u16;
        let packet = Packet::Publish(tern_codec::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: format!("resume/{}/{i}", p.tag).into(),
            packet_id: Some(pid),
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"missed"),
        });
        let mut buf = BytesMut::new();
        tern_codec::encode(&packet, publisher.version, &mut buf)?;
        publisher.stream.write_all(&buf).await?;
        // One at a time: every message acknowledged (stored by the cluster) before the next.
        loop {
            if let Some(packet) =
                tern_codec::decode(&mut publisher.rbuf, u32::MAX, publisher.version)?
            {
                if matches!(packet, Packet::PubAck(_)) {
                    break;
                }
                continue;
            }
            if publisher.stream.read_buf(&mut publisher.rbuf).await? == 0 {
                errors.push("the publisher's connection closed".to_string());
                break;
            }
        }
    }

    let mut connack = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut delivered = hdrhistogram::Histogram::<u64>::new(3)?;
    let (mut resumed, mut not_present, mut got) = (0, 0, 0);
    let (mut last_connack, mut last_delivered) = (Duration::ZERO, Duration::ZERO);
    for t in tasks {
        let o = t.await.context("a client task")?;
        if let Some(d) = o.connack {
            let _ = connack.record(d.as_nanos() as u64);
            last_connack = last_connack.max(d);
            if o.present {
                resumed += 1;
            } else {
                not_present += 1;
            }
        }
        if let Some(d) = o.delivered {
            let _ = delivered.record(d.as_nanos() as u64);
            last_delivered = last_delivered.max(d);
            got += 1;
        }
        if let Some(e) = o.error
            && errors.len() < 10
        {
            errors.push(e);
        }
    }
    let ms = |d: Duration| (d.as_secs_f64() * 10_000.0).round() / 10.0;
    Ok(ResumeReport {
        head: p.head,
        clients: p.clients,
        resumed,
        not_present,
        delivered: got,
        all_connacks_ms: (resumed + not_present == p.clients).then(|| ms(last_connack)),
        all_delivered_ms: (got == p.clients).then(|| ms(last_delivered)),
        connack_us: Latency::of(&connack),
        delivered_us: Latency::of(&delivered),
        errors,
    })
}
