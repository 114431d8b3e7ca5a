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

use serde_json::Value;

use crate::support::client::Read;
use crate::support::http;
use crate::support::nats::NatsServer;
use crate::support::process::{Daemon, free_addr};
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
    /// Starts node `name` on `nats`, its configuration in a file in its data directory, with
    /// an HTTP listener (its `/metrics`).
    pub async fn start(nats: &NatsServer, name: &str) -> Node {
        let http = free_addr();
        let mut node = Node::start_with(nats, name, "", &["--http", &http.to_string()]).await;
        node.daemon.http = Some(http);
        node
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
                        // A message published while this subscriber subscribes may also come
                        // live (retain flag clear): only what is retained counts here.
                        if m.retain {
                            got.push(m);
                        }
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

impl Nodes for Cluster {
    fn mqtt(&self, n: usize) -> SocketAddr {
        self.nodes[n].addr()
    }

    fn name(&self, n: usize) -> &str {
        &self.nodes[n].name
    }

    /// Every node's log and the NATS server's.
    fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!("\n--- node {} ---\n{}", n.name, n.daemon.log()));
        }
        out.push_str(&format!("\n--- nats-server ---\n{}", self.nats.log()));
        out
    }
}

/// What clients and probes need of a fixture's nodes: [`Cluster`] (one NATS server) and
/// [`FaultCluster`] (several) both have it, so the helpers below serve both.
// Only this test crate implements and calls it: the `Send` bound `async fn` in a public
// trait cannot promise does not matter here.
#[allow(async_fn_in_trait)]
pub trait Nodes {
    /// Node `n`'s MQTT address.
    fn mqtt(&self, n: usize) -> SocketAddr;

    /// Node `n`'s name.
    fn name(&self, n: usize) -> &str;

    /// Every node's log (and NATS's), for a failure message.
    fn logs(&self) -> String;

    /// A connected client of node `n`.
    async fn client(&self, n: usize, version: ProtocolVersion, id: &str) -> Client {
        Client::connect(self.mqtt(n), version, id).await
    }

    /// A client of node `n` subscribed to `filter` at `qos` (granted as asked).
    async fn subscriber(
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

    /// Publishes probes on `topic` (whose last level is [`PROBE`]) from node `from` until each
    /// of `subs` received one: their subscriptions are known across the cluster. Retained
    /// messages delivered on subscribing are acknowledged and skipped.
    async fn ready(&self, from: usize, topic: &str, subs: &mut [&mut Client]) {
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
                self.name(from),
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
    /// nodes' logs unless it comes within `wait`.
    async fn recv_within(&self, c: &mut Client, wait: Duration, what: &str) -> Publish {
        let deadline = tokio::time::Instant::now() + wait;
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

    /// [`Nodes::recv_within`] [`CROSS`].
    async fn recv(&self, c: &mut Client, what: &str) -> Publish {
        self.recv_within(c, CROSS, what).await
    }
}

/// A probe, or what the broker itself publishes under `flespi/` (session events of the probing
/// clients, account state): a `#` subscriber sees those too, and the tests skip them.
pub fn is_probe(m: &Publish) -> bool {
    m.topic.ends_with(PROBE) || m.topic.starts_with("flespi/")
}

// --- Fault tests (issue 17): nodes on a NATS cluster of several servers, on loopback or in
// network namespaces. ---

use std::sync::{Arc, Mutex};

use crate::support::nats::{NatsCluster, Place};

/// A `tern` process in cluster mode on a [`NatsCluster`] (`replicas = 3`, every server listed,
/// its home server first), on loopback or inside its home server's network namespace, with
/// MQTT and HTTP listeners; killed on drop.
pub struct FaultNode {
    pub name: String,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    child: tokio::process::Child,
    log: Arc<Mutex<String>>,
    _data: tempfile::TempDir,
}

impl FaultNode {
    /// Starts node `name` next to member `home` of `nats` (in its namespace, if it has one),
    /// with more `[cluster]` keys in `cluster`; waits until it accepts MQTT connections.
    pub async fn start(nats: &NatsCluster, home: usize, name: &str, cluster: &str) -> FaultNode {
        use tokio::io::AsyncReadExt;
        let place = &nats.members[home].place;
        let (mqtt, http) = match place.netns {
            Some(_) => (
                SocketAddr::new(place.ip, 1883),
                SocketAddr::new(place.ip, 8080),
            ),
            None => (
                crate::support::process::free_addr(),
                crate::support::process::free_addr(),
            ),
        };
        let mut urls = nats.urls();
        let own = urls.remove(home);
        urls.insert(0, own);
        let urls = urls
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let data = tempfile::tempdir().expect("tempdir");
        let config = data.path().join("tern.toml");
        std::fs::write(
            &config,
            format!(
                "[auth]\nanonymous = true\nanonymous_cid = {ANON_CID}\n\n\
                 [cluster]\nnats = [{urls}]\nnode = \"{name}\"\nreplicas = 3\n{cluster}"
            ),
        )
        .expect("write the node's configuration");
        let tern = crate::support::process::tern_bin();
        let mut cmd = match &place.netns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns, tern]);
                c
            }
            None => tokio::process::Command::new(tern),
        };
        cmd.arg("--config")
            .arg(&config)
            .arg("--anonymous")
            .args(["--mqtt", &mqtt.to_string(), "--http", &http.to_string()])
            .arg("--data-dir")
            .arg(data.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn tern");
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(mut stderr) = child.stderr.take() {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    log.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let mut node = FaultNode {
            name: name.into(),
            mqtt,
            http,
            child,
            log,
            _data: data,
        };
        // Its connect timeout (10 s) plus the start itself.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let ours = mqtt.to_string();
        while tokio::net::TcpStream::connect(mqtt).await.is_err() || !node.log().contains(&ours) {
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("tern {name} exited with {status}: {}", node.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tern {name} did not listen on {mqtt}: {}{}",
                node.log(),
                nats.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `GET /health`: the status code, or `None` when the HTTP listener does not answer.
    pub async fn health(&self) -> Option<u16> {
        let connect = tokio::net::TcpStream::connect(self.http);
        if !tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .is_ok_and(|r| r.is_ok())
        {
            return None;
        }
        Some(
            crate::support::http::get(self.http, "/health", &[])
                .await
                .status,
        )
    }
}

/// A [`NatsCluster`] and the tern nodes on it.
pub struct FaultCluster {
    pub nodes: Vec<FaultNode>,
    pub nats: NatsCluster,
}

impl FaultCluster {
    /// `servers` NATS servers on loopback and one node per name, node `i` at home on server
    /// `i % servers`, each with `cluster` added to its `[cluster]` section. `None` (skipped)
    /// without `nats-server`.
    pub async fn loopback(servers: usize, names: &[&str], cluster: &str) -> Option<FaultCluster> {
        let nats = NatsCluster::start(servers).await?;
        Some(FaultCluster::on(nats, names, cluster).await)
    }

    /// One node per name on `nats`, node `i` at home on member `i % members` (in its
    /// namespace, if any).
    pub async fn on(nats: NatsCluster, names: &[&str], cluster: &str) -> FaultCluster {
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let home = i % nats.members.len();
            nodes.push(FaultNode::start(&nats, home, name, cluster).await);
        }
        FaultCluster { nodes, nats }
    }
}

impl Nodes for FaultCluster {
    fn mqtt(&self, n: usize) -> SocketAddr {
        self.nodes[n].mqtt
    }

    fn name(&self, n: usize) -> &str {
        &self.nodes[n].name
    }

    /// Every node's log and the end of every NATS server's.
    fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!("\n--- node {} ---\n{}", n.name, n.log()));
        }
        out.push_str(&self.nats.logs());
        out
    }
}

/// Network namespaces for partition tests (`scale-out.md` §4.1: on loopback every connection
/// has source 127.0.0.1, so a cut per address leaks): namespace `i` at `10.213.<k>.<i+1>` on a
/// bridge where this process (the host side, where the test's clients run) is `.254`. A cut
/// is a blackhole route to each other namespace's address, on both sides: nothing between a
/// cut namespace and the others gets through, while the host still reaches every one.
/// Everything (processes left inside, namespaces, bridge) is removed on drop, also when the
/// test fails; what a killed earlier run left behind is removed at the next start.
pub struct NetLab {
    names: Vec<String>,
    bridge: String,
    net: [u8; 3],
}

/// The prefix of every namespace and bridge a [`NetLab`] creates.
const LAB: &str = "tfp";

impl NetLab {
    /// `n` namespaces on a new bridge. `None`, said on stderr, where namespaces cannot be made
    /// (not root, or `ip netns add` refused); as root under `CI=true` that fails the test
    /// instead, so that CI never skips the partition tests silently.
    pub fn create(n: usize) -> Option<NetLab> {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !root {
            eprintln!(
                "skipped: network namespaces need root (ip netns add); the partition tests run as root in CI"
            );
            return None;
        }
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        NetLab::remove_stale();
        let pid = std::process::id();
        let mut lab = NetLab {
            names: Vec::new(),
            bridge: format!("{LAB}{pid}"),
            net: [10, 213, NetLab::free_subnet(pid)],
        };
        let mut steps = vec![
            format!("link add {} type bridge", lab.bridge),
            format!("addr add {}/24 dev {}", lab.ip(253), lab.bridge),
            format!("link set {} up", lab.bridge),
        ];
        for i in 0..n {
            let ns = format!("{LAB}{pid}-{i}");
            let veth = format!("{LAB}{pid}v{i}");
            steps.push(format!("netns add {ns}"));
            steps.push(format!(
                "link add {veth} type veth peer name eth0 netns {ns}"
            ));
            steps.push(format!("link set {veth} master {} up", lab.bridge));
            steps.push(format!("-n {ns} addr add {}/24 dev eth0", lab.ip(i as u8)));
            steps.push(format!("-n {ns} link set eth0 up"));
            steps.push(format!("-n {ns} link set lo up"));
            lab.names.push(ns);
        }
        for step in steps {
            if let Err(e) = ip(&step) {
                assert!(
                    !ci,
                    "network namespaces not allowed here although root under CI=true: ip {step}: {e}"
                );
                eprintln!("skipped: network namespaces not allowed here: ip {step}: {e}");
                return None;
            }
        }
        Some(lab)
    }

    /// Where namespace `i`'s servers run.
    pub fn place(&self, i: usize) -> Place {
        Place {
            ip: self.ip(i as u8).into(),
            netns: Some(self.names[i].clone()),
        }
    }

    /// Namespace `i`'s address (the host is `.254`: index 253).
    fn ip(&self, i: u8) -> std::net::Ipv4Addr {
        let [a, b, c] = self.net;
        std::net::Ipv4Addr::new(a, b, c, i + 1)
    }

    /// Cuts namespace `i` off from the others (both directions); the host still reaches it.
    pub fn partition(&self, i: usize) {
        self.routes(i, "add");
    }

    /// Undoes [`NetLab::partition`].
    pub fn heal(&self, i: usize) {
        self.routes(i, "del");
    }

    fn routes(&self, i: usize, op: &str) {
        for j in (0..self.names.len()).filter(|&j| j != i) {
            for (from, to) in [(i, j), (j, i)] {
                let step = format!(
                    "-n {} route {op} blackhole {}/32",
                    self.names[from],
                    self.ip(to as u8)
                );
                ip(&step).unwrap_or_else(|e| panic!("ip {step}: {e}"));
            }
        }
    }

    /// A /24 under 10.213 that no route of this host uses yet.
    fn free_subnet(pid: u32) -> u8 {
        let routes = std::process::Command::new("ip")
            .args(["-4", "route", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        (0..=255u32)
            .map(|k| ((pid + k) % 256) as u8)
            .find(|k| !routes.contains(&format!("10.213.{k}.")))
            .unwrap_or(0)
    }

    /// Namespaces and bridges of earlier runs whose process is gone (killed before its drop
    /// ran): the processes left inside are killed, then the namespaces and bridge removed.
    fn remove_stale() {
        let list = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for line in list.lines() {
            let Some(ns) = line.split_whitespace().next() else {
                continue;
            };
            let Some(owner) = ns
                .strip_prefix(LAB)
                .and_then(|r| r.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if std::path::Path::new(&format!("/proc/{owner}")).exists() {
                continue;
            }
            kill_inside(ns);
            let _ = ip(&format!("netns del {ns}"));
        }
        // Then the veths and bridges of dead runs (a namespace may outlive its name).
        let links = std::process::Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for line in links.lines() {
            let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) else {
                continue;
            };
            let Some(owner) = name
                .strip_prefix(LAB)
                .map(|r| r.split('v').next().unwrap_or(r))
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{owner}")).exists() {
                let _ = ip(&format!("link del {name}"));
            }
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for (i, ns) in self.names.iter().enumerate() {
            kill_inside(ns);
            let _ = ip(&format!("netns del {ns}"));
            // The namespace itself may outlive its name for a while (and its end of the veth
            // pair with it): deleting this end removes both.
            let _ = ip(&format!("link del {}v{i}", self.bridge));
        }
        let _ = ip(&format!("link del {}", self.bridge));
    }
}

/// SIGKILL to every process left in namespace `ns` (only the test's own run there).
fn kill_inside(ns: &str) {
    let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-9", pid])
            .status();
    }
}

/// Runs `ip <args>` (split on spaces); the error says what `ip` printed.
fn ip(args: &str) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args.split(' '))
        .output()
        .map_err(|e| format!("ip not runnable (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Every REST node's master token.
pub const MASTER: &str = "ClusterCfgMasterToken0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

/// A node with REST on its own port and [`MASTER`] as its master token (the REST tests of
/// `cluster_cfg` and `cluster_gw`).
pub struct RestNode {
    pub node: Node,
    pub http: SocketAddr,
}

impl RestNode {
    pub async fn start(nats: &NatsServer, name: &str) -> RestNode {
        let http = free_addr();
        let node = Node::start_with(
            nats,
            name,
            "",
            &["--master-token", MASTER, "--http", &http.to_string()],
        )
        .await;
        RestNode { node, http }
    }

    /// Kills the node (`kill -9`) and starts it again on the same data directory and
    /// configuration, REST on a new port.
    pub async fn restart(self) -> RestNode {
        let RestNode {
            node:
                Node {
                    name,
                    daemon,
                    _data: data,
                },
            ..
        } = self;
        daemon.kill().await;
        RestNode::respawn(name, data).await
    }

    /// Starts node `name` on its data directory `data` (after a kill).
    pub async fn respawn(name: String, data: tempfile::TempDir) -> RestNode {
        let http = free_addr();
        let config = data.path().join("tern.toml");
        let daemon = Daemon::spawn(
            data.path(),
            &[
                "--config",
                config.to_str().expect("utf-8 path"),
                "--anonymous",
                "--master-token",
                MASTER,
                "--http",
                &http.to_string(),
            ],
        )
        .await;
        RestNode {
            node: Node {
                name,
                daemon,
                _data: data,
            },
            http,
        }
    }

    /// A REST call as the master token; the JSON answer, which must be 200.
    pub async fn rest(&self, method: &str, path: &str, body: &str) -> Value {
        self.rest_in(None, method, path, body).await
    }

    /// [`RestNode::rest`] acting in account `cid` (`x-flespi-cid`) when given.
    pub async fn rest_in(&self, cid: Option<u64>, method: &str, path: &str, body: &str) -> Value {
        let (status, v) = self.call_in(cid, method, path, body).await;
        assert_eq!(status, 200, "{method} {path} on {}: {v}", self.node.name);
        v
    }

    /// A REST call as the master token: the status and the JSON answer (`null` if none).
    pub async fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        self.call_in(None, method, path, body).await
    }

    async fn call_in(
        &self,
        cid: Option<u64>,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, Value) {
        let auth = format!("Authorization: FlespiToken {MASTER}");
        let acting = cid.map(|c| format!("x-flespi-cid: {c}"));
        let mut headers = vec![auth.as_str(), "Content-Type: application/json"];
        headers.extend(acting.as_deref());
        let r = http::request(self.http, method, path, &headers, body).await;
        (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::Null),
        )
    }
}

/// Every REST node's log and the NATS server's (for a failing assertion).
pub fn rest_logs(nodes: &[&RestNode], nats: &NatsServer) -> String {
    let mut out = String::new();
    for n in nodes {
        out.push_str(&format!(
            "\n--- node {} ---\n{}",
            n.node.name,
            n.node.daemon.log()
        ));
    }
    out.push_str(&format!("\n--- nats-server ---\n{}", nats.log()));
    out
}

/// Polls `check` (every 100 ms) until it holds; fails after [`CROSS`].
pub async fn until<F, Fut>(what: &str, logs: impl Fn() -> String, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + CROSS;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {CROSS:?}:{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
