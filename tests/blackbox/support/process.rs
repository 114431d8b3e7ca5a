//! The real `tern` binary, for tests of the CLI, the configuration, signals and shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// Path of the binary cargo built for these tests.
pub fn tern_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tern")
}

/// A free loopback port (bound and released; good enough for tests run in one process).
pub fn free_port() -> u16 {
    // The kernel may hand the same free port to two binds in a row once the first socket is
    // closed: a port is given out once per test process (two listeners of one node collided).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A free loopback address.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A running `tern` process. Its stderr (the log) is collected in `log`.
pub struct Daemon {
    pub child: Child,
    pub mqtt: SocketAddr,
    pub mqtts: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Kills the process (SIGKILL) and waits until it is gone, so that its data directory and
    /// ports are free again.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts `tern` with MQTT on a free port, the HTTP listener off, data in `data_dir`, plus
    /// `args` (which win over these); waits until the MQTT port accepts connections.
    pub async fn spawn(data_dir: &Path, args: &[&str]) -> Daemon {
        Daemon::spawn_env(data_dir, args, &[]).await
    }

    /// Like [`Daemon::spawn`], with extra environment variables.
    pub async fn spawn_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mqtt = free_addr();
        let mut cmd = Command::new(tern_bin());
        cmd.arg("--mqtt")
            .arg(mqtt.to_string())
            .arg("--http")
            .arg("off")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut d = Daemon::start(cmd, mqtt).await;
        d.wait_listening(mqtt).await;
        d
    }

    /// Starts `tern` with exactly `args` and `env` (nothing added) and waits until `addr`
    /// accepts connections.
    pub async fn spawn_raw(args: &[&str], env: &[(&str, &str)], addr: SocketAddr) -> Daemon {
        let mut cmd = Command::new(tern_bin());
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut d = Daemon::start(cmd, addr).await;
        d.wait_listening(addr).await;
        d
    }

    /// Starts `tern` with all four listeners on free loopback ports, TLS from `certs` (a
    /// directory written by `tern certs dev`), plus `args`.
    pub async fn spawn_all(data_dir: &Path, certs: &Path, args: &[&str]) -> Daemon {
        let (mqtt, mqtts, http, https) = (free_addr(), free_addr(), free_addr(), free_addr());
        let mut cmd = Command::new(tern_bin());
        cmd.args(["--mqtt", &mqtt.to_string()])
            .args(["--mqtts", &mqtts.to_string()])
            .args(["--http", &http.to_string()])
            .args(["--https", &https.to_string()])
            .arg("--tls-cert")
            .arg(certs.join("server.pem"))
            .arg("--tls-key")
            .arg(certs.join("server.key"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(args);
        let mut d = Daemon::start(cmd, mqtt).await;
        d.mqtts = Some(mqtts);
        d.http = Some(http);
        d.https = Some(https);
        for addr in [mqtt, mqtts, http, https] {
            d.wait_listening(addr).await;
        }
        d
    }

    async fn start(mut cmd: Command, mqtt: SocketAddr) -> Daemon {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tern");
        // Drain the log so that a chatty daemon never blocks on a full pipe.
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
        Daemon {
            child,
            mqtt,
            mqtts: None,
            http: None,
            https: None,
            log,
        }
    }

    async fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        // Our tern, not another process that took the free port first: it logs the address it
        // listens on.
        let ours = addr.to_string();
        while tokio::net::TcpStream::connect(addr).await.is_err() || !self.log().contains(&ours) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tern exited with {status}: {}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tern did not start listening on {addr}: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
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

/// Runs `tern` with `args` to completion; returns (exit code, stdout, stderr).
pub async fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(tern_bin());
    cmd.args(args).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("tern finishes in time")
        .expect("run tern");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs one of the external client scripts (`tests/python`, `tests/node`) with `program`
/// (`python3`, `node`): the script's path is relative to the repository, `args` follow it.
/// Fails the test unless it exits 0 within `wait`, showing what it printed; returns its
/// standard output.
pub async fn client_script(program: &str, script: &str, args: &[&str], wait: Duration) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(script);
    let out = tokio::time::timeout(
        wait,
        Command::new(program)
            .arg(&path)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{script} did not finish within {wait:?}"))
    .unwrap_or_else(|e| panic!("{program} runs (scripts/test-deps.sh installs it): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
