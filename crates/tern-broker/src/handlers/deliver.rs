//! Deliveries to the client: take what the session's window allows, encode it.
//!
//! The session lock is held only to move deliveries out of the queue and record them in
//! flight; encoding happens after it is released. Messages are shared (`Arc`) up to here;
//! encoding allocates nothing: small payloads are copied into the connection's write buffer,
//! large ones (from `SHARE_PAYLOAD_FROM`) are written from the message's own bytes.

use bytestring::ByteString;
use tern_codec::{Packet, PubAck, QoS};

use tern_store::{InflightPhase, Op};

use crate::connection::{Connection, Taken, first_phase, owns};
use crate::message::{Delivery, Micros};
use crate::metrics::{DropReason, Metrics};
use crate::out::SHARE_PAYLOAD_FROM;
use crate::session::{Inflight, Phase};
use crate::topics::{CID_PROPERTY, TIMESTAMP_PROPERTY};

thread_local! {
    /// The deliveries of one `fill`, between the session lock and encoding.
    static BATCH: std::cell::RefCell<Vec<Taken>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Connection {
    /// Moves deliveries from the session into the output buffer until about `limit` bytes are
    /// buffered or the in-flight window is full. Returns true if more may be ready.
    pub fn fill(&mut self, limit: usize) -> bool {
        let Some(session) = self.session.clone() else {
            return false;
        };
        let broker = self.broker.clone();
        let now = broker.clock.now();
        let window = usize::from(self.limits.receive_maximum.min(broker.config.max_inflight));
        // One batch vector per worker thread, not per connection: taken here, given back below.
        let mut batch = BATCH.with_borrow_mut(std::mem::take);
        let mut budget = limit.saturating_sub(self.out.len());
        let mut expired = 0u64;
        // What left the outbox here goes back to the broker-wide budget: once per batch.
        let mut moved = false;
        let (more, freed, tell_fabric) = {
            let mut st = session.lock();
            if !owns(&st, self.id) {
                BATCH.set(batch);
                return false;
            }
            let queued_before = st.queued_bytes;
            // First re-send what was in flight when the last connection ended ([MQTT-4.4.0-1]).
            let resend = std::mem::take(&mut st.resend);
            for f in st.inflight.iter().take(resend) {
                batch.push(Taken {
                    delivery: f.delivery.clone(),
                    packet_id: Some(f.packet_id),
                    dup: true,
                    again: true,
                    pubrel: f.phase == Phase::AwaitPubComp,
                });
            }
            while budget > 0 {
                let Some(front) = st.queue.front() else { break };
                if front.msg.is_expired(now) {
                    if let Some(gone) = st.pop()
                        && gone.seq != 0
                    {
                        moved = true;
                        broker.store.submit(Op::Dequeue {
                            key: session.key.clone(),
                            seq: gone.seq,
                        });
                    }
                    expired += 1;
                    continue;
                }
                if front.qos != QoS::AtMostOnce && st.inflight.len() >= window {
                    break;
                }
                let Some(delivery) = st.pop() else { break };
                budget = budget.saturating_sub(delivery.cost());
                let mut dup = false;
                let mut pubrel = false;
                let packet_id = if delivery.qos == QoS::AtMostOnce {
                    None
                } else {
                    // Sent before by the session's former node (cluster mode): again under
                    // the same id, unless that id is taken here by now; a QoS 2 message whose
                    // PUBREC that node had gets its PUBREL again under that id, not the PUBLISH.
                    let id = match delivery.dup_id {
                        Some(id) if id != 0 && !st.inflight.iter().any(|f| f.packet_id == id) => {
                            pubrel = delivery.dup_released;
                            id
                        }
                        _ => st.next_packet_id(),
                    };
                    dup = delivery.dup_id.is_some();
                    moved |= delivery.seq != 0;
                    if delivery.seq != 0 {
                        broker.store.submit(Op::SetInflight {
                            key: session.key.clone(),
                            seq: delivery.seq,
                            packet_id: id,
                            phase: if pubrel {
                                InflightPhase::Released
                            } else {
                                InflightPhase::Sent
                            },
                        });
                    }
                    st.inflight.push_back(Inflight {
                        packet_id: id,
                        delivery: delivery.clone(),
                        phase: if pubrel {
                            Phase::AwaitPubComp
                        } else {
                            first_phase(delivery.qos)
                        },
                    });
                    Some(id)
                };
                batch.push(Taken {
                    delivery,
                    packet_id,
                    dup,
                    again: false,
                    pubrel,
                });
            }
            // The cluster's checkpoint looks at sessions whose deliveries moved (fabric.rs).
            let tell_fabric = moved && !st.moved && broker.is_clustered();
            st.moved |= tell_fabric;
            st.release_queue_memory();
            let sent = batch.iter().filter(|o| !o.again).count();
            st.stats.received += sent as u64;
            session.drained_to(st.queue.len(), st.queued_bytes, &broker.config);
            let more = !st.queue.is_empty()
                && (st.inflight.len() < window
                    || st.queue.front().is_some_and(|d| d.qos == QoS::AtMostOnce));
            (
                more,
                queued_before.saturating_sub(st.queued_bytes),
                tell_fabric,
            )
        };
        if tell_fabric {
            broker.deliveries_moved(&session.key);
        }
        let new_inflight = batch
            .iter()
            .filter(|o| !o.again && o.packet_id.is_some())
            .count() as i64;
        let taken = batch.iter().filter(|o| !o.again).count() as i64;
        Metrics::gauge(&broker.metrics.queued, -(taken + expired as i64));
        broker.queue_budget.release(freed);
        Metrics::gauge(&broker.metrics.inflight, new_inflight);
        if expired > 0 {
            broker.metrics.dropped_n(DropReason::Expired, expired);
        }
        // Counted once per batch: the counters are shared by every worker thread, and an
        // atomic add per delivery kept their cache line bouncing between cores (perf: ~5% of
        // a QoS 0 fan-out).
        let (mut out_messages, mut out_bytes) = (0u64, 0u64);
        for o in batch.drain(..) {
            if o.pubrel {
                if let Some(id) = o.packet_id {
                    self.send(&Packet::PubRel(PubAck::new(id)));
                }
                continue;
            }
            if self.encode_delivery(&o.delivery, o.packet_id, o.dup, now) {
                out_messages += 1;
                out_bytes += o.delivery.msg.payload.len() as u64;
            } else {
                self.drop_too_large(o.packet_id);
            }
        }
        if out_messages > 0 {
            Metrics::add(&broker.metrics.messages_out, out_messages);
            Metrics::add(&broker.metrics.bytes_out, out_bytes);
        }
        BATCH.set(batch);
        more
    }

    /// Encodes one PUBLISH for this client. False if it is larger than the client accepts.
    fn encode_delivery(
        &mut self,
        d: &Delivery,
        packet_id: Option<u16>,
        dup: bool,
        now: Micros,
    ) -> bool {
        let msg = &d.msg;
        let v5 = self.protocol.is_v5();
        // The broker-stamped `cid` and `timestamp` user properties
        // (docs/flespi.md#accounts-and-namespaces), formatted on the stack: a delivery allocates
        // nothing. Formatted for v5 clients only (earlier versions have no user properties), unless
        // `mqtt.stamp_properties` is off.
        let stamped = v5 && self.broker.config.stamp_properties;
        let mut cid_buf = [0u8; 20];
        let mut ts_buf = [0u8; 28];
        let stamp = if stamped {
            [
                (CID_PROPERTY, format_u64(msg.cid, &mut cid_buf)),
                (
                    TIMESTAMP_PROPERTY,
                    format_timestamp_into(msg.timestamp, &mut ts_buf),
                ),
            ]
        } else {
            [("", ""); 2]
        };
        let mut out = tern_codec::Outgoing {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: &msg.topic,
            packet_id,
            properties: &msg.properties,
            // Retained messages keep their interval as published (docs/flespi.md#publishing);
            // queued ones count down ([MQTT-3.3.2-6]).
            message_expiry_interval: if d.retain {
                msg.properties.message_expiry_interval
            } else {
                msg.remaining_expiry(now)
            },
            topic_alias: None,
            subscription_identifiers: &d.sub_ids,
            extra_user_properties: if stamped { &stamp } else { &[] },
            payload: &msg.payload,
        };
        // [MQTT-3.1.2-25]: never send a packet larger than the client's Maximum Packet Size.
        // Checked with the full topic, before an alias is assigned, so that an alias is only
        // ever used after the client saw it with its topic. The broker's own stamps (about 40
        // bytes) give way before the message does: a message that fits without them is sent
        // without them.
        let max = self.limits.maximum_packet_size as usize;
        if tern_codec::outgoing_len(&out, self.protocol) > max {
            out.extra_user_properties = &[];
            if tern_codec::outgoing_len(&out, self.protocol) > max {
                return false;
            }
        }
        if v5 && self.limits.topic_alias_maximum > 0 {
            match self.topic_alias(&msg.topic) {
                Alias::Known(alias) => {
                    out.topic = "";
                    out.topic_alias = Some(alias);
                }
                Alias::New(alias) => out.topic_alias = Some(alias),
                Alias::None => {}
            }
        }
        // A large payload goes out as a shared segment of the write, not copied per receiver.
        let shared = msg.payload.len() >= SHARE_PAYLOAD_FROM;
        let encoded = if shared {
            tern_codec::encode_outgoing_head(&out, self.protocol, self.out.tail())
        } else {
            tern_codec::encode_outgoing(&out, self.protocol, self.out.tail())
        };
        if let Err(err) = encoded {
            tracing::error!(conn = self.id, %err, "could not encode a delivery");
            return false;
        }
        if shared {
            self.out.push_shared(msg.payload.clone());
        }
        true
    }

    /// The alias to use for `topic`: one the client already knows, a new one while the
    /// client's Topic Alias Maximum allows, or none.
    fn topic_alias(&mut self, topic: &ByteString) -> Alias {
        let aliases = self.aliases.get_or_insert_with(Box::default);
        if let Some(&alias) = aliases.outgoing.get(topic) {
            return Alias::Known(alias);
        }
        let next = aliases.outgoing.len() + 1;
        if next <= usize::from(self.limits.topic_alias_maximum) {
            let alias = next as u16;
            aliases.outgoing.insert(topic.clone(), alias);
            return Alias::New(alias);
        }
        Alias::None
    }

    /// A delivery was too large for the client: count it and free its in-flight slot.
    fn drop_too_large(&mut self, packet_id: Option<u16>) {
        self.broker.metrics.dropped(DropReason::TooLarge);
        let Some(session) = self.session.clone() else {
            return;
        };
        let mut st = session.lock();
        st.stats.dropped += 1;
        let Some(id) = packet_id else { return };
        let Some(pos) = st.inflight.iter().position(|f| f.packet_id == id) else {
            return;
        };
        if let Some(gone) = st.inflight.remove(pos) {
            Metrics::gauge(&self.broker.metrics.inflight, -1);
            if gone.delivery.seq != 0 {
                self.broker.store.submit(Op::Dequeue {
                    key: session.key.clone(),
                    seq: gone.delivery.seq,
                });
            }
        }
    }
}

/// What [`Connection::topic_alias`] decided.
enum Alias {
    /// The client knows it: send the alias without the topic.
    Known(u16),
    /// Assigned now: send both.
    New(u16),
    None,
}

/// `n` in decimal, in `buf`.
fn format_u64(n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    let mut v = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Microseconds as `seconds.micros` (the `timestamp` user property), in `buf`.
fn format_timestamp_into(ts: Micros, buf: &mut [u8; 28]) -> &str {
    let mut secs = [0u8; 20];
    let s = format_u64(ts / 1_000_000, &mut secs).as_bytes();
    let micros = ts % 1_000_000;
    buf[..s.len()].copy_from_slice(s);
    buf[s.len()] = b'.';
    let mut m = micros;
    for k in (0..6).rev() {
        buf[s.len() + 1 + k] = b'0' + (m % 10) as u8;
        m /= 10;
    }
    std::str::from_utf8(&buf[..s.len() + 7]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_on_the_stack() {
        let mut b = [0u8; 20];
        assert_eq!(format_u64(0, &mut b), "0");
        assert_eq!(format_u64(u64::MAX, &mut b), "18446744073709551615");
        let mut t = [0u8; 28];
        assert_eq!(
            format_timestamp_into(1_700_000_000_000_001, &mut t),
            crate::message::format_timestamp(1_700_000_000_000_001)
        );
        assert_eq!(format_timestamp_into(5, &mut t), "0.000005");
    }
}
