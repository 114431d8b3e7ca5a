//! A real NATS server (Debian's `nats-server`, JetStream on) for the cluster tests: loopback
//! only, on free ports, with its own temporary store directory; killed on drop.
//!
//! Without the binary, [`NatsServer::start`] says the test is skipped and returns `None`, unless
//! the `CI` environment variable is set: CI installs it (scripts/test-deps.sh), so a missing
//! binary there fails the test instead of hiding the suite.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::http;
use super::process::free_port;

/// How long the server gets to accept clients and report itself healthy.
const START: Duration = Duration::from_secs(10);

/// A running `nats-server`.
pub struct NatsServer {
    child: Option<Child>,
    bin: PathBuf,
    /// The client port.
    pub addr: SocketAddr,
    /// The HTTP monitoring port (`/healthz`, `/jsz`, `/varz`).
    pub monitor: SocketAddr,
    /// The JetStream store and the server's log (`nats.log`).
    dir: tempfile::TempDir,
}

/// The `nats-server` binary: on `PATH`, else in /usr/bin or /usr/sbin (Debian's package puts it
/// in /usr/sbin, which is not on every user's `PATH`).
pub fn nats_server_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

impl NatsServer {
    /// Starts a server and waits until it accepts clients and answers `/healthz` with 200.
    /// `None` (the test is skipped, which this says on stderr) when `nats-server` is not
    /// installed and `CI` is not set.
    pub async fn start() -> Option<NatsServer> {
        let Some(bin) = nats_server_bin() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "nats-server not installed, and CI is set: scripts/test-deps.sh installs it"
            );
            eprintln!("skipped: nats-server not installed (scripts/test-deps.sh installs it)");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = NatsServer {
            child: None,
            bin,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            monitor: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dir,
        };
        // A port picked free may be taken by another test before the server binds it: then
        // the server exits at once, and it starts again on other ports (a few times).
        for _ in 0..3 {
            if server.try_spawn().await.is_ok() {
                return Some(server);
            }
            server.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            server.monitor = SocketAddr::from(([127, 0, 0, 1], free_port()));
        }
        server.spawn().await;
        Some(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// What the server logged so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// Kills the server (SIGKILL) and waits until it is gone; clients see the connection drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts a new one on the same ports and store directory (its
    /// JetStream state survives, as after a crash).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Starts the process and waits until it is ready; panics with its log when it is not
    /// within [`START`].
    async fn spawn(&mut self) {
        if let Err(e) = self.try_spawn().await {
            panic!("{e}");
        }
    }

    /// [`NatsServer::spawn`]; an error when the process exits before it is ready.
    async fn try_spawn(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("nats log file");
        let child = Command::new(&self.bin)
            .arg("-js")
            .args(["-a", "127.0.0.1"])
            .args(["-p", &self.addr.port().to_string()])
            .arg("-sd")
            .arg(self.store_dir())
            .args(["--http_port", &self.monitor.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("nats log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("nats-server exited with {status}: {}", self.log()));
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() && self.healthy().await {
                return Ok(());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server not ready on {} within {START:?}: {}",
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether `/healthz` answers 200 (JetStream included).
    pub async fn healthy(&self) -> bool {
        tokio::net::TcpStream::connect(self.monitor).await.is_ok()
            && http::get(self.monitor, "/healthz", &[]).await.status == 200
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How long a NATS cluster gets to elect its JetStream meta leader after its servers start.
const FORM: Duration = Duration::from_secs(60);

/// Where one member of a [`NatsCluster`] runs: its address, and the network namespace it runs
/// in (`None`: this one). In a namespace the member uses the standard ports on its own address
/// (4222 clients, 8222 monitoring, 6222 routes); otherwise free ports on its address.
#[derive(Clone, Debug)]
pub struct Place {
    pub ip: std::net::IpAddr,
    pub netns: Option<String>,
}

impl Place {
    /// On loopback, in this network namespace.
    pub fn loopback() -> Place {
        Place {
            ip: [127, 0, 0, 1].into(),
            netns: None,
        }
    }
}

/// One `nats-server` of a [`NatsCluster`].
pub struct NatsMember {
    /// Its `server_name` (`n1`, `n2`, ...), as the monitoring endpoints name leaders.
    pub name: String,
    pub place: Place,
    /// The client port.
    pub addr: SocketAddr,
    /// The HTTP monitoring port.
    pub monitor: SocketAddr,
    /// The route port.
    pub route: SocketAddr,
    child: Option<Child>,
    /// The member's configuration, store and log live here.
    dir: PathBuf,
}

impl NatsMember {
    /// `nats://<addr>`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Whether the process runs (it was not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// What the member logged so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }

    /// Whether `/healthz` answers 200 (in a cluster: JetStream is current with the meta
    /// leader). False when the monitoring port does not accept connections.
    pub async fn healthy(&self) -> bool {
        self.running()
            && tokio::time::timeout(START, tokio::net::TcpStream::connect(self.monitor))
                .await
                .is_ok_and(|r| r.is_ok())
            && http::get(self.monitor, "/healthz", &[]).await.status == 200
    }

    /// `GET <path>` on the monitoring port as JSON; `None` when the member is not running or
    /// does not answer with 200 and JSON.
    pub async fn monitor_json(&self, path: &str) -> Option<serde_json::Value> {
        if !self.running() {
            return None;
        }
        let connect = tokio::net::TcpStream::connect(self.monitor);
        if !tokio::time::timeout(START, connect)
            .await
            .is_ok_and(|r| r.is_ok())
        {
            return None;
        }
        let r = http::get(self.monitor, path, &[]).await;
        if r.status != 200 {
            return None;
        }
        serde_json::from_str(&r.body).ok()
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process (inside its namespace, if any) with the configuration written at
    /// [`NatsCluster::start_at`]; waits until it accepts clients (not for the cluster: see
    /// [`NatsCluster::wait_formed`]).
    async fn spawn(&mut self, bin: &std::path::Path) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("nats.log"))
            .expect("nats log file");
        let mut cmd = match &self.place.netns {
            Some(ns) => {
                // `ip netns exec` executes the program itself: the child is the server.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .arg("-c")
            .arg(self.dir.join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("nats log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "nats-server {} exited with {status}: {}",
                    self.name,
                    self.log()
                );
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server {} not accepting clients on {} within {START:?}: {}",
                self.name,
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NatsMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Several `nats-server`s routed into one cluster (`tern-test`), JetStream on in each with its
/// own store directory, so that streams can have 3 replicas. Members are killed on drop.
pub struct NatsCluster {
    pub members: Vec<NatsMember>,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// `n` servers on loopback, formed (a meta leader elected, every member healthy). `None`
    /// (skipped, said on stderr) without `nats-server` unless `CI` is set, as
    /// [`NatsServer::start`].
    pub async fn start(n: usize) -> Option<NatsCluster> {
        NatsCluster::start_at(&vec![Place::loopback(); n]).await
    }

    /// One server per place, formed.
    pub async fn start_at(places: &[Place]) -> Option<NatsCluster> {
        let Some(bin) = nats_server_bin() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "nats-server not installed, and CI is set: scripts/test-deps.sh installs it"
            );
            eprintln!("skipped: nats-server not installed (scripts/test-deps.sh installs it)");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let mut members: Vec<NatsMember> = places
            .iter()
            .enumerate()
            .map(|(i, place)| {
                let port = |fixed| match place.netns {
                    Some(_) => fixed,
                    None => free_port(),
                };
                let at = |p| SocketAddr::new(place.ip, p);
                NatsMember {
                    name: format!("n{}", i + 1),
                    place: place.clone(),
                    addr: at(port(4222)),
                    monitor: at(port(8222)),
                    route: at(port(6222)),
                    child: None,
                    dir: dir.path().join(format!("n{}", i + 1)),
                }
            })
            .collect();
        let routes = members
            .iter()
            .map(|m| format!("\"nats-route://{}\"", m.route))
            .collect::<Vec<_>>()
            .join(", ");
        for m in &members {
            std::fs::create_dir_all(&m.dir).expect("member directory");
            let store = m.dir.join("store");
            let conf = format!(
                "server_name: {name}\nlisten: \"{addr}\"\nhttp: \"{monitor}\"\n\
                 jetstream {{ store_dir: \"{store}\", max_mem: 64M, max_file: 1G }}\n\
                 cluster {{\n  name: tern-test\n  listen: \"{route}\"\n  routes: [ {routes} ]\n}}\n",
                name = m.name,
                addr = m.addr,
                monitor = m.monitor,
                route = m.route,
                store = store.display(),
            );
            std::fs::write(m.dir.join("nats.conf"), conf).expect("write nats.conf");
        }
        for m in &mut members {
            m.spawn(&bin).await;
        }
        let cluster = NatsCluster {
            members,
            bin,
            _dir: dir,
        };
        cluster.wait_formed().await;
        Some(cluster)
    }

    /// Every member's `nats://` URL, in order.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(NatsMember::url).collect()
    }

    /// Every member's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            // The end of each: the interesting part, without drowning the test's own output.
            let log = m.log();
            let tail = log
                .char_indices()
                .rev()
                .nth(6000)
                .map_or(&log[..], |(i, _)| &log[i..]);
            out.push_str(&format!("\n--- nats-server {} ---\n{tail}", m.name));
        }
        out
    }

    /// Kills member `i` (SIGKILL: a crash).
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again on the same ports and store directory (its JetStream state
    /// survives, as after a crash) and waits until it is healthy (caught up with the cluster).
    pub async fn restart(&mut self, i: usize) {
        self.members[i].kill();
        let bin = self.bin.clone();
        self.members[i].spawn(&bin).await;
        self.wait_until(FORM, "the restarted member healthy", |c| async move {
            c.members[i].healthy().await
        })
        .await;
    }

    /// Waits until a meta leader is elected and every running member is healthy; panics with
    /// the logs after [`FORM`].
    pub async fn wait_formed(&self) {
        self.wait_until(FORM, "the NATS cluster formed", |c| async move {
            if c.meta_leader().await.is_none() {
                return false;
            }
            for m in c.members.iter().filter(|m| m.running()) {
                if !m.healthy().await {
                    return false;
                }
            }
            true
        })
        .await;
    }

    /// Polls `done` every 200 ms until it holds; panics with the logs after `wait`.
    pub async fn wait_until<'a, F, Fut>(&'a self, wait: Duration, what: &str, done: F)
    where
        F: Fn(&'a NatsCluster) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + wait;
        while !done(self).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {wait:?}:{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The index of the JetStream meta leader, as a running member reports it (`/jsz`).
    pub async fn meta_leader(&self) -> Option<usize> {
        for m in self.members.iter().filter(|m| m.running()) {
            let Some(jsz) = m.monitor_json("/jsz").await else {
                continue;
            };
            let leader = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
            if let Some(i) = self.index_of(leader) {
                return Some(i);
            }
        }
        None
    }

    /// The index of the leader of stream `stream` (in the global account), as the running
    /// members report it (`/jsz?streams=true`); `None` while there is none.
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        self.stream_info(stream).await.and_then(|s| {
            let leader = s["cluster"]["leader"].as_str().unwrap_or_default();
            self.index_of(leader)
        })
    }

    /// How many replicas stream `stream` has (the leader and its peers), as a running member
    /// that hosts it reports.
    pub async fn stream_replicas(&self, stream: &str) -> Option<usize> {
        self.stream_info(stream)
            .await
            .map(|s| 1 + s["cluster"]["replicas"].as_array().map_or(0, Vec::len))
    }

    /// The detail `/jsz?streams=true` gives for `stream` on the first running member that
    /// hosts it and names a running leader.
    async fn stream_info(&self, stream: &str) -> Option<serde_json::Value> {
        for m in self.members.iter().filter(|m| m.running()) {
            let Some(jsz) = m.monitor_json("/jsz?streams=true").await else {
                continue;
            };
            let accounts = jsz["account_details"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for account in accounts {
                let streams = account["stream_detail"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for s in streams {
                    if s["name"].as_str() != Some(stream) {
                        continue;
                    }
                    let leader = s["cluster"]["leader"].as_str().unwrap_or_default();
                    if self
                        .index_of(leader)
                        .is_some_and(|i| self.members[i].running())
                    {
                        return Some(s);
                    }
                }
            }
        }
        None
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }
}
