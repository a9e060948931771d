//! `proto::frame::Decoder`: one direction's WebSocket frame stream, fed in
//! reads the way the relay feeds it (`begin`, read into the scratch buffer,
//! `process`; `park` when the buffer goes to another session). No input may
//! panic, and what it forwards is checked against an independent parse of
//! the same stream.
//!
//! Input: one byte of settings, then the reads.
//! - settings: bit 0: the stream comes from the upstream (else the client);
//!   bits 1-2: the frame limits (see [`limits`]); bit 3: park and clobber the
//!   buffer after every read (else reads follow each other at once).
//! - each read starts with a byte `c`: 0 is a read that finds nothing (begin,
//!   park, clobber); 0xEF parks and clobbers without a read; 0xF0..=0xFF is
//!   a large read: two bytes of length (big-endian, at most `READ_SIZE`) and
//!   one byte it is filled with; any other `c` is a read of the next `c`
//!   bytes (fewer at the end of the input). Reads past 256 KiB of stream
//!   are dropped.
#![no_main]

use framegate::proto::{
    close,
    frame::{Decoder, FrameLimits, Side, Stop, READ_SIZE, SCRATCH_SIZE},
};
use libfuzzer_sys::fuzz_target;

fn limits(bits: u8) -> FrameLimits {
    let (max_frame, max_message) = match bits & 3 {
        0 => (64 << 20, 64 << 20),
        1 => (256, 1024),
        2 => (40 << 10, 100 << 10),
        _ => (0, 0),
    };
    FrameLimits {
        max_frame,
        max_message,
    }
}

enum Step<'a> {
    Read(std::borrow::Cow<'a, [u8]>),
    EmptyRead,
    Park,
}

/// Input past this many stream bytes is ignored: large reads are cheap to
/// write, and a few megabytes per input would slow the fuzzer to a crawl.
const MAX_STREAM: usize = 256 << 10;

fn steps(mut data: &[u8]) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    let mut total = 0;
    while let Some((&c, rest)) = data.split_first() {
        if total >= MAX_STREAM {
            break;
        }
        data = rest;
        match c {
            0 => steps.push(Step::EmptyRead),
            0xef => steps.push(Step::Park),
            0xf0.. => {
                let [hi, lo, fill, rest @ ..] = data else {
                    break;
                };
                data = rest;
                let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(READ_SIZE);
                total += n;
                if n > 0 {
                    steps.push(Step::Read(vec![*fill; n].into()));
                }
            }
            n => {
                let (read, rest) = data.split_at(usize::from(n).min(data.len()));
                data = rest;
                total += read.len();
                if !read.is_empty() {
                    steps.push(Step::Read(read.into()));
                }
            }
        }
    }
    steps
}

/// A frame as this target parses it, independently of the decoder.
struct Frame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
    len: usize,
}

/// Parses the frame at the start of `b`; `None` if it is not all there.
fn parse(b: &[u8]) -> Option<Frame> {
    parse_partial(b).filter(|(_, whole)| *whole).map(|(f, _)| f)
}

/// Parses the frame at the start of `b`, with as much of its payload as is
/// there, and whether that is all of it; `None` if its header is not all there.
fn parse_partial(b: &[u8]) -> Option<(Frame, bool)> {
    let (&b0, rest) = b.split_first()?;
    let (&b1, mut rest) = rest.split_first()?;
    let mut len = u64::from(b1 & 0x7f);
    if len == 126 {
        len = u64::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
        rest = &rest[2..];
    } else if len == 127 {
        len = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        rest = &rest[8..];
    }
    let masked = b1 & 0x80 != 0;
    let key = if masked {
        let k: [u8; 4] = rest.get(..4)?.try_into().ok()?;
        rest = &rest[4..];
        Some(k)
    } else {
        None
    };
    let n = rest.len().min(usize::try_from(len).unwrap_or(usize::MAX));
    let mut payload = rest[..n].to_vec();
    if let Some(k) = key {
        for (i, x) in payload.iter_mut().enumerate() {
            *x ^= k[i % 4];
        }
    }
    let frame = Frame {
        fin: b0 & 0x80 != 0,
        rsv: b0 & 0x70,
        opcode: b0 & 0x0f,
        masked,
        len: b.len() - rest.len() + n,
        payload,
    };
    Some((frame, n as u64 == len))
}

/// Data payload the input stream carries, in order, up to its first close
/// frame, including what has arrived of a last data frame not all there; and
/// whether the stream ended exactly after a whole frame.
fn reference(mut stream: &[u8]) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    while let Some((f, whole)) = parse_partial(stream) {
        stream = &stream[f.len..];
        match f.opcode {
            0..=2 => data.extend_from_slice(&f.payload),
            8 if whole => return (data, true),
            _ => {}
        }
        if !whole {
            return (data, false);
        }
    }
    (data, stream.is_empty())
}

/// Text being forwarded: must be valid UTF-8 at every step, not only at the end.
#[derive(Default)]
struct Utf8Check {
    /// An incomplete character at the end of what was forwarded so far.
    partial: Vec<u8>,
}

impl Utf8Check {
    fn feed(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        match std::str::from_utf8(&self.partial) {
            Ok(_) => self.partial.clear(),
            Err(e) if e.error_len().is_none() => {
                self.partial.drain(..e.valid_up_to());
            }
            Err(e) => panic!("invalid UTF-8 forwarded: {e}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&settings, data)) = data.split_first() else {
        return;
    };
    let from = if settings & 1 == 0 {
        Side::Client
    } else {
        Side::Upstream
    };
    let park_always = settings & 8 != 0;
    let mut dec = Decoder::new(from, limits(settings >> 1));
    let mut buf = vec![0u8; SCRATCH_SIZE];
    let mut replies = Vec::new();
    let mut stream = Vec::new();
    let mut forwarded = Vec::new();
    // The message being forwarded: whether it is text, and its UTF-8 so far.
    let mut message: Option<(bool, Utf8Check)> = None;
    let mut stop = None;
    // Another session using the buffer overwrites what this one left in it
    // (only the part ever used is clobbered: a fill of all of it per park
    // would be most of the time spent).
    let mut used = 0;
    let clobber = |buf: &mut [u8], used: usize| buf[..used].fill(0xee);
    for step in steps(data) {
        let read = match step {
            Step::EmptyRead => {
                dec.begin(&mut buf);
                dec.park(&buf);
                clobber(&mut buf, used);
                continue;
            }
            Step::Park => {
                dec.park(&buf);
                clobber(&mut buf, used);
                continue;
            }
            Step::Read(read) => read,
        };
        let at = dec.begin(&mut buf);
        assert!(
            at + READ_SIZE <= buf.len(),
            "read position {at} leaves no room for a read"
        );
        let end = at + read.len();
        used = used.max(end);
        buf[at..end].copy_from_slice(&read);
        stream.extend_from_slice(&read);
        let chunk = dec.process(&mut buf, end, &mut replies);
        assert!(
            chunk.out.start <= chunk.out.end && chunk.out.end <= end,
            "output {:?} past the input's end {end}",
            chunk.out
        );
        // The output is whole frames for the other leg.
        let mut out = &buf[chunk.out.clone()];
        let (mut frames, mut bytes) = (0, 0);
        while !out.is_empty() {
            let f = parse(out).expect("output is whole frames");
            out = &out[f.len..];
            assert_eq!(f.rsv, 0);
            assert_eq!(
                f.masked,
                from == Side::Client,
                "frames toward the upstream are masked"
            );
            match f.opcode {
                0..=2 => {
                    match (&mut message, f.opcode) {
                        (None, 1 | 2) => message = Some((f.opcode == 1, Utf8Check::default())),
                        (Some(_), 0) => {}
                        _ => panic!("opcode {} out of message order", f.opcode),
                    }
                    let (text, utf8) = message.as_mut().expect("in a message");
                    if *text {
                        utf8.feed(&f.payload);
                    }
                    if f.fin {
                        if *text {
                            assert!(utf8.partial.is_empty(), "text message ends mid-character");
                        }
                        message = None;
                    }
                    forwarded.extend_from_slice(&f.payload);
                    frames += 1;
                    bytes += f.payload.len() as u64;
                }
                8 => {
                    assert!(out.is_empty(), "a close frame is the last one out");
                    let code = f.payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    assert_eq!(chunk.stop, Some(Stop::Close(code)));
                    if let Some(code) = code {
                        assert!(close::is_valid(code), "close code {code} forwarded");
                    }
                    assert!(std::str::from_utf8(&f.payload[2.min(f.payload.len())..]).is_ok());
                }
                op => panic!("opcode {op} forwarded"),
            }
        }
        assert_eq!(chunk.frames, frames);
        assert_eq!(chunk.bytes, bytes);
        if let Some(s) = chunk.stop {
            if let Stop::Violation(v) = s {
                assert!(
                    [
                        close::PROTOCOL_ERROR,
                        close::INVALID_PAYLOAD,
                        close::TOO_BIG
                    ]
                    .contains(&v.code),
                    "violation code {}",
                    v.code
                );
            }
            stop = Some(s);
            break;
        }
        // A drain closes a leg only between messages: a message partly
        // forwarded must count as one.
        assert!(
            message.is_none() || dec.mid_message(),
            "a message is partly out, but not mid-message"
        );
        if park_always {
            dec.park(&buf);
            clobber(&mut buf, used);
        }
    }
    // Replies to the sender are whole pongs, masked when they go to the upstream.
    let mut r = &replies[..];
    while !r.is_empty() {
        let f = parse(r).expect("replies are whole frames");
        r = &r[f.len..];
        assert!(
            f.fin && f.rsv == 0 && f.opcode == 0xa,
            "reply opcode {}",
            f.opcode
        );
        assert_eq!(f.masked, from == Side::Upstream);
    }
    // What went out is the stream's data, in order, none made up or lost.
    let (expected, at_boundary) = reference(&stream);
    assert!(
        expected.starts_with(&forwarded),
        "forwarded data is not the stream's ({} bytes forwarded, {} in the stream)",
        forwarded.len(),
        expected.len()
    );
    if stop.is_none() && at_boundary {
        assert_eq!(
            forwarded.len(),
            expected.len(),
            "whole frames were held back"
        );
    }
});
