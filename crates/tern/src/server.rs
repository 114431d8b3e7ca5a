//! Wiring: a broker, its timers and its listeners (mqtt, mqtts, http, https), and one shutdown
//! tree for all of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use tern_broker::Broker;
use tern_broker::accounts::Directory;
use tern_net::{
    Acceptor, HttpOptions, NetMetrics, TlsContext, TlsError, serve_http, serve_tcp, serve_tls,
};
use tern_store::Writer;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Exporter;
use crate::routes;

/// Options that do not come from the configuration file.
#[derive(Debug, Default, Clone)]
pub struct ServerOptions {
    /// Routes served on the HTTP listeners besides `/health` and `/metrics` (the REST API).
    /// They must not define those two paths.
    pub routes: Option<Router>,
    /// Tests of a failing disk: the store's writes and syncs fail while this switch is on.
    pub store_faults: Option<tern_store::FaultSwitch>,
}

/// The bound address of each running listener (useful with port 0).
#[derive(Debug, Clone, Copy, Default)]
pub struct ListenerAddrs {
    pub mqtt: Option<SocketAddr>,
    pub mqtts: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
}

/// A listen address for logs: `127.0.0.1:1883`, not `Some(127.0.0.1:1883)`.
fn show(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "off".to_string(), |a| a.to_string())
}

/// A running broker with its listeners.
#[derive(Debug)]
pub struct Server {
    broker: Arc<Broker>,
    directory: Arc<Directory>,
    writer: std::sync::Mutex<Option<Writer>>,
    new_master: Option<(String, Option<std::path::PathBuf>)>,
    tracker: TaskTracker,
    net: Arc<NetMetrics>,
    tls: Option<Arc<TlsContext>>,
    exporter: Arc<Exporter>,
    addrs: ListenerAddrs,
}

async fn bind(name: &str, addr: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (listeners.{name})"))?;
    Ok(Some(listener))
}

fn local(listener: &Option<TcpListener>) -> anyhow::Result<Option<SocketAddr>> {
    listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()
        .map_err(Into::into)
}

/// The REST API's options: `/auth/regions` learns the `[http.region]` overrides and the ports
/// of the running listeners.
fn api_options(config: &Config, addrs: &ListenerAddrs) -> tern_api::ApiOptions {
    let region = &config.http.region;
    tern_api::ApiOptions {
        region: tern_api::RegionOptions {
            rest: region.rest.clone(),
            mqtt_ws: region.mqtt_ws.clone(),
            mqtt: region.mqtt.clone(),
            mqtt_port: addrs.mqtt.map(|a| a.port()),
            http: addrs.http,
            https: addrs.https,
        },
        ..tern_api::ApiOptions::default()
    }
}

impl Server {
    /// Loads the certificate, binds every configured listener, and starts serving. Nothing is
    /// started unless everything could be bound.
    pub async fn start(config: &Config, options: ServerOptions) -> anyhow::Result<Server> {
        let tls = match config.tls.files() {
            Some(files) => {
                let ctx = TlsContext::load(files, config.tls_handshake_timeout())
                    .context("cannot load the TLS certificate")?;
                Some(Arc::new(ctx))
            }
            None => None,
        };
        let tls_addr = |addr: Option<SocketAddr>| addr.filter(|_| tls.is_some());
        let mqtt = bind("mqtt", config.listeners.mqtt).await?;
        let mqtts = bind("mqtts", tls_addr(config.listeners.mqtts)).await?;
        let http = bind("http", config.listeners.http).await?;
        let https = bind("https", tls_addr(config.listeners.https)).await?;
        let addrs = ListenerAddrs {
            mqtt: local(&mqtt)?,
            mqtts: local(&mqtts)?,
            http: local(&http)?,
            https: local(&https)?,
        };

        let state = crate::state::open_with(config, options.store_faults.clone())?;
        let directory = state.directory.clone();
        let broker = Broker::with_store(
            config.broker(),
            Box::new(directory.clone()),
            state.store.clone(),
        );
        tracing::info!(
            max_total_queued_bytes = broker.queue_budget.limit(),
            configured = config.session.max_total_queued_bytes.is_some(),
            "queue budget for every session together"
        );
        let restored = broker.restore(&state.snapshot);
        if restored != Default::default() {
            tracing::info!(
                sessions = restored.sessions,
                subscriptions = restored.subscriptions,
                queued = restored.queued,
                inflight = restored.inflight,
                retained = restored.retained,
                expired_sessions = restored.expired_sessions,
                expired_messages = restored.expired_messages,
                "state restored"
            );
        }
        // Cluster mode (README "Cluster mode"): the fabric installed and the retained replica
        // loaded before anything publishes or any client connects.
        let cluster = match config.cluster() {
            Some(cluster) => {
                let timeout = Duration::from_secs(config.cluster.connect_timeout.max(1));
                let node = cluster.node.clone();
                let c = tern_cluster::start(
                    broker.clone(),
                    directory.clone(),
                    cluster,
                    broker.shutdown_token().clone(),
                    timeout,
                )
                .await
                .context("cluster mode")?;
                crate::state::settle_cluster(config, &directory)?;
                tracing::info!(node = %node, nats = %config.cluster.nats.join(","), "cluster mode");
                Some(Arc::new(c))
            }
            None => None,
        };
        // REST over MQTT (docs/flespi.md#rest-over-mqtt) and the state topics of
        // docs/flespi.md#broker-events, whether or not an HTTP listener runs.
        // The devices layer (docs/flespi.md#devices): its records from the store, its retained
        // state topics published, and its retention sweep in the shutdown tree.
        let gateway = tern_gw::Gateway::new(
            broker.clone(),
            directory.clone(),
            state.store.clone(),
            &state.snapshot,
            config.gw(),
        );
        // Cluster mode: the devices layer as the cluster has it, and this node's changes shared,
        // before it publishes its state topics or anything calls it.
        if let Some(c) = &cluster {
            c.start_gw(gateway.clone())
                .await
                .context("cluster mode: the devices layer")?;
        }
        gateway.publish_all();
        // Accounts deleted on another node take their devices, channels and streams here too.
        if let Some(c) = &cluster {
            let gw = gateway.clone();
            c.cfg
                .on_accounts_deleted(tern_cluster::DeletedHook(Box::new(move |gone| {
                    gw.accounts_deleted(gone)
                })));
        }
        let api = tern_api::ApiState::with_options(
            broker.clone(),
            directory.clone(),
            gateway.clone(),
            api_options(config, &addrs),
        );
        tern_api::install_bridge(&broker, api.clone());
        tern_api::publish_state(&api);
        let tracker = TaskTracker::new();
        tracker.spawn(broker.clone().run_timers());
        tracker.spawn(gateway.clone().run_retention());
        tracker.spawn(gateway.clone().run_mqtt_channels());
        // HTTP streams' delivery tasks (docs/flespi.md#streams).
        tracker.spawn(gateway.clone().run_streams());
        // The account's REST call and MQTT sessions logs (docs/flespi.md#logs): their queue
        // and writer, before any connection or call can log.
        tracker.spawn(gateway.run_account_logs());
        // Webhooks' delivery tasks (docs/flespi.md#webhooks).
        tracker.spawn(gateway.clone().run_webhooks());
        // Teltonika channels' listeners (docs/teltonika.md).
        gateway.start_trackers();
        let acceptor = Acceptor::new(
            broker.clone(),
            config.listeners.max_connections,
            tracker.clone(),
        );
        let net = acceptor.metrics.clone();
        let exporter = Arc::new(Exporter::new(
            broker.clone(),
            net.clone(),
            tls.clone(),
            directory.clone(),
            gateway.clone(),
            cluster.clone(),
        ));

        if let Some(listener) = mqtt {
            tracing::info!(listener = "mqtt", addr = %show(addrs.mqtt), "listening");
            tracker.spawn(serve_tcp(listener, acceptor.clone()));
        }
        if let (Some(listener), Some(tls)) = (mqtts, &tls) {
            tracing::info!(listener = "mqtts", addr = %show(addrs.mqtts), cert = %tls.files().cert.display(), client_auth = tls.files().client_auth.name(), "listening");
            tracker.spawn(serve_tls(listener, tls.clone(), acceptor.clone()));
        }
        if http.is_some() || https.is_some() {
            let mut router = routes::routes(
                broker.clone(),
                config.metrics.enabled.then(|| exporter.clone()),
            );
            // The flespi REST API (docs/flespi.md#the-rest-api).
            router = router.merge(tern_api::router(api.clone()));
            if let Some(extra) = options.routes {
                router = router.merge(extra);
            }
            // CORS in front of everything the HTTP listeners serve (cors.rs), routes merged
            // above included.
            let mut http_options = HttpOptions::new(crate::cors::layer(router));
            http_options.websocket = config.websocket();
            if let Some(listener) = http {
                tracing::info!(listener = "http", addr = %show(addrs.http), "listening (HTTP, MQTT over WebSocket on any path)");
                tracker.spawn(serve_http(
                    listener,
                    None,
                    acceptor.clone(),
                    http_options.clone(),
                ));
            }
            if let (Some(listener), Some(tls)) = (https, &tls) {
                tracing::info!(listener = "https", addr = %show(addrs.https), "listening (HTTPS, MQTT over secure WebSocket on any path)");
                tracker.spawn(serve_http(
                    listener,
                    Some(tls.clone()),
                    acceptor.clone(),
                    http_options,
                ));
            }
        }
        if tls.is_none() && (config.listeners.mqtts.is_some() || config.listeners.https.is_some()) {
            tracing::info!("mqtts and https are off: no certificate (tls.cert, tls.key)");
        }
        Ok(Server {
            broker,
            directory,
            writer: std::sync::Mutex::new(state.writer),
            new_master: state.new_master.map(|t| (t.key, state.master_file)),
            tracker,
            net,
            tls,
            exporter,
            addrs,
        })
    }

    /// The bound MQTT/TCP address (useful with port 0).
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.addrs.mqtt
    }

    /// Every bound address.
    pub fn addrs(&self) -> ListenerAddrs {
        self.addrs
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Accounts and tokens.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    /// The master token key generated by this start, and the file it was written to: show it
    /// once.
    pub fn new_master_token(&self) -> Option<(&str, Option<&std::path::Path>)> {
        self.new_master
            .as_ref()
            .map(|(k, p)| (k.as_str(), p.as_deref()))
    }

    /// The listeners' counters.
    pub fn net_metrics(&self) -> &Arc<NetMetrics> {
        &self.net
    }

    /// The metrics exporter behind `/metrics`.
    pub fn exporter(&self) -> &Arc<Exporter> {
        &self.exporter
    }

    /// Reads the certificate files again (SIGHUP). New handshakes use the new certificate;
    /// live connections keep theirs. `None` when TLS is not configured; on error the previous
    /// certificate stays in use.
    pub fn reload_tls(&self) -> Option<Result<(), TlsError>> {
        self.tls.as_ref().map(|tls| tls.reload())
    }

    /// Stops accepting, sends DISCONNECT 0x8B to every v5 client (on every listener), closes
    /// every connection and waits for them, at most `deadline`. Returns false if the deadline
    /// passed first.
    pub async fn shutdown(self, deadline: Duration) -> bool {
        tracing::info!("shutting down");
        self.broker.shut_down();
        self.tracker.close();
        let done = tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!(
                ?deadline,
                "shutdown deadline passed with connections still open"
            );
        }
        // Everything acknowledged is already durable; write out the rest (session state of
        // the connections just closed) and stop the writer.
        let store = self.broker.store().clone();
        if !store.flush(Duration::from_secs(5)).await {
            tracing::warn!("the store did not finish writing within 5 s");
        }
        store.close();
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        done
    }
}
