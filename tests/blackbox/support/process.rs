//! The real `tern` binary, for tests of the CLI, signals and shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// Path of the binary cargo built for these tests.
pub fn tern_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tern")
}

/// A free loopback port (bound and released; good enough for tests run in one process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `tern` process.
pub struct Daemon {
    pub child: Child,
    pub mqtt: SocketAddr,
}

impl Daemon {
    /// Starts `tern` with MQTT on a free port, data in `data_dir`, plus `args`; waits until the
    /// MQTT port accepts connections.
    pub async fn spawn(data_dir: &Path, args: &[&str]) -> Daemon {
        let port = free_port();
        let mqtt: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(tern_bin())
            .arg("--mqtt")
            .arg(mqtt.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tern");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(mqtt).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "tern did not start listening on {mqtt}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Daemon { child, mqtt }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(&pid)
            .status()
            .expect("kill");
        assert!(status.success());
    }
}
