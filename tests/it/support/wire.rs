//! The raw client: byte-exact HTTP requests and WebSocket frames, and the
//! responses and frames read back off the wire.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::guard;

/// A parsed HTTP response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    /// Refusals carry exactly one line of text.
    pub fn assert_one_line_body(&self) {
        let body = self.body_text();
        assert!(body.ends_with('\n'), "body {body:?} must end in a newline");
        assert_eq!(body.matches('\n').count(), 1, "body {body:?} is one line");
        assert!(body.trim().len() > 3, "body {body:?} says something");
    }
}

/// A WebSocket upgrade request, with `extra` header lines (no CRLF).
pub fn upgrade_request(path: &str, extra: &[&str]) -> String {
    upgrade_request_to("gateway.test", path, extra)
}

/// [`upgrade_request`] with the given `Host`.
pub fn upgrade_request_to(host: &str, path: &str, extra: &[&str]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// Reads one response head and, if `Content-Length` says so, its body.
/// Returns the response and any bytes read past it.
pub async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> (RawResponse, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = guard("a response head", s.read(&mut chunk))
            .await
            .expect("read error before the response head");
        assert!(
            n > 0,
            "connection closed before a response head; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line");
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let mut rest = buf[head_end..].to_vec();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    while status != 101 && rest.len() < len {
        let n = guard("a response body", s.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "connection closed inside the body");
        rest.extend_from_slice(&chunk[..n]);
    }
    let (body, after) = if status == 101 {
        (Vec::new(), rest)
    } else {
        let after = rest.split_off(len);
        (rest, after)
    };
    (
        RawResponse {
            status,
            headers,
            body,
        },
        after,
    )
}

/// Sends `request` on a new connection and reads the response.
pub async fn http(addr: SocketAddr, request: &str) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    read_response(&mut s).await.0
}

/// Waits until the peer closes `s` (read returns 0 or an error); returns
/// the bytes that arrived before.
pub async fn read_to_close<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match guard("the peer to close the connection", s.read(&mut chunk)).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A frame as read off the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RSV1..3 as the high bits of the first byte (`0x70` mask).
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.payload[..self.payload.len().min(32)];
        f.debug_struct("Frame")
            .field("fin", &self.fin)
            .field("rsv", &self.rsv)
            .field("opcode", &self.opcode)
            .field("masked", &self.masked)
            .field("len", &self.payload.len())
            .field("payload", &String::from_utf8_lossy(shown))
            .finish()
    }
}

impl Frame {
    /// (code, reason) of a close frame.
    pub fn close_code(&self) -> (u16, String) {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        assert!(self.payload.len() >= 2, "close frame without a code");
        (
            u16::from_be_bytes([self.payload[0], self.payload[1]]),
            String::from_utf8(self.payload[2..].to_vec()).expect("UTF-8 reason"),
        )
    }
}

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The mask key the raw client uses (any key will do; a fixed one keeps
/// failures reproducible).
pub const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Encodes a frame: `first` is the whole first byte (FIN, RSV, opcode).
pub fn encode(first: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        None => out.extend_from_slice(payload),
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
    }
    out
}

/// A masked client frame.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode(if fin { 0x80 } else { 0 } | opcode, Some(KEY), payload)
}

/// An unmasked server frame.
pub fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode(if fin { 0x80 } else { 0 } | opcode, None, payload)
}

/// A close payload: code and reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A WebSocket connection spoken byte by byte.
pub struct RawWs<S = TcpStream> {
    pub stream: S,
    pub response: RawResponse,
    /// Bytes read but not parsed yet.
    pub buf: Vec<u8>,
}

/// Connects to `addr`, sends an upgrade for `path` with `extra` headers and
/// asserts the answer is 101.
pub async fn raw_upgrade(addr: SocketAddr, path: &str, extra: &[&str]) -> RawWs {
    raw_upgrade_to(addr, "gateway.test", path, extra).await
}

/// [`raw_upgrade`] with the given `Host`.
pub async fn raw_upgrade_to(addr: SocketAddr, host: &str, path: &str, extra: &[&str]) -> RawWs {
    let stream = TcpStream::connect(addr).await.unwrap();
    raw_upgrade_on(stream, &upgrade_request_to(host, path, extra)).await
}

/// Sends the upgrade `request` on an already connected stream and asserts
/// the answer is 101.
pub async fn raw_upgrade_on<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    request: &str,
) -> RawWs<S> {
    let ws = send_request(stream, request).await;
    let response = &ws.response;
    assert_eq!(
        response.status,
        101,
        "upgrade refused: {response:?} {}",
        response.body_text()
    );
    assert_eq!(
        response.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "accept key for the RFC 6455 sample key"
    );
    ws
}

/// Sends `request` on an already connected stream and reads the response,
/// whatever it is; the stream stays open for more.
pub async fn send_request<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
) -> RawWs<S> {
    stream.write_all(request.as_bytes()).await.unwrap();
    let (response, buf) = read_response(&mut stream).await;
    RawWs {
        stream,
        response,
        buf,
    }
}

impl<S> RawWs<S> {
    /// Speaks frames on a stream whose handshake is already done.
    pub fn after_handshake(stream: S) -> RawWs<S> {
        RawWs {
            stream,
            response: RawResponse {
                status: 101,
                headers: Vec::new(),
                body: Vec::new(),
            },
            buf: Vec::new(),
        }
    }
}

impl<S: AsyncWrite + Unpin> RawWs<S> {
    /// Writes bytes; errors are ignored (the gateway may already have hung up).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }
}

impl<S: AsyncRead + Unpin> RawWs<S> {
    /// Reads the next frame; `None` at end of stream (or on a reset).
    pub async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match guard("a frame from the gateway", self.stream.read(&mut chunk)).await {
                Ok(0) | Err(_) => {
                    assert!(
                        self.buf.is_empty(),
                        "stream ended inside a frame: {:?}",
                        self.buf
                    );
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame, which must exist.
    pub async fn expect_frame(&mut self) -> Frame {
        self.read_frame()
            .await
            .expect("connection ended, expected a frame")
    }

    /// The next frame must be a close frame with a code; returns (code, reason).
    pub async fn expect_close(&mut self) -> (u16, String) {
        let f = self.expect_frame().await;
        assert!(!f.masked, "frames to the client must not be masked");
        f.close_code()
    }

    /// Reads a whole data message (joining fragments, answering nothing);
    /// returns (opcode of the first frame, payload).
    pub async fn read_message(&mut self) -> (u8, Vec<u8>) {
        let first = self.expect_frame().await;
        assert!(
            first.opcode == OP_TEXT || first.opcode == OP_BINARY,
            "expected a data frame, got {first:?}"
        );
        let mut payload = first.payload;
        let mut fin = first.fin;
        while !fin {
            let f = self.expect_frame().await;
            assert_eq!(f.opcode, OP_CONT, "expected a continuation, got {f:?}");
            payload.extend_from_slice(&f.payload);
            fin = f.fin;
        }
        (first.opcode, payload)
    }

    /// The connection must end (EOF or reset) with no further frame.
    pub async fn expect_end(&mut self) {
        if let Some(f) = self.read_frame().await {
            panic!("expected the connection to end, got {f:?}");
        }
    }

    /// The connection must end with a FIN (not a reset) and nothing
    /// unread: the end of a completed close handshake.
    pub async fn expect_clean_end(&mut self) {
        assert!(self.buf.is_empty(), "unread bytes: {:?}", self.buf);
        let mut chunk = [0u8; 64];
        match guard("the gateway's FIN", self.stream.read(&mut chunk)).await {
            Ok(0) => {}
            Ok(n) => panic!("expected the connection to end, got {:?}", &chunk[..n]),
            Err(e) => panic!("expected a FIN, got {e}"),
        }
    }
}

/// Parses one frame from the front of `buf`: (frame, bytes used).
pub fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            (
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                10,
            )
        }
        n => (n as usize, 2),
    };
    let key = if masked {
        if buf.len() < at + 4 {
            return None;
        }
        let k: [u8; 4] = buf[at..at + 4].try_into().unwrap();
        at += 4;
        Some(k)
    } else {
        None
    };
    if buf.len() < at + len {
        return None;
    }
    let mut payload = buf[at..at + len].to_vec();
    if let Some(k) = key {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= k[i % 4];
        }
    }
    Some((
        Frame {
            fin: buf[0] & 0x80 != 0,
            rsv: buf[0] & 0x70,
            opcode: buf[0] & 0x0f,
            masked,
            payload,
        },
        at + len,
    ))
}
