//! Bad input closes only the offending connection, with the matching reason code for v5,
//! while other clients keep exchanging messages.

use tern_codec::*;

use crate::support::client::Read;
use crate::support::{Client, TestBroker, WAIT};

/// A subscriber and a publisher that must not notice anything.
struct Bystanders {
    sub: Client,
    publ: Client,
    n: u32,
}

impl Bystanders {
    async fn new(b: &TestBroker) -> Bystanders {
        let mut sub = Client::connect(b.addr, ProtocolVersion::V5, "bystander-sub").await;
        sub.subscribe("bystander/t", QoS::AtLeastOnce).await;
        let publ = Client::connect(b.addr, ProtocolVersion::V311, "bystander-pub").await;
        Bystanders { sub, publ, n: 0 }
    }

    async fn still_fine(&mut self) {
        self.n += 1;
        let payload = self.n.to_string();
        self.publ
            .publish("bystander/t", payload.as_bytes(), QoS::AtLeastOnce, false)
            .await;
        let m = self.sub.recv_publish().await;
        assert_eq!(&m.payload[..], payload.as_bytes());
        self.sub.ack(&m).await;
    }
}

/// Connects with `v`, sends `bytes`, and returns the DISCONNECT reason (if the broker sent
/// one) once the broker closed the connection.
async fn send_bad(
    b: &TestBroker,
    v: ProtocolVersion,
    connect_first: bool,
    bytes: &[u8],
) -> Option<ReasonCode> {
    let mut c = if connect_first {
        Client::connect(b.addr, v, "offender").await
    } else {
        Client::open(b.addr, v).await
    };
    c.send_raw(bytes).await;
    let mut reason = None;
    loop {
        match c.read(WAIT).await {
            Read::Closed => return reason,
            Read::Timeout => panic!("connection not closed after {bytes:02x?}"),
            Read::Packet(Packet::Disconnect(d)) => reason = Some(d.reason),
            Read::Packet(_) => {}
        }
    }
}

#[tokio::test]
async fn each_kind_of_bad_input_closes_only_its_connection() {
    let b = TestBroker::with(|c| c.mqtt.max_packet_size = 4096).await;
    let mut ok = Bystanders::new(&b).await;
    use ProtocolVersion::{V5, V311};

    let cases: Vec<(&str, ProtocolVersion, bool, Vec<u8>, Option<ReasonCode>)> = vec![
        // PUBLISH whose topic length runs past the remaining length.
        (
            "truncated",
            V5,
            true,
            vec![0x30, 0x03, 0x00, 0x0a, b'a'],
            Some(ReasonCode::MALFORMED_PACKET),
        ),
        (
            "truncated 3.1.1",
            V311,
            true,
            vec![0x30, 0x03, 0x00, 0x0a, b'a'],
            None,
        ),
        // A remaining length with a fifth continuation byte.
        (
            "5-byte var int",
            V5,
            true,
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            Some(ReasonCode::MALFORMED_PACKET),
        ),
        // SUBSCRIBE must have flags 0b0010.
        (
            "wrong flags",
            V5,
            true,
            vec![0x80, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00],
            Some(ReasonCode::MALFORMED_PACKET),
        ),
        (
            "wrong flags 3.1.1",
            V311,
            true,
            vec![0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
            None,
        ),
        // PUBLISH topic with invalid UTF-8.
        (
            "bad utf-8",
            V5,
            true,
            vec![0x30, 0x06, 0x00, 0x02, 0xc3, 0x28, 0x00, b'x'],
            Some(ReasonCode::MALFORMED_PACKET),
        ),
        (
            "bad utf-8 3.1.1",
            V311,
            true,
            vec![0x30, 0x05, 0x00, 0x02, 0xc3, 0x28, b'x'],
            None,
        ),
        // PUBLISH with Content Type twice.
        (
            "duplicated property",
            V5,
            true,
            vec![
                0x30, 0x0b, 0x00, 0x01, b't', 0x07, 0x03, 0x00, 0x01, b'a', 0x03, 0x00, 0x00,
            ],
            Some(ReasonCode::PROTOCOL_ERROR),
        ),
        // Remaining length announcing 8 KiB against a 4 KiB maximum: refused from the header.
        (
            "over the maximum size",
            V5,
            true,
            vec![0x30, 0x80, 0x40],
            Some(ReasonCode::PACKET_TOO_LARGE),
        ),
        // QoS 3.
        (
            "qos 3",
            V5,
            true,
            vec![0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01],
            Some(ReasonCode::MALFORMED_PACKET),
        ),
        // PUBLISH before CONNECT: closed without an answer.
        (
            "publish before connect",
            V311,
            false,
            vec![0x30, 0x04, 0x00, 0x01, b't', b'x'],
            None,
        ),
        // Reserved CONNECT flag bit set.
        (
            "reserved connect flag",
            V311,
            false,
            vec![
                0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 60, 0, 1, b'x',
            ],
            None,
        ),
        // A second CONNECT.
        (
            "second connect",
            V5,
            true,
            vec![
                0x10, 0x0e, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0x00, 0, 1, b'y',
            ],
            Some(ReasonCode::PROTOCOL_ERROR),
        ),
        // Packet type 0 is reserved.
        (
            "reserved type",
            V5,
            true,
            vec![0x00, 0x00],
            Some(ReasonCode::MALFORMED_PACKET),
        ),
        // SUBSCRIBE without any filter.
        (
            "subscribe without filters",
            V5,
            true,
            vec![0x82, 0x03, 0x00, 0x01, 0x00],
            Some(ReasonCode::PROTOCOL_ERROR),
        ),
        // Packet id 0 on a QoS 1 PUBLISH.
        (
            "packet id 0",
            V5,
            true,
            vec![0x32, 0x06, 0x00, 0x01, b't', 0x00, 0x00, 0x00],
            Some(ReasonCode::PROTOCOL_ERROR),
        ),
    ];
    for (name, v, connect_first, bytes, expected) in cases {
        let got = send_bad(&b, v, connect_first, &bytes).await;
        match expected {
            Some(code) => assert_eq!(
                got,
                Some(code),
                "{name}: v5 gets DISCONNECT with the matching reason"
            ),
            None => assert_eq!(
                got, None,
                "{name}: no DISCONNECT for 3.1.1 or before CONNECT"
            ),
        }
        ok.still_fine().await;
    }
}

#[tokio::test]
async fn truncated_stream_then_close_loses_nothing_for_others() {
    let b = TestBroker::start().await;
    let mut ok = Bystanders::new(&b).await;
    let mut c = Client::connect(b.addr, ProtocolVersion::V5, "half").await;
    // Half a PUBLISH, then the client goes away.
    c.send_raw(&[0x30, 0x10, 0x00, 0x05, b'a', b'b']).await;
    drop(c);
    ok.still_fine().await;
}
