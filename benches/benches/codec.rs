//! PUBLISH decode and encode, 64 B and 64 KiB payloads, MQTT 3.1.1 and 5.0.
//!
//! Decode works as on a connection: a receive buffer holding a batch of packets (made outside
//! the timed part) is decoded to the end, each packet split off and its topic and payload sliced
//! out of it; throughput is in packets. (Decoding a lone packet from a fresh buffer would also
//! time the buffer's one-off switch to shared storage, which a connection pays once.) Encode
//! appends one packet to a reused buffer, copying the payload once.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tern_codec::{Bytes, BytesMut, ProtocolVersion, Publish, PublishProperties, QoS};

fn publish(payload: usize, version: ProtocolVersion) -> Publish {
    let mut properties = PublishProperties::default();
    if version.is_v5() {
        // What tern adds to every v5 delivery (flespi's cid and timestamp).
        properties.user_properties.push(("cid".into(), "1".into()));
        properties
            .user_properties
            .push(("timestamp".into(), "1718000000.123456".into()));
    }
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "flespi/message/gw/devices/123456/telemetry".into(),
        packet_id: Some(4242),
        properties,
        payload: Bytes::from(vec![0x5a; payload]),
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for size in [64usize, 64 * 1024] {
            let p = publish(size, version);
            let mut encoded = BytesMut::new();
            tern_codec::encode_publish(&p, version, &mut encoded).expect("encodable");
            let label = format!("{}B", size);
            group.throughput(Throughput::Bytes(encoded.len() as u64));

            group.bench_with_input(
                BenchmarkId::new(format!("encode/v{version}"), &label),
                &p,
                |b, p| {
                    let mut buf = BytesMut::with_capacity(encoded.len() * 2);
                    b.iter(|| {
                        buf.clear();
                        tern_codec::encode_publish(black_box(p), version, &mut buf)
                            .expect("encodable");
                        black_box(buf.len())
                    })
                },
            );

            // About 64 KiB of packets, as one read from a busy socket would bring.
            let batch = (64 * 1024 / encoded.len()).clamp(4, 512);
            let mut stream = BytesMut::with_capacity(encoded.len() * batch);
            for _ in 0..batch {
                stream.extend_from_slice(&encoded);
            }
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("decode/v{version}"), &label),
                &stream,
                |b, stream| {
                    b.iter_batched_ref(
                        || stream.clone(),
                        |buf| {
                            let mut n = 0;
                            while let Some(packet) =
                                tern_codec::decode(buf, u32::MAX, version).expect("valid")
                            {
                                black_box(packet);
                                n += 1;
                            }
                            assert_eq!(n, batch);
                        },
                        BatchSize::SmallInput,
                    )
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
