//! MQTT channels on an external broker (`configuration.broker = {uri, username, password,
//! client_id, qos, ca}`, docs/flespi.md#devices): one `tern_mqttc` client per enabled channel,
//! subscribed to its `topics`, reconnecting with the client's back-off. Its events go to one
//! task per channel: each PUBLISH becomes channel messages (as for internal channels), and
//! `connections_count` is 1 while the client is connected. [`Gateway::reconcile_external`]
//! starts, restarts (configuration changed) and stops the clients after every channel change.

use std::sync::Arc;

use serde_json::{Map, Value};
use tern_mqttc::{Client, ClientHandle, ClientOptions, Event, QoS, Roots, Subscription};

use crate::{Channel, Gateway};

/// A running client: the configuration it was started with, and its handle (dropping the
/// last handle stops the client) or, when private targets are forbidden, the task that resolves
/// and checks the broker's host, then runs the client (stopped when this is dropped).
#[derive(Debug)]
pub(crate) struct External {
    configuration: Map<String, Value>,
    _run: Running,
}

#[derive(Debug)]
enum Running {
    Client { _handle: ClientHandle },
    Checked(tokio::task::JoinHandle<()>),
}

impl Drop for External {
    fn drop(&mut self) {
        if let Running::Checked(task) = &self._run {
            task.abort();
        }
    }
}

/// The first wait after an external broker's host was refused or did not resolve; doubled up
/// to [`RESOLVE_BACKOFF_MAX`].
const RESOLVE_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_secs(1);
const RESOLVE_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// The client options of an external channel's `broker` object.
pub(crate) fn client_options(
    channel: u64,
    broker: &Map<String, Value>,
) -> Result<ClientOptions, String> {
    let uri = broker
        .get("uri")
        .and_then(Value::as_str)
        .ok_or("configuration.broker.uri (mqtt[s]://host:port) is required")?;
    let client_id = broker
        .get("client_id")
        .and_then(Value::as_str)
        .map_or_else(|| format!("tern-channel-{channel}"), str::to_string);
    let mut options =
        ClientOptions::new(uri, client_id).map_err(|e| format!("configuration.broker.uri: {e}"))?;
    options.username = broker
        .get("username")
        .and_then(Value::as_str)
        .map(str::to_string);
    options.password = broker
        .get("password")
        .and_then(Value::as_str)
        .map(|p| p.as_bytes().to_vec());
    // `mqtts://` verifies the broker against the system's CAs unless `ca` names its own (a
    // private CA, as streams' `ca`).
    if let Some(ca) = broker.get("ca") {
        let pem = ca
            .as_str()
            .filter(|p| p.contains("-----BEGIN CERTIFICATE-----"))
            .ok_or("configuration.broker.ca is the PEM text of the broker's CA certificate")?;
        options.tls.roots = Roots::Pem(pem.as_bytes().to_vec());
    }
    // A QoS 1 message is acknowledged to the broker only once it is stored; with a persistent
    // session (the default) the broker keeps what arrives while tern is down, and sends again
    // what was not acknowledged.
    options.manual_ack = true;
    let clean = match broker.get("clean_session") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("configuration.broker.clean_session is a boolean".into()),
    };
    options.clean_start = clean;
    if !clean {
        options.session_expiry = SESSION_EXPIRY;
    }
    Ok(options)
}

/// Seconds the external broker keeps a channel's session while tern is away (MQTT 5).
const SESSION_EXPIRY: u32 = 7 * 86_400;

/// Events one pump turn takes before the one wait for the store.
const PUMP_BATCH: usize = 256;

/// The subscription QoS of `broker.qos` (0 or 1; default 1).
pub(crate) fn qos_of(broker: &Map<String, Value>) -> Result<QoS, String> {
    match broker.get("qos").map(Value::as_u64) {
        None | Some(Some(1)) => Ok(QoS::AtLeastOnce),
        Some(Some(0)) => Ok(QoS::AtMostOnce),
        _ => Err("configuration.broker.qos is 0 or 1".into()),
    }
}

/// The subscriptions of external channel `c`: its `configuration.topics` at `qos`.
fn subscriptions(c: &Channel, qos: QoS) -> Vec<Subscription> {
    c.configuration
        .get("topics")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter_map(Value::as_str)
                .map(|f| Subscription::new(f, qos))
                .collect()
        })
        .unwrap_or_default()
}

impl Channel {
    /// Refuses an external broker at a literal address `policy` forbids ([`crate::outbound`]);
    /// a host name is checked when connecting.
    pub(crate) fn check_outbound(
        &self,
        policy: crate::outbound::OutboundPolicy,
    ) -> Result<(), crate::GwError> {
        let Some(uri) = self
            .external_broker()
            .and_then(|b| b.get("uri"))
            .and_then(Value::as_str)
            .and_then(|u| u.parse::<tern_mqttc::BrokerUri>().ok())
        else {
            return Ok(());
        };
        crate::outbound::check_literal(&uri.host, policy)
            .map_err(|e| crate::GwError::Invalid(format!("configuration.broker.uri: {e}")))
    }

    /// An MQTT channel's external broker object, if it has one.
    pub fn external_broker(&self) -> Option<&Map<String, Value>> {
        if self.protocol().map(|p| p.name) != Some("mqtt") {
            return None;
        }
        self.configuration.get("broker")?.as_object()
    }
}

impl Gateway {
    /// Starts a client for every enabled external channel without one (or whose configuration
    /// changed), and stops those of channels gone or disabled. Needs a tokio runtime (it does
    /// nothing without one: the channel task calls it again at start).
    pub(crate) fn reconcile_external(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let wanted: Vec<Channel> = {
            let st = self.state.lock();
            st.channels
                .values()
                .filter(|c| c.enabled && c.external_broker().is_some() && self.runs_here(c.id))
                .cloned()
                .collect()
        };
        let mut running = self.external.lock();
        running.retain(|id, e| {
            wanted
                .iter()
                .any(|c| c.id == *id && c.configuration == e.configuration)
        });
        self.external_connected
            .lock()
            .retain(|id| running.contains_key(id));
        for c in wanted {
            if running.contains_key(&c.id) {
                continue;
            }
            let Some(broker) = c.external_broker() else {
                continue;
            };
            if !self.options.outbound.private_targets {
                // `[gw] outbound_private_targets = false`: connect only to a checked address.
                let task = tokio::spawn(self.clone().run_checked(c.clone()));
                running.insert(
                    c.id,
                    External {
                        configuration: c.configuration.clone(),
                        _run: Running::Checked(task),
                    },
                );
                continue;
            }
            let started = client_options(c.id, broker).and_then(|options| {
                let qos = qos_of(broker)?;
                Client::start(options, subscriptions(&c, qos)).map_err(|e| e.to_string())
            });
            match started {
                Ok((handle, events)) => {
                    tokio::spawn(self.clone().pump(c.id, events));
                    running.insert(
                        c.id,
                        External {
                            configuration: c.configuration.clone(),
                            _run: Running::Client { _handle: handle },
                        },
                    );
                }
                Err(err) => {
                    tracing::warn!(channel = c.id, %err, "external MQTT channel not started")
                }
            }
        }
    }

    /// An external channel's client under `[gw] outbound_private_targets = false`: the
    /// broker's host is resolved and checked ([`crate::outbound::resolve_allowed`]) and the
    /// client connects to the checked address (TLS still verifies the host name); a refused
    /// or unresolvable host is logged and tried again with back-off. Runs until aborted (the
    /// channel changed or went) or the client stops.
    async fn run_checked(self: Arc<Self>, c: Channel) {
        let Some(broker) = c.external_broker() else {
            return;
        };
        let mut backoff = RESOLVE_BACKOFF_MIN;
        loop {
            let started = async {
                let mut options = client_options(c.id, broker)?;
                let qos = qos_of(broker)?;
                let host = options.uri.host.clone();
                let addrs = crate::outbound::resolve_allowed(
                    &host,
                    options.uri.port,
                    self.options.outbound,
                )
                .await
                .map_err(|e| e.to_string())?;
                let addr = addrs
                    .first()
                    .ok_or_else(|| format!("`{host}` resolves to no address"))?;
                options.uri.host = addr.ip().to_string();
                options.tls.server_name = Some(host);
                Client::start(options, subscriptions(&c, qos)).map_err(|e| e.to_string())
            }
            .await;
            match started {
                Ok((handle, events)) => {
                    // The client lives as long as this task: the pump ends when it stops.
                    self.clone().pump(c.id, events).await;
                    drop(handle);
                    return;
                }
                Err(err) => {
                    tracing::warn!(
                        channel = c.id,
                        %err,
                        retry_in = backoff.as_secs(),
                        "external MQTT channel not connected"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RESOLVE_BACKOFF_MAX);
                }
            }
        }
    }

    /// Turns one external client's events into channel messages and connection state; ends
    /// when the client stops.
    /// QoS 1 messages are acknowledged to the broker once what they became is durable: one
    /// wait for the store per turn of up to [`PUMP_BATCH`] events, then the acknowledgements in
    /// order. A message tern refuses (bad JSON, quota) is acknowledged too: sending it again
    /// would not change the answer.
    async fn pump(self: Arc<Self>, channel: u64, mut events: tokio::sync::mpsc::Receiver<Event>) {
        let mut acks = Vec::with_capacity(PUMP_BATCH);
        while let Some(first) = events.recv().await {
            let mut next = Some(first);
            while let Some(event) = next.take() {
                if let Some(ack) = self.external_event(channel, event) {
                    acks.push(ack);
                }
                if acks.len() < PUMP_BATCH {
                    next = events.try_recv().ok();
                }
            }
            if !acks.is_empty() {
                if !self.settled().await {
                    // Not durable: no acknowledgement; the broker sends them again after the
                    // reconnect the store's recovery brings.
                    acks.clear();
                    continue;
                }
                for ack in acks.drain(..) {
                    ack.ack();
                }
            }
        }
        self.set_external_connected(channel, false);
    }

    /// One event of an external client; a message's acknowledgement, if it owes one.
    fn external_event(&self, channel: u64, event: Event) -> Option<tern_mqttc::Ack> {
        match event {
            Event::Connected { .. } => self.set_external_connected(channel, true),
            Event::Disconnected { reason } => {
                tracing::info!(channel, %reason, "external MQTT channel disconnected");
                self.set_external_connected(channel, false);
            }
            Event::Message {
                topic,
                payload,
                ack,
                ..
            } => {
                self.mqtt_payload(channel, &topic, &payload, "mqtt:external");
                return ack;
            }
            // tern-mqttc logs it (tracing); `connected` stays false.
            Event::ConnectFailed { .. } => {}
            Event::SubscribeFailed { filter, reason } => {
                tracing::warn!(
                    channel,
                    filter,
                    reason = reason.name(),
                    "subscription refused"
                );
            }
        }
        None
    }

    /// Records whether channel `channel`'s client is connected and publishes the state.
    fn set_external_connected(&self, channel: u64, connected: bool) {
        let changed = {
            let mut set = self.external_connected.lock();
            if connected {
                set.insert(channel)
            } else {
                set.remove(&channel)
            }
        };
        if changed {
            self.republish_channel(channel, !connected);
        }
    }
}
