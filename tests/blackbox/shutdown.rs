//! Graceful shutdown: stop accepting, DISCONNECT 0x8B to every v5 client, exit in time.

use std::time::Duration;

use tern_codec::*;

use crate::support::process::Daemon;
use crate::support::{Client, TestBroker};

#[tokio::test]
async fn in_process_shutdown_disconnects_every_client() {
    let b = TestBroker::start().await;
    let addr = b.addr;
    let mut v5 = Client::connect(addr, ProtocolVersion::V5, "sd-5").await;
    let mut v3 = Client::connect(addr, ProtocolVersion::V311, "sd-3").await;
    assert!(
        b.shutdown(Duration::from_secs(5)).await,
        "shutdown within the deadline"
    );
    assert_eq!(
        v5.expect_closed().await.expect("DISCONNECT").reason,
        ReasonCode::SERVER_SHUTTING_DOWN
    );
    assert!(v3.expect_closed().await.is_none());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn sigterm_under_traffic_exits_zero_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::spawn(dir.path(), &["--anonymous"]).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = Client::connect(d.mqtt, ProtocolVersion::V5, &format!("sig-{i}")).await;
        c.subscribe("sig/#", QoS::AtLeastOnce).await;
        clients.push(c);
    }
    let mut publisher = Client::connect(d.mqtt, ProtocolVersion::V5, "sig-pub").await;
    for i in 0..100 {
        publisher
            .publish(&format!("sig/{i}"), b"load", QoS::AtMostOnce, false)
            .await;
    }
    d.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), d.child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    for c in &mut clients {
        let d = c.expect_closed().await.expect("DISCONNECT");
        assert_eq!(d.reason, ReasonCode::SERVER_SHUTTING_DOWN);
    }
}

#[tokio::test]
async fn sigint_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::spawn(dir.path(), &["--anonymous"]).await;
    d.signal("INT");
    let status = tokio::time::timeout(Duration::from_secs(10), d.child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success());
}
