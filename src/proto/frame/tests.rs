//! The decoder on byte streams cut every way a socket could cut them.

use tungstenite::protocol::frame::{
    coding::{Control, Data, OpCode},
    FrameHeader,
};

use super::*;

const BIG: FrameLimits = FrameLimits {
    max_frame: 64 << 20,
    max_message: 64 << 20,
};

/// A frame as a peer on `from` would send it (masked if from the client);
/// the relay's session tests write their peers' frames with it too.
pub(crate) fn frame(from: Side, opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = (from == Side::Client).then_some([0xa1, 0xb2, 0xc3, 0xd4]);
    let header = FrameHeader {
        is_final: fin,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask,
    };
    let mut out = Vec::new();
    header.format(payload.len() as u64, &mut out).unwrap();
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(k) = mask {
        mask::apply(&mut out[start..], k);
    }
    out
}

const TEXT: OpCode = OpCode::Data(Data::Text);
const BINARY: OpCode = OpCode::Data(Data::Binary);
const CONT: OpCode = OpCode::Data(Data::Continue);
const PING: OpCode = OpCode::Control(Control::Ping);
const CLOSE: OpCode = OpCode::Control(Control::Close);

/// A frame as it came out of the decoder, unmasked.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    opcode: OpCode,
    fin: bool,
    masked: bool,
    payload: Vec<u8>,
}

fn parse_all(mut bytes: &[u8]) -> Vec<Seen> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let mut cursor = std::io::Cursor::new(bytes);
        let (h, len) = FrameHeader::parse(&mut cursor)
            .unwrap()
            .expect("whole frames only");
        let start = cursor.position() as usize;
        let mut payload = bytes[start..start + len as usize].to_vec();
        if let Some(k) = h.mask {
            mask::apply(&mut payload, k);
        }
        frames.push(Seen {
            opcode: h.opcode,
            fin: h.is_final,
            masked: h.mask.is_some(),
            payload,
        });
        bytes = &bytes[start + len as usize..];
    }
    frames
}

/// Feeds `reads` one at a time; returns all output, replies and the stop.
fn feed(dec: &mut Decoder, reads: &[&[u8]]) -> (Vec<u8>, Vec<u8>, Option<Stop>) {
    feed_with(dec, reads, Between::Nothing)
}

/// What the relay does with the scratch buffer between two reads of a leg.
#[derive(Debug, Clone, Copy)]
enum Between {
    /// Reads again at once.
    Nothing,
    /// Parks the partial frame; another session uses the buffer.
    Park,
    /// Begins a read that finds nothing, parks, and another session uses the buffer.
    EmptyRead,
}

const EVERY_BETWEEN: [Between; 3] = [Between::Nothing, Between::Park, Between::EmptyRead];

fn feed_with(
    dec: &mut Decoder,
    reads: &[&[u8]],
    between: Between,
) -> (Vec<u8>, Vec<u8>, Option<Stop>) {
    let mut buf = vec![0; SCRATCH_SIZE];
    let (mut out, mut replies) = (Vec::new(), Vec::new());
    for read in reads {
        let at = dec.begin(&mut buf);
        buf[at..at + read.len()].copy_from_slice(read);
        let chunk = dec.process(&mut buf, at + read.len(), &mut replies);
        out.extend_from_slice(&buf[chunk.out]);
        if chunk.stop.is_some() {
            return (out, replies, chunk.stop);
        }
        match between {
            Between::Nothing => continue,
            Between::Park => {}
            Between::EmptyRead => {
                dec.begin(&mut buf);
            }
        }
        dec.park(&buf);
        buf.fill(0xee);
    }
    (out, replies, None)
}

fn payload_of(frames: &[Seen]) -> Vec<u8> {
    frames.iter().flat_map(|f| f.payload.clone()).collect()
}

#[test]
fn a_whole_client_frame_is_remasked_for_the_upstream() {
    let mut dec = Decoder::new(Side::Client, BIG);
    let (out, replies, stop) = feed(&mut dec, &[&frame(Side::Client, TEXT, true, b"hello")]);
    assert_eq!(stop, None);
    assert!(replies.is_empty());
    let frames = parse_all(&out);
    assert_eq!(
        frames,
        [Seen {
            opcode: TEXT,
            fin: true,
            masked: true,
            payload: b"hello".to_vec()
        }]
    );
}

#[test]
fn upstream_frames_go_to_the_client_unmasked() {
    let mut dec = Decoder::new(Side::Upstream, BIG);
    let (out, _, stop) = feed(
        &mut dec,
        &[&frame(Side::Upstream, BINARY, true, &[1, 2, 3])],
    );
    assert_eq!(stop, None);
    assert_eq!(out, frame(Side::Upstream, BINARY, true, &[1, 2, 3]));
}

#[test]
fn every_cut_of_a_stream_gives_the_same_messages() {
    let mut stream = frame(Side::Client, TEXT, false, "héllo ".as_bytes());
    stream.extend(frame(Side::Client, PING, true, b"p"));
    stream.extend(frame(Side::Client, CONT, true, "wörld".as_bytes()));
    stream.extend(frame(Side::Client, BINARY, true, &[7; 300]));
    for (cut, between) in (0..stream.len()).flat_map(|cut| EVERY_BETWEEN.map(|b| (cut, b))) {
        let mut dec = Decoder::new(Side::Client, BIG);
        let (out, replies, stop) = feed_with(&mut dec, &[&stream[..cut], &stream[cut..]], between);
        assert_eq!(stop, None, "cut {cut} {between:?}");
        let frames = parse_all(&out);
        let text: Vec<u8> = frames
            .iter()
            .take_while(|f| f.opcode != BINARY)
            .flat_map(|f| f.payload.clone())
            .collect();
        assert_eq!(String::from_utf8(text).unwrap(), "héllo wörld", "cut {cut}");
        assert_eq!(
            frames.iter().filter(|f| f.fin).count(),
            2,
            "cut {cut}: two messages end"
        );
        assert_eq!(frames.last().unwrap().payload, [7; 300]);
        let pong = parse_all(&replies);
        assert_eq!(pong.len(), 1);
        assert_eq!(pong[0].opcode, OpCode::Control(Control::Pong));
        assert_eq!(pong[0].payload, b"p");
        assert!(!pong[0].masked, "pongs to the client are not masked");
    }
}

#[test]
fn a_small_frame_split_across_reads_is_forwarded_whole() {
    let f = frame(Side::Upstream, BINARY, true, &[9; 1000]);
    for between in EVERY_BETWEEN {
        let mut dec = Decoder::new(Side::Upstream, BIG);
        let (out, _, _) = feed_with(&mut dec, &[&f[..500], &f[500..]], between);
        assert_eq!(out, f, "{between:?}");
    }
}

#[test]
fn a_large_frame_streams_through_in_pieces_of_one_message() {
    let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let f = frame(Side::Client, BINARY, true, &body);
    let reads: Vec<&[u8]> = f.chunks(30_000).collect();
    let mut dec = Decoder::new(Side::Client, BIG);
    let mut buf = vec![0; SCRATCH_SIZE];
    let mut replies = Vec::new();
    let mut frames = Vec::new();
    for read in reads {
        let at = dec.begin(&mut buf);
        buf[at..at + read.len()].copy_from_slice(read);
        let chunk = dec.process(&mut buf, at + read.len(), &mut replies);
        assert!(
            chunk.out.end <= read.len() + HEADROOM,
            "output comes out as input comes in"
        );
        frames.extend(parse_all(&buf[chunk.out]));
    }
    assert!(frames.len() > 1);
    assert_eq!(frames[0].opcode, BINARY);
    assert!(frames[1..].iter().all(|f| f.opcode == CONT));
    assert!(frames[..frames.len() - 1].iter().all(|f| !f.fin));
    assert!(frames.last().unwrap().fin);
    assert_eq!(payload_of(&frames), body);
}

fn violation_of(from: Side, limits: FrameLimits, reads: &[&[u8]]) -> (u16, Vec<u8>) {
    let mut dec = Decoder::new(from, limits);
    let (out, _, stop) = feed(&mut dec, reads);
    match stop {
        Some(Stop::Violation(v)) => (v.code, out),
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn protocol_errors_have_their_codes() {
    let unmasked = frame(Side::Upstream, TEXT, true, b"x");
    assert_eq!(violation_of(Side::Client, BIG, &[&unmasked]).0, 1002);
    let masked = frame(Side::Client, TEXT, true, b"x");
    assert_eq!(violation_of(Side::Upstream, BIG, &[&masked]).0, 1002);

    let mut rsv = frame(Side::Client, TEXT, true, b"x");
    rsv[0] |= 0x40;
    assert_eq!(violation_of(Side::Client, BIG, &[&rsv]).0, 1002);

    let mut opcode = frame(Side::Client, TEXT, true, b"x");
    opcode[0] = (opcode[0] & 0xf0) | 0x3;
    assert_eq!(violation_of(Side::Client, BIG, &[&opcode]).0, 1002);

    let fragmented_ping = frame(Side::Client, PING, false, b"x");
    assert_eq!(violation_of(Side::Client, BIG, &[&fragmented_ping]).0, 1002);
    let long_ping = frame(Side::Client, PING, true, &[0; 126]);
    assert_eq!(violation_of(Side::Client, BIG, &[&long_ping]).0, 1002);

    let stray = frame(Side::Client, CONT, true, b"x");
    assert_eq!(violation_of(Side::Client, BIG, &[&stray]).0, 1002);
    let mut nested = frame(Side::Client, TEXT, false, b"a");
    nested.extend(frame(Side::Client, TEXT, true, b"b"));
    assert_eq!(violation_of(Side::Client, BIG, &[&nested]).0, 1002);
}

#[test]
fn size_limits_refuse_before_forwarding() {
    let small = FrameLimits {
        max_frame: 100,
        max_message: 150,
    };
    let (code, out) = violation_of(
        Side::Client,
        small,
        &[&frame(Side::Client, BINARY, true, &[0; 101])],
    );
    assert_eq!((code, out.len()), (1009, 0));
    let mut two = frame(Side::Client, BINARY, false, &[0; 100]);
    two.extend(frame(Side::Client, CONT, true, &[0; 100]));
    let (code, out) = violation_of(Side::Client, small, &[&two]);
    assert_eq!(code, 1009);
    assert_eq!(
        parse_all(&out).len(),
        1,
        "the first fragment fit and went out"
    );
}

#[test]
fn bad_utf8_fails_at_the_first_bad_byte_not_at_the_end() {
    let mut stream = frame(Side::Client, TEXT, false, "κόσμε".as_bytes());
    stream.extend(frame(
        Side::Client,
        CONT,
        false,
        &[0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xed, 0xa0, 0x80],
    ));
    let (code, out) = violation_of(Side::Client, BIG, &[&stream]);
    assert_eq!(code, 1007);
    assert_eq!(
        parse_all(&out).len(),
        1,
        "the bad fragment is not forwarded"
    );

    // Inside one large frame, streamed: refused in the piece that holds the bad byte.
    let mut body = vec![b'a'; 100_000];
    body[70_000] = 0xff;
    let f = frame(Side::Client, TEXT, true, &body);
    let (code, out) = violation_of(Side::Client, BIG, &[&f[..40_000], &f[40_000..80_000]]);
    assert_eq!(code, 1007);
    assert_eq!(
        payload_of(&parse_all(&out)).len(),
        40_000 - 14,
        "only the valid first piece (after its 14-byte header) went out"
    );

    let truncated = frame(Side::Client, TEXT, true, &[b'a', 0xe2, 0x82]);
    assert_eq!(violation_of(Side::Client, BIG, &[&truncated]).0, 1007);
}

#[test]
fn close_frames_are_checked_and_relayed() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"done");
    let mut dec = Decoder::new(Side::Client, BIG);
    let (out, _, stop) = feed(&mut dec, &[&frame(Side::Client, CLOSE, true, &payload)]);
    assert_eq!(stop, Some(Stop::Close(Some(1000))));
    assert_eq!(parse_all(&out)[0].payload, payload);
    assert!(parse_all(&out)[0].masked);

    assert_eq!(
        violation_of(
            Side::Client,
            BIG,
            &[&frame(Side::Client, CLOSE, true, &[3])]
        )
        .0,
        1002
    );
    let reserved = 1005u16.to_be_bytes();
    assert_eq!(
        violation_of(
            Side::Client,
            BIG,
            &[&frame(Side::Client, CLOSE, true, &reserved)]
        )
        .0,
        1002
    );
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.push(0xff);
    assert_eq!(
        violation_of(
            Side::Client,
            BIG,
            &[&frame(Side::Client, CLOSE, true, &bad_reason)]
        )
        .0,
        1007
    );
}

#[test]
fn the_gateways_own_close_frames_fit_and_mask_by_side() {
    let mut out = Vec::new();
    close_frame(&mut out, Side::Upstream, Some(1001), &"é".repeat(100));
    let frames = parse_all(&out);
    assert!(frames[0].masked);
    assert_eq!(
        frames[0].payload.len(),
        124,
        "cut to 125 bytes at a character boundary"
    );
    assert!(std::str::from_utf8(&frames[0].payload[2..]).is_ok());
    let mut out = Vec::new();
    close_frame(&mut out, Side::Client, None, "ignored without a code");
    assert_eq!(parse_all(&out)[0].payload, b"");
}
