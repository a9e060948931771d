//! HTTP/1.1 message bodies on the wire (RFC 9112 §6–7): how a body is
//! delimited, a decoder that finds where it ends and which bytes are its
//! data, and the chunked encoding the gateway writes.
//!
//! The gateway re-frames every body it forwards: it decodes what one side
//! sent and encodes the data afresh for the other, so what the next hop
//! parses is exactly what this decoder parsed (no chunk extension, no
//! trailer, no odd spelling passes through for it to read differently).
//!
//! The chunk-size line is parsed here, not with `httparse::parse_chunk_size`:
//! that one reads an empty size as 0 (ending the body), takes a size after
//! spaces, and lets a bare LF sit inside an extension — each a way for two
//! parsers to disagree about where a body ends (request smuggling). Here a
//! line is `1*HEXDIG [ BWS ";" ext ] CRLF` with at most 15 digits, and an
//! extension holds no control character.

use std::ops::Range;

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// A head's headers, looked up by name: a map, or a response head read in
/// place (`head::RawResponse`), so that the framing checks below are the
/// same code whichever way a head was read.
pub trait Fields {
    /// The values of every `name` header, in the order they came.
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]>;
}

impl Fields for HeaderMap {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// A response without either: the body ends when the connection does.
    UntilClose,
}

impl Framing {
    /// Whether the end of the body can be seen without the connection
    /// closing (so the connection can carry another message after it).
    pub fn is_delimited(self) -> bool {
        self != Framing::UntilClose
    }
}

/// Why a body's framing could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("invalid Content-Length")]
    InvalidLength,
    #[error("conflicting Content-Length values")]
    ConflictingLength,
    #[error("both Transfer-Encoding and Content-Length")]
    LengthAndEncoding,
    #[error("a transfer coding other than chunked")]
    OtherCoding,
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("a chunk or trailer line over {MAX_LINE} bytes")]
    LineTooLong,
    #[error("trailers over {MAX_TRAILERS} bytes")]
    TrailersTooLarge,
    #[error("invalid trailer line")]
    Trailer,
    #[error("a line not ended by CRLF")]
    LineEnd,
    #[error("the connection closed before the body was complete")]
    Truncated,
}

/// The longest chunk-size or trailer line accepted (extensions included).
pub const MAX_LINE: usize = 4096;
/// The most trailer bytes accepted; trailers are read and dropped.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// The one `Content-Length` that all of a message's values agree on, if any.
pub fn content_length(headers: &impl Fields) -> Result<Option<u64>, BodyError> {
    let mut length = None;
    for value in headers.values(&header::CONTENT_LENGTH) {
        for item in value.split(|&b| b == b',') {
            let item = item.trim_ascii();
            let n = (!item.is_empty() && item.len() <= 18 && item.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(item).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or(BodyError::InvalidLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(BodyError::ConflictingLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether the last transfer coding is `chunked`.
pub fn ends_in_chunked(headers: &impl Fields) -> bool {
    headers
        .values(&header::TRANSFER_ENCODING)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .last()
        .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
}

/// Whether `chunked` is the one transfer coding. The gateway undoes
/// chunked and re-frames the body; any other coding (`gzip`, say) it would
/// drop on the way, and the recipient would take the coded bytes for the
/// content.
pub fn only_chunked(headers: &impl Fields) -> bool {
    let mut codings = headers
        .values(&header::TRANSFER_ENCODING)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty());
    matches!(
        (codings.next(), codings.next()),
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked")
    )
}

/// How the body of a response to `method` with `status` is delimited
/// (RFC 9112 §6.3). A response to `HEAD`, a 1xx, 204 or 304 has none,
/// whatever its headers say. `Content-Length` beside `Transfer-Encoding`
/// is refused rather than resolved: a backend that sends both is broken or
/// hostile, and nginx refuses it too. So is a transfer coding other than
/// chunked ([`only_chunked`]), as nginx does: it cannot be passed on.
pub fn response_framing(
    method: &Method,
    status: StatusCode,
    headers: &impl Fields,
) -> Result<Framing, BodyError> {
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::None);
    }
    let length = content_length(headers)?;
    let has_te = headers.values(&header::TRANSFER_ENCODING).next().is_some();
    match (has_te, length) {
        (true, Some(_)) => Err(BodyError::LengthAndEncoding),
        (true, None) if only_chunked(headers) => Ok(Framing::Chunked),
        (true, None) => Err(BodyError::OtherCoding),
        (false, Some(n)) => Ok(Framing::Length(n)),
        (false, None) => Ok(Framing::UntilClose),
    }
}

/// What one [`Decoder::decode`] call found at the start of its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the input used up. Zero (with the body not done) means a
    /// line is incomplete: keep the input and call again with more.
    pub consumed: usize,
    /// Where in the input the body data is (empty if none).
    pub data: Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `n` bytes of a `Content-Length` body, or of a chunk's data, left.
    Length(u64),
    ChunkData(u64),
    UntilClose,
    ChunkSize,
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines, up to the empty line; `n` bytes read so far.
    Trailers(usize),
    Done,
}

/// Reads one body's framing incrementally, whatever the reads' sizes.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        Decoder { state }
    }

    /// The whole body has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads from the start of `input`: at most one run of data, or one
    /// framing line. Call again with the rest until it consumes nothing or
    /// the body is done; bytes after the body are never consumed.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, BodyError> {
        let data = |n: usize| Decoded {
            consumed: n,
            data: 0..n,
        };
        let framing = |n: usize| Decoded {
            consumed: n,
            data: 0..0,
        };
        match self.state {
            State::Done => Ok(framing(0)),
            State::UntilClose => Ok(data(input.len())),
            State::Length(left) | State::ChunkData(left) => {
                let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - n as u64;
                self.state = match (self.state, left) {
                    (State::Length(_), 0) => State::Done,
                    (State::Length(_), _) => State::Length(left),
                    (_, 0) => State::ChunkEnd,
                    _ => State::ChunkData(left),
                };
                Ok(data(n))
            }
            State::ChunkEnd => match input {
                [b'\r', b'\n', ..] => {
                    self.state = State::ChunkSize;
                    Ok(framing(2))
                }
                [] | [b'\r'] => Ok(framing(0)),
                _ => Err(BodyError::ChunkEnd),
            },
            State::ChunkSize => {
                let Some(len) = line(input)? else {
                    return Ok(framing(0));
                };
                let size = chunk_size(&input[..len - 2])?;
                self.state = match size {
                    0 => State::Trailers(0),
                    n => State::ChunkData(n),
                };
                Ok(framing(len))
            }
            State::Trailers(seen) => {
                let Some(len) = line(input)? else {
                    return Ok(framing(0));
                };
                let seen = seen + len;
                if seen > MAX_TRAILERS {
                    return Err(BodyError::TrailersTooLarge);
                }
                self.state = match len {
                    2 => State::Done,
                    _ if trailer_field(&input[..len - 2]) => State::Trailers(seen),
                    _ => return Err(BodyError::Trailer),
                };
                Ok(framing(len))
            }
        }
    }

    /// The connection ended: fine if that completes the body.
    pub fn finish(&mut self) -> Result<(), BodyError> {
        match self.state {
            State::Done => Ok(()),
            State::UntilClose => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(BodyError::Truncated),
        }
    }
}

/// The length of the CRLF-terminated line at the start of `input`, CRLF
/// included; `None` while incomplete. A bare LF, or a CR not before LF, is
/// an error: the line would end elsewhere for a lenient parser.
fn line(input: &[u8]) -> Result<Option<usize>, BodyError> {
    let window = &input[..input.len().min(MAX_LINE)];
    match window.iter().position(|&b| b == b'\n' || b == b'\r') {
        Some(i) => match window.get(i..i + 2) {
            Some(b"\r\n") => Ok(Some(i + 2)),
            None if window[i] == b'\r' && i + 1 == input.len() => Ok(None),
            _ => Err(BodyError::LineEnd),
        },
        None if window.len() == MAX_LINE => Err(BodyError::LineTooLong),
        None => Ok(None),
    }
}

/// `1*HEXDIG [ BWS ";" chunk-ext ]`, the line without its CRLF.
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(BodyError::ChunkSize);
    }
    let rest = &line[digits..];
    let ext_ok = match rest.trim_ascii_start() {
        [] => rest.is_empty(),
        [b';', ext @ ..] => ext.iter().all(|&b| b == b'\t' || (b' '..0x7f).contains(&b)),
        _ => false,
    };
    if !ext_ok {
        return Err(BodyError::ChunkSize);
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| BodyError::ChunkSize)?;
    u64::from_str_radix(text, 16).map_err(|_| BodyError::ChunkSize)
}

/// A trailer field line `name: value` (name a token, value visible text).
fn trailer_field(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && http::HeaderName::from_bytes(name).is_ok()
        && value.iter().all(|&b| b == b'\t' || b >= b' ')
        && !value.contains(&0x7f)
}

/// The header of a chunk of `len` bytes; the data and [`CHUNK_END`] follow.
pub fn chunk_header(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[(len >> (i * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

/// What follows a chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";
/// The last chunk and the end of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http::HeaderValue;

    /// Decodes `wire` fed in pieces of `step` bytes, the way reads arrive;
    /// returns the data and the bytes left after the body.
    pub(crate) fn decode_all(
        framing: Framing,
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Vec<u8>), BodyError> {
        let mut d = Decoder::new(framing);
        let (mut buf, mut data, mut fed) = (Vec::new(), Vec::new(), 0);
        loop {
            loop {
                let got = d.decode(&buf)?;
                data.extend_from_slice(&buf[got.data.clone()]);
                buf.drain(..got.consumed);
                if got.consumed == 0 || d.is_done() {
                    break;
                }
            }
            if d.is_done() {
                buf.extend_from_slice(&wire[fed..]);
                return Ok((data, buf));
            }
            if fed == wire.len() {
                d.finish()?;
                return Ok((data, buf));
            }
            let n = step.min(wire.len() - fed);
            buf.extend_from_slice(&wire[fed..fed + n]);
            fed += n;
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let wire = b"5\r\nhello\r\n6;name=\"v\"\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        for step in [1, 2, 3, 7, 1000] {
            let (data, rest) = decode_all(Framing::Chunked, wire, step).unwrap();
            assert_eq!(data, b"hello world", "step {step}");
            assert_eq!(rest, b"GET /next", "step {step}");
        }
    }

    #[test]
    fn length_and_close_delimited_bodies() {
        let (data, rest) = decode_all(Framing::Length(5), b"helloGET", 2).unwrap();
        assert_eq!(
            (data.as_slice(), rest.as_slice()),
            (&b"hello"[..], &b"GET"[..])
        );
        let (data, _) = decode_all(Framing::UntilClose, b"all of it", 4).unwrap();
        assert_eq!(data, b"all of it");
        assert_eq!(
            decode_all(Framing::Length(10), b"short", 2),
            Err(BodyError::Truncated)
        );
        assert_eq!(
            decode_all(Framing::Chunked, b"5\r\nhello\r\n", 3),
            Err(BodyError::Truncated)
        );
    }

    /// Each spelling a lenient parser reads differently is refused.
    #[test]
    fn smuggling_spellings_are_refused() {
        for bad in [
            &b"\r\n"[..],                    // empty size: httparse reads 0
            b" 5\r\nhello\r\n0\r\n\r\n",     // leading space
            b"5 \r\nhello\r\n0\r\n\r\n",     // trailing space, no extension
            b"+5\r\nhello\r\n0\r\n\r\n",     // sign
            b"0x5\r\nhello\r\n0\r\n\r\n",    // C-style hex
            b"5\nhello\r\n0\r\n\r\n",        // bare LF
            b"5;a\nb\r\nhello\r\n0\r\n\r\n", // LF inside an extension
            b"5;a\rb\r\nhello\r\n0\r\n\r\n", // CR inside an extension
            b"5\r\nhelloXX0\r\n\r\n",        // data not followed by CRLF
            b"5\r\nhello\n0\r\n\r\n",        // data followed by a bare LF
            b"10000000000000000\r\n",        // 17 digits: overflow
            b"1000000000000000\r\n",         // 16 digits
            b"0\r\nbad trailer\r\n\r\n",     // a trailer that is not a field
            b"0\r\nX: a\nb\r\n\r\n",         // a bare LF in a trailer
        ] {
            for step in [1, 100] {
                assert!(
                    decode_all(Framing::Chunked, bad, step).is_err(),
                    "{:?} step {step}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
        // 15 digits is the most a size may have.
        let mut d = Decoder::new(Framing::Chunked);
        let got = d.decode(b"fffffffffffffff\r\n").unwrap();
        assert_eq!(got.consumed, 17);
    }

    #[test]
    fn lines_and_trailers_are_bounded() {
        let long = format!("5;{}\r\n", "a".repeat(MAX_LINE));
        assert_eq!(
            decode_all(Framing::Chunked, long.as_bytes(), 10_000),
            Err(BodyError::LineTooLong)
        );
        let mut many = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILERS / 10 + 1 {
            many.extend_from_slice(b"X-T: 1234\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            decode_all(Framing::Chunked, &many, 10_000),
            Err(BodyError::TrailersTooLarge)
        );
    }

    #[test]
    fn a_chunk_header_is_lower_hex() {
        for (len, want) in [
            (0, "0\r\n"),
            (5, "5\r\n"),
            (16, "10\r\n"),
            (65535, "ffff\r\n"),
        ] {
            let mut out = Vec::new();
            chunk_header(len, &mut out);
            assert_eq!(out, want.as_bytes());
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (n, v) in pairs {
                m.append(*n, HeaderValue::from_static(v));
            }
            m
        };
        let ok = StatusCode::OK;
        let cl = h(&[("content-length", "12")]);
        assert_eq!(
            response_framing(&Method::GET, ok, &cl),
            Ok(Framing::Length(12))
        );
        assert_eq!(response_framing(&Method::HEAD, ok, &cl), Ok(Framing::None));
        for status in [
            StatusCode::NO_CONTENT,
            StatusCode::NOT_MODIFIED,
            StatusCode::CONTINUE,
        ] {
            assert_eq!(
                response_framing(&Method::GET, status, &cl),
                Ok(Framing::None)
            );
        }
        let te = h(&[("transfer-encoding", " Chunked ")]);
        assert_eq!(
            response_framing(&Method::GET, ok, &te),
            Ok(Framing::Chunked)
        );
        for other in ["gzip, chunked", "gzip", "chunked, chunked", "identity"] {
            let te = h(&[("transfer-encoding", other)]);
            assert_eq!(
                response_framing(&Method::GET, ok, &te),
                Err(BodyError::OtherCoding),
                "{other}"
            );
        }
        assert_eq!(
            response_framing(&Method::GET, ok, &h(&[])),
            Ok(Framing::UntilClose)
        );
        let both = h(&[("content-length", "3"), ("transfer-encoding", "chunked")]);
        assert_eq!(
            response_framing(&Method::GET, ok, &both),
            Err(BodyError::LengthAndEncoding)
        );
        let two = h(&[("content-length", "3"), ("content-length", "4")]);
        assert_eq!(
            response_framing(&Method::GET, ok, &two),
            Err(BodyError::ConflictingLength)
        );
    }
}
