//! Token expiry in virtual time (the flespi token's `expire`): the connections of a token that
//! expires end (v5: DISCONNECT 0x87), a reconnect with it is refused, other tokens are left
//! alone. The directory reads the broker's manual clock.

use std::sync::Arc;
use std::time::Duration;

use tern_broker::accounts::{Access, Directory, DirectoryConfig, Token};
use tern_broker::{BrokerConfig, Clock};
use tern_codec::*;
use tern_store::{Snapshot, Store};

use crate::support::{START, TestBroker, connect_packet};

fn token(d: &Directory, expire: u64) -> Token {
    d.create_token(Token {
        id: 0,
        key: String::new(),
        info: "test".into(),
        enabled: true,
        expire,
        ttl: 0,
        created: 0,
        accessed: 0,
        ips: String::new(),
        cid: 1,
        metadata: serde_json::json!({}),
        access: Access {
            kind: Access::STANDARD,
            acl: vec![],
        },
    })
    .unwrap()
}

fn with_key(v: ProtocolVersion, id: &str, key: &str) -> Connect {
    let mut c = connect_packet(v, id, true);
    c.username = Some(ByteString::from(key));
    c
}

#[test]
fn a_token_expiring_mid_connection_disconnects_its_clients() {
    let clock = Clock::manual(START);
    let dir = Directory::load_with_clock(
        &Snapshot::default(),
        Store::disabled(),
        DirectoryConfig::default(),
        clock.share(),
    );
    dir.bootstrap(1, None).unwrap();
    let b = TestBroker::with_clock(BrokerConfig::default(), Box::new(Arc::clone(&dir)), clock);
    let soon = token(&dir, START / 1_000_000 + 2);
    let forever = token(&dir, 0);
    let (mut v5, ack) = b.connect(with_key(ProtocolVersion::V5, "expiring-5", &soon.key));
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    let (mut v311, ack) = b.connect(with_key(ProtocolVersion::V311, "expiring-311", &soon.key));
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    let (mut other, ack) = b.connect(with_key(ProtocolVersion::V5, "lasting", &forever.key));
    assert_eq!(ack.code, ReasonCode::SUCCESS);

    b.advance(Duration::from_millis(1999));
    v5.expect_nothing();
    v311.expect_nothing();
    // `expire` is whole seconds, checked every second.
    b.advance(Duration::from_millis(1));
    let got = v5.recv_all();
    assert!(
        matches!(&got[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::NOT_AUTHORIZED),
        "{got:?}"
    );
    assert!(v5.closed.is_some());
    assert!(v311.recv_all().is_empty(), "3.x has no DISCONNECT to send");
    assert!(v311.closed.is_some());

    let (_, ack) = b.connect(with_key(ProtocolVersion::V5, "expiring-5", &soon.key));
    assert_eq!(ack.code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    other.send(Packet::PingReq);
    assert_eq!(other.recv_all(), [Packet::PingResp]);
    assert!(other.closed.is_none());
}
