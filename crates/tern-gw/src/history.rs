//! Reading and deleting device message history: range queries in the store, never a scan of
//! other devices or of messages outside the range.

use std::collections::BinaryHeap;

use serde_json::Value;
use tern_store::{MessageKey, MessageRange, Op, Visit};

use crate::{Gateway, GwError, History, MessageQuery};

impl Gateway {
    /// Reads the history of `devices`: a range query per device, merged in the answer's order
    /// (by `timestamp`, ties in arrival order, reversed with `reverse`), `count` across them
    /// all, at most `max_messages_per_call`. Each device contributes at most that many
    /// messages, and only that many are held at once. Blocking (store reads): call it off the
    /// async workers.
    pub fn messages(&self, devices: &[u64], q: &MessageQuery) -> Result<History, GwError> {
        let max = self.options.max_messages_per_call;
        let wanted = q
            .count
            .map_or(usize::MAX, |c| usize::try_from(c).unwrap_or(usize::MAX));
        let limit = wanted.min(max);
        let now = self.now();
        // The `limit` first messages of the answer, the last of them on top.
        let mut best: BinaryHeap<Entry> = BinaryHeap::new();
        let mut more = false;
        for &device in devices {
            if limit == 0 {
                break;
            }
            let range = MessageRange {
                device,
                from: q.from,
                to: q.to,
                reverse: q.reverse,
            };
            let (mut taken, mut bad) = (0usize, 0u64);
            self.store
                .device_messages(&range, &mut |key, json| {
                    let Ok(msg) = serde_json::from_slice::<Value>(json) else {
                        bad += 1;
                        return Visit::More;
                    };
                    if !q.passes(&msg, now) {
                        return Visit::More;
                    }
                    if taken >= limit {
                        more = true;
                        return Visit::Stop;
                    }
                    taken += 1;
                    best.push(Entry::new(key, q.reverse, msg));
                    if best.len() > limit {
                        best.pop();
                        more = true;
                    }
                    Visit::More
                })
                .map_err(|e| GwError::Store(e.to_string()))?;
            if bad > 0 {
                tracing::warn!(
                    device,
                    bad,
                    "stored device messages that do not decode were skipped"
                );
            }
        }
        Ok(History {
            messages: best
                .into_sorted_vec()
                .into_iter()
                .map(|e| q.project(e.msg))
                .collect(),
            truncated: more && wanted > max,
        })
    }

    /// Deletes the messages of `id` in the query's range (`from..=to`); with a filter, only
    /// those that pass it (read first, then deleted by key). Blocking unless the whole history
    /// goes (store reads).
    pub fn delete_messages(&self, id: u64, q: &MessageQuery) -> Result<(), GwError> {
        if !self.state.lock().devices.contains_key(&id) {
            return Err(GwError::NotFound { what: "device", id });
        }
        self.delete_range(id, q)
    }

    /// Deletes the messages under message-table key `id` (a device, or a channel's buffer) in
    /// the query's range, and takes their bytes off the account's stored bytes (quota.rs): a
    /// whole history goes with what was counted for it, a part is read first for its sizes.
    pub(crate) fn delete_range(&self, id: u64, q: &MessageQuery) -> Result<(), GwError> {
        let whole = q.from == i64::MIN && q.to == i64::MAX;
        if q.filter.is_empty() && whole {
            let mut st = self.state.lock();
            self.write(Op::DelMessages {
                device: id,
                from: q.from,
                to: q.to,
            });
            self.forget_key(&mut st, id);
            return Ok(());
        }
        let now = self.now();
        let mut keys = Vec::new();
        let mut bytes = 0u64;
        let range = MessageRange {
            device: id,
            from: q.from,
            to: q.to,
            reverse: false,
        };
        self.store
            .device_messages(&range, &mut |key, json| {
                if q.filter.is_empty()
                    || serde_json::from_slice::<Value>(json).is_ok_and(|m| q.passes(&m, now))
                {
                    keys.push(key);
                    bytes += json.len() as u64;
                }
                Visit::More
            })
            .map_err(|e| GwError::Store(e.to_string()))?;
        let mut st = self.state.lock();
        let ticket = if q.filter.is_empty() {
            self.write(Op::DelMessages {
                device: id,
                from: q.from,
                to: q.to,
            })
        } else {
            keys.chunks(10_000)
                .map(|chunk| {
                    self.write(Op::DelMessageKeys {
                        device: id,
                        keys: chunk.to_vec(),
                    })
                })
                .max()
                .unwrap_or(0)
        };
        self.note_delete(&mut st, id, bytes, keys.len() as u64, ticket);
        Ok(())
    }
}

/// A message with its place in the answer: `order` ascends in the answer's order (the key
/// negated for `reverse`).
#[derive(Debug)]
struct Entry {
    order: (i128, i128),
    msg: Value,
}

impl Entry {
    fn new(key: MessageKey, reverse: bool, msg: Value) -> Entry {
        let (ts, seq) = (i128::from(key.ts), i128::from(key.seq));
        let order = if reverse { (-ts, -seq) } else { (ts, seq) };
        Entry { order, msg }
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order.cmp(&other.order)
    }
}
