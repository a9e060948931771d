//! Plain HTTP clients through the gateway: [`HttpConn`], a raw one that
//! writes exact bytes and reads responses off one keep-alive connection
//! (chunked bodies decoded), and hyper's client ([`hyper_conn`]) for
//! streamed bodies.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::{body::Incoming, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{guard, HttpBody, PatternCheck, RawResponse};

/// A `GET` of `path` for `Host: gateway.test` with `extra` header lines.
pub fn get(path: &str, extra: &[&str]) -> Vec<u8> {
    request("GET", path, extra, b"")
}

/// A request with `extra` header lines and, if `body` is not empty, that
/// body with its `Content-Length`.
pub fn request(method: &str, path: &str, extra: &[&str], body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: gateway.test\r\n");
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    [req.as_bytes(), body].concat()
}

/// `pieces` as a chunked body, ended by the last chunk (no trailers).
pub fn chunked(pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// One client connection spoken byte by byte, with the bytes read past the
/// last response kept for the next.
pub struct HttpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The trailer lines of the last chunked body read.
    pub trailers: Vec<String>,
}

impl HttpConn {
    pub async fn open(addr: SocketAddr) -> HttpConn {
        let stream = guard("the TCP connect", TcpStream::connect(addr))
            .await
            .unwrap();
        HttpConn {
            stream,
            buf: Vec::new(),
            trailers: Vec::new(),
        }
    }

    /// A connection from the loopback address `from`.
    pub async fn open_from(from: &str, addr: SocketAddr) -> HttpConn {
        HttpConn {
            stream: super::tcp_from(from, addr).await,
            buf: Vec::new(),
            trailers: Vec::new(),
        }
    }

    /// The socket, for another protocol; nothing may be left unread.
    pub fn into_stream(self) -> TcpStream {
        assert!(self.buf.is_empty(), "unread bytes: {:?}", self.buf);
        self.stream
    }

    /// Writes bytes; errors are ignored (the gateway may have hung up).
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let _ = self.stream.write_all(bytes.as_ref()).await;
    }

    /// Sends `req` and reads the response.
    pub async fn ask(&mut self, req: impl AsRef<[u8]>) -> RawResponse {
        self.send(req).await;
        self.response().await
    }

    /// Reads more; false at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match guard("bytes from the gateway", self.stream.read(&mut chunk)).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next `n` bytes.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "connection ended inside a body");
        }
        self.buf.drain(..n).collect()
    }

    /// The next line, without its CRLF.
    async fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.fill().await, "connection ended inside a line");
        }
    }

    /// Reads a response head (status and headers), no body.
    pub async fn head(&mut self) -> RawResponse {
        let status_line = String::from_utf8(self.line().await).unwrap();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = String::from_utf8(self.line().await).unwrap();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').expect("a header line");
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        RawResponse {
            status,
            headers,
            body: Vec::new(),
        }
    }

    /// Reads a response and its body, as its headers frame it (for a
    /// response to `HEAD`, use [`head`](Self::head)).
    pub async fn response(&mut self) -> RawResponse {
        let mut resp = self.head().await;
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
        let length = resp.header("content-length").map(|v| v.parse().unwrap());
        resp.body = match (resp.status, chunked, length) {
            (100..=199 | 204 | 304, _, _) => Vec::new(),
            (_, true, _) => self.chunked_body().await,
            (_, false, Some(n)) => self.take(n).await,
            (_, false, None) => self.rest().await,
        };
        resp
    }

    /// A chunked body, decoded; trailers go to [`trailers`](Self::trailers).
    async fn chunked_body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        self.trailers.clear();
        loop {
            let line = String::from_utf8(self.line().await).unwrap();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            if size == 0 {
                loop {
                    let line = String::from_utf8(self.line().await).unwrap();
                    if line.is_empty() {
                        return body;
                    }
                    self.trailers.push(line);
                }
            }
            body.extend(self.take(size).await);
            assert_eq!(self.take(2).await, b"\r\n", "chunk data not ended by CRLF");
        }
    }

    /// Everything up to the end of the stream.
    pub async fn rest(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// The gateway must close the connection with nothing more said.
    pub async fn expect_closed(&mut self) {
        let rest = self.rest().await;
        assert!(
            rest.is_empty(),
            "expected the connection to close, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// A hyper client connection to `addr` (its driver spawned).
pub async fn hyper_conn(addr: SocketAddr) -> SendRequest<HttpBody> {
    let tcp = guard("the TCP connect", TcpStream::connect(addr))
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// A request for hyper's client, to `Host: gateway.test`.
pub fn hyper_request(method: &str, path: &str, body: HttpBody) -> Request<HttpBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.test")
        .body(body)
        .unwrap()
}

/// The next data of a streamed body (`None` at its end).
pub async fn next_data(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let frame = guard("body data", body.frame()).await?.expect("body error");
        if let Ok(data) = frame.into_data() {
            return Some(data);
        }
    }
}

/// Reads a streamed body to its end, checking it against the pattern.
pub async fn check_pattern(mut body: Incoming) -> PatternCheck {
    let mut check = PatternCheck::default();
    while let Some(data) = next_data(&mut body).await {
        check.feed(&data);
    }
    check
}
