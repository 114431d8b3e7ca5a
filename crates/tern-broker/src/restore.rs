//! Rebuilding the broker from the store's snapshot at start.

use std::sync::Arc;

use tern_store::{InflightPhase, Op, Snapshot};

use crate::broker::{Broker, retained_cost};
use crate::connection::first_phase;
use crate::message::Delivery;
use crate::metrics::Metrics;
use crate::session::{Inflight, Phase, Session, Subscription, SubscriptionKey, WillSpec};
use crate::timer_queue::TimerKind;

/// What a restore brought back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub sessions: usize,
    pub subscriptions: usize,
    pub queued: usize,
    pub inflight: usize,
    pub retained: usize,
    /// Sessions and messages that expired while the broker was down.
    pub expired_sessions: usize,
    pub expired_messages: usize,
}

impl Broker {
    /// Rebuilds sessions (all disconnected, re-sending their in-flight messages with DUP on
    /// reconnect), subscriptions, queues and retained messages from `snapshot`. What expired
    /// while the broker was down is removed from the store; wills that came due are published.
    /// Call once, before accepting connections. Accounts and tokens are the accounts layer's.
    pub fn restore(self: &Arc<Self>, snapshot: &Snapshot) -> Restored {
        let now = self.clock.now();
        let mut out = Restored::default();
        let mut max_ts = 0;
        let mut due_wills: Vec<WillSpec> = Vec::new();

        for msg in &snapshot.retained {
            max_ts = max_ts.max(msg.timestamp);
            if msg.is_expired(now) {
                self.store.submit(Op::DelRetained {
                    cid: msg.cid,
                    topic: msg.topic.clone(),
                });
                out.expired_messages += 1;
                continue;
            }
            let ns = self.namespace_or_create(msg.cid);
            if ns
                .retained
                .write()
                .insert(&msg.topic, msg.clone())
                .is_none()
            {
                Metrics::gauge(&self.metrics.retained, 1);
                ns.count(|u| &u.retained_bytes, retained_cost(msg) as i64);
                out.retained += 1;
            }
        }

        for stored in &snapshot.sessions {
            let rec = &stored.record;
            // A session that was connected when the broker stopped was disconnected then.
            let disconnected_at = rec.disconnected_at.unwrap_or(now);
            if let Some((msg, _)) = &rec.will {
                max_ts = max_ts.max(msg.timestamp);
            }
            let expires = (rec.expiry_interval != u32::MAX)
                .then(|| disconnected_at + u64::from(rec.expiry_interval) * 1_000_000);
            if expires.is_some_and(|at| at <= now) {
                self.store.submit(Op::DelSession {
                    key: rec.key.clone(),
                });
                if let Some((msg, delay)) = &rec.will {
                    due_wills.push(WillSpec {
                        message: msg.clone(),
                        delay: *delay,
                        token_id: rec.token_id,
                    });
                }
                out.expired_sessions += 1;
                continue;
            }

            let session = Arc::new(Session::new(
                self.next_session_id(),
                rec.key.clone(),
                false,
                rec.expiry_interval,
            ));
            let mut subs = Vec::with_capacity(stored.subscriptions.len());
            {
                let mut st = session.lock();
                st.stored = true;
                st.created = rec.created;
                st.token_id = rec.token_id;
                st.disconnected_at = Some(disconnected_at);
                for sub in &stored.subscriptions {
                    // The store keeps the key in its string form (`\0cid=<n>` suffix).
                    let parsed = SubscriptionKey::from_stored(&sub.filter)
                        .and_then(|key| Subscription::parse(key, sub.options, sub.id));
                    let s = match parsed {
                        Ok(s) => s,
                        Err(err) => {
                            tracing::warn!(filter = %sub.filter, %err, "stored subscription no longer parses; dropped");
                            self.store.submit(Op::DelSubscription {
                                key: rec.key.clone(),
                                filter: sub.filter.clone(),
                            });
                            continue;
                        }
                    };
                    st.subscriptions.insert(s.clone());
                    subs.push(s);
                }
                for q in &stored.queue {
                    max_ts = max_ts.max(q.msg.timestamp);
                    st.next_seq = st.next_seq.max(q.seq + 1);
                    if q.msg.is_expired(now) && q.inflight.is_none() {
                        self.store.submit(Op::Dequeue {
                            key: rec.key.clone(),
                            seq: q.seq,
                        });
                        out.expired_messages += 1;
                        continue;
                    }
                    let delivery = Delivery {
                        msg: q.msg.clone(),
                        qos: q.qos,
                        retain: q.retain,
                        sub_ids: q.sub_ids.clone(),
                        seq: q.seq,
                        dup_id: None,
                        dup_released: false,
                    };
                    match q.inflight {
                        Some((packet_id, phase)) => {
                            let phase = match phase {
                                InflightPhase::Sent => first_phase(q.qos),
                                InflightPhase::Released => Phase::AwaitPubComp,
                            };
                            st.inflight.push_back(Inflight {
                                packet_id,
                                delivery,
                                phase,
                            });
                            out.inflight += 1;
                        }
                        None => {
                            st.queued_bytes += delivery.cost();
                            st.queue.push_back(delivery);
                            out.queued += 1;
                        }
                    }
                }
                st.resend = st.inflight.len();
                st.last_packet_id = st.inflight.back().map_or(0, |f| f.packet_id);
                st.incoming_qos2 = stored.incoming_qos2.iter().copied().collect();
                if let Some((message, delay)) = &rec.will {
                    let will_at = disconnected_at + u64::from(*delay) * 1_000_000;
                    let will = WillSpec {
                        message: message.clone(),
                        delay: *delay,
                        token_id: rec.token_id,
                    };
                    if will_at <= now {
                        due_wills.push(will);
                    } else {
                        st.will = Some(will);
                        self.timers.schedule(
                            will_at,
                            TimerKind::Will,
                            session.clone(),
                            disconnected_at,
                        );
                    }
                }
                if rec.disconnected_at.is_none() || (rec.will.is_some() && st.will.is_none()) {
                    self.persist_session(&session, &mut st);
                }
                Metrics::gauge(&self.metrics.queued, st.queue.len() as i64);
                self.queue_budget.force(st.queued_bytes);
                Metrics::gauge(&self.metrics.inflight, st.inflight.len() as i64);
            }
            for sub in &subs {
                self.index(&session, sub);
            }
            // The rights of the token that last owned the session keep restricting it until a
            // client connects again.
            if let Some(rights) = rec.token_id.and_then(|id| self.auth.token_rights(id)) {
                self.apply_rights(&session, &rights);
            }
            out.subscriptions += subs.len();
            if let Some(at) = expires {
                self.timers
                    .schedule(at, TimerKind::Expiry, session.clone(), disconnected_at);
            }
            self.with_registry(|reg| reg.insert(session.clone()));
            self.session_added(rec.key.cid);
            out.sessions += 1;
        }

        self.clock.advance_to(max_ts);
        for will in due_wills {
            self.publish_will(will);
        }
        out
    }
}
