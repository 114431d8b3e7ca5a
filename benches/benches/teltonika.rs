//! Teltonika Codec 8 Extended: decode a frame of N records, and decode it and map every record
//! to a flespi message (`tern-teltonika`), N = 1, 10, 100, 255 (the most a frame can count).
//!
//! Each record is a typical FMB one: the GPS element and 14 IO elements of the 1-, 2- and 4-byte
//! groups (ignition, movement, GSM signal, voltages, odometer, operator...) plus a 17-byte VIN
//! in the variable-length group. The receive buffer is made outside the timed part (as in
//! `codec.rs`); throughput is in records.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tern_teltonika::{
    AvlCodec, AvlPacket, Bytes, BytesMut, Frame, FrameDecoder, Gps, IoElement, IoValue, Record,
    encode_avl, packet_to_messages,
};

fn record(i: u64) -> Record {
    let io = |id: u16, value: IoValue| IoElement { id, value };
    Record {
        timestamp_ms: 1_735_689_600_000 + i * 10_000,
        priority: 0,
        gps: Gps {
            longitude: 252_800_146,
            latitude: 546_855_883,
            altitude: 140,
            angle: 173,
            satellites: 12,
            speed: 65,
        },
        event_io_id: 0,
        generation_type: None,
        io: vec![
            io(239, IoValue::U8(1)),
            io(240, IoValue::U8(1)),
            io(21, IoValue::U8(4)),
            io(200, IoValue::U8(0)),
            io(69, IoValue::U8(1)),
            io(1, IoValue::U8(1)),
            io(181, IoValue::U16(15)),
            io(182, IoValue::U16(8)),
            io(66, IoValue::U16(13_789)),
            io(67, IoValue::U16(4_115)),
            io(68, IoValue::U16(0)),
            io(9, IoValue::U16(121)),
            io(16, IoValue::U32(120_180)),
            io(241, IoValue::U32(24_602)),
            io(
                256,
                IoValue::Bytes(Bytes::from_static(b"WVWZZZ1KZAW000001")),
            ),
        ],
    }
}

fn teltonika(c: &mut Criterion) {
    let mut group = c.benchmark_group("teltonika/codec8e");
    for n in [1u64, 10, 100, 255] {
        let packet = AvlPacket {
            codec: AvlCodec::Codec8Extended,
            records: (0..n).map(record).collect(),
        };
        let mut frame = BytesMut::new();
        encode_avl(&packet, &mut frame);
        let label = format!("{n} records ({} B)", frame.len());
        group.throughput(Throughput::Elements(n));
        let decoder = FrameDecoder::default();

        group.bench_with_input(BenchmarkId::new("decode", &label), &frame, |b, frame| {
            b.iter_batched_ref(
                || frame.clone(),
                |buf| match decoder.decode(buf) {
                    Ok(Some(Frame::Avl(p))) => black_box(p),
                    other => panic!("{other:?}"),
                },
                BatchSize::SmallInput,
            )
        });

        group.bench_with_input(
            BenchmarkId::new("decode+messages", &label),
            &frame,
            |b, frame| {
                b.iter_batched_ref(
                    || frame.clone(),
                    |buf| match decoder.decode(buf) {
                        Ok(Some(Frame::Avl(p))) => {
                            black_box(packet_to_messages("356307042441013", &p))
                        }
                        other => panic!("{other:?}"),
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }
    group.finish();
}

criterion_group!(benches, teltonika);
criterion_main!(benches);
