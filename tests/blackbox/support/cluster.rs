//! The cluster harness (issue 17): real `nats-server` and `tern` processes in cluster mode on
//! loopback, and the probes that tell when a subscription is known across the cluster.
//!
//! Every node lets anonymous clients in with the same pinned anonymous account id, so they
//! share one namespace (accounts and tokens made over REST are replicated: `cluster_cfg`).
//!
//! Subscriptions and retained messages travel between nodes asynchronously, so a test first
//! sends probes (QoS 0, on a topic ending in [`PROBE`]) from the publishing node until each
//! subscriber got one, and the readers skip probes. Every wait is bounded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tern_codec::*;

use crate::support::client::Read;
use crate::support::nats::NatsServer;
use crate::support::process::Daemon;
use crate::support::{Client, QUIET};

/// The anonymous account of every node.
pub const ANON_CID: u64 = 4242;
/// How long a message, a subscription or a retained update gets to cross between nodes.
pub const CROSS: Duration = Duration::from_secs(10);
/// The two nodes of [`Cluster::pair`].
pub const A: usize = 0;
pub const B: usize = 1;
/// The last level of a probe topic.
pub const PROBE: &str = "~probe~";

/// One `tern` process in cluster mode, with its own data directory.
pub struct Node {
    pub name: String,
    pub daemon: Daemon,
    pub _data: tempfile::TempDir,
}

impl Node {
    /// Starts node `name` on `nats`, its configuration in a file in its data directory.
    pub async fn start(nats: &NatsServer, name: &str) -> Node {
        Node::start_with(nats, name, "", &[]).await
    }

    /// [`Node::start`] with more `[cluster]` keys and command-line arguments.
    pub async fn start_with(nats: &NatsServer, name: &str, cluster: &str, args: &[&str]) -> Node {
        let data = tempfile::tempdir().expect("tempdir");
        let config = data.path().join("tern.toml");
        std::fs::write(
            &config,
            format!(
                "[auth]\nanonymous = true\nanonymous_cid = {ANON_CID}\n\n\
                 [cluster]\nnats = [\"{}\"]\nnode = \"{name}\"\nreplicas = 1\n{cluster}",
                nats.url()
            ),
        )
        .expect("write the node's configuration");
        let config = config.to_str().expect("utf-8 path");
        let mut all = vec!["--config", config, "--anonymous"];
        all.extend_from_slice(args);
        let daemon = Daemon::spawn(data.path(), &all).await;
        Node {
            name: name.into(),
            daemon,
            _data: data,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.daemon.mqtt
    }
}

/// A NATS server and the nodes on it.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub nats: NatsServer,
}

impl Cluster {
    /// A NATS server and one node per name; `None` (skipped) without `nats-server`.
    pub async fn start(names: &[&str]) -> Option<Cluster> {
        let nats = NatsServer::start().await?;
        let mut nodes = Vec::new();
        for name in names {
            nodes.push(Node::start(&nats, name).await);
        }
        Some(Cluster { nodes, nats })
    }

    /// A NATS server and two nodes, [`A`] and [`B`].
    pub async fn pair() -> Option<Cluster> {
        Cluster::start(&["n1", "n2"]).await
    }

    /// Adds a node.
    pub async fn add(&mut self, name: &str) -> usize {
        self.nodes.push(Node::start(&self.nats, name).await);
        self.nodes.len() - 1
    }

    /// A connected client of node `n`.
    pub async fn client(&self, n: usize, version: ProtocolVersion, id: &str) -> Client {
        Client::connect(self.nodes[n].addr(), version, id).await
    }

    /// A client of node `n` subscribed to `filter` at `qos` (granted as asked).
    pub async fn subscriber(
        &self,
        n: usize,
        version: ProtocolVersion,
        id: &str,
        filter: &str,
        qos: QoS,
    ) -> Client {
        let mut c = self.client(n, version, id).await;
        assert_eq!(
            c.subscribe(filter, qos).await,
            ReasonCode(qos as u8),
            "{id} subscribes to {filter}"
        );
        c
    }

    /// Every node's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!("\n--- node {} ---\n{}", n.name, n.daemon.log()));
        }
        out.push_str(&format!("\n--- nats-server ---\n{}", self.nats.log()));
        out
    }

    /// Publishes probes on `topic` (whose last level is [`PROBE`]) from node `from` until each
    /// of `subs` received one: their subscriptions are known across the cluster. Retained
    /// messages delivered on subscribing are acknowledged and skipped.
    pub async fn ready(&self, from: usize, topic: &str, subs: &mut [&mut Client]) {
        assert!(topic.ends_with(PROBE));
        static PROBERS: AtomicU32 = AtomicU32::new(0);
        let id = format!("probe-{}", PROBERS.fetch_add(1, Ordering::Relaxed));
        let mut p = self.client(from, ProtocolVersion::V311, &id).await;
        let mut ready = vec![false; subs.len()];
        let deadline = tokio::time::Instant::now() + CROSS;
        let mut n = 0u32;
        while ready.contains(&false) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "probes on {topic} from node {} did not reach subscribers {:?} within {CROSS:?}:{}",
                self.nodes[from].name,
                ready
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| !**r)
                    .map(|(i, _)| i)
                    .collect::<Vec<_>>(),
                self.logs()
            );
            n += 1;
            p.publish(topic, n.to_string().as_bytes(), QoS::AtMostOnce, false)
                .await;
            for (s, r) in subs.iter_mut().zip(ready.iter_mut()) {
                if *r {
                    continue;
                }
                match s.read(Duration::from_millis(100)).await {
                    Read::Packet(Packet::Publish(m)) if m.topic.ends_with(PROBE) => *r = true,
                    // What the node retains (its own account state too) comes on subscribing;
                    // a `#` subscriber also sees the broker's own `flespi/` events.
                    Read::Packet(Packet::Publish(m)) if m.retain || is_probe(&m) => s.ack(&m).await,
                    Read::Timeout => {}
                    other => panic!("during the probes: {other:?}{}", self.logs()),
                }
            }
        }
        p.disconnect().await;
    }

    /// The next PUBLISH that is not a probe (acknowledged as its QoS requires); fails with the
    /// nodes' logs unless it comes within [`CROSS`].
    pub async fn recv(&self, c: &mut Client, what: &str) -> Publish {
        let deadline = tokio::time::Instant::now() + CROSS;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match c.read(left).await {
                Read::Packet(Packet::Publish(m)) => {
                    c.ack(&m).await;
                    if !is_probe(&m) {
                        return m;
                    }
                }
                other => panic!("{what}: expected PUBLISH, got {other:?}{}", self.logs()),
            }
        }
    }

    /// Asserts that nothing but probes arrives for [`QUIET`].
    pub async fn quiet(&self, c: &mut Client, what: &str) {
        loop {
            match c.read(QUIET).await {
                Read::Timeout => return,
                Read::Packet(Packet::Publish(m)) if is_probe(&m) => {}
                other => panic!(
                    "{what}: expected nothing more, got {other:?}{}",
                    self.logs()
                ),
            }
        }
    }

    /// Subscribes a fresh client of node `n` to `filter` until its retained messages satisfy
    /// `done` (they are replicated asynchronously); returns them. Fails after [`CROSS`].
    pub async fn retained_until(
        &self,
        n: usize,
        filter: &str,
        what: &str,
        done: impl Fn(&[Publish]) -> bool,
    ) -> Vec<Publish> {
        let deadline = tokio::time::Instant::now() + CROSS;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let id = format!("ret-{}-{attempt}", self.nodes[n].name);
            let mut c = self.client(n, ProtocolVersion::V5, &id).await;
            c.subscribe(filter, QoS::AtLeastOnce).await;
            let mut got = Vec::new();
            while let Read::Packet(p) = c.read(QUIET).await {
                match p {
                    Packet::Publish(m) => {
                        c.ack(&m).await;
                        got.push(m);
                    }
                    other => panic!("{what}: unexpected {other:?}"),
                }
            }
            c.disconnect().await;
            if done(&got) {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: node {} still had {:?} on {filter} after {CROSS:?}:{}",
                self.nodes[n].name,
                got.iter()
                    .map(|m| (m.topic.to_string(), m.payload.clone()))
                    .collect::<Vec<_>>(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A probe, or what the broker itself publishes under `flespi/` (session events of the probing
/// clients, account state): a `#` subscriber sees those too, and the tests skip them.
pub fn is_probe(m: &Publish) -> bool {
    m.topic.ends_with(PROBE) || m.topic.starts_with("flespi/")
}
