//! The per-frame hot path, without sockets: a regression here shows up in
//! seconds, without the load-test harness.
//!
//! `cargo bench --bench relay` (or `-- decoder` for one group). The decoder
//! groups report frames per second; one iteration is one 64 KiB read full
//! of whole frames, copied into the scratch buffer the way a socket read
//! would put it there and rewritten in place for the other leg.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use framegate::proto::{
    frame::{Decoder, FrameLimits, Side, READ_SIZE, SCRATCH_SIZE},
    mask,
    utf8::Utf8,
};

const SIZES: [usize; 3] = [64, 1024, 16 * 1024];

const LIMITS: FrameLimits = FrameLimits {
    max_frame: 1 << 20,
    max_message: 1 << 20,
};

/// A whole binary frame as a peer on `from` sends it (clients mask).
fn frame(from: Side, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let masked = from == Side::Client;
    let mut f = vec![0x82];
    let mask_bit = if masked { 0x80 } else { 0 };
    match len {
        0..=125 => f.push(mask_bit | len as u8),
        126..=0xffff => {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    let start = f.len() + if masked { 4 } else { 0 };
    if masked {
        f.extend_from_slice(&[0x37, 0xfa, 0x21, 0x3d]);
    }
    f.extend_from_slice(payload);
    if masked {
        mask::apply(&mut f[start..], [0x37, 0xfa, 0x21, 0x3d]);
    }
    f
}

fn decoder(c: &mut Criterion) {
    for from in [Side::Client, Side::Upstream] {
        let mut group = c.benchmark_group(format!("decoder/from_{}", from.name()));
        for size in SIZES {
            let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let one = frame(from, &payload);
            // Whole frames only, so nothing is carried between iterations.
            let count = (READ_SIZE / one.len()).max(1);
            let read = one.repeat(count);
            group.throughput(Throughput::Elements(count as u64));
            group.bench_with_input(BenchmarkId::from_parameter(size), &read, |b, read| {
                let mut dec = Decoder::new(from, LIMITS);
                let mut buf = vec![0u8; SCRATCH_SIZE];
                let mut replies = Vec::new();
                b.iter(|| {
                    let at = dec.begin(&mut buf);
                    buf[at..at + read.len()].copy_from_slice(read);
                    let chunk = dec.process(&mut buf, at + read.len(), &mut replies);
                    debug_assert_eq!(chunk.frames, count as u64);
                    black_box(chunk.out.end)
                });
            });
        }
        group.finish();
    }
}

fn masking(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask_apply");
    for size in SIZES {
        let mut buf = vec![0x5a; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| mask::apply(black_box(&mut buf), black_box([1, 2, 3, 4])));
        });
    }
    group.finish();
}

fn utf8(c: &mut Criterion) {
    // ASCII is what most text messages are; the mixed text exercises the
    // multi-byte path and characters split between pieces.
    let mixed = "JSON {\"name\": \"Zoë\", \"city\": \"Kraków\", \"note\": \"✓ 𝄞\"} ";
    for (kind, unit) in [
        ("ascii", "{\"type\":\"tick\",\"v\":12345} "),
        ("mixed", mixed),
    ] {
        let mut group = c.benchmark_group(format!("utf8_feed/{kind}"));
        for size in SIZES {
            let text = unit.repeat(size / unit.len() + 1);
            let mut cut = size;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let bytes = &text.as_bytes()[..cut];
            // Fed in two pieces split mid-character where possible, as a
            // message split across reads would be.
            let half = bytes.len() / 2 + 1;
            group.throughput(Throughput::Bytes(bytes.len() as u64));
            group.bench_function(BenchmarkId::from_parameter(size), |b| {
                b.iter(|| {
                    let mut v = Utf8::default();
                    v.feed(black_box(&bytes[..half])).unwrap();
                    v.feed(black_box(&bytes[half..])).unwrap();
                    black_box(v.at_boundary())
                });
            });
        }
        group.finish();
    }
}

criterion_group!(benches, decoder, masking, utf8);
criterion_main!(benches);
