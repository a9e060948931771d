//! One direction's frame stream: parse, check, unmask and re-mask, in place.
//!
//! The session reads into a per-thread scratch buffer and hands the bytes to
//! [`Decoder::process`], which rewrites them into the frames for the other
//! leg *in the same buffer*: a frame's header never grows (masked stays
//! masked, unmasked stays unmasked) and control frames are taken out, so
//! output never overtakes input. Nothing is copied for a frame that arrives
//! whole; a small frame split across reads is carried (once) to the next
//! read; a large one is forwarded in pieces as its bytes arrive, each piece
//! its own frame (RFC 6455 §5.4 lets an intermediary refragment when no
//! extension is negotiated). Because every piece is a whole frame, the
//! output to each leg is always at a frame boundary, so the gateway can put
//! a close frame on it at any moment.

use std::{io::Cursor, ops::Range};

use tungstenite::protocol::frame::{
    coding::{Control, Data, OpCode},
    FrameHeader,
};

use super::{close, mask, utf8::Utf8};

/// Per-direction limits on what one leg may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    pub max_frame: u64,
    pub max_message: u64,
}

/// Bytes kept free in front of the read position so a piece's header fits
/// before its payload.
pub const HEADROOM: usize = 14;
/// How much one read may take in.
pub const READ_SIZE: usize = 64 * 1024;
/// Size of the per-thread scratch buffer.
pub const SCRATCH_SIZE: usize = HEADROOM + WHOLE_FRAME + READ_SIZE;
/// A frame at most this big that straddles two reads is carried whole to
/// the next read instead of being split into pieces.
pub const WHOLE_FRAME: usize = 32 * 1024;
const MAX_CONTROL: u64 = 125;

/// The two legs of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }

    /// Frames *to* this leg are masked: the gateway is the client there.
    fn masks(self) -> bool {
        self == Side::Upstream
    }

    pub fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        }
    }
}

/// Why a stream stopped being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A valid close frame arrived (and was forwarded); its code, if any.
    Close(Option<u16>),
    /// The peer broke the protocol; it is told this code.
    Violation(close::Verdict),
}

/// What one call to [`Decoder::process`] produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Output frames are in `buf[out]`.
    pub out: Range<usize>,
    /// Data frames forwarded.
    pub frames: u64,
    /// Payload bytes forwarded.
    pub bytes: u64,
    /// The payload of the last 8-byte pong read, to match the gateway's own pings.
    pub pong: Option<u64>,
    pub stop: Option<Stop>,
}

const fn violation(code: u16, reason: &'static str) -> Stop {
    Stop::Violation(close::Verdict { code, reason })
}

/// The message being relayed in this direction.
#[derive(Debug)]
struct Message {
    text: bool,
    len: u64,
    /// Whether its first frame went out (later ones are continuations).
    started: bool,
    utf8: Utf8,
}

/// A large frame whose payload is still arriving.
#[derive(Debug)]
struct Streaming {
    remaining: u64,
    mask: Option<[u8; 4]>,
    offset: u64,
    fin: bool,
}

/// Parse state of the frames read from one leg.
#[derive(Debug)]
pub struct Decoder {
    from: Side,
    limits: FrameLimits,
    message: Option<Message>,
    streaming: Option<Streaming>,
    /// Unprocessed bytes from the last read: a partial header, control frame
    /// or small data frame. Empty (unallocated) between frames.
    carry: Vec<u8>,
    /// Where those bytes still sit in the caller's buffer, until [`park`]
    /// copies them to `carry`: a read that filled the buffer is usually
    /// followed at once by another, and moving the bytes within the (hot)
    /// buffer costs far less than a round trip through `carry`.
    ///
    /// [`park`]: Decoder::park
    tail: Range<usize>,
    /// Length of the carry copied into the current buffer.
    carried: usize,
    /// The reason of the close frame this leg sent, kept for the access log
    /// until [`Decoder::take_close_reason`]: copied once per session, when
    /// the close arrives, never per frame.
    /// Boxed twice: a thin pointer, so every leg pays 8 bytes, not 16.
    close_reason: Option<Box<CloseReason>>,
}

/// A close frame's reason text.
#[derive(Debug)]
struct CloseReason(Box<str>);

impl Decoder {
    pub fn new(from: Side, limits: FrameLimits) -> Self {
        Decoder {
            from,
            limits,
            message: None,
            streaming: None,
            carry: Vec::new(),
            tail: 0..0,
            carried: 0,
            close_reason: None,
        }
    }

    /// The reason text of the close frame read from this leg, if one came
    /// with a non-empty reason.
    pub fn take_close_reason(&mut self) -> Option<Box<str>> {
        self.close_reason.take().map(|r| r.0)
    }

    /// Puts the carried bytes in front of the next read; returns where the read goes.
    pub fn begin(&mut self, buf: &mut [u8]) -> usize {
        if self.tail.is_empty() {
            self.carried = self.carry.len();
            buf[HEADROOM..HEADROOM + self.carried].copy_from_slice(&self.carry);
        } else {
            self.carried = self.tail.len();
            buf.copy_within(self.tail.clone(), HEADROOM);
            // Still only in `buf` until `process` takes it: a read that
            // finds nothing must be able to park it.
            self.tail = HEADROOM..HEADROOM + self.carried;
        }
        HEADROOM + self.carried
    }

    /// Saves the bytes the last [`process`](Decoder::process) left in `buf`
    /// before `buf` is used for anything else (the relay's scratch buffer is
    /// shared by every session on its thread).
    pub fn park(&mut self, buf: &[u8]) {
        let tail = std::mem::replace(&mut self.tail, 0..0);
        if !tail.is_empty() {
            self.carry = buf[tail].to_vec();
        }
    }

    /// Processes `buf[HEADROOM..end]` (carry + new bytes). Forwarded frames
    /// end up in `buf[chunk.out]`; pongs owed to this leg are appended to
    /// `replies`. Bytes that do not make a frame yet stay in `buf`: call
    /// `begin` next on the same, untouched `buf`, or [`park`](Decoder::park)
    /// them first.
    pub fn process(&mut self, buf: &mut [u8], end: usize, replies: &mut Vec<u8>) -> Chunk {
        self.carry = Vec::new();
        self.tail = 0..0;
        // A whole frame keeps its header size, so output written from where
        // input starts lines up with it and payloads need not move. Only a
        // piece continuing a frame from an earlier read needs the headroom
        // for its new header.
        let start = if self.streaming.is_some() {
            0
        } else {
            HEADROOM
        };
        let mut out = Out {
            toward: self.from.other(),
            w: start,
            frames: 0,
            bytes: 0,
            pong: None,
        };
        let mut r = HEADROOM;
        let stop = self.run(buf, &mut r, end, &mut out, replies).err();
        if stop.is_none() {
            self.tail = r..end;
        }
        Chunk {
            out: start..out.w,
            frames: out.frames,
            bytes: out.bytes,
            pong: out.pong,
            stop,
        }
    }

    /// Whether a message is partly relayed: a close now would cut it.
    pub fn mid_message(&self) -> bool {
        self.message.is_some()
    }

    fn run(
        &mut self,
        buf: &mut [u8],
        r: &mut usize,
        end: usize,
        out: &mut Out,
        replies: &mut Vec<u8>,
    ) -> Result<(), Stop> {
        loop {
            if let Some(s) = &mut self.streaming {
                let n = s.remaining.min((end - *r) as u64) as usize;
                if n == 0 {
                    return Ok(());
                }
                let key = s.mask.map(|k| mask::rotate(k, s.offset));
                s.remaining -= n as u64;
                s.offset += n as u64;
                let fin = s.remaining == 0 && s.fin;
                if s.remaining == 0 {
                    self.streaming = None;
                }
                self.piece(buf, out, *r, n, key, fin)?;
                *r += n;
                continue;
            }
            let mut cursor = Cursor::new(&buf[*r..end]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(()),
                Err(_) => return Err(violation(close::PROTOCOL_ERROR, "reserved opcode")),
            };
            let p = *r + cursor.position() as usize;
            self.check(&header, len)?;
            let avail = (end - p) as u64;
            match header.opcode {
                OpCode::Control(kind) => {
                    if avail < len {
                        return Ok(());
                    }
                    let payload = p..p + len as usize;
                    if let Some(k) = header.mask {
                        mask::apply(&mut buf[payload.clone()], k);
                    }
                    *r = payload.end;
                    match kind {
                        Control::Ping => control_frame(
                            replies,
                            self.from,
                            OpCode::Control(Control::Pong),
                            &buf[payload],
                        ),
                        Control::Pong => {
                            out.pong = <[u8; 8]>::try_from(&buf[payload])
                                .ok()
                                .map(u64::from_be_bytes);
                        }
                        Control::Close => {
                            let code = check_close(&buf[payload.clone()])?;
                            // Valid UTF-8 (checked), and unmasked until `out.frame`.
                            let reason = buf.get(payload.start + 2..payload.end);
                            self.close_reason = reason
                                .filter(|r| !r.is_empty())
                                .map(|r| Box::new(CloseReason(String::from_utf8_lossy(r).into())));
                            out.frame(buf, OpCode::Control(Control::Close), true, payload, None);
                            return Err(Stop::Close(code));
                        }
                        _ => {}
                    }
                }
                OpCode::Data(kind) => {
                    let from_carry = *r == HEADROOM && self.carried > 0;
                    let total = (p - *r) as u64 + len;
                    if avail < len && total <= WHOLE_FRAME as u64 && !from_carry {
                        return Ok(());
                    }
                    if kind != Data::Continue {
                        self.message = Some(Message {
                            text: kind == Data::Text,
                            len: 0,
                            started: false,
                            utf8: Utf8::default(),
                        });
                    }
                    if let Some(m) = &mut self.message {
                        m.len += len;
                    }
                    let n = avail.min(len) as usize;
                    if n as u64 == len {
                        *r = p + n;
                        self.piece(buf, out, p, n, header.mask, header.is_final)?;
                    } else {
                        self.streaming = Some(Streaming {
                            remaining: len - n as u64,
                            mask: header.mask,
                            offset: n as u64,
                            fin: header.is_final,
                        });
                        *r = end;
                        if n > 0 {
                            self.piece(buf, out, p, n, header.mask, false)?;
                        }
                    }
                }
            }
        }
    }

    /// Rejects a header before any of its payload is forwarded.
    fn check(&self, h: &FrameHeader, len: u64) -> Result<(), Stop> {
        if h.rsv1 || h.rsv2 || h.rsv3 {
            return Err(violation(close::PROTOCOL_ERROR, "reserved bits set"));
        }
        match (self.from, h.mask.is_some()) {
            (Side::Client, false) => {
                return Err(violation(close::PROTOCOL_ERROR, "client frame not masked"))
            }
            (Side::Upstream, true) => {
                return Err(violation(close::PROTOCOL_ERROR, "server frame masked"))
            }
            _ => {}
        }
        match h.opcode {
            OpCode::Control(_) if !h.is_final => {
                Err(violation(close::PROTOCOL_ERROR, "fragmented control frame"))
            }
            OpCode::Control(_) if len > MAX_CONTROL => Err(violation(
                close::PROTOCOL_ERROR,
                "control frame over 125 bytes",
            )),
            OpCode::Control(_) => Ok(()),
            OpCode::Data(kind) => {
                match (kind, &self.message) {
                    (Data::Continue, None) => {
                        return Err(violation(
                            close::PROTOCOL_ERROR,
                            "continuation outside a message",
                        ))
                    }
                    (Data::Text | Data::Binary, Some(_)) => {
                        return Err(violation(
                            close::PROTOCOL_ERROR,
                            "new message inside a fragmented one",
                        ))
                    }
                    _ => {}
                }
                let so_far = match kind {
                    Data::Continue => self.message.as_ref().map_or(0, |m| m.len),
                    _ => 0,
                };
                if len > self.limits.max_frame {
                    return Err(violation(close::TOO_BIG, "frame too big"));
                }
                if so_far.saturating_add(len) > self.limits.max_message {
                    return Err(violation(close::TOO_BIG, "message too big"));
                }
                Ok(())
            }
        }
    }

    /// Forwards `buf[p..p + n]` as one frame of the current message.
    fn piece(
        &mut self,
        buf: &mut [u8],
        out: &mut Out,
        p: usize,
        n: usize,
        key: Option<[u8; 4]>,
        fin: bool,
    ) -> Result<(), Stop> {
        let m = self
            .message
            .as_mut()
            .expect("data frames belong to a message");
        let mut key = key;
        if m.text {
            if let Some(k) = key.take() {
                mask::apply(&mut buf[p..p + n], k);
            }
            if m.utf8.feed(&buf[p..p + n]).is_err() || (fin && !m.utf8.at_boundary()) {
                return Err(violation(
                    close::INVALID_PAYLOAD,
                    "invalid UTF-8 in text message",
                ));
            }
        }
        let opcode = match (m.started, m.text) {
            (true, _) => Data::Continue,
            (false, true) => Data::Text,
            (false, false) => Data::Binary,
        };
        m.started = true;
        if fin {
            self.message = None;
        }
        out.frame(buf, OpCode::Data(opcode), fin, p..p + n, key);
        out.frames += 1;
        out.bytes += n as u64;
        Ok(())
    }
}

/// The write side of the in-place rewrite.
struct Out {
    toward: Side,
    /// Output ends here; always at or before the read position.
    w: usize,
    frames: u64,
    bytes: u64,
    pong: Option<u64>,
}

impl Out {
    /// Writes a header at `w` and moves the payload (still masked with
    /// `in_key`, if given) right behind it, masked for `toward`.
    fn frame(
        &mut self,
        buf: &mut [u8],
        opcode: OpCode,
        fin: bool,
        payload: std::ops::Range<usize>,
        in_key: Option<[u8; 4]>,
    ) {
        let n = payload.len();
        let out_key = self.toward.masks().then(mask::key);
        let header = FrameHeader {
            is_final: fin,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: out_key,
        };
        let hlen = header.len(n as u64);
        debug_assert!(self.w + hlen <= payload.start, "output overtook input");
        header
            .format(n as u64, &mut &mut buf[self.w..self.w + hlen])
            .expect("header fits the space of the one it replaces");
        let start = self.w + hlen;
        if start != payload.start {
            buf.copy_within(payload, start);
        }
        let body = &mut buf[start..start + n];
        match (in_key, out_key) {
            (Some(a), Some(b)) => mask::apply(body, mask::combine(a, b)),
            (Some(k), None) | (None, Some(k)) => mask::apply(body, k),
            (None, None) => {}
        }
        self.w = start + n;
    }
}

/// Appends a whole control frame for `toward` (masked when that is the upstream).
pub fn control_frame(out: &mut Vec<u8>, toward: Side, opcode: OpCode, payload: &[u8]) {
    let key = toward.masks().then(mask::key);
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: key,
    };
    header
        .format(payload.len() as u64, out)
        .expect("writing to a Vec cannot fail");
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(k) = key {
        mask::apply(&mut out[start..], k);
    }
}

/// Appends a close frame with `code` and `reason` (cut to fit 125 bytes).
pub fn close_frame(out: &mut Vec<u8>, toward: Side, code: Option<u16>, reason: &str) {
    let mut payload = Vec::with_capacity(2 + reason.len());
    if let Some(code) = code {
        payload.extend_from_slice(&code.to_be_bytes());
        let mut cut = reason.len().min(MAX_CONTROL as usize - 2);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..cut]);
    }
    control_frame(out, toward, OpCode::Control(Control::Close), &payload);
}

fn check_close(payload: &[u8]) -> Result<Option<u16>, Stop> {
    match payload {
        [] => Ok(None),
        [_] => Err(violation(
            close::PROTOCOL_ERROR,
            "close payload of one byte",
        )),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close::is_valid(code) {
                return Err(violation(close::PROTOCOL_ERROR, "invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(violation(
                    close::INVALID_PAYLOAD,
                    "close reason is not UTF-8",
                ));
            }
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
