//! The plain HTTP backend: a real HTTP/1.1 server (hyper's) behind the
//! gateway. It counts the TCP connections it accepted and closed, records
//! every request (method, path, headers, and its body read to the end:
//! length, first bytes, whether it was whole), answers with a handler of
//! the test's, and serves WebSocket upgrades on the same port (echo).
//!
//! For the upstream pool's failure paths it can hang up instead of
//! answering ([`HttpBackend::hang_up_next`]: the request is read and
//! recorded, then the connection is closed without one byte of a response)
//! and close its idle keep-alive connections ([`HttpBackend::close_idle`]).
//!
//! Bodies are checked against [`pattern`] as they stream, so a 100 MiB body
//! is verified without being held.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::{body::Frame, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};
use tokio_tungstenite::{tungstenite::protocol::Role, WebSocketStream};

use super::guard;

/// A body either side sends: whole, streamed from a channel, or generated.
pub type HttpBody = BoxBody<Bytes, io::Error>;
/// What a handler answers.
pub type Reply = Response<HttpBody>;

/// How many bytes of each request body a record keeps.
const KEEP: usize = 1 << 20;

/// What the backend saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Which accepted connection it came on (0 for the first).
    pub conn: usize,
    pub method: Method,
    /// The path and query.
    pub path: String,
    pub headers: HeaderMap,
    /// Body bytes received.
    pub body_len: u64,
    /// The first [`KEEP`] of them.
    pub body: Vec<u8>,
    /// The body arrived whole (its framing ended it); false if the
    /// connection broke inside it.
    pub complete: bool,
    /// The body was the first `body_len` bytes of [`pattern`].
    pub pattern: bool,
    /// Trailer fields after a chunked body.
    pub trailers: HeaderMap,
}

impl Seen {
    /// A header as text; panics if it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut all = self.headers.get_all(name).iter();
        let first = all.next()?;
        assert!(all.next().is_none(), "header {name} repeated upstream");
        Some(first.to_str().unwrap())
    }
}

type Handler = Arc<dyn Fn(Seen) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

struct State {
    handler: Handler,
    accepted: AtomicUsize,
    closed: AtomicUsize,
    /// Requests still to be answered by hanging up.
    hang_ups: AtomicUsize,
    /// Request body bytes received, over all requests, as they arrive.
    body_bytes: AtomicU64,
    requests: Mutex<Vec<Seen>>,
    /// Bumped on every change above, for waiters.
    changed: watch::Sender<u64>,
    /// Bumped to make every connection close once idle.
    close_idle: watch::Sender<u64>,
}

impl State {
    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// An HTTP/1.1 backend on `127.0.0.1:0`; see the module doc.
pub struct HttpBackend {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl HttpBackend {
    /// Answers every request with `handler`, given what was seen of it
    /// (its body already read).
    pub async fn serve<F, Fut>(handler: F) -> HttpBackend
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        HttpBackend::start(None, handler).await
    }

    /// [`serve`](Self::serve) over TLS with this config; a connection whose
    /// TLS handshake fails is closed uncounted.
    pub async fn serve_tls<F, Fut>(tls: Arc<rustls::ServerConfig>, handler: F) -> HttpBackend
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        HttpBackend::start(Some(tls), handler).await
    }

    async fn start<F, Fut>(tls: Option<Arc<rustls::ServerConfig>>, handler: F) -> HttpBackend
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            handler: Arc::new(move |seen| Box::pin(handler(seen))),
            accepted: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            hang_ups: AtomicUsize::new(0),
            body_bytes: AtomicU64::new(0),
            requests: Mutex::default(),
            changed: watch::channel(0).0,
            close_idle: watch::channel(0).0,
        });
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let Some(tls) = &tls else {
                    let id = shared.accepted.fetch_add(1, Ordering::SeqCst);
                    shared.bump();
                    tokio::spawn(connection(shared.clone(), id, tcp));
                    continue;
                };
                let (acceptor, shared) =
                    (tokio_rustls::TlsAcceptor::from(tls.clone()), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let id = shared.accepted.fetch_add(1, Ordering::SeqCst);
                    shared.bump();
                    connection(shared, id, tls).await;
                });
            }
        });
        HttpBackend { addr, state }
    }

    /// Answers `200` with `"METHOD PATH BODY-LENGTH"`.
    pub async fn describe() -> HttpBackend {
        HttpBackend::serve(|seen| async move {
            text(
                StatusCode::OK,
                &format!("{} {} {}", seen.method, seen.path, seen.body_len),
            )
        })
        .await
    }

    /// The URL to put in `servers`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections accepted and since ended.
    pub fn closed(&self) -> usize {
        self.state.closed.load(Ordering::SeqCst)
    }

    /// Request body bytes received so far (over all requests), counted as
    /// they arrive, before any request is recorded.
    pub fn body_bytes(&self) -> u64 {
        self.state.body_bytes.load(Ordering::SeqCst)
    }

    /// Every request seen so far, in the order their bodies ended.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The paths of [`requests`](Self::requests).
    pub fn paths(&self) -> Vec<String> {
        self.requests().into_iter().map(|s| s.path).collect()
    }

    /// The last request seen.
    pub fn last(&self) -> Seen {
        self.requests().pop().expect("no request seen")
    }

    /// The next `n` requests are read (and recorded) and answered by
    /// closing the connection, without one byte of a response.
    pub fn hang_up_next(&self, n: usize) {
        self.state.hang_ups.store(n, Ordering::SeqCst);
    }

    /// Closes every connection once it is idle (at once, if it is), and
    /// waits until every connection accepted so far has ended.
    pub async fn close_idle(&self) {
        self.state.close_idle.send_modify(|n| *n += 1);
        self.until("every backend connection to close", |b| {
            b.closed() == b.accepted()
        })
        .await;
    }

    /// Waits (under [`guard`]) until `cond` holds.
    pub async fn until(&self, what: &str, cond: impl Fn(&HttpBackend) -> bool) {
        let mut changed = self.state.changed.subscribe();
        guard(what, async {
            while !cond(self) {
                changed.changed().await.unwrap();
            }
        })
        .await;
    }

    /// Waits until `n` requests have been recorded.
    pub async fn requests_seen(&self, n: usize) -> Vec<Seen> {
        self.until(&format!("{n} requests at the backend"), |b| {
            b.state.requests.lock().unwrap().len() >= n
        })
        .await;
        self.requests()
    }

    /// Waits until every connection accepted so far has ended.
    pub async fn all_closed(&self) {
        self.until("every backend connection to end", |b| {
            b.closed() == b.accepted()
        })
        .await;
    }
}

/// Serves one accepted connection until it ends, closing it when told to
/// once idle.
async fn connection<T>(state: Arc<State>, id: usize, tcp: T)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_state = state.clone();
    let svc = service_fn(move |req| request(svc_state.clone(), id, req));
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut close = state.close_idle.subscribe();
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            Ok(()) = close.changed() => conn.as_mut().graceful_shutdown(),
        }
    }
    state.closed.fetch_add(1, Ordering::SeqCst);
    state.bump();
}

/// One request: a WebSocket upgrade is accepted and echoed; anything else
/// has its body read, is recorded, and is answered by the handler (or by
/// hanging up).
async fn request(state: Arc<State>, conn: usize, mut req: Request<Incoming>) -> io::Result<Reply> {
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if let (true, Some(key)) = (websocket, key) {
        let on = hyper::upgrade::on(&mut req);
        record(&state, conn, &req, Default::default());
        tokio::spawn(async move {
            let Ok(upgraded) = on.await else { return };
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept.parse().unwrap());
        return Ok(resp);
    }
    let (parts, mut body) = req.into_parts();
    let mut got = BodyRead::default();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    got.feed(&data);
                    state
                        .body_bytes
                        .fetch_add(data.len() as u64, Ordering::SeqCst);
                    state.bump();
                }
                Err(frame) => got
                    .trailers
                    .extend(frame.into_trailers().unwrap_or_default()),
            },
            Some(Err(_)) => break,
            None => {
                got.complete = true;
                break;
            }
        }
    }
    let req = Request::from_parts(parts, ());
    let seen = record(&state, conn, &req, got);
    let hang_up = state
        .hang_ups
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if hang_up {
        return Err(io::Error::other("hanging up as told"));
    }
    Ok((state.handler)(seen).await)
}

/// A request body as it was read.
#[derive(Default)]
struct BodyRead {
    len: u64,
    kept: Vec<u8>,
    complete: bool,
    not_pattern: bool,
    trailers: HeaderMap,
}

impl BodyRead {
    fn feed(&mut self, data: &[u8]) {
        if !pattern_matches(self.len, data) {
            self.not_pattern = true;
        }
        let room = KEEP.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
        self.len += data.len() as u64;
    }
}

fn record<B>(state: &State, conn: usize, req: &Request<B>, body: BodyRead) -> Seen {
    let seen = Seen {
        conn,
        method: req.method().clone(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().to_string(), |p| p.to_string()),
        headers: req.headers().clone(),
        body_len: body.len,
        body: body.kept,
        complete: body.complete,
        pattern: !body.not_pattern,
        trailers: body.trailers,
    };
    state.requests.lock().unwrap().push(seen.clone());
    state.bump();
    seen
}

// === Bodies ===

/// An empty body.
pub fn empty() -> HttpBody {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A whole body (sent with `Content-Length`).
pub fn full(data: impl Into<Bytes>) -> HttpBody {
    Full::new(data.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A response of `status` with a text body.
pub fn text(status: StatusCode, body: &str) -> Reply {
    let mut resp = Response::new(full(body.to_owned()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// A body of unknown length (sent chunked) made of what is sent on the
/// returned channel, ending when the sender is dropped.
pub fn channel_body() -> (mpsc::UnboundedSender<Bytes>, HttpBody) {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let data = rx.recv().await?;
        Some((Ok::<_, io::Error>(Frame::data(data)), rx))
    });
    (tx, BodyExt::boxed(StreamBody::new(frames)))
}

/// The first `len` bytes of [`pattern`], generated as they are sent, in
/// pieces of at most `piece` bytes, with no length announced (so chunked).
pub fn pattern_body(len: u64, piece: usize) -> HttpBody {
    let pieces = futures_util::stream::iter(PatternPieces {
        offset: 0,
        len,
        piece,
    })
    .map(|data| Ok::<_, io::Error>(Frame::data(data)));
    BodyExt::boxed(StreamBody::new(pieces))
}

// === The pattern ===

/// The pattern repeats in blocks of this size, each stamped with its number.
const BLOCK: usize = 64 * 1024;

fn base_block() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| (0..BLOCK).map(|i| (i % 251) as u8).collect())
}

/// The byte stream bodies are checked against: blocks of
/// `i % 251`, the first 8 bytes of block `k` replaced by `k` (big-endian),
/// so a piece out of place or repeated is seen.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut offset = 0;
    while out.len() < len {
        let piece = pattern_piece(offset, len - out.len());
        offset += piece.len() as u64;
        out.extend_from_slice(&piece);
    }
    out
}

/// Up to `max` bytes of the pattern from `offset`, not crossing a block end.
fn pattern_piece(offset: u64, max: usize) -> Bytes {
    let block = offset / BLOCK as u64;
    let at = (offset % BLOCK as u64) as usize;
    let end = BLOCK.min(at + max);
    let mut piece = base_block()[at..end].to_vec();
    if at < 8 {
        let stamped = end.min(8) - at;
        piece[..stamped].copy_from_slice(&block.to_be_bytes()[at..at + stamped]);
    }
    Bytes::from(piece)
}

/// Whether `data` is the pattern from `offset` on (compared a block's run
/// at a time, so even debug builds check 100 MiB quickly).
pub fn pattern_matches(mut offset: u64, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        let expected = pattern_piece(offset, data.len());
        let n = expected.len();
        if data[..n] != expected[..] {
            return false;
        }
        offset += n as u64;
        data = &data[n..];
    }
    true
}

/// Checks a body against the pattern as it arrives.
#[derive(Debug)]
pub struct PatternCheck {
    /// Bytes fed so far.
    pub len: u64,
    /// Every byte fed so far was the pattern's.
    pub ok: bool,
}

impl Default for PatternCheck {
    fn default() -> Self {
        PatternCheck { len: 0, ok: true }
    }
}

impl PatternCheck {
    pub fn feed(&mut self, data: &[u8]) {
        self.ok &= pattern_matches(self.len, data);
        self.len += data.len() as u64;
    }
}

/// The pattern in pieces, generated on demand.
struct PatternPieces {
    offset: u64,
    len: u64,
    piece: usize,
}

impl Iterator for PatternPieces {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let left = self.len - self.offset;
        if left == 0 {
            return None;
        }
        let max = self.piece.min(usize::try_from(left).unwrap_or(usize::MAX));
        let data = pattern_piece(self.offset, max);
        self.offset += data.len() as u64;
        Some(data)
    }
}
