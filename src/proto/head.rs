//! HTTP/1.1 heads on the wire: read one (bounded in bytes and headers),
//! encode one. httparse parses, this module frames; bodies are
//! [`super::body`]'s. Whatever follows the head on the socket is returned as
//! early data: a body's start, a pipelined request, or the relay's frames.

use std::{io, mem::MaybeUninit};

use bytes::BytesMut;
use http::{
    header, uri::PathAndQuery, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode,
    Uri, Version,
};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::proto::{
    body::{self, BodyError, Framing},
    target::{self, TargetError},
};

/// First read buffer for a request; most heads are a few hundred bytes.
const FIRST_READ: usize = 1024;

/// Why no head could be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("the head is over {0} bytes")]
    TooLarge(usize),
    #[error("the head has more than {0} headers")]
    TooManyHeaders(usize),
    #[error("malformed HTTP head: {0}")]
    Malformed(&'static str),
    #[error("{0}")]
    Target(#[from] TargetError),
    /// Closed before the first byte of a head.
    #[error("connection closed before a head began")]
    Closed,
    /// Closed, or broken, part way through a head.
    #[error("connection closed before the head was complete")]
    Truncated,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A complete head and its length on the wire; `None` while incomplete.
type Parsed<T> = Result<Option<(T, usize)>, HeadError>;

/// A parsed head and the bytes that came after it.
pub struct Head<T> {
    pub head: T,
    pub early: Vec<u8>,
}

/// Reads until `parse` finds a complete head within `max_bytes`, starting
/// with `buf` (bytes already read past an earlier head on this connection).
async fn read<S, T>(
    io: &mut S,
    buf: Vec<u8>,
    limits: (usize, usize),
    parse: impl Fn(&[u8]) -> Parsed<T>,
) -> Result<Head<T>, HeadError>
where
    S: AsyncRead + Unpin,
{
    let (head, len, buf) = read_whole(io, buf, limits, parse).await?;
    Ok(Head {
        head,
        early: after_head(buf, len),
    })
}

/// What follows a head of `len` bytes at the start of `buf`. It moves to
/// the front of the buffer when it is most of it (a body read with its
/// head), else to a buffer of its own (a pipelined request, early frames;
/// none at all when nothing followed).
fn after_head(mut buf: Vec<u8>, len: usize) -> Vec<u8> {
    match buf.len() - len > FIRST_READ {
        true => {
            buf.drain(..len);
            buf
        }
        false => buf.split_off(len),
    }
}

/// [`read`], returning the head's length and the whole buffer read.
async fn read_whole<S, T>(
    io: &mut S,
    mut buf: Vec<u8>,
    (first_read, max_bytes): (usize, usize),
    parse: impl Fn(&[u8]) -> Parsed<T>,
) -> Result<(T, usize, Vec<u8>), HeadError>
where
    S: AsyncRead + Unpin,
{
    buf.reserve(first_read.min(max_bytes));
    let mut scanned = 0;
    loop {
        // Parse only once a blank line has arrived: a head trickled in byte
        // by byte costs one scan, not one parse per byte.
        if has_blank_line(&buf, scanned) {
            if let Some((head, len)) = parse(&buf)? {
                if len > max_bytes {
                    return Err(HeadError::TooLarge(max_bytes));
                }
                return Ok((head, len, buf));
            }
        }
        scanned = buf.len().saturating_sub(3);
        if buf.len() >= max_bytes {
            return Err(HeadError::TooLarge(max_bytes));
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len().min(max_bytes - buf.len()));
        }
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) if !buf.is_empty() => return Err(HeadError::Truncated),
            Ok(0) => return Err(HeadError::Closed),
            Err(e) => return Err(HeadError::Io(e)),
            Ok(_) => {}
        }
    }
}

/// Whether `buf[from..]` has the blank line that ends a head (LF or CRLF).
/// Only the line ends are looked at, found by memchr: comparing a window at
/// every byte cost more than parsing the head.
fn has_blank_line(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from..];
    memchr::memchr_iter(b'\n', tail).any(|at| match tail.get(at + 1) {
        Some(b'\n') => true,
        Some(b'\r') => tail.get(at + 2) == Some(&b'\n'),
        _ => false,
    })
}

/// Reads a request head; `pending` is what was read past the previous one.
pub async fn read_request<S: AsyncRead + Unpin>(
    io: &mut S,
    pending: Vec<u8>,
    max_bytes: usize,
    max_headers: usize,
) -> Result<Head<Request<()>>, HeadError> {
    read(io, pending, (FIRST_READ, max_bytes), |buf| {
        parse_request(buf, max_headers)
    })
    .await
}

/// A response head.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

/// Reads a response head; `pending` is what was read past the previous one
/// (an interim `1xx` answer's), or an empty buffer with the room the first
/// read should have (a response body read with its head is passed on with
/// it in one write).
pub async fn read_response<S: AsyncRead + Unpin>(
    io: &mut S,
    pending: Vec<u8>,
    max_bytes: usize,
    max_headers: usize,
) -> Result<Head<Response>, HeadError> {
    let limits = (FIRST_READ, max_bytes);
    read(io, pending, limits, |buf| parse_response(buf, max_headers)).await
}

/// A response head read whole and left where it was read, its headers
/// looked up in place. An upstream's 101 is only checked, and a plain
/// response's framing; their end-to-end headers are copied into the
/// client's head as they came: a map (two allocations, a copy and a hash
/// per header) would be built to be thrown away.
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub version: Version,
    /// The head, then what was read past it.
    buf: Vec<u8>,
    len: usize,
    /// Each header's name and value, as ranges of `buf`.
    fields: SmallVec<[Field; 16]>,
}

#[derive(Debug, Clone, Copy)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// Reads a response head as a [`RawResponse`]; `pending` as for
/// [`read_response`].
pub async fn read_raw_response<S: AsyncRead + Unpin>(
    io: &mut S,
    pending: Vec<u8>,
    max_bytes: usize,
    max_headers: usize,
) -> Result<RawResponse, HeadError> {
    let limits = (FIRST_READ, max_bytes);
    let parse = |buf: &[u8]| parse_raw_response(buf, max_headers);
    let ((status, version, fields), len, buf) = read_whole(io, pending, limits, parse).await?;
    Ok(RawResponse {
        status,
        version,
        buf,
        len,
        fields,
    })
}

/// [`parse_response`], the headers left as ranges of `buf`.
fn parse_raw_response(
    buf: &[u8],
    max_headers: usize,
) -> Parsed<(StatusCode, Version, SmallVec<[Field; 16]>)> {
    parse_response_with(buf, max_headers, |status, resp| {
        // httparse's slices are of `buf`; a head is far below 4 GiB.
        let at = |s: &[u8]| {
            let start = s.as_ptr() as usize - buf.as_ptr() as usize;
            (start as u32, (start + s.len()) as u32)
        };
        let fields = resp
            .headers
            .iter()
            .map(|h| Field {
                name: at(h.name.as_bytes()),
                value: at(h.value),
            })
            .collect();
        Ok((status, version(resp.version), fields))
    })
}

/// httparse's reading of a response head at the start of `buf`, and its
/// status, handed to `build`: the one parse under [`parse_response`] and
/// [`parse_raw_response`].
fn parse_response_with<T>(
    buf: &[u8],
    max_headers: usize,
    build: impl FnOnce(StatusCode, &httparse::Response<'_, '_>) -> Result<T, HeadError>,
) -> Parsed<T> {
    with_slots(max_headers, |slots| {
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, slots);
        let Some(len) = complete(parsed, max_headers)? else {
            return Ok(None);
        };
        let status = StatusCode::from_u16(resp.code.unwrap_or_default())
            .map_err(|_| HeadError::Malformed("invalid status code"))?;
        Ok(Some((build(status, &resp)?, len)))
    })
}

impl RawResponse {
    /// Parses a complete response head at the start of `buf`; `None` while
    /// it is incomplete.
    #[cfg(test)]
    pub fn parse(buf: Vec<u8>, max_headers: usize) -> Result<Option<RawResponse>, HeadError> {
        let parsed = parse_raw_response(&buf, max_headers)?;
        Ok(parsed.map(|((status, version, fields), len)| RawResponse {
            status,
            version,
            buf,
            len,
            fields,
        }))
    }

    /// The head's length on the wire, its blank line included.
    pub fn head_len(&self) -> usize {
        self.len
    }

    fn slice(&self, (start, end): (u32, u32)) -> &[u8] {
        &self.buf[start as usize..end as usize]
    }

    /// Every header, name and value, in the order they came. Both are as
    /// httparse accepted them: a name is a token, a value has no control
    /// character but tab, exactly what `HeaderName` and `HeaderValue` take.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|f| (self.slice(f.name), self.slice(f.value)))
    }

    /// The values of every `name` header, in order.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> {
        let name = name.as_str().as_bytes();
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first `name` header's value, as `HeaderMap::get` would give it.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        let name = name.as_str().as_bytes();
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The head as a map, for an answer passed on whole (a refusal).
    pub fn to_response(&self) -> Result<Response, HeadError> {
        let head = &self.buf[..self.len];
        let parsed = parse_response(head, self.fields.len().max(1))?;
        Ok(parsed.expect("a head read whole parses whole").0)
    }

    /// What was read past the head (frames behind a 101, a body's start).
    pub fn into_early(self) -> Vec<u8> {
        after_head(self.buf, self.len)
    }
}

impl body::Fields for RawResponse {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name)
    }
}

/// Header lines as a head carries them (`name: value\r\n` each), for
/// headers passed on as they came and never looked up: an upstream
/// answer's end-to-end headers (a 101's or a plain response's), on their
/// way into the client's head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines(Vec<u8>);

impl Lines {
    pub fn with_capacity(bytes: usize) -> Lines {
        Lines(Vec::with_capacity(bytes))
    }

    /// Adds a header read by httparse ([`RawResponse::headers`]); the name
    /// is written in lowercase, as a `HeaderName` is.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        debug_assert!(!value.iter().any(|&b| b == b'\r' || b == b'\n'));
        let at = self.0.len();
        self.0.extend_from_slice(name);
        self.0[at..].make_ascii_lowercase();
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(value);
        self.0.extend_from_slice(b"\r\n");
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Parses a complete request head at the start of `buf`; `None` while
/// incomplete. The request's URI is the normalised target
/// ([`target::normalize`]), and its body framing has been checked
/// ([`body_framing`]), so nothing after this sees the raw forms.
pub fn parse_request(buf: &[u8], max_headers: usize) -> Parsed<Request<()>> {
    with_slots(max_headers, |slots| {
        let mut req = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut req, buf, slots);
        let Some(len) = complete(parsed, max_headers)? else {
            return Ok(None);
        };
        request_from(&req, len)
    })
}

/// [`parse_request`]'s result from httparse's complete reading, `len` bytes long.
fn request_from(req: &httparse::Request<'_, '_>, len: usize) -> Parsed<Request<()>> {
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let target = target::normalize(req.path.unwrap_or_default().as_bytes())?;
    let mut out = Request::new(());
    *out.method_mut() = method;
    *out.uri_mut() = uri(&target)?;
    *out.version_mut() = version(req.version);
    *out.headers_mut() = header_map(req.headers)?;
    body_framing(out.version(), out.headers())?;
    Ok(Some((out, len)))
}

/// A normalised target as a `Uri`: always valid, since normalising leaves
/// only printable ASCII; an absolute-form target keeps its authority.
fn uri(t: &target::Target) -> Result<Uri, HeadError> {
    let invalid = |_| HeadError::Malformed("invalid request target");
    let path = PathAndQuery::try_from(t.path_and_query()).map_err(invalid)?;
    let mut parts = http::uri::Parts::default();
    if let Some(a) = &t.authority {
        // The scheme keeps its default port meaning: `wss://g:443/` is
        // `https://g/`, never `http://g/` (which would read as port 80).
        parts.scheme = Some(match t.secure {
            true => http::uri::Scheme::HTTPS,
            false => http::uri::Scheme::HTTP,
        });
        parts.authority = Some(a.to_string().parse().map_err(invalid)?);
    }
    parts.path_and_query = Some(path);
    Uri::from_parts(parts).map_err(|_| HeadError::Malformed("invalid request target"))
}

/// The body framing a request declares, refusing every ambiguous form a
/// proxy in front could read differently (request smuggling): differing
/// `Content-Length` values, `Content-Length` beside `Transfer-Encoding`
/// (RFC 9112 §6.3 allows refusing it, and that is the safe choice),
/// `Transfer-Encoding` on HTTP/1.0 or not ending in `chunked`.
pub fn body_framing(version: Version, headers: &HeaderMap) -> Result<Framing, HeadError> {
    let has_te = headers.contains_key(header::TRANSFER_ENCODING);
    let length = body::content_length(headers).map_err(|e| match e {
        BodyError::ConflictingLength => HeadError::Malformed("conflicting Content-Length values"),
        _ => HeadError::Malformed("invalid Content-Length"),
    })?;
    match (has_te, length) {
        (false, None) => Ok(Framing::None),
        (false, Some(n)) => Ok(Framing::Length(n)),
        (true, Some(_)) => Err(HeadError::Malformed(
            "both Transfer-Encoding and Content-Length",
        )),
        (true, None) if version != Version::HTTP_11 => Err(HeadError::Malformed(
            "Transfer-Encoding in an HTTP/1.0 request",
        )),
        (true, None) if body::ends_in_chunked(headers) => Ok(Framing::Chunked),
        (true, None) => Err(HeadError::Malformed(
            "Transfer-Encoding must end in chunked",
        )),
    }
}

/// Parses a response head at the start of `buf`: `None` while it is
/// incomplete, else the head and its length.
pub fn parse_response(buf: &[u8], max_headers: usize) -> Parsed<Response> {
    parse_response_with(buf, max_headers, |status, resp| {
        Ok(Response {
            status,
            version: version(resp.version),
            headers: header_map(resp.headers)?,
        })
    })
}

/// Header slots up to this many live on the stack, so parsing a head under
/// the usual limits allocates nothing but the result.
const STACK_SLOTS: usize = 128;

/// Runs `parse` with `max` of httparse's header slots: on the stack when
/// few enough. Left uninitialised (httparse writes a slot before it hands
/// it back): initialising them cost more than parsing a short head (a slot
/// is 32 bytes, and up to 100 are offered).
fn with_slots<'b, R>(
    max: usize,
    parse: impl FnOnce(&mut [MaybeUninit<httparse::Header<'b>>]) -> R,
) -> R {
    let mut stack = [const { MaybeUninit::uninit() }; STACK_SLOTS];
    if max <= STACK_SLOTS {
        parse(&mut stack[..max])
    } else {
        let mut heap = Vec::new();
        heap.resize_with(max, MaybeUninit::uninit);
        parse(&mut heap)
    }
}

/// A head's length from httparse's answer; `None` while it is incomplete.
fn complete(
    parsed: httparse::Result<usize>,
    max_headers: usize,
) -> Result<Option<usize>, HeadError> {
    match parsed.map_err(|e| parse_error(e, max_headers))? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(len) => Ok(Some(len)),
    }
}

fn parse_error(e: httparse::Error, max_headers: usize) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders(max_headers),
        httparse::Error::Version => HeadError::Malformed("not HTTP/1.x"),
        httparse::Error::HeaderName | httparse::Error::HeaderValue => {
            HeadError::Malformed("invalid header")
        }
        _ => HeadError::Malformed("invalid request or status line"),
    }
}

fn version(minor: Option<u8>) -> Version {
    match minor {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    }
}

/// Headers the gateway may add to a request's map on its way upstream
/// (`X-Forwarded-*`, `X-Real-IP`, framing, admission's): room for them from
/// the start, since growing a map rehashes it (three times a request, when
/// the map was sized for the client's headers alone).
const ADDED_UPSTREAM: usize = 8;

/// The parsed headers as a map. Every value is a slice of one shared
/// buffer: one allocation per head, not one per header.
fn header_map(headers: &[httparse::Header<'_>]) -> Result<HeaderMap, HeadError> {
    let mut map = HeaderMap::with_capacity(headers.len() + ADDED_UPSTREAM);
    let mut values = BytesMut::with_capacity(headers.iter().map(|h| h.value.len()).sum());
    for h in headers {
        values.extend_from_slice(h.value);
    }
    let mut values = values.freeze();
    for h in headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(values.split_to(h.value.len()))
            .map_err(|_| HeadError::Malformed("invalid header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// A response head and its body, ready to write.
pub fn encode_response(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut out = response_line(status, 128 + 40 * headers.len() + body.len());
    encode_headers(&mut out, headers);
    out.extend_from_slice(body);
    out
}

/// The start of a response head, with room for `room` bytes in all;
/// [`header_line`] adds headers, [`end_head`] ends it.
pub fn response_line(status: StatusCode, room: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(room);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// The start of a response head carrying `lines`, with room for a few
/// more ([`header_line`]; [`end_head`] ends it).
pub fn response_with(status: StatusCode, lines: &Lines) -> Vec<u8> {
    let mut out = response_line(status, 128 + lines.as_bytes().len());
    out.extend_from_slice(lines.as_bytes());
    out
}

/// A request head for `method` and `target`.
pub fn encode_request<'a>(
    method: &Method,
    target: &str,
    headers: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) -> Vec<u8> {
    let mut out = request_line(method, target);
    encode_headers(&mut out, headers);
    out
}

/// The start of a request head for `method` and `target`, with room for
/// its headers; [`header_line`] adds them, [`end_head`] ends it.
pub fn request_line(method: &Method, target: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + target.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    out
}

/// One header line; `value` must be a valid header value.
pub fn header_line(out: &mut Vec<u8>, name: &HeaderName, value: &[u8]) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A list header's line: `items` joined by `, `. Nothing is written if
/// there are none, or if one has a byte no header value may carry (a
/// control character).
pub fn list_line(out: &mut Vec<u8>, name: &HeaderName, items: &[String]) {
    let valid = |b: &u8| *b >= 0x20 && *b != 0x7f || *b == b'\t';
    if items.is_empty() || !items.iter().all(|i| i.as_bytes().iter().all(valid)) {
        return;
    }
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(item.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// The blank line that ends a head.
pub fn end_head(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

fn encode_headers<'a>(
    out: &mut Vec<u8>,
    headers: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) {
    for (name, value) in headers {
        header_line(out, name, value.as_bytes());
    }
    end_head(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn request(wire: &[u8], max_bytes: usize) -> Result<Head<Request<()>>, HeadError> {
        let mut io = wire;
        read_request(&mut io, Vec::new(), max_bytes, 8).await
    }

    #[tokio::test]
    async fn a_request_and_what_follows_it() {
        let got = request(
            b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nA: 1\r\nA: 2\r\n\r\n\x81\x00",
            1024,
        )
        .await
        .unwrap();
        assert_eq!(got.head.uri(), "/a?b=1");
        assert_eq!(got.head.version(), Version::HTTP_11);
        assert_eq!(got.head.headers().get_all("a").iter().count(), 2);
        assert_eq!(got.early, b"\x81\x00");
    }

    #[test]
    fn more_headers_than_the_stack_holds_are_parsed_from_the_heap() {
        let n = STACK_SLOTS + 10;
        let lines: String = (0..n).map(|i| format!("H{i}: v{i}\r\n")).collect();
        let wire = format!("GET / HTTP/1.1\r\n{lines}\r\n");
        let (req, len) = parse_request(wire.as_bytes(), n).unwrap().unwrap();
        assert_eq!(len, wire.len());
        assert_eq!(req.headers().len(), n);
        assert_eq!(req.headers()[format!("h{}", n - 1)], format!("v{}", n - 1));
        let wire = format!("HTTP/1.1 200 OK\r\n{lines}\r\n");
        let (resp, _) = parse_response(wire.as_bytes(), n).unwrap().unwrap();
        assert_eq!(resp.headers.len(), n);
        assert!(matches!(
            parse_response(wire.as_bytes(), n - 1),
            Err(HeadError::TooManyHeaders(_))
        ));
    }

    #[tokio::test]
    async fn a_pipelined_request_is_read_from_what_was_left() {
        let mut io: &[u8] = b"";
        let got = read_request(&mut io, b"GET /b HTTP/1.1\r\n\r\n".to_vec(), 1024, 8)
            .await
            .unwrap();
        assert_eq!(got.head.uri(), "/b");
    }

    #[tokio::test]
    async fn limits_and_defects_have_their_errors() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(100));
        assert!(matches!(
            request(big.as_bytes(), 64).await,
            Err(HeadError::TooLarge(64))
        ));
        let many: String = (0..9).map(|i| format!("H{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            request(many.as_bytes(), 1024).await,
            Err(HeadError::TooManyHeaders(8))
        ));
        assert!(matches!(
            request(b"GET / HTTP/1.1\r\nHost", 1024).await,
            Err(HeadError::Truncated)
        ));
        assert!(matches!(request(b"", 1024).await, Err(HeadError::Closed)));
        assert!(matches!(
            request(b"GET / SPDY/3\r\n\r\n", 1024).await,
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn a_blank_line_ends_a_head_with_or_without_cr() {
        for (buf, from, blank) in [
            (&b"GET / HTTP/1.1\r\nA: 1\r\n\r\n"[..], 0, true),
            (b"GET / HTTP/1.1\nA: 1\n\n", 0, true),
            (b"GET / HTTP/1.1\r\nA: 1\n\r\n", 0, true),
            (b"GET / HTTP/1.1\r\nA: 1\r\n", 0, false),
            (b"GET / HTTP/1.1\r\nA: 1\r\n\r", 0, false),
            (b"\r\n\r\n", 0, true),
            (b"\n", 0, false),
            // Only what follows `from` counts.
            (b"A\n\nB\r\n", 3, false),
            (b"A\r\n\r\n", 2, true),
        ] {
            assert_eq!(has_blank_line(buf, from), blank, "{buf:?} from {from}");
        }
    }

    #[test]
    fn body_framing_is_unambiguous_or_refused() {
        let framing = |version, headers: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in headers {
                h.append(*n, HeaderValue::from_static(v));
            }
            body_framing(version, &h)
        };
        let v11 = Version::HTTP_11;
        assert_eq!(framing(v11, &[]).unwrap(), Framing::None);
        assert_eq!(
            framing(v11, &[("content-length", "5"), ("content-length", "5, 5")]).unwrap(),
            Framing::Length(5)
        );
        assert_eq!(
            framing(v11, &[("transfer-encoding", "gzip, Chunked")]).unwrap(),
            Framing::Chunked
        );
        for bad in [
            &[("content-length", "5"), ("content-length", "6")][..],
            &[("content-length", "5, 6")],
            &[("content-length", "+5")],
            &[("content-length", "")],
            &[("content-length", "99999999999999999999")],
            &[("content-length", "5"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "chunked, gzip")],
            &[("transfer-encoding", "xchunked")],
        ] {
            assert!(framing(v11, bad).is_err(), "{bad:?}");
        }
        assert!(framing(Version::HTTP_10, &[("transfer-encoding", "chunked")]).is_err());
    }

    #[tokio::test]
    async fn a_target_is_normalised_as_it_is_read() {
        let got = request(b"GET /x/%2e%2e/admin/?a=1 HTTP/1.1\r\n\r\n", 1024)
            .await
            .unwrap();
        assert_eq!(got.head.uri(), "/admin/?a=1");
        assert!(matches!(
            request(b"GET /%2e%2e/ HTTP/1.1\r\n\r\n", 1024).await,
            Err(HeadError::Target(TargetError::AboveRoot))
        ));
        let got = request(b"GET ws://A.test:80/p HTTP/1.1\r\n\r\n", 1024)
            .await
            .unwrap();
        assert_eq!(got.head.uri().authority().unwrap(), "a.test");
        assert_eq!(got.head.uri().path(), "/p");
        // Found by the request_head fuzz target: a TLS scheme's default
        // port folds away and stays folded when the target is read again.
        let got = request(b"GET wss://g:80/c HTTP/1.1\r\nHost: g\r\n\r\n", 1024)
            .await
            .unwrap();
        let again = format!("GET {} HTTP/1.1\r\n\r\n", got.head.uri());
        let again = request(again.as_bytes(), 1024).await.unwrap();
        assert_eq!(again.head.uri(), got.head.uri());
    }

    #[tokio::test]
    async fn a_response_head() {
        let mut io: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        let got = read_response(&mut io, Vec::new(), 1024, 8).await.unwrap();
        assert_eq!(got.head.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(got.head.headers["upgrade"], "websocket");
        assert!(got.early.is_empty());
    }

    #[test]
    fn encodes_a_response() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        let out = encode_response(StatusCode::NOT_FOUND, &h, b"no\n");
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nupgrade: websocket\r\n\r\nno\n"
        );
    }
}
