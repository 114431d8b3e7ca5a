//! A real Mosquitto (Debian's `mosquitto`) on a free loopback port with a configuration of its
//! own, and generated certificates for its TLS listener. Shared by two test crates: tern-mqttc's
//! tests (`mod mosquitto` in `support/mod.rs`) and the black-box suite (a `#[path]` module in
//! `tests/blackbox/support/mod.rs`), so it uses nothing but tokio, tempfile and rcgen.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// How long Mosquitto may take to listen.
const START: Duration = Duration::from_secs(10);

/// A free loopback port (bound and released; good enough for tests).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("local address")
        .port()
}

/// Debian's Mosquitto, if installed.
pub fn mosquitto_binary() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// A Mosquitto process on 127.0.0.1 with a configuration of its own (killed on drop).
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    binary: PathBuf,
}

impl Mosquitto {
    /// Starts Mosquitto with `extra` configuration lines (`{dir}` is replaced by its temporary
    /// directory); `None`, with a message, when the binary is missing.
    pub async fn start(extra: &str) -> Option<Mosquitto> {
        let Some(binary) = mosquitto_binary() else {
            eprintln!("SKIPPED: the mosquitto binary is not installed (apt-get install mosquitto)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(binary, dir, extra).await
    }

    /// Like [`Mosquitto::start`], in a directory the test prepared (password file,
    /// certificates).
    pub async fn start_in(
        binary: PathBuf,
        dir: tempfile::TempDir,
        extra: &str,
    ) -> Option<Mosquitto> {
        let port = free_port();
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        // As root, Mosquitto would switch to the `mosquitto` user, which cannot read the
        // temporary directory.
        let conf = format!(
            "user root\nlistener {port} 127.0.0.1\npersistence false\nlog_dest stderr\n{extra}\n"
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            dir,
            binary,
        };
        m.spawn().await;
        Some(m)
    }

    async fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let port = self.port;
        timeout(START, async {
            while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("mosquitto listens");
    }

    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Kills it and starts it again on the same port, with the same configuration.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    pub fn uri(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Generated PEM texts: a CA, a server certificate for `localhost` and 127.0.0.1, a client
/// certificate.
pub struct Certificates {
    pub ca: String,
    pub server: String,
    pub server_key: String,
    pub client: String,
    pub client_key: String,
}

pub fn certificates() -> Certificates {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let server =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = server.signed_by(&server_key, &ca).unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mqttc-test-client");
    let client_key = KeyPair::generate().unwrap();
    let client = client.signed_by(&client_key, &ca).unwrap();
    Certificates {
        ca: ca.pem(),
        server: server.pem(),
        server_key: server_key.serialize_pem(),
        client: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
