//! Reading and deleting device message history: range queries in the store, never a scan of
//! other devices or of messages outside the range.

use serde_json::Value;
use tern_store::{MessageRange, Op, Visit};

use crate::{Gateway, GwError, History, MessageQuery};

impl Gateway {
    /// Reads the history of `devices` (in that order): a range query per device, `count`
    /// across them all, at most `max_messages_per_call`. Blocking (store reads): call it off
    /// the async workers.
    pub fn messages(&self, devices: &[u64], q: &MessageQuery) -> Result<History, GwError> {
        let max = self.options.max_messages_per_call;
        let wanted = q
            .count
            .map_or(usize::MAX, |c| usize::try_from(c).unwrap_or(usize::MAX));
        let limit = wanted.min(max);
        let now = self.now();
        let mut out = History::default();
        for &device in devices {
            if out.messages.len() >= limit {
                break;
            }
            let range = MessageRange {
                device,
                from: q.from,
                to: q.to,
                reverse: q.reverse,
            };
            let mut bad = 0u64;
            self.store
                .device_messages(&range, &mut |_, json| {
                    let Ok(msg) = serde_json::from_slice::<Value>(json) else {
                        bad += 1;
                        return Visit::More;
                    };
                    if !q.passes(&msg, now) {
                        return Visit::More;
                    }
                    if out.messages.len() >= limit {
                        out.truncated = wanted > max;
                        return Visit::Stop;
                    }
                    out.messages.push(q.project(msg));
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
        Ok(out)
    }

    /// Deletes the messages of `id` in the query's range (`from..=to`); with a filter, only
    /// those that pass it (read first, then deleted by key). Blocking with a filter (store
    /// reads).
    pub fn delete_messages(&self, id: u64, q: &MessageQuery) -> Result<(), GwError> {
        if !self.state.lock().devices.contains_key(&id) {
            return Err(GwError::NotFound { what: "device", id });
        }
        if q.filter.is_empty() {
            self.store.submit(Op::DelMessages {
                device: id,
                from: q.from,
                to: q.to,
            });
            return Ok(());
        }
        let now = self.now();
        let mut keys = Vec::new();
        let range = MessageRange {
            device: id,
            from: q.from,
            to: q.to,
            reverse: false,
        };
        self.store
            .device_messages(&range, &mut |key, json| {
                if serde_json::from_slice::<Value>(json).is_ok_and(|m| q.passes(&m, now)) {
                    keys.push(key);
                }
                Visit::More
            })
            .map_err(|e| GwError::Store(e.to_string()))?;
        for chunk in keys.chunks(10_000) {
            self.store.submit(Op::DelMessageKeys {
                device: id,
                keys: chunk.to_vec(),
            });
        }
        Ok(())
    }
}
