//! Shared helpers for the integration tests: a gateway started from TOML
//! text, scriptable WebSocket backends, a raw HTTP/WebSocket client for
//! byte-exact requests and frames, and a throwaway certificate authority.
//!
//! Every wait goes through [`guard`], a few-second hang guard: tests await
//! events, they never sleep to synchronise.

#![allow(dead_code)]

mod binary;
mod ports;
// Each test crate uses a subset of the support code.
#[allow(unused_imports)]
pub use binary::Binary;
#[allow(unused_imports)]
pub use ports::closed_port;

use std::{
    future::Future,
    net::SocketAddr,
    num::NonZeroUsize,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Uri};
use tempfile::TempDir;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};
use tokio_tungstenite::{
    tungstenite::{
        handshake::server::{ErrorResponse, Request, Response},
        protocol::{frame::coding::CloseCode, CloseFrame, WebSocketConfig},
        Message,
    },
    WebSocketStream,
};

/// How long any single wait may take before the test is declared hung.
pub const GUARD: Duration = Duration::from_secs(5);

/// Awaits `f`, failing the test if it takes longer than [`GUARD`].
pub async fn guard<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {GUARD:?} waiting for {what}"),
    }
}

/// Installs the crypto provider rustls needs (the gateway does the same).
pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

// ---------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------

/// A running in-process gateway; it stops accepting when dropped.
pub struct Gateway {
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Every listener's address, in config order.
    pub addrs: Vec<SocketAddr>,
    /// The directory holding `framegate.toml`, its policies and certificates.
    pub dir: TempDir,
    _stop: oneshot::Sender<()>,
}

/// Writes `files` (relative paths) into `dir`, creating parent directories.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
}

/// Starts a gateway from `config` (the text of `framegate.toml`) in a new
/// temp dir. `policies/default.toml` is written empty (built-in defaults).
pub async fn start(config: &str) -> Gateway {
    start_with(config, &[]).await
}

/// Like [`start`], with extra files (e.g. `("policies/tight.toml", "...")`).
pub async fn start_with(config: &str, files: &[(&str, &str)]) -> Gateway {
    start_in(tempfile::tempdir().unwrap(), config, files).await
}

/// Like [`start_with`], in a directory the test already put files in.
pub async fn start_in(dir: TempDir, config: &str, files: &[(&str, &str)]) -> Gateway {
    install_crypto();
    write_files(dir.path(), &[("framegate.toml", config)]);
    if !dir.path().join("policies/default.toml").exists() {
        write_files(dir.path(), &[("policies/default.toml", "")]);
    }
    write_files(dir.path(), files);
    let config = framegate::config::Config::load(&dir.path().join("framegate.toml"))
        .unwrap_or_else(|e| panic!("test config does not load:\n{e}"));
    // Two workers, as a multi-core host runs by default: sessions land on
    // both, so limits, reloads and the drain are tested across threads.
    let gw = framegate::Gateway::bind(config, NonZeroUsize::new(2).unwrap())
        .await
        .expect("bind");
    let addrs = gw.local_addrs();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(gw.run(async move {
        let _ = stopped.await;
    }));
    Gateway {
        addr: addrs[0],
        addrs,
        dir,
        _stop: stop,
    }
}

/// A config with one plain listener and one route `/` to `upstream_url`
/// (`ws://...`), using `policy`.
pub fn simple_config(upstream_url: &str, policy: &str) -> String {
    format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[[route]]
path = "/"
upstream = "backend"
policy = "{policy}"

[upstream.backend]
servers = ["{upstream_url}"]
"#
    )
}

/// A gateway in front of the backend at `url` with the default policy.
pub async fn start_for(url: &str) -> Gateway {
    start(&simple_config(url, "default")).await
}

/// A gateway in front of the backend at `url` with a policy of the given text.
pub async fn start_for_with_policy(url: &str, policy_text: &str) -> Gateway {
    start_with(
        &simple_config(url, "test"),
        &[("policies/test.toml", policy_text)],
    )
    .await
}

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// Any byte stream a backend or client may run over (TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// How a test backend answers the handshake.
#[derive(Clone, Default)]
pub struct BackendOpts {
    /// The subprotocol to choose (written as-is in the 101).
    pub protocol: Option<String>,
    /// Extra headers on the 101.
    pub response_headers: Vec<(String, String)>,
    /// Largest message the backend reads (tungstenite's default is 64 MiB).
    pub max_message_size: Option<usize>,
    /// Terminate TLS with this config before the WebSocket handshake.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// One connection a backend accepted, with the request the gateway sent.
pub struct BackendConn {
    pub uri: Uri,
    pub headers: HeaderMap,
    pub ws: WebSocketStream<BoxIo>,
}

impl BackendConn {
    /// A request header as text; panics if it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut all = self.headers.get_all(name).iter();
        let first = all.next()?;
        assert!(all.next().is_none(), "header {name} repeated upstream");
        Some(first.to_str().unwrap())
    }

    /// The path and query the gateway asked for.
    pub fn path_and_query(&self) -> String {
        self.uri.path_and_query().unwrap().to_string()
    }

    /// The next message (pings included; tungstenite answers them itself).
    pub async fn next(&mut self) -> Message {
        guard("a message at the backend", self.ws.next())
            .await
            .expect("backend stream ended")
            .expect("backend read error")
    }

    /// Reads until a close frame arrives and returns it (data before it is an error).
    pub async fn expect_close(&mut self) -> Option<CloseFrame> {
        match self.next().await {
            Message::Close(frame) => frame,
            other => panic!("backend expected a close frame, got {other:?}"),
        }
    }

    /// Writes raw bytes to the backend's socket (for malformed frames).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let io = self.ws.get_mut();
        io.write_all(bytes).await.unwrap();
        io.flush().await.unwrap();
    }

    /// Echoes data messages until the connection ends.
    pub async fn echo(mut self) {
        while let Some(Ok(msg)) = self.ws.next().await {
            if (msg.is_text() || msg.is_binary()) && self.ws.send(msg).await.is_err() {
                break;
            }
        }
    }
}

/// A WebSocket backend whose accepted connections are handed to the test.
pub struct Backend {
    pub addr: SocketAddr,
    /// Whether it speaks TLS (its URL is then `wss://localhost:PORT`).
    tls: bool,
    conns: mpsc::UnboundedReceiver<BackendConn>,
}

impl Backend {
    /// The URL to put in `servers`.
    pub fn url(&self) -> String {
        if self.tls {
            format!("wss://localhost:{}", self.addr.port())
        } else {
            format!("ws://{}", self.addr)
        }
    }

    /// The next connection the gateway opened.
    pub async fn accept(&mut self) -> BackendConn {
        guard("the gateway to connect to the backend", self.conns.recv())
            .await
            .expect("backend stopped")
    }

    /// The next connection, or `None` when the backend stops (no hang guard:
    /// for serving loops).
    pub async fn conns_next(&mut self) -> Option<BackendConn> {
        self.conns.recv().await
    }

    /// Serves every connection as an echo server from now on.
    pub fn echo_all(mut self) {
        tokio::spawn(async move {
            while let Some(conn) = self.conns.recv().await {
                tokio::spawn(conn.echo());
            }
        });
    }

    /// Serves every connection as an echo server that first sends
    /// `"<name> <path and query>"`, so a client can tell who it reached.
    pub fn named_echo_all(mut self, name: &'static str) {
        tokio::spawn(async move {
            while let Some(mut conn) = self.conns.recv().await {
                let hello = format!("{name} {}", conn.path_and_query());
                tokio::spawn(async move {
                    if conn.ws.send(Message::text(hello)).await.is_ok() {
                        conn.echo().await;
                    }
                });
            }
        });
    }
}

/// A plain backend with default answers.
pub async fn backend() -> Backend {
    backend_with(BackendOpts::default()).await
}

/// A backend that echoes every connection; returns its URL.
pub async fn echo_backend() -> String {
    let b = backend().await;
    let url = b.url();
    b.echo_all();
    url
}

/// A backend answering as `opts` says.
pub async fn backend_with(opts: BackendOpts) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, conns) = mpsc::unbounded_channel();
    let tls = opts.tls.is_some();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let opts = opts.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let io: BoxIo = match &opts.tls {
                    None => Box::new(tcp),
                    Some(cfg) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
                        match acceptor.accept(tcp).await {
                            Ok(s) => Box::new(s),
                            Err(_) => return,
                        }
                    }
                };
                if let Some(conn) = ws_accept(io, &opts).await {
                    let _ = tx.send(conn);
                }
            });
        }
    });
    Backend { addr, tls, conns }
}

async fn ws_accept(io: BoxIo, opts: &BackendOpts) -> Option<BackendConn> {
    let seen: Arc<Mutex<Option<(Uri, HeaderMap)>>> = Arc::default();
    let seen2 = seen.clone();
    let protocol = opts.protocol.clone();
    let extra = opts.response_headers.clone();
    // The signature is tungstenite's `Callback`; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        *seen2.lock().unwrap() = Some((req.uri().clone(), req.headers().clone()));
        let h = resp.headers_mut();
        if let Some(p) = protocol {
            h.insert("sec-websocket-protocol", p.parse().unwrap());
        }
        for (k, v) in extra {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Ok(resp)
    };
    let config = WebSocketConfig::default().max_message_size(opts.max_message_size);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(io, callback, Some(config))
        .await
        .ok()?;
    let (uri, headers) = seen.lock().unwrap().take()?;
    Some(BackendConn { uri, headers, ws })
}

/// A TCP server that accepts connections and never answers; returns its
/// address and a receiver that yields once per accepted connection.
pub async fn silent_server() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
            let _ = tx.send(());
        }
    });
    (addr, rx)
}

/// A TCP server that reads one request head and writes `response` verbatim.
pub async fn raw_http_server(response: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut byte).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&byte[..n]),
                    }
                }
                let _ = s.write_all(response).await;
                // Keep the socket open until the gateway hangs up.
                let _ = s.read(&mut byte).await;
            });
        }
    });
    addr
}

/// A hand-written WebSocket server for one connection: it reads the
/// gateway's upgrade request, computes the `Sec-WebSocket-Accept` for its
/// key, writes `answer(accept)` verbatim, then waits for the gateway to hang
/// up (or hangs up itself right away if `hang_up`).
pub async fn raw_ws_server(
    answer: impl FnOnce(&str) -> Vec<u8> + Send + 'static,
    hang_up: bool,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let (mut head, mut buf) = (Vec::new(), [0u8; 4096]);
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8(head).unwrap();
        let key = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.trim().to_owned())
            })
            .expect("the gateway sent a key");
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        s.write_all(&answer(&accept)).await.unwrap();
        if !hang_up {
            let _ = read_to_close(&mut s).await;
        }
    });
    addr
}

/// A 101 answer with the given accept key and extra header lines.
pub fn switching_protocols(accept: &str, headers: &[&str]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {accept}\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

// ---------------------------------------------------------------------------
// tungstenite clients
// ---------------------------------------------------------------------------

pub type Client = WebSocketStream<TcpStream>;

/// Connects a tungstenite client to `ws://addr{path}`.
pub async fn connect(addr: SocketAddr, path: &str) -> Client {
    connect_response(addr, path).await.0
}

/// Connects and also returns the 101 response.
pub async fn connect_response(
    addr: SocketAddr,
    path: &str,
) -> (
    Client,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}{path}");
    guard(
        "the client handshake",
        tokio_tungstenite::client_async(url, tcp),
    )
    .await
    .expect("client handshake through the gateway")
}

/// The next message on a tungstenite stream, failing on end or error.
pub async fn next_msg<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Message {
    guard("a message at the client", ws.next())
        .await
        .expect("stream ended")
        .expect("read error")
}

/// The next message must be a close frame; returns it.
pub async fn expect_close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Option<CloseFrame> {
    match next_msg(ws).await {
        Message::Close(f) => f,
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// `CloseFrame` → (code, reason) for terse assertions.
pub fn code_reason(f: Option<CloseFrame>) -> (u16, String) {
    let f = f.expect("close frame without a code");
    (u16::from(f.code), f.reason.to_string())
}

pub fn close_frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP and raw WebSocket frames
// ---------------------------------------------------------------------------

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
    mut stream: S,
    request: &str,
) -> RawWs<S> {
    stream.write_all(request.as_bytes()).await.unwrap();
    let (response, buf) = read_response(&mut stream).await;
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

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A throwaway CA that signs leaf certificates.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

/// A leaf certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls_pki_types::CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "framegate test CA");
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let pem = issuer.pem();
        TestCa { issuer, pem }
    }

    /// A server certificate for `names` (DNS names or IPs), signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "framegate test server");
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A rustls client config trusting only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        install_crypto();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Leaf {
    /// A rustls server config presenting this certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls_pki_types::{pem::PemObject, PrivateKeyDer};
        install_crypto();
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(vec![self.der.clone()], key)
                .unwrap(),
        )
    }
}

/// Opens TLS to `addr` with SNI `name`, trusting `config`'s roots.
pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
    guard(
        "the TLS handshake",
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("TLS handshake with the gateway")
}

// ---------------------------------------------------------------------------
// Drain
// ---------------------------------------------------------------------------

/// `n` sessions through the gateway at `addr` to `backend`, whose side
/// records the close frame each backend connection receives.
pub struct Sessions {
    pub clients: Vec<Client>,
    backend_closes: mpsc::UnboundedReceiver<(u16, String)>,
}

/// Opens `n` sessions; see [`Sessions`].
pub async fn open_sessions(addr: SocketAddr, backend: &mut Backend, n: usize) -> Sessions {
    let (tx, backend_closes) = mpsc::unbounded_channel();
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(connect(addr, "/").await);
        let mut conn = backend.accept().await;
        let tx = tx.clone();
        tokio::spawn(async move {
            let close = conn.expect_close().await;
            // Keep polling so tungstenite sends its close reply.
            while conn.ws.next().await.is_some() {}
            let _ = tx.send(code_reason(close));
        });
    }
    Sessions {
        clients,
        backend_closes,
    }
}

impl Sessions {
    /// Every client and every backend connection gets 1001 "going away",
    /// and every client's close handshake completes.
    pub async fn expect_going_away(&mut self) {
        for client in &mut self.clients {
            assert_eq!(
                code_reason(expect_close(client).await),
                (1001, "going away".into())
            );
            while guard("the close handshake", client.next()).await.is_some() {}
        }
        for _ in 0..self.clients.len() {
            let got = guard("a backend close", self.backend_closes.recv()).await;
            assert_eq!(got.unwrap(), (1001, "going away".into()));
        }
    }
}
