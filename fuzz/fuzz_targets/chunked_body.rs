//! `proto::body::Decoder` on a chunked body: the parser that decides where
//! a request body ends, so where the next request starts (smuggling). No
//! input may panic; the outcome may not depend on how the bytes were split
//! into reads; and what it accepts, re-encoded as the gateway writes it,
//! decodes to the same data.
#![no_main]

use framegate::proto::body::{chunk_header, Decoder, Framing, CHUNK_END, LAST_CHUNK};
use libfuzzer_sys::fuzz_target;

/// Decodes `wire` fed `step` bytes at a time: the data, and how many bytes
/// the body took (`None`: an error, or the input ran out first).
fn decode(wire: &[u8], step: usize) -> Option<(Vec<u8>, usize)> {
    let mut d = Decoder::new(Framing::Chunked);
    let (mut data, mut start, mut fed) = (Vec::new(), 0, 0);
    loop {
        loop {
            let got = d.decode(&wire[start..fed]).ok()?;
            data.extend_from_slice(&wire[start..fed][got.data]);
            start += got.consumed;
            if got.consumed == 0 || d.is_done() {
                break;
            }
        }
        if d.is_done() {
            return Some((data, start));
        }
        if fed == wire.len() {
            return None;
        }
        fed = (fed + step).min(wire.len());
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&step, wire)) = input.split_first() else {
        return;
    };
    let whole = decode(wire, wire.len().max(1));
    let split = decode(wire, usize::from(step % 16) + 1);
    assert_eq!(whole, split, "the split into reads changed the outcome");
    let Some((data, used)) = whole else {
        return;
    };
    assert!(used <= wire.len());
    let mut again = Vec::new();
    if !data.is_empty() {
        chunk_header(data.len(), &mut again);
        again.extend_from_slice(&data);
        again.extend_from_slice(CHUNK_END);
    }
    again.extend_from_slice(LAST_CHUNK);
    assert_eq!(decode(&again, 3), Some((data, again.len())));
});
