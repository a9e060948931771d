//! Upstream groups: pick a server, connect (TCP, optional TLS) and complete
//! the WebSocket handshake *before* the client gets its 101, so a client
//! never sees a successful upgrade to a backend that is down.

use std::{
    io,
    sync::atomic::{AtomicUsize, Ordering},
    sync::Arc,
    time::Duration,
};

use http::{header, HeaderMap, HeaderValue, StatusCode};
use rustls_pki_types::ServerName;
use tokio::{io::AsyncWriteExt, net::TcpStream, time::timeout};
use tokio_rustls::{TlsConnector, TlsStream};

use crate::{
    proto::{
        forwarded,
        head::{self, HeadError},
        upgrade,
    },
    stream::{Stream, Transport},
};

/// One backend server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// As written, for logs: `ws://10.0.0.5:8080`.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Present for `wss://` servers.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// How long reaching an upstream may take (from the route's policy).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect, and the TLS handshake for `wss://`.
    pub connect: Duration,
    /// From the upgrade request to the upstream's 101.
    pub handshake: Duration,
}

/// Bounds on the upstream's answer head (its own headers, `Set-Cookie`s and all).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_HEADERS: usize = 100;

/// Why the upstream handshake failed; decides the client's status code.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach {server}: {source}")]
    Unreachable { server: String, source: io::Error },
    #[error("{server} did not {phase} within {limit:?}")]
    Timeout {
        server: String,
        phase: &'static str,
        limit: Duration,
    },
    #[error("{server} answered {status} to the upgrade")]
    Refused { server: String, status: StatusCode },
    #[error("{server} broke the handshake: {why}")]
    Invalid { server: String, why: String },
}

impl UpstreamError {
    /// 504 for timeouts, 502 for everything else.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The one line the client is told; the details stay in the log.
    pub fn public_message(&self) -> &'static str {
        match self {
            UpstreamError::Unreachable { .. } => "bad gateway: upstream unreachable",
            UpstreamError::Timeout { .. } => "gateway timeout: upstream did not answer in time",
            UpstreamError::Refused { .. } => "bad gateway: upstream refused the WebSocket upgrade",
            UpstreamError::Invalid { .. } => "bad gateway: upstream sent an invalid handshake",
        }
    }
}

/// What to ask the upstream for, built from the client's request.
pub struct UpstreamRequest<'a> {
    /// Path and query after the route's rewrite.
    pub path: String,
    /// End-to-end and forwarding headers (no Host, no handshake headers).
    pub headers: HeaderMap,
    /// The client's `Host`, when the route preserves it; otherwise the
    /// server's own `host:port` is sent.
    pub host: Option<HeaderValue>,
    /// The subprotocols the client offered.
    pub protocols: &'a [String],
}

/// A finished upstream handshake.
pub struct Connected {
    pub io: Stream,
    /// The subprotocol the upstream chose (one the client offered).
    pub protocol: Option<HeaderValue>,
    /// End-to-end headers of the upstream's 101 (e.g. `Set-Cookie`).
    pub headers: HeaderMap,
    /// Which server, for logs.
    pub server: String,
}

/// A named group of servers used round-robin.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    servers: Vec<Server>,
    next: AtomicUsize,
}

struct Server {
    url: String,
    host: String,
    port: u16,
    authority: HeaderValue,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Upstream {
    pub fn new(name: String, specs: Vec<ServerSpec>) -> Self {
        let servers = specs
            .into_iter()
            .map(|s| {
                let authority = match (s.host.contains(':'), s.port) {
                    (true, port) => format!("[{}]:{port}", s.host),
                    (false, port) => format!("{}:{port}", s.host),
                };
                let tls = s.tls.map(|cfg| {
                    let name = ServerName::try_from(s.host.clone())
                        .expect("host was validated as a URI authority");
                    (TlsConnector::from(cfg), name)
                });
                Server {
                    url: s.url,
                    host: s.host,
                    port: s.port,
                    authority: HeaderValue::from_str(&authority).expect("authority is header-safe"),
                    tls,
                }
            })
            .collect();
        Upstream {
            name,
            servers,
            next: AtomicUsize::new(0),
        }
    }

    /// Connects to the next server; a server that cannot be reached is
    /// skipped for the next one (as nginx's `proxy_next_upstream error`).
    pub async fn connect(
        &self,
        req: UpstreamRequest<'_>,
        policy: &Timeouts,
    ) -> Result<Connected, UpstreamError> {
        let n = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let server = &self.servers[(start + i) % n];
            match server.connect(&req, policy).await {
                Err(e @ UpstreamError::Unreachable { .. }) => {
                    tracing::warn!(upstream = %self.name, error = %e, "server unreachable, trying the next one");
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| UpstreamError::Unreachable {
            server: self.name.clone(),
            source: io::Error::other("no servers"),
        }))
    }
}

impl Server {
    async fn connect(
        &self,
        req: &UpstreamRequest<'_>,
        policy: &Timeouts,
    ) -> Result<Connected, UpstreamError> {
        let limit = policy.connect;
        let timed_out = |phase| UpstreamError::Timeout {
            server: self.url.clone(),
            phase,
            limit,
        };
        let unreachable = |source| UpstreamError::Unreachable {
            server: self.url.clone(),
            source,
        };
        let tcp = timeout(limit, TcpStream::connect((self.host.as_str(), self.port)))
            .await
            .map_err(|_| timed_out("accept the connection"))?
            .map_err(unreachable)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.handshake(Transport::Left(tcp), req, policy).await,
            // Boxed: TLS state is kilobytes, and every plain upgrade's
            // future would otherwise carry (and move) room for it.
            Some((connector, name)) => {
                Box::pin(async {
                    let tls = timeout(limit, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| timed_out("complete TLS"))?
                        .map_err(unreachable)?;
                    let tls = Transport::Right(Box::new(TlsStream::Client(tls)));
                    self.handshake(tls, req, policy).await
                })
                .await
            }
        }
    }

    async fn handshake(
        &self,
        io: Transport,
        req: &UpstreamRequest<'_>,
        policy: &Timeouts,
    ) -> Result<Connected, UpstreamError> {
        let limit = policy.handshake;
        timeout(limit, self.exchange(io, req))
            .await
            .map_err(|_| UpstreamError::Timeout {
                server: self.url.clone(),
                phase: "answer the upgrade",
                limit,
            })?
    }

    async fn exchange(
        &self,
        mut io: Transport,
        req: &UpstreamRequest<'_>,
    ) -> Result<Connected, UpstreamError> {
        let invalid = |why: &str| UpstreamError::Invalid {
            server: self.url.clone(),
            why: why.to_owned(),
        };
        let key = tungstenite::handshake::client::generate_key();
        // The handshake's own headers; `req.headers` has none of them (they
        // are per hop), so both are written as they are, without a merged copy.
        let mut h = HeaderMap::with_capacity(6);
        h.insert(
            header::HOST,
            req.host.clone().unwrap_or_else(|| self.authority.clone()),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_str(&key).expect("base64 key is header-safe"),
        );
        if !req.protocols.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&req.protocols.join(", ")) {
                h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
            }
        }

        let broken = |source| UpstreamError::Unreachable {
            server: self.url.clone(),
            source,
        };
        io.write_all(&head::encode_get(&req.path, req.headers.iter().chain(&h)))
            .await
            .map_err(broken)?;
        let answer = head::read_response(&mut io, MAX_RESPONSE_HEAD, MAX_RESPONSE_HEADERS)
            .await
            .map_err(|e| match e {
                HeadError::Io(e) => broken(e),
                HeadError::Closed => broken(io::ErrorKind::UnexpectedEof.into()),
                e => UpstreamError::Invalid {
                    server: self.url.clone(),
                    why: e.to_string(),
                },
            })?;
        let (status, rh) = answer.head;
        if status != StatusCode::SWITCHING_PROTOCOLS {
            return Err(UpstreamError::Refused {
                server: self.url.clone(),
                status,
            });
        }
        if !upgrade::has_token(&rh, header::UPGRADE, "websocket")
            || !upgrade::has_token(&rh, header::CONNECTION, "upgrade")
        {
            return Err(invalid(
                "101 without Upgrade: websocket and Connection: upgrade",
            ));
        }
        let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
        if rh
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .map(HeaderValue::as_bytes)
            != Some(expected.as_bytes())
        {
            return Err(invalid("wrong or missing Sec-WebSocket-Accept"));
        }
        if rh.contains_key(header::SEC_WEBSOCKET_EXTENSIONS) {
            return Err(invalid("negotiated an extension that was not offered"));
        }
        let protocol = rh.get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
        if let Some(p) = &protocol {
            let chosen = p.to_str().unwrap_or_default();
            if !req.protocols.iter().any(|offered| offered == chosen) {
                return Err(invalid("chose a subprotocol the client did not offer"));
            }
        }
        let headers = forwarded::end_to_end(&rh);
        Ok(Connected {
            io: Stream::new(io, answer.early),
            protocol,
            headers,
            server: self.url.clone(),
        })
    }
}
