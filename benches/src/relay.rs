//! `tern-bench relay`: the smallest MQTT forwarder that passes the latency scenario, to measure
//! what the machine allows for one QoS 0/1 hop (the floor a broker is compared with).
//!
//! A plain thread per connection with blocking sockets, no runtime, no queues: CONNECT gets a
//! CONNACK, SUBSCRIBE a SUBACK granting what was asked, PINGREQ a PINGRESP. A PUBLISH is written
//! unchanged (same packet id, same QoS) by the publisher's own thread straight into the socket
//! of every subscriber whose filter matches, then PUBACK goes back to the publisher (QoS 1).
//! Acknowledgements from subscribers are read and dropped. Nothing is stored, nothing is
//! retried, QoS 2 is not supported, and the packet ids a subscriber sees are its publishers':
//! good for the latency scenario (one publisher), not a broker.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result, bail, ensure};

use crate::wire::{self, kind};

/// One subscriber's filters and a handle on its socket (a `try_clone` of the reader's).
struct Sub {
    id: u64,
    filters: Vec<String>,
    out: TcpStream,
}

/// Every subscriber, behind a std mutex: held for one routing pass (a few socket writes of one
/// packet each), never across a read.
type Subs = Arc<Mutex<Vec<Sub>>>;

/// Accepts on `listen` until killed; each connection gets its own thread.
pub fn run(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    eprintln!("tern-bench relay: listening on {listen}");
    let subs: Subs = Arc::default();
    for (id, stream) in (1u64..).zip(listener.incoming()) {
        let Ok(stream) = stream else { continue };
        let subs = subs.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(id, stream, &subs) {
                eprintln!("tern-bench relay: connection {id}: {e:#}");
            }
            subs.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|s| s.id != id);
        });
    }
    Ok(())
}

fn serve(id: u64, mut stream: TcpStream, subs: &Subs) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut start, mut end) = (0usize, 0usize);
    let mut v5 = false;
    loop {
        // Every whole packet in the buffer.
        while let Some(f) = wire::frame(&buf[start..end])? {
            if end - start < f.len {
                break;
            }
            let packet = &buf[start..start + f.len];
            let body = &packet[f.header_len..];
            match f.kind {
                1 => {
                    // CONNECT: protocol name (2-byte length + "MQTT"), then the level.
                    let level = *body.get(6).context("short CONNECT")?;
                    v5 = level == 5;
                    let connack: &[u8] = if v5 {
                        &[0x20, 3, 0, 0, 0]
                    } else {
                        &[0x20, 2, 0, 0]
                    };
                    stream.write_all(connack)?;
                }
                kind::PUBLISH => {
                    let view = wire::publish_view(packet, f, v5)?;
                    let topic_len = usize::from(u16::from_be_bytes(two(body, 0)?));
                    let topic = body.get(2..2 + topic_len).context("short topic")?;
                    let topic = std::str::from_utf8(topic).context("topic not UTF-8")?;
                    {
                        let mut subs = subs.lock().unwrap_or_else(PoisonError::into_inner);
                        for s in subs.iter_mut() {
                            if s.filters.iter().any(|flt| matches(flt, topic)) {
                                // A subscriber that cannot take it is its own problem here.
                                let _ = s.out.write_all(packet);
                            }
                        }
                    }
                    match (f.flags >> 1) & 3 {
                        0 => {}
                        1 => stream.write_all(&wire::ack(kind::PUBACK, view.packet_id))?,
                        _ => bail!("QoS 2 is not supported by the relay"),
                    }
                }
                8 => {
                    // SUBSCRIBE: packet id, (MQTT 5: properties), then (filter, options) pairs.
                    let pid = two(body, 0)?;
                    let mut at = 2;
                    if v5 {
                        let (props, n) = varint(body.get(at..).unwrap_or_default())?;
                        at += n + props;
                    }
                    let mut filters = Vec::new();
                    let mut granted = Vec::new();
                    while at + 2 <= body.len() {
                        let len = usize::from(u16::from_be_bytes(two(body, at)?));
                        let name = body.get(at + 2..at + 2 + len).context("short filter")?;
                        let options = *body.get(at + 2 + len).context("no options")?;
                        filters.push(String::from_utf8(name.to_vec())?);
                        granted.push((options & 3).min(1));
                        at += 3 + len;
                    }
                    let mut suback = vec![0x90, 0, pid[0], pid[1]];
                    if v5 {
                        suback.push(0);
                    }
                    suback.extend_from_slice(&granted);
                    ensure!(suback.len() - 2 < 128, "too many filters for the relay");
                    suback[1] = (suback.len() - 2) as u8;
                    let out = stream.try_clone()?;
                    {
                        let mut subs = subs.lock().unwrap_or_else(PoisonError::into_inner);
                        match subs.iter_mut().find(|s| s.id == id) {
                            Some(s) => s.filters.extend(filters),
                            None => subs.push(Sub { id, filters, out }),
                        }
                    }
                    stream.write_all(&suback)?;
                }
                12 => stream.write_all(&[0xD0, 0])?,
                14 => return Ok(()),
                // PUBACK and the rest from subscribers: nothing to do.
                _ => {}
            }
            start += f.len;
        }
        // Keep the partial packet at the front; grow for a large one.
        buf.copy_within(start..end, 0);
        end -= start;
        start = 0;
        if end == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[end..])?;
        if n == 0 {
            return Ok(());
        }
        end += n;
    }
}

/// Two bytes at `at`.
fn two(b: &[u8], at: usize) -> Result<[u8; 2]> {
    match b.get(at..at + 2) {
        Some(&[x, y]) => Ok([x, y]),
        _ => bail!("packet too short"),
    }
}

/// An MQTT Variable Byte Integer: (value, bytes it took).
fn varint(b: &[u8]) -> Result<(usize, usize)> {
    let mut value = 0usize;
    for (i, &byte) in b.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    bail!("bad variable byte integer")
}

/// MQTT filter matching with `+` and `#` (no `$` topic rule: the relay has no system topics).
fn matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for level in filter.split('/') {
        match (level, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (l, Some(x)) if l == x => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn filters() {
        assert!(matches("a/b", "a/b"));
        assert!(matches("a/+", "a/b"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a/b", "a"));
    }
}
