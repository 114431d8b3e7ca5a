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
                panic!("nats-server exited with {status}: {}", self.log());
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() && self.healthy().await {
                return;
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
