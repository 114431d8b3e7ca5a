//! Codec 12 commands to Teltonika devices (docs/teltonika.md#commands).
//!
//! - **Now** ([`Gateway::command`], `POST /gw/devices/{sel}/commands`): written to the device's
//!   open connection, answered with its response, `executed: false` with `reason` "timeout"
//!   when none comes within the timeout, and refused at once (error code 2) when the device is
//!   not connected.
//! - **Queued** ([`Gateway::queue_command`], `/gw/devices/{sel}/commands-queue`): kept in the
//!   store until sent, with a `ttl`; sent when the device connects (or at once when it is
//!   connected), tried up to [`MAX_ATTEMPTS`] times, then dropped as canceled; expired ones
//!   are dropped by the retention sweep. The attempt count lives in memory (a restart starts it
//!   again).
//! - **Results**: every executed or failed command of both routes is appended to the device's
//!   `commands-result` (kept `commands_ttl`), and each step is logged on
//!   `flespi/log/gw/devices/<id>/commands-queue/<command id>/<queued|sent|processed|canceled|expired>`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tern_net::teltonika::{Command, CommandError, CommandReply};
use tern_store::{MessageKey, MessageRange, Op, Visit};
use tokio::sync::oneshot;

use crate::logs::Origin;
use crate::types::TELTONIKA;
use crate::{Gateway, GwError, History, MessageQuery, message};

/// A queued command is tried this many times, then dropped (canceled).
pub const MAX_ATTEMPTS: u32 = 10;
/// Queue `ttl` bounds, seconds (docs/teltonika.md#commands).
pub const QUEUE_TTL: (u64, u64) = (60, 2_592_000);
/// The default queue `ttl`, seconds.
pub const DEFAULT_QUEUE_TTL: u64 = 86_400;
/// Commands queued per device, at most.
pub const MAX_QUEUED: usize = 256;

/// The command events logged, with their codes (`crate::logs::code`).
pub mod command_event {
    use crate::logs::code;

    pub const QUEUED: (&str, u64) = ("queued", code::COMMAND_QUEUED);
    pub const SENT: (&str, u64) = ("sent", code::COMMAND_DELIVERED);
    pub const PROCESSED: (&str, u64) = ("processed", code::COMMAND_PROCESSED);
    pub const EXPIRED: (&str, u64) = ("expired", code::COMMAND_EXPIRED);
    pub const CANCELED: (&str, u64) = ("canceled", code::COMMAND_CANCELED);
}

/// One command as posted: `{"name":"custom","properties":{"text":"getinfo"}}` (or `hex`), or
/// flespi's older `{"name":"codec12","properties":{"payload":..,"hex":false,"crlf":true}}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommandInput {
    pub name: String,
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// Seconds to wait for the response (default: the channel's `command_timeout`).
    pub timeout: Option<u64>,
    /// Seconds a queued command is kept (queue only).
    pub ttl: Option<u64>,
    /// Ignored (flespi's commands carry the device in the path).
    pub device_id: Option<u64>,
}

impl CommandInput {
    /// The bytes the command sends.
    pub fn payload(&self) -> Result<Bytes, GwError> {
        let text = |key: &str| self.properties.get(key).and_then(Value::as_str);
        let flag = |key: &str| {
            self.properties
                .get(key)
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        let bytes = match self.name.as_str() {
            "custom" => match (text("text"), text("hex")) {
                (Some(t), None) => t.as_bytes().to_vec(),
                (None, Some(h)) => from_hex(h)?,
                _ => {
                    return Err(GwError::Invalid(
                        "command `custom`: properties.text or properties.hex (one of them) is required"
                            .into(),
                    ));
                }
            },
            "codec12" => {
                let Some(p) = text("payload") else {
                    return Err(GwError::Invalid(
                        "command `codec12`: properties.payload is required".into(),
                    ));
                };
                let mut b = if flag("hex") {
                    from_hex(p)?
                } else {
                    p.as_bytes().to_vec()
                };
                if flag("crlf") {
                    b.extend_from_slice(b"\r\n");
                }
                b
            }
            other => {
                return Err(GwError::Invalid(format!(
                    "unknown command `{other}`; known: custom, codec12"
                )));
            }
        };
        if bytes.is_empty() || bytes.len() > 4096 {
            return Err(GwError::Invalid(
                "a command's payload must have 1 to 4096 bytes".into(),
            ));
        }
        Ok(Bytes::from(bytes))
    }
}

fn from_hex(h: &str) -> Result<Vec<u8>, GwError> {
    let h: String = h.chars().filter(|c| !c.is_whitespace()).collect();
    if !h.len().is_multiple_of(2) || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(GwError::Invalid(format!(
            "`{h}` is not a hex string of whole bytes"
        )));
    }
    (0..h.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&h[i..i + 2], 16).map_err(|e| GwError::Invalid(format!("hex: {e}")))
        })
        .collect()
}

/// A response payload as text, or as hex when it is not printable ASCII.
fn response_text(payload: &[u8]) -> String {
    let printable = payload
        .iter()
        .all(|b| b.is_ascii_graphic() || matches!(b, b' ' | b'\r' | b'\n' | b'\t'));
    if printable {
        String::from_utf8_lossy(payload).into_owned()
    } else {
        payload.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A queued command, as stored and listed.
#[derive(Debug, Clone)]
struct Queued {
    /// The command id (unique; also its key in the store).
    id: u64,
    item: Value,
    payload: Bytes,
    timeout: Option<u64>,
    expire: f64,
    attempts: u32,
}

/// Queued commands by device, and the devices whose queue is being delivered.
#[derive(Debug, Default)]
pub(crate) struct Queues {
    by_device: Mutex<HashMap<u64, VecDeque<Queued>>>,
    delivering: Mutex<HashSet<u64>>,
}

/// How a send ended.
enum Sent {
    Answered(String),
    TimedOut,
    Closed,
}

impl Gateway {
    /// Loads the stored command queues (at start).
    pub(crate) fn load_queues(&self) {
        // Only devices that take commands have a queue.
        let ids: Vec<u64> = self
            .state
            .lock()
            .devices
            .values()
            .filter(|d| d.protocol_id() == TELTONIKA)
            .map(|d| d.id)
            .collect();
        let mut queues = self.queues.by_device.lock();
        for id in ids {
            let range = MessageRange {
                device: tern_store::queue_key(id),
                from: i64::MIN,
                to: i64::MAX,
                reverse: false,
            };
            let mut list = VecDeque::new();
            let read = self.store.device_messages(&range, &mut |key, json| {
                if let Ok(item) = serde_json::from_slice::<Value>(json)
                    && let Some(q) = queued_of(key.seq, item)
                {
                    list.push_back(q);
                }
                Visit::More
            });
            if let Err(err) = read {
                tracing::error!(device = id, %err, "could not read a device's command queue");
            }
            if !list.is_empty() {
                queues.insert(id, list);
            }
        }
    }

    /// The device `id` with its account and ident, if it takes commands.
    fn command_device(&self, id: u64) -> Result<(u64, String), GwError> {
        let st = self.state.lock();
        let d = st
            .devices
            .get(&id)
            .ok_or(GwError::NotFound { what: "device", id })?;
        if d.protocol_id() != TELTONIKA {
            return Err(GwError::Invalid(format!(
                "device {id}: its device type takes no commands"
            )));
        }
        Ok((d.cid, d.ident().to_owned()))
    }

    /// Hands `payload` to the connection of `ident` on a Teltonika channel of `cid`'s account
    /// tree (with `timeout`, else that channel's `command_timeout`); the answer comes on the
    /// receiver. Not connected anywhere: [`CommandError::NotConnected`].
    fn write_command(
        &self,
        cid: u64,
        ident: &str,
        payload: Bytes,
        timeout: Option<u64>,
    ) -> Result<oneshot::Receiver<CommandReply>, CommandError> {
        let root = self.root(cid);
        let channels: Vec<(u64, Duration)> = {
            let st = self.state.lock();
            st.channels
                .values()
                .filter(|c| c.protocol_id == TELTONIKA && self.root(c.cid) == root)
                .map(|c| (c.id, c.command_timeout()))
                .collect()
        };
        let mut result = Err(CommandError::NotConnected);
        for (id, channel) in self.trackers.channels() {
            let Some((_, default)) = channels.iter().find(|(c, _)| *c == id) else {
                continue;
            };
            let (reply, answer) = oneshot::channel();
            let cmd = Command {
                payload: payload.clone(),
                timeout: timeout.map_or(*default, Duration::from_secs),
                reply,
            };
            match channel.send_command(ident, cmd) {
                Ok(()) => return Ok(answer),
                Err(CommandError::NotConnected) => {}
                Err(e) => result = Err(e),
            }
        }
        result
    }

    /// Waits for a written command's answer (its timeout is the connection's to keep).
    async fn send_and_wait(&self, answer: oneshot::Receiver<CommandReply>) -> Sent {
        match answer.await {
            Ok(CommandReply::Response(r)) => Sent::Answered(response_text(&r.payload)),
            Ok(CommandReply::Timeout) => Sent::TimedOut,
            Err(_) => Sent::Closed,
        }
    }

    /// Stores a command's result and logs it.
    fn record_result(&self, device: u64, cid: u64, mut item: Value, sent: &Sent) -> Value {
        let outcome = match sent {
            Sent::Answered(text) => {
                item["response"] = json!(text);
                item["executed"] = json!(true);
                "executed"
            }
            Sent::TimedOut => {
                item["executed"] = json!(false);
                item["reason"] = json!("timeout");
                "timeout"
            }
            Sent::Closed => {
                item["executed"] = json!(false);
                item["reason"] = json!("the connection closed before the response");
                "closed"
            }
        };
        self.trackers.metrics.command(outcome);
        self.append_result(device, &item);
        self.command_log(cid, device, &item, command_event::PROCESSED);
        item
    }

    /// Keeps a command's result (shared with the other nodes of a cluster).
    fn append_result(&self, device: u64, item: &Value) {
        self.store_result(device, item, true);
    }

    fn store_result(&self, device: u64, item: &Value, shared: bool) {
        let id = item["id"].as_u64().unwrap_or_default();
        let op = Op::AppendMessages {
            device: tern_store::commands_key(device),
            messages: vec![(
                MessageKey {
                    ts: message::micros(self.now()),
                    seq: id,
                },
                Bytes::from(serde_json::to_vec(item).unwrap_or_default()),
            )],
        };
        self.submit(op, shared);
    }

    fn command_log(&self, cid: u64, device: u64, item: &Value, (event, code): (&str, u64)) {
        let id = item["id"].as_u64().unwrap_or_default();
        let mut fields = Map::new();
        fields.insert("command".into(), item.clone());
        let event = format!("commands-queue/{id}/{event}");
        self.log(cid, Origin::Device, device, (&event, code), fields);
    }

    fn command_item(&self, id: u64, device: u64, ident: &str, input: &CommandInput) -> Value {
        json!({
            "id": id,
            "device_id": device,
            "ident": ident,
            "name": input.name,
            "properties": input.properties,
            "timestamp": self.now(),
        })
    }

    /// `POST /gw/devices/{sel}/commands` for one device: writes the command to its connection
    /// and answers with the result item once the response came (or the timeout passed). A
    /// device that is not connected: [`GwError::NotConnected`] at once.
    /// In a cluster, a tracker connected to another node gets the command through that node.
    pub async fn command(&self, device: u64, input: &CommandInput) -> Result<Value, GwError> {
        self.command_with(device, input, true).await
    }

    /// [`Gateway::command`] asked by another node of the cluster, for a tracker connected here.
    pub async fn command_here(&self, device: u64, input: Value) -> Result<Value, GwError> {
        let input: CommandInput = serde_json::from_value(input)
            .map_err(|e| GwError::Invalid(format!("a command from another node: {e}")))?;
        self.command_with(device, &input, false).await
    }

    async fn command_with(
        &self,
        device: u64,
        input: &CommandInput,
        forward: bool,
    ) -> Result<Value, GwError> {
        let payload = input.payload()?;
        let (cid, ident) = self.command_device(device)?;
        let id = self.seq.fetch_add(1, Ordering::Relaxed);
        let item = self.command_item(id, device, &ident, input);
        let answer = match self.write_command(cid, &ident, payload, input.timeout) {
            Ok(answer) => answer,
            Err(CommandError::NotConnected)
                if forward
                    && let Some((node, replica)) =
                        self.linked_elsewhere(self.root(cid), &ident) =>
            {
                let input = serde_json::to_value(input)
                    .map_err(|e| GwError::Invalid(format!("the command: {e}")))?;
                return replica.command_on(node, device, input).await;
            }
            Err(CommandError::NotConnected) => {
                self.trackers.metrics.command("not_connected");
                return Err(GwError::NotConnected {
                    name: input.name.clone(),
                    id: device,
                });
            }
            Err(CommandError::QueueFull) => {
                self.trackers.metrics.command("busy");
                return Err(GwError::Invalid(format!(
                    "device {device}: too many commands waiting for its connection"
                )));
            }
        };
        self.command_log(cid, device, &item, command_event::SENT);
        let sent = self.send_and_wait(answer).await;
        Ok(self.record_result(device, cid, item, &sent))
    }

    /// `POST /gw/devices/{sel}/commands-queue` for one device: keeps the command until it is
    /// sent; answers with the queued item.
    pub fn queue_command(&self, device: u64, input: &CommandInput) -> Result<Value, GwError> {
        let payload = input.payload()?;
        let ttl = input.ttl.unwrap_or(DEFAULT_QUEUE_TTL);
        if !(QUEUE_TTL.0..=QUEUE_TTL.1).contains(&ttl) {
            return Err(GwError::Invalid(format!(
                "ttl must be from {} to {} seconds",
                QUEUE_TTL.0, QUEUE_TTL.1
            )));
        }
        let (cid, ident) = self.command_device(device)?;
        let id = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut item = self.command_item(id, device, &ident, input);
        let expire = self.now() + ttl as f64;
        item["ttl"] = json!(ttl);
        item["expire"] = json!(expire);
        if let Some(t) = input.timeout {
            item["timeout"] = json!(t);
        }
        {
            let mut queues = self.queues.by_device.lock();
            let list = queues.entry(device).or_default();
            if list.len() >= MAX_QUEUED {
                return Err(GwError::Invalid(format!(
                    "device {device}: {MAX_QUEUED} commands are queued already"
                )));
            }
            list.push_back(Queued {
                id,
                item: item.clone(),
                payload,
                timeout: input.timeout,
                expire,
                attempts: 0,
            });
        }
        self.write(Op::AppendMessages {
            device: tern_store::queue_key(device),
            messages: vec![(
                MessageKey {
                    ts: i64::try_from(id).unwrap_or(i64::MAX),
                    seq: id,
                },
                Bytes::from(serde_json::to_vec(&item).unwrap_or_default()),
            )],
        });
        self.command_log(cid, device, &item, command_event::QUEUED);
        if self.connected_by_id(device) {
            self.spawn_delivery(device);
        }
        Ok(item)
    }

    fn connected_by_id(&self, device: u64) -> bool {
        let st = self.state.lock();
        st.devices.get(&device).is_some_and(|d| self.connected(d))
    }

    /// The queued commands of device `id` (`id`: one of them).
    pub fn queued_commands(&self, device: u64, command: Option<u64>) -> Vec<Value> {
        self.queues
            .by_device
            .lock()
            .get(&device)
            .map(|l| {
                l.iter()
                    .filter(|q| command.is_none_or(|c| c == q.id))
                    .map(|q| {
                        let mut v = q.item.clone();
                        v["attempts"] = json!(q.attempts);
                        v
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops queued commands of device `id` (`command`: one of them); answers them.
    pub fn cancel_commands(&self, device: u64, command: Option<u64>) -> Vec<Value> {
        let gone: Vec<Queued> = {
            let mut queues = self.queues.by_device.lock();
            let Some(list) = queues.get_mut(&device) else {
                return Vec::new();
            };
            let (gone, kept): (VecDeque<Queued>, VecDeque<Queued>) = list
                .drain(..)
                .partition(|q| command.is_none_or(|c| c == q.id));
            *list = kept;
            gone.into()
        };
        let cid = self.state.lock().devices.get(&device).map(|d| d.cid);
        gone.into_iter()
            .map(|q| {
                self.unstore_queued(device, q.id, true);
                if let Some(cid) = cid {
                    self.command_log(cid, device, &q.item, command_event::CANCELED);
                }
                q.item
            })
            .collect()
    }

    /// Deletes queued command `id` of `device` from the store, and (`shared`: it was sent or
    /// canceled) from the other nodes' queues.
    fn unstore_queued(&self, device: u64, id: u64, shared: bool) {
        let ts = i64::try_from(id).unwrap_or(i64::MAX);
        let op = Op::DelMessages {
            device: tern_store::queue_key(device),
            from: ts,
            to: ts,
        };
        self.submit(op, shared);
    }

    /// Commands another node of the cluster queued for `device`: queued here too, and sent
    /// now if its tracker is connected here.
    pub(crate) fn remote_queued(&self, device: u64, messages: &[(MessageKey, Bytes)]) {
        let added = {
            let mut queues = self.queues.by_device.lock();
            let list = queues.entry(device).or_default();
            let mut added = false;
            for (key, json) in messages {
                if list.iter().any(|q| q.id == key.seq) || list.len() >= MAX_QUEUED {
                    continue;
                }
                if let Some(q) = serde_json::from_slice::<Value>(json)
                    .ok()
                    .and_then(|item| queued_of(key.seq, item))
                {
                    list.push_back(q);
                    added = true;
                }
            }
            added
        };
        if added && self.connected_here(device) {
            self.spawn_delivery(device);
        }
    }

    /// Queued commands of `device` another node sent or canceled (ids `from..=to`).
    pub(crate) fn remote_unqueued(&self, device: u64, from: i64, to: i64) {
        if let Some(list) = self.queues.by_device.lock().get_mut(&device) {
            list.retain(|q| {
                let id = i64::try_from(q.id).unwrap_or(i64::MAX);
                !(from..=to).contains(&id)
            });
        }
    }

    /// Whether `device`'s tracker is connected to this node.
    fn connected_here(&self, device: u64) -> bool {
        let st = self.state.lock();
        st.devices
            .get(&device)
            .is_some_and(|d| self.trackers.linked(self.root(d.cid), d.ident()))
    }

    /// The results of device `id`'s commands (`command`: one of them), oldest first.
    pub fn command_results(&self, device: u64, command: Option<u64>) -> Result<History, GwError> {
        let q = MessageQuery {
            from: i64::MIN,
            to: i64::MAX,
            count: None,
            reverse: false,
            fields: Vec::new(),
            filter: Vec::new(),
        };
        let mut h = self.messages(&[tern_store::commands_key(device)], &q)?;
        if let Some(c) = command {
            h.messages.retain(|m| m["id"].as_u64() == Some(c));
        }
        Ok(h)
    }

    /// A connection of `imei` was identified on `channel`: its device's queue goes out.
    pub(crate) fn deliver_queued(&self, channel: u64, imei: &str) {
        let device = {
            let st = self.state.lock();
            let Some(root) = st.channels.get(&channel).map(|c| self.root(c.cid)) else {
                return;
            };
            self.device_by_ident(&st, TELTONIKA, imei, root)
                .map(|d| d.id)
        };
        if let Some(device) = device
            && self
                .queues
                .by_device
                .lock()
                .get(&device)
                .is_some_and(|l| !l.is_empty())
        {
            self.spawn_delivery(device);
        }
    }

    /// Sends device `id`'s queue in order, one command at a time (one delivery per device).
    fn spawn_delivery(&self, device: u64) {
        if !self.queues.delivering.lock().insert(device) {
            return;
        }
        let Some(gw) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            gw.deliver(device).await;
            gw.queues.delivering.lock().remove(&device);
        });
    }

    async fn deliver(&self, device: u64) {
        loop {
            let now = self.now();
            let next = {
                let mut queues = self.queues.by_device.lock();
                let Some(list) = queues.get_mut(&device) else {
                    return;
                };
                match list.front_mut() {
                    None => return,
                    Some(q) if q.expire <= now => None,
                    Some(q) => {
                        q.attempts += 1;
                        Some(q.clone())
                    }
                }
            };
            let Some(q) = next else {
                self.expire_queued(device, now);
                continue;
            };
            let Ok((cid, ident)) = self.command_device(device) else {
                return;
            };
            let answer = match self.write_command(cid, &ident, q.payload.clone(), q.timeout) {
                Ok(answer) => answer,
                // Not connected (any more): the queue waits for the next connection.
                Err(_) => return,
            };
            self.command_log(cid, device, &q.item, command_event::SENT);
            let sent = self.send_and_wait(answer).await;
            let done = match sent {
                Sent::Answered(_) => true,
                _ => q.attempts >= MAX_ATTEMPTS,
            };
            if matches!(sent, Sent::Closed) && !done {
                // The connection went: try again when it is back.
                return;
            }
            if done {
                if let Some(l) = self.queues.by_device.lock().get_mut(&device) {
                    l.retain(|x| x.id != q.id);
                }
                self.unstore_queued(device, q.id, true);
                let answered = matches!(sent, Sent::Answered(_));
                self.record_result(device, cid, q.item.clone(), &sent);
                if !answered {
                    self.command_log(cid, device, &q.item, command_event::CANCELED);
                }
            }
        }
    }

    /// Drops device `id`'s queued commands whose `ttl` ran out at `now`.
    fn expire_queued(&self, device: u64, now: f64) {
        let gone: Vec<Queued> = {
            let mut queues = self.queues.by_device.lock();
            let Some(list) = queues.get_mut(&device) else {
                return;
            };
            let (gone, kept): (VecDeque<Queued>, VecDeque<Queued>) =
                list.drain(..).partition(|q| q.expire <= now);
            *list = kept;
            gone.into()
        };
        let cid = self.state.lock().devices.get(&device).map(|d| d.cid);
        // Every node of a cluster expires its own copy of the queue: each keeps its own
        // result of it (not shared, or it would be there once per node).
        for q in gone {
            self.unstore_queued(device, q.id, false);
            self.trackers.metrics.command("expired");
            let mut item = q.item.clone();
            item["executed"] = json!(false);
            item["reason"] = json!("expired");
            self.store_result(device, &item, false);
            if let Some(cid) = cid {
                self.command_log(cid, device, &q.item, command_event::EXPIRED);
            }
        }
    }

    /// The retention of commands: expired queue entries out, results older than
    /// `commands_ttl` deleted (called by the sweep).
    pub(crate) fn sweep_commands(&self, now: f64) {
        let devices: Vec<u64> = self.queues.by_device.lock().keys().copied().collect();
        for device in devices {
            self.expire_queued(device, now);
        }
        let cutoff = message::micros(now - self.options.commands_ttl as f64);
        let ids: Vec<u64> = self.state.lock().devices.keys().copied().collect();
        for id in ids {
            let key = tern_store::commands_key(id);
            if self.store.message_stats(key).is_ok_and(|s| s.count > 0) {
                self.store.submit(Op::DelMessages {
                    device: key,
                    from: i64::MIN,
                    to: cutoff,
                });
            }
        }
    }

    /// Forgets device `id`'s commands (deleted).
    pub(crate) fn drop_commands(&self, device: u64) {
        self.queues.by_device.lock().remove(&device);
        for key in [
            tern_store::queue_key(device),
            tern_store::commands_key(device),
        ] {
            self.store.submit(Op::DelMessages {
                device: key,
                from: i64::MIN,
                to: i64::MAX,
            });
        }
    }
}

/// A stored queue entry back in memory.
fn queued_of(id: u64, item: Value) -> Option<Queued> {
    let input = CommandInput {
        name: item["name"].as_str()?.to_owned(),
        properties: item["properties"].as_object().cloned().unwrap_or_default(),
        timeout: item["timeout"].as_u64(),
        ttl: None,
        device_id: None,
    };
    Some(Queued {
        id,
        payload: input.payload().ok()?,
        timeout: input.timeout,
        expire: item["expire"].as_f64()?,
        attempts: 0,
        item,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: Value) -> CommandInput {
        serde_json::from_value(v).expect("input")
    }

    #[test]
    fn payloads_of_every_form() {
        let p = |v: Value| input(v).payload();
        assert_eq!(
            p(json!({"name": "custom", "properties": {"text": "getinfo"}})).ok(),
            Some(Bytes::from_static(b"getinfo"))
        );
        assert_eq!(
            p(json!({"name": "custom", "properties": {"hex": "DEADbeef"}})).ok(),
            Some(Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]))
        );
        assert_eq!(
            p(json!({"name": "codec12", "properties": {"payload": "getver", "crlf": true}})).ok(),
            Some(Bytes::from_static(b"getver\r\n"))
        );
        assert_eq!(
            p(json!({"name": "codec12", "properties": {"payload": "0102", "hex": true}})).ok(),
            Some(Bytes::from_static(&[1, 2]))
        );
        assert!(p(json!({"name": "custom", "properties": {}})).is_err());
        assert!(p(json!({"name": "custom", "properties": {"hex": "abc"}})).is_err());
        assert!(p(json!({"name": "reboot"})).is_err());
        assert!(p(json!({"name": "custom", "properties": {"text": ""}})).is_err());
    }

    #[test]
    fn responses_read_as_text_or_hex() {
        assert_eq!(response_text(b"RTC:2026 OK\r\n"), "RTC:2026 OK\r\n");
        assert_eq!(response_text(&[0, 0xff]), "00ff");
    }
}
