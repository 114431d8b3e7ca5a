//! CONNECT and CONNACK: versions, client identifiers, keep alive, takeover. The keep-alive and
//! CONNECT deadlines are tested in paused time over an in-memory stream:
//! `crates/tern-net/tests/driver.rs`.

use tern_codec::*;

use crate::support::client::{Read, connect_packet};
use crate::support::{Client, TestBroker, WAIT};

#[tokio::test]
async fn every_version_connects() {
    let b = TestBroker::start().await;
    for v in [
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ] {
        let (mut c, ack) =
            Client::connect_with(b.addr, connect_packet(v, &format!("c-{v}"), true)).await;
        assert_eq!(ack.code, ReasonCode::SUCCESS, "{v}");
        assert!(!ack.session_present);
        c.ping().await;
    }
}

#[tokio::test]
async fn echo_client_id_true_echoes_the_own_id_as_flespi_does() {
    let b = TestBroker::with(|c| c.mqtt.echo_client_id = true).await;
    let (_c, ack) =
        Client::connect_with(b.addr, connect_packet(ProtocolVersion::V5, "my-id", true)).await;
    assert_eq!(
        ack.properties.assigned_client_identifier.as_deref(),
        Some("my-id")
    );
    assert_eq!(
        ack.properties.maximum_packet_size,
        Some(b.broker().config.max_packet_size)
    );
    assert_eq!(
        ack.properties.receive_maximum,
        Some(b.broker().config.receive_maximum)
    );
}

#[tokio::test]
async fn empty_client_id_rules() {
    let b = TestBroker::start().await;
    // v5: assigned.
    let (_c, ack) =
        Client::connect_with(b.addr, connect_packet(ProtocolVersion::V5, "", false)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    let assigned = ack
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert!(!assigned.is_empty());
    // 3.1.1 with clean session: accepted.
    let (_c, ack) =
        Client::connect_with(b.addr, connect_packet(ProtocolVersion::V311, "", true)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    // 3.1.1 without clean session: identifier rejected (return code 2).
    let (mut c, ack) =
        Client::connect_with(b.addr, connect_packet(ProtocolVersion::V311, "", false)).await;
    assert_eq!(ack.code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    c.expect_closed().await;
    // 3.1: a client id is required.
    let (mut c, ack) =
        Client::connect_with(b.addr, connect_packet(ProtocolVersion::V31, "", true)).await;
    assert_eq!(ack.code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    c.expect_closed().await;
}

#[tokio::test]
async fn v311_return_code_bytes_on_the_wire() {
    let b = TestBroker::start().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = [0u8; 4];
    let mut s = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    // CONNECT 3.1.1, clean session 0, empty client id.
    s.write_all(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 60, 0, 0])
        .await
        .unwrap();
    tokio::time::timeout(WAIT, s.read_exact(&mut raw))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raw, [0x20, 0x02, 0x00, 0x02]);
}

#[tokio::test]
async fn unsupported_protocol_level_gets_return_code_1() {
    let b = TestBroker::start().await;
    let mut s = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 9, 0x02, 0, 60, 0, 1, b'x',
    ])
    .await
    .unwrap();
    let mut raw = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut raw))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raw, [0x20, 0x02, 0x00, 0x01]);
}

#[tokio::test]
async fn authentication_method_is_refused_with_0x8c() {
    let b = TestBroker::start().await;
    let mut connect = connect_packet(ProtocolVersion::V5, "auth", true);
    connect.properties.authentication_method = Some(ByteString::from_static("SCRAM-SHA-1"));
    let (mut c, ack) = Client::connect_with(b.addr, connect).await;
    assert_eq!(ack.code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    c.expect_closed().await;
}

#[tokio::test]
async fn auth_packet_after_connect_is_answered_with_0x8c() {
    let b = TestBroker::start().await;
    let mut c = Client::connect(b.addr, ProtocolVersion::V5, "auth2").await;
    c.send(Packet::Auth(Auth {
        reason: ReasonCode::RE_AUTHENTICATE,
        properties: Default::default(),
    }))
    .await;
    let d = c.expect_closed().await.expect("DISCONNECT");
    assert_eq!(d.reason, ReasonCode::BAD_AUTHENTICATION_METHOD);
}

#[tokio::test]
async fn session_takeover_disconnects_the_old_connection() {
    let b = TestBroker::start().await;
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut old = Client::connect(b.addr, v, "same").await;
        let mut new = Client::connect(b.addr, v, "same").await;
        let d = old.expect_closed().await;
        if v == ProtocolVersion::V5 {
            assert_eq!(
                d.expect("DISCONNECT").reason,
                ReasonCode::SESSION_TAKEN_OVER
            );
        } else {
            assert!(d.is_none());
        }
        new.ping().await;
    }
}

#[tokio::test]
async fn server_keep_alive_caps_the_client() {
    let b = TestBroker::with(|c| c.mqtt.max_keep_alive = 30).await;
    let mut connect = connect_packet(ProtocolVersion::V5, "ska", true);
    connect.keep_alive = 600;
    let (_c, ack) = Client::connect_with(b.addr, connect).await;
    assert_eq!(ack.properties.server_keep_alive, Some(30));
}

#[tokio::test]
async fn by_default_only_generated_ids_are_assigned() {
    let b = TestBroker::start().await;
    let (_c, ack) =
        Client::connect_with(b.addr, connect_packet(ProtocolVersion::V5, "own", true)).await;
    assert_eq!(ack.properties.assigned_client_identifier, None);
    let (_c, ack) =
        Client::connect_with(b.addr, connect_packet(ProtocolVersion::V5, "", true)).await;
    assert!(ack.properties.assigned_client_identifier.is_some());
}

/// The keep alive on the wall clock, through the broker's deadline watch (one task for all
/// connections): a client silent for 1.5 × its keep alive is closed (v5: DISCONNECT 0x8D), one
/// that pings in time stays. (The exact deadline is tested in paused time: see the module doc.)
#[tokio::test]
async fn the_deadline_watch_closes_silent_clients_and_keeps_pinging_ones() {
    let b = TestBroker::start().await;
    let mut silent = Vec::new();
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut p = connect_packet(v, &format!("silent-{v}"), true);
        p.keep_alive = 1;
        let (c, ack) = Client::connect_with(b.addr, p).await;
        assert_eq!(ack.code, ReasonCode::SUCCESS);
        silent.push((v, c));
    }
    let mut p = connect_packet(ProtocolVersion::V5, "pinging", true);
    p.keep_alive = 1;
    let (mut pinging, _) = Client::connect_with(b.addr, p).await;
    // Three keep-alive periods, a PINGREQ every half period: never closed.
    for _ in 0..6 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        pinging.ping().await;
    }
    for (v, mut c) in silent {
        // Long closed by now; the first read finds the DISCONNECT (v5) or the close.
        match c.read(WAIT).await {
            Read::Packet(Packet::Disconnect(d)) => {
                assert!(v.is_v5(), "{v}: {d:?}");
                assert_eq!(d.reason, ReasonCode::KEEP_ALIVE_TIMEOUT);
            }
            Read::Closed => assert!(!v.is_v5(), "{v}: closed without DISCONNECT"),
            other => panic!("{v}: {other:?}"),
        }
    }
    pinging.ping().await;
    let closes: std::collections::HashMap<_, _> = b.broker().metrics.closes().collect();
    assert_eq!(closes.get("keep_alive_timeout"), Some(&2), "{closes:?}");
}
