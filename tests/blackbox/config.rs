//! The configuration as the real binary sees it: `tern check-config` and `tern --config` with
//! bad files (exact messages naming file, line and key), the shipped file, `TERN_*`
//! environment overrides and command-line options over them, and `tern certs dev`.

use std::path::{Path, PathBuf};

use tern_codec::ProtocolVersion;

use crate::support::Client;
use crate::support::process::{Daemon, free_addr, run};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `tern check-config FILE` and `tern --config FILE` both refuse `text` with `message`
/// (the part after `FILE:`), exit code 2.
async fn refused(text: &str, message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "tern.toml", text);
    let f = file.display().to_string();
    let expected = format!("error: {f}:{message}\n");
    let (code, out, err) = run(&["check-config", &f], &[]).await;
    assert_eq!((code, err.as_str()), (2, expected.as_str()), "{out}");
    let data = dir.path().join("data");
    let (code, _, err) = run(
        &[
            "--config",
            &f,
            "--mqtt",
            "127.0.0.1:0",
            "--http",
            "off",
            "--data-dir",
            &data.display().to_string(),
        ],
        &[],
    )
    .await;
    assert_eq!((code, err.as_str()), (2, expected.as_str()));
}

#[tokio::test]
async fn unknown_key() {
    refused(
        "[metrics]\nenabled = true\nport = 9100\n",
        "3: key `metrics.port`: unknown field `port`, expected `enabled`",
    )
    .await;
}

#[tokio::test]
async fn wrong_type() {
    refused(
        "[listeners]\nmax_connections = \"many\"\n",
        "2: key `listeners.max_connections`: invalid type: string \"many\", expected usize",
    )
    .await;
}

#[tokio::test]
async fn unparsable_address() {
    refused(
        "[listeners]\n\nhttp = \"localhost:80\"\n",
        "3: key `listeners.http`: `localhost:80` is not a listen address such as \"0.0.0.0:1883\" or \"[::]:1883\" (\"off\" disables the listener)",
    )
    .await;
}

#[tokio::test]
async fn missing_certificate_file() {
    refused(
        "[tls]\ncert = \"/nonexistent/tern/server.pem\"\nkey = \"/nonexistent/tern/server.key\"\n",
        "2: key `tls.cert`: cannot read /nonexistent/tern/server.pem: No such file or directory (os error 2)",
    )
    .await;
}

#[tokio::test]
async fn missing_key_file() {
    let certs = crate::support::TestCerts::new();
    refused(
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"/nonexistent/tern/server.key\"\n",
            certs.files.server_cert.display()
        ),
        "3: key `tls.key`: cannot read /nonexistent/tern/server.key: No such file or directory (os error 2)",
    )
    .await;
}

#[tokio::test]
async fn certificate_and_key_that_do_not_match() {
    let a = crate::support::TestCerts::new();
    let b = crate::support::TestCerts::new();
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "tern.toml",
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            a.files.server_cert.display(),
            b.files.server_key.display()
        ),
    );
    let (code, _, err) = run(&["check-config", &file.display().to_string()], &[]).await;
    assert_eq!(code, 2);
    assert!(
        err.starts_with(&format!(
            "error: {}:3: key `tls.key`: certificate ",
            file.display()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn the_shipped_file_checks() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/tern.toml");
    let (code, out, err) = run(&["check-config", file], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("{file}: ok\n")), "{out}");
    assert!(out.contains("  mqtt   0.0.0.0:1883\n"), "{out}");
    assert!(out.contains("  http   0.0.0.0:8080\n"), "{out}");
}

#[tokio::test]
async fn environment_errors_name_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "tern.toml", "[mqtt]\nmax_qos = 1\n");
    let f = file.display().to_string();
    let (code, _, err) = run(&["check-config", &f], &[("TERN_MQTT_MAX_QOS", "5")]).await;
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: environment variable TERN_MQTT_MAX_QOS: key `mqtt.max_qos`: must be 0, 1 or 2, not 5\n"
    );
    let (code, _, err) = run(&["check-config", &f], &[("TERN_TLS_CERTIFICATE", "x")]).await;
    assert_eq!(code, 2);
    assert!(
        err.starts_with(
            "error: environment variable TERN_TLS_CERTIFICATE: key `tls.certificate`: unknown field `certificate`"
        ),
        "{err}"
    );
    // Variables that do not name a section are not ours (container platforms set them).
    let (code, _, err) = run(
        &["check-config", &f],
        &[("TERN_PORT", "tcp://10.0.0.1:1883")],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    // Options name themselves.
    let (code, _, err) = run(&["--mqtts", "127.0.0.1:8883", "check-config", &f], &[]).await;
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: command line option --mqtts: key `listeners.mqtts`: needs a certificate: set tls.cert and tls.key\n"
    );
}

#[tokio::test]
async fn file_then_environment_then_options() {
    let dir = tempfile::tempdir().unwrap();
    let (from_file, from_env, from_cli) = (free_addr(), free_addr(), free_addr());
    let file = write(
        dir.path(),
        "tern.toml",
        &format!(
            "[listeners]\nmqtt = \"{from_file}\"\nhttp = \"off\"\n[auth]\nanonymous = false\n"
        ),
    );
    let f = file.display().to_string();
    let data = dir.path().join("data").display().to_string();
    let env_addr = from_env.to_string();
    let env = [
        ("TERN_LISTENERS_MQTT", env_addr.as_str()),
        ("TERN_AUTH_ANONYMOUS", "true"),
    ];
    // The environment wins over the file.
    let d = Daemon::spawn_raw(&["--config", &f, "--data-dir", &data], &env, from_env).await;
    assert!(tokio::net::TcpStream::connect(from_file).await.is_err());
    let mut c = Client::connect(from_env, ProtocolVersion::V5, "env").await;
    c.ping().await;
    d.kill().await;
    // An option wins over the environment.
    let cli_addr = from_cli.to_string();
    let d = Daemon::spawn_raw(
        &["--config", &f, "--data-dir", &data, "--mqtt", &cli_addr],
        &env,
        from_cli,
    )
    .await;
    assert!(tokio::net::TcpStream::connect(from_env).await.is_err());
    let mut c = Client::connect(from_cli, ProtocolVersion::V5, "cli").await;
    c.ping().await;
    drop(d);
}

#[tokio::test]
async fn environment_alone_configures_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr().to_string();
    let data = dir.path().display().to_string();
    let env = [
        ("TERN_LISTENERS_MQTT", addr.as_str()),
        ("TERN_LISTENERS_HTTP", "off"),
        ("TERN_AUTH_ANONYMOUS", "true"),
        ("TERN_STORE_DATA_DIR", data.as_str()),
    ];
    let mut child = tokio::process::Command::new(crate::support::process::tern_bin())
        .envs(env)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listening on {addr}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut c = Client::connect(addr, ProtocolVersion::V311, "env-only").await;
    c.ping().await;
    child.kill().await.ok();
}

#[tokio::test]
async fn certs_dev_writes_a_usable_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let o = out.display().to_string();
    let (code, stdout, err) = run(&["certs", "dev", "--out", &o, "--san", "tern.local"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("server.pem"), "{stdout}");
    for name in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        assert!(out.join(name).is_file(), "{name}");
    }
    use std::os::unix::fs::PermissionsExt as _;
    for key in ["server.key", "client.key"] {
        let mode = std::fs::metadata(out.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{key} is private");
    }
    let (code, _, err) = run(&["certs", "dev", "--out", &o], &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("pass --force"), "{err}");
    let (code, _, err) = run(&["certs", "dev", "--out", &o, "--force"], &[]).await;
    assert_eq!(code, 0, "{err}");
    // The set runs the TLS listeners.
    let data = dir.path().join("data");
    let mut d = Daemon::spawn_all(&data, &out, &["--anonymous"]).await;
    let io = crate::support::transport::connect(
        crate::support::transport::Transport::Tls,
        d.mqtts.unwrap(),
        Some(&out.join("ca.pem")),
    )
    .await;
    let mut c = Client::connect_over(io, ProtocolVersion::V5, "dev-certs").await;
    c.ping().await;
    d.child.kill().await.ok();
}

/// Logs to a pipe (journald, `docker logs`) carry no colour codes, and listen addresses read as
/// addresses.
#[tokio::test]
async fn logs_to_a_pipe_are_plain_text_with_plain_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let d = crate::support::process::Daemon::spawn(dir.path(), &[]).await;
    // The log is drained in the background: wait for the line.
    let line = format!("addr={}", d.mqtt);
    crate::support::eventually(|| d.log().contains(&line)).await;
    let log = d.log();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log:?}"
    );
    assert!(
        log.contains(&format!("addr={}", d.mqtt)),
        "the MQTT address as an address: {log}"
    );
    assert!(!log.contains("Some("), "{log}");
    d.kill().await;
}
