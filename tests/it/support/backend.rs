//! The WebSocket backend behind the gateway. Every backend records what it
//! saw of each upgrade request (path and headers) and the close codes it
//! received, and counts its open connections; it either serves each
//! connection itself (echo, a greeting by name, or a handler of the
//! test's) or hands it to the test (scripted).

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};
use tokio_tungstenite::{
    tungstenite::{
        handshake::server::{ErrorResponse, Request as HandshakeRequest, Response},
        protocol::{CloseFrame, WebSocketConfig},
        Message,
    },
    WebSocketStream,
};

use super::guard;

/// Any byte stream a backend or client may run over (TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// What a backend saw of one upgrade request.
#[derive(Clone, Debug)]
pub struct Request {
    /// The path and query.
    pub path: String,
    pub headers: HeaderMap,
}

impl Request {
    /// A header as text; panics if it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut all = self.headers.get_all(name).iter();
        let first = all.next()?;
        assert!(all.next().is_none(), "header {name} repeated upstream");
        Some(first.to_str().unwrap())
    }
}

/// Close codes a backend received (1005 for a close without one).
type Closes = Arc<Mutex<Vec<u16>>>;

/// The SNI of each TLS handshake a backend completed (`None`: none sent).
type ServerNames = Arc<Mutex<Vec<Option<String>>>>;

/// Counts a connection as open while it lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Open {
        count.fetch_add(1, Ordering::SeqCst);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One connection a backend accepted.
pub struct BackendConn {
    pub request: Request,
    pub ws: WebSocketStream<BoxIo>,
    closes: Closes,
    /// Counted in [`Backend::open`] until the connection is dropped (for a
    /// backend that serves it: when its handler returns).
    _open: Open,
}

impl BackendConn {
    /// A request header as text; panics if it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request.header(name)
    }

    /// The path and query the gateway asked for.
    pub fn path(&self) -> &str {
        &self.request.path
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

    /// Echoes data messages until the connection ends, recording close codes.
    pub async fn echo(mut self) {
        while let Some(Ok(msg)) = self.ws.next().await {
            if let Message::Close(frame) = &msg {
                let code = frame.as_ref().map_or(1005, |f| f.code.into());
                self.closes.lock().unwrap().push(code);
            }
            if (msg.is_text() || msg.is_binary()) && self.ws.send(msg).await.is_err() {
                break;
            }
        }
    }

    /// Sends `"<name> <path and query>"`, so a client can tell who it
    /// reached, then echoes.
    pub async fn greet_and_echo(mut self, name: &str) {
        let hello = format!("{name} {}", self.path());
        if self.ws.send(Message::text(hello)).await.is_ok() {
            self.echo().await;
        }
    }
}

type Handler = Arc<dyn Fn(BackendConn) + Send + Sync>;

/// How a backend answers the handshake; see [`Backend::builder`].
#[derive(Clone, Default)]
#[must_use]
pub struct BackendBuilder {
    protocol: Option<String>,
    protocol_if_offered: Option<String>,
    response_headers: Vec<(String, String)>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl BackendBuilder {
    /// Chooses this subprotocol (written as-is in the 101), offered or not.
    pub fn protocol(mut self, p: &str) -> Self {
        self.protocol = Some(p.to_owned());
        self
    }

    /// Chooses this subprotocol when the request offers it.
    pub fn protocol_if_offered(mut self, p: &str) -> Self {
        self.protocol_if_offered = Some(p.to_owned());
        self
    }

    /// An extra header on the 101.
    pub fn response_header(mut self, name: &str, value: &str) -> Self {
        self.response_headers
            .push((name.to_owned(), value.to_owned()));
        self
    }

    /// Terminates TLS with this config before the WebSocket handshake (its
    /// URL is then `wss://localhost:PORT`).
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Hands every connection to the test: [`Backend::accept`].
    pub async fn scripted(self) -> Backend {
        let (tx, conns) = mpsc::unbounded_channel();
        let mut b = self
            .start(Arc::new(move |conn| {
                let _ = tx.send(conn);
            }))
            .await;
        b.conns = Some(conns);
        b
    }

    /// Echoes every connection.
    pub async fn echo(self) -> Backend {
        self.serve(BackendConn::echo).await
    }

    /// Serves every connection with `handler`, each in a task of its own.
    pub async fn serve<F, Fut>(self, handler: F) -> Backend
    where
        F: Fn(BackendConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.serve_on(listener, handler).await
    }

    /// [`serve`](Self::serve) on a listener the test bound (an address
    /// other than `127.0.0.1:0`).
    pub async fn serve_on<F, Fut>(self, listener: TcpListener, handler: F) -> Backend
    where
        F: Fn(BackendConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.start_on(
            listener,
            Arc::new(move |conn| {
                tokio::spawn(handler(conn));
            }),
        )
        .await
    }

    async fn start(self, handler: Handler) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.start_on(listener, handler).await
    }

    async fn start_on(self, listener: TcpListener, handler: Handler) -> Backend {
        let addr = listener.local_addr().unwrap();
        let (requests, closes): (Arc<Mutex<Vec<Request>>>, Closes) = Default::default();
        let server_names = ServerNames::default();
        let open = Arc::<AtomicUsize>::default();
        let b = Backend {
            addr,
            tls: self.tls.is_some(),
            requests: requests.clone(),
            closes: closes.clone(),
            server_names: server_names.clone(),
            open: open.clone(),
            conns: None,
        };
        let opts = Arc::new(self);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (opts, handler) = (opts.clone(), handler.clone());
                let (requests, closes) = (requests.clone(), closes.clone());
                let (server_names, open) = (server_names.clone(), open.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let io: BoxIo = match &opts.tls {
                        None => Box::new(tcp),
                        Some(cfg) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
                            match acceptor.accept(tcp).await {
                                Ok(s) => {
                                    let sni = s.get_ref().1.server_name().map(str::to_owned);
                                    server_names.lock().unwrap().push(sni);
                                    Box::new(s)
                                }
                                Err(_) => return,
                            }
                        }
                    };
                    if let Some((request, ws)) = opts.handshake(io, &requests).await {
                        handler(BackendConn {
                            request,
                            ws,
                            closes,
                            _open: Open::new(&open),
                        });
                    }
                });
            }
        });
        b
    }

    /// Completes the WebSocket handshake, recording the request in `requests`.
    async fn handshake(
        &self,
        io: BoxIo,
        requests: &Mutex<Vec<Request>>,
    ) -> Option<(Request, WebSocketStream<BoxIo>)> {
        let mut seen = None;
        // The signature is tungstenite's `Callback`; its error type is not ours to shrink.
        #[allow(clippy::result_large_err)]
        let callback =
            |req: &HandshakeRequest, mut resp: Response| -> Result<Response, ErrorResponse> {
                let request = Request {
                    path: req.uri().to_string(),
                    headers: req.headers().clone(),
                };
                requests.lock().unwrap().push(request.clone());
                let offered = request.header("sec-websocket-protocol").unwrap_or_default();
                let chosen = self.protocol.clone().or_else(|| {
                    self.protocol_if_offered
                        .clone()
                        .filter(|p| offered.split(',').any(|o| o.trim() == p))
                });
                seen = Some(request);
                let h = resp.headers_mut();
                if let Some(p) = chosen {
                    h.insert("sec-websocket-protocol", p.parse().unwrap());
                }
                for (k, v) in &self.response_headers {
                    h.append(
                        http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        v.parse().unwrap(),
                    );
                }
                Ok(resp)
            };
        // No message size limit: the gateway's limits are what is tested.
        let config = WebSocketConfig::default().max_message_size(None);
        let ws = tokio_tungstenite::accept_hdr_async_with_config(io, callback, Some(config))
            .await
            .ok()?;
        Some((seen?, ws))
    }
}

/// A WebSocket backend on `127.0.0.1:0`.
pub struct Backend {
    pub addr: SocketAddr,
    tls: bool,
    requests: Arc<Mutex<Vec<Request>>>,
    closes: Closes,
    server_names: ServerNames,
    /// WebSocket connections open now.
    open: Arc<AtomicUsize>,
    /// Connections for the test, when scripted.
    conns: Option<mpsc::UnboundedReceiver<BackendConn>>,
}

impl Backend {
    /// A backend that answers the handshake other than by default.
    pub fn builder() -> BackendBuilder {
        BackendBuilder::default()
    }

    /// See [`BackendBuilder::scripted`].
    pub async fn scripted() -> Backend {
        Backend::builder().scripted().await
    }

    /// See [`BackendBuilder::echo`].
    pub async fn echo() -> Backend {
        Backend::builder().echo().await
    }

    /// Greets every connection with its name and the path it asked for,
    /// then echoes: [`BackendConn::greet_and_echo`].
    pub async fn named(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Backend::named_on(listener, name).await
    }

    /// [`named`](Self::named) on a listener the test bound.
    pub async fn named_on(listener: TcpListener, name: &str) -> Backend {
        let name: Arc<str> = name.into();
        Backend::builder()
            .serve_on(listener, move |conn| {
                let name = name.clone();
                async move { conn.greet_and_echo(&name).await }
            })
            .await
    }

    /// See [`BackendBuilder::serve`].
    pub async fn serve<F, Fut>(handler: F) -> Backend
    where
        F: Fn(BackendConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Backend::builder().serve(handler).await
    }

    /// The URL to put in `servers`.
    pub fn url(&self) -> String {
        if self.tls {
            format!("wss://localhost:{}", self.addr.port())
        } else {
            format!("ws://{}", self.addr)
        }
    }

    /// The next connection the gateway opened (scripted backends only).
    pub async fn accept(&mut self) -> BackendConn {
        let conns = self.conns.as_mut().expect("a scripted backend");
        guard("the gateway to connect to the backend", conns.recv())
            .await
            .expect("backend stopped")
    }

    /// Every upgrade request seen so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// The last upgrade request seen.
    pub fn last(&self) -> Request {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no handshake seen")
    }

    /// How many upgrade requests were seen.
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The SNI of every TLS handshake completed so far, in order.
    pub fn server_names(&self) -> Vec<Option<String>> {
        self.server_names.lock().unwrap().clone()
    }

    /// Close codes received on connections the backend serves itself.
    pub fn closes(&self) -> Vec<u16> {
        self.closes.lock().unwrap().clone()
    }

    /// WebSocket connections open now (handshake done, not yet dropped).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// Several backends, each greeting with its own name ([`Backend::named`]):
/// for upstreams of their own, or one upstream's pool of servers.
pub struct Fleet {
    pub members: Vec<(String, Backend)>,
}

/// A fleet of `names.len()` named backends.
pub async fn fleet(names: &[&str]) -> Fleet {
    let mut members = Vec::new();
    for name in names {
        members.push((name.to_string(), Backend::named(name).await));
    }
    Fleet { members }
}

impl Fleet {
    /// Every member's URL, in order: one upstream's `servers`.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|(_, b)| b.url()).collect()
    }

    /// Every member's open connections, in order.
    pub fn open(&self) -> Vec<usize> {
        self.members.iter().map(|(_, b)| b.open()).collect()
    }
}
