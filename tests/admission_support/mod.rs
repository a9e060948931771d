//! Helpers for the admission tests: a real gateway on 127.0.0.1:0 built
//! from config text, a recording echo upstream, WebSocket clients bound to
//! chosen loopback addresses, and tokens signed with keys made on the spot.

#![allow(dead_code)]
// each test file uses a different part
// tungstenite's handshake callback type has a large error variant.
#![allow(clippy::result_large_err)]

#[path = "../support/ports.rs"]
mod ports;
// Each test crate uses a subset of the support code.
#[allow(unused_imports)]
pub use ports::closed_port;

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use framegate::{admission::Stats, config::Config, Gateway, Handle};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::oneshot,
};
use tokio_tungstenite::{
    tungstenite::{
        self,
        client::IntoClientRequest,
        handshake::server::{Request, Response},
        Message,
    },
    MaybeTlsStream, WebSocketStream,
};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running gateway and the directory its config lives in.
pub struct Gw {
    /// The first listener.
    pub addr: SocketAddr,
    /// Every listener, in config order.
    pub addrs: Vec<SocketAddr>,
    pub handle: Handle,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl Gw {
    /// Admission's live counts.
    pub fn stats(&self) -> Stats {
        self.handle.admission_stats()
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Writes `files` (name, contents) into a fresh directory, loads
/// `framegate.toml` from it and serves it. Policies go in `policies/NAME.toml`.
pub async fn start(files: &[(&str, &[u8])]) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents).unwrap();
    }
    let config = Config::load(&dir.path().join("framegate.toml")).unwrap_or_else(|e| panic!("{e}"));
    // Two workers, as a multi-core host runs by default: sessions land on
    // both, so limits, reloads and the drain are tested across threads.
    let gw = Gateway::bind(config, NonZeroUsize::new(2).unwrap())
        .await
        .unwrap();
    let addrs = gw.local_addrs();
    let addr = addrs[0];
    let handle = gw.handle();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(gw.run(async {
        let _ = rx.await;
    }));
    Gw {
        addr,
        addrs,
        handle,
        dir,
        stop: Some(tx),
    }
}

/// What the upstream saw of one handshake.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        let all: Vec<_> = self
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        (!all.is_empty()).then(|| all.join(" | "))
    }
}

/// An echo WebSocket server that records each handshake and picks the
/// subprotocol `chat` when offered.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Close codes the upstream received.
    pub closes: Arc<Mutex<Vec<u16>>>,
}

impl Upstream {
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no handshake seen")
    }
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

pub async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let closes = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let record_close = closes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            let record_close = record_close.clone();
            tokio::spawn(async move {
                let callback = |req: &Request, mut resp: Response| {
                    record.lock().unwrap().push(Seen {
                        path: req.uri().to_string(),
                        headers: req.headers().clone(),
                    });
                    let offered = req
                        .headers()
                        .get("sec-websocket-protocol")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    if offered.split(',').any(|p| p.trim() == "chat") {
                        resp.headers_mut()
                            .insert("sec-websocket-protocol", "chat".parse().unwrap());
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Close(frame) = &msg {
                        let code = frame.as_ref().map_or(1005, |f| f.code.into());
                        record_close.lock().unwrap().push(code);
                    }
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Upstream { addr, seen, closes }
}

/// A TCP connection to `to` from the loopback address `from`.
pub async fn tcp_from(from: &str, to: SocketAddr) -> TcpStream {
    let ip: IpAddr = from.parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// An upgrade the gateway refused: status, headers and the one-line body.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Opens a WebSocket to `gw` at `path` from `from`, with extra headers.
pub async fn connect(
    gw: SocketAddr,
    from: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, tungstenite::handshake::client::Response), Refused> {
    let mut req = format!("ws://{gw}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let tcp = tcp_from(from, gw).await;
    match tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)).await {
        Ok(ok) => Ok(ok),
        Err(tungstenite::Error::Http(resp)) => Err(Refused {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        }),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// `ws` that must be refused.
pub async fn refused(gw: SocketAddr, from: &str, path: &str, headers: &[(&str, &str)]) -> Refused {
    match connect(gw, from, path, headers).await {
        Ok((_, resp)) => panic!("expected a refusal, got {}", resp.status()),
        Err(r) => r,
    }
}

/// `ws` that must be accepted.
pub async fn accepted(gw: SocketAddr, from: &str, path: &str, headers: &[(&str, &str)]) -> Ws {
    match connect(gw, from, path, headers).await {
        Ok((ws, _)) => ws,
        Err(r) => panic!("expected 101, got {} {}", r.status, r.body),
    }
}

/// Sends `text` and expects it back.
pub async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo timed out")
        .expect("stream ended")
        .expect("read failed");
    assert_eq!(back.into_text().unwrap().as_str(), text);
}

/// The close frame `ws` receives next (skipping data).
pub async fn close_code(ws: &mut Ws) -> (u16, String) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no close within 10s");
        match msg {
            Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT with `claims`, signed with `key` as `alg`, with header `kid`.
pub fn sign(
    alg: Algorithm,
    key: &EncodingKey,
    kid: Option<&str>,
    claims: serde_json::Value,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";

/// An HS256 token for `sub`, valid for an hour.
pub fn hs256(sub: &str) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET),
        None,
        serde_json::json!({ "sub": sub, "exp": now() + 3600 }),
    )
}

/// A fresh key pair made with rcgen: (private PKCS#8 PEM, public SPKI PEM).
pub fn key_pair(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
    let kp = rcgen::KeyPair::generate_for(alg).unwrap();
    (kp.serialize_pem(), kp.public_key_pem())
}

/// Polls `f` until it holds (or panics after 10 s).
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Sends a WebSocket upgrade by hand and reads the answer's head: the status
/// and headers, whatever they are (tungstenite's client refuses some answers
/// browsers accept). The connection is returned for more.
pub async fn raw_upgrade(
    gw: SocketAddr,
    from: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, HeaderMap, TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tcp_from(from, gw).await;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {gw}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = tcp.read_u8().await.expect("answer ended early");
        head.push(b);
    }
    let mut parsed = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut parsed);
    resp.parse(&head).unwrap();
    let mut map = HeaderMap::new();
    for h in resp.headers.iter() {
        map.append(
            http::HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(h.value).unwrap(),
        );
    }
    (resp.code.unwrap(), map, tcp)
}
