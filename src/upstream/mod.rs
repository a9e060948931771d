//! Upstream groups: pick a server, connect (TCP, optional TLS) and complete
//! the WebSocket handshake *before* the client gets its 101, so a client
//! never sees a successful upgrade to a backend that is down.
//!
//! Its parts, each a module; an attempt at one server is two steps, [`dial`]
//! then [`ws`], each with its own timeout:
//!
//! - [`endpoint`]: what a server is (its label, address and TLS settings),
//!   resolved once per config.
//! - [`balance`]: which servers to try, in order ([`RoundRobin`] today).
//! - [`dial`]: TCP, then TLS with SNI for `wss://`, to a
//!   [`Transport`](crate::stream::Transport) (`connect_timeout` for each).
//! - [`ws`]: the client handshake over that transport: the upgrade request,
//!   the 101 and its checks (`handshake_timeout`).
//! - [`error`]: why an attempt failed, what the client is told, and whether
//!   another server may be tried ([`Retry`](error::Retry)).
//! - [`pool`]: idle keep-alive connections per server, for plain HTTP.
//! - [`health`]: whether a server may take new sessions (passive ejection,
//!   probe verdicts, draining), kept across reloads; [`probe`]: the active
//!   probes, one task per group, run by the gateway.
//!
//! This module is the group: it takes the balancer's candidates in order,
//! dials and handshakes each, and moves on to the next while its failover
//! rule ([`Upstream::connect`]) allows. Plain HTTP requests take a
//! connection with [`Upstream::checkout`] (a pooled one when the chosen
//! server has one) and give it back with [`Upstream::checkin`].

mod balance;
mod dial;
mod endpoint;
mod error;
pub mod health;
mod pool;
pub mod probe;
mod ws;

use std::{io, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderValue};

use self::{balance::RoundRobin, endpoint::Endpoint, error::Phase};
pub use self::{
    endpoint::ServerSpec,
    error::UpstreamError,
    pool::PoolLimits,
    ws::{UpstreamRequest, MAX_RESPONSE_HEAD, MAX_RESPONSE_HEADERS},
};
use crate::stream::{Stream, Transport};

/// How long reaching an upstream may take (from the route's policy).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect, and then the TLS handshake for `wss://` (each has the
    /// whole of it).
    pub connect: Duration,
    /// From the upgrade request to the upstream's 101.
    pub handshake: Duration,
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
    /// Tells the session when its server drains (health.rs).
    pub drain: Option<crate::relay::DrainSignal>,
}

/// A named group of servers used round-robin.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    endpoints: Vec<Endpoint>,
    balance: RoundRobin,
    pool: Arc<pool::Pool>,
    /// Health and draining, index for index with `endpoints` (health.rs).
    health: health::Group,
}

/// A connection for one plain HTTP request: give it back with
/// [`Upstream::checkin`] if the exchange left it reusable, else drop it.
pub struct Conn<'a> {
    pub io: Transport,
    server: usize,
    endpoint: &'a Endpoint,
    /// It came from the pool (so the server may have closed it just now).
    pub reused: bool,
}

impl<'a> Conn<'a> {
    /// The server's label, for logs.
    pub fn server(&self) -> &'a str {
        self.endpoint.label()
    }

    /// The server's `host:port`, the `Host` sent when the client's is not.
    pub fn authority(&self) -> &HeaderValue {
        self.endpoint.authority()
    }
}

impl Upstream {
    pub fn new(name: String, pool: PoolLimits, specs: Vec<ServerSpec>) -> Self {
        Upstream {
            name,
            pool: pool::Pool::new(specs.len(), pool),
            health: health::Group::standalone(specs.iter().map(|s| s.url.as_str())),
            endpoints: specs.into_iter().map(Endpoint::new).collect(),
            balance: RoundRobin::new(),
        }
    }

    /// The group with the servers' shared health states (from the
    /// gateway's [`health::Registry`]), one per server in order.
    pub fn with_health(mut self, health: health::Group) -> Self {
        assert_eq!(health.servers.len(), self.endpoints.len());
        self.health = health;
        self
    }

    /// A connection to the next server for a plain HTTP request: an idle
    /// one from the pool if that server has one, else a new one (failing
    /// over to the next server while it cannot be reached, as
    /// [`Upstream::connect`] does).
    pub async fn checkout(&self, connect: Duration) -> Result<Conn<'_>, UpstreamError> {
        let mut last = None;
        let mut tried = false;
        for (server, endpoint) in self.balance.candidates(&self.endpoints).indexed() {
            // health: a server that is down or draining gets nothing new.
            if !self.available(server) {
                continue;
            }
            tried = true;
            if let Some(io) = self.pool.take(server) {
                return Ok(Conn {
                    io,
                    server,
                    endpoint,
                    reused: true,
                });
            }
            let dialed = dial::dial(endpoint, connect).await;
            self.report(server, &dialed); // health
            match dialed {
                Ok(io) => {
                    return Ok(Conn {
                        io,
                        server,
                        endpoint,
                        reused: false,
                    })
                }
                Err(e) if fails_over(&e) => {
                    tracing::warn!(upstream = %self.name, error = %e, "server unreachable, trying the next one");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if !tried && !self.endpoints.is_empty() {
            return Err(self.all_down()); // health
        }
        Err(last.unwrap_or_else(|| self.no_servers()))
    }

    /// A new connection to the server `conn` was to, in place of a pooled
    /// one that broke before answering.
    pub async fn redial<'a>(
        &'a self,
        conn: &Conn<'a>,
        connect: Duration,
    ) -> Result<Conn<'a>, UpstreamError> {
        let dialed = dial::dial(conn.endpoint, connect).await;
        self.report(conn.server, &dialed); // health
        let io = dialed?;
        Ok(Conn {
            io,
            server: conn.server,
            endpoint: conn.endpoint,
            reused: false,
        })
    }

    /// Keeps a connection whose exchange ended cleanly for the next request.
    pub fn checkin(&self, conn: Conn<'_>) {
        self.pool.put(conn.server, conn.io);
    }

    fn no_servers(&self) -> UpstreamError {
        UpstreamError::Unreachable {
            server: self.name.clone(),
            phase: Phase::Connect,
            source: io::Error::other("no servers"),
        }
    }

    /// Connects to the next server, failing over to the ones after it while
    /// the failover rule (`fails_over`, below) allows; each server is tried
    /// at most once, and the last failure is the answer when none succeeds.
    ///
    /// There is no deadline across attempts yet: each has its own timeouts,
    /// so failing over is bounded by the number of servers.
    pub async fn connect(
        &self,
        req: UpstreamRequest<'_>,
        policy: &Timeouts,
    ) -> Result<Connected, UpstreamError> {
        let mut last = None;
        let mut tried = false;
        for (server, endpoint) in self.balance.candidates(&self.endpoints).indexed() {
            // health: a server that is down or draining gets nothing new.
            if !self.available(server) {
                continue;
            }
            tried = true;
            let outcome = attempt(endpoint, &req, policy).await;
            self.report(server, &outcome); // health
            match outcome {
                Err(e) if fails_over(&e) => {
                    tracing::warn!(upstream = %self.name, error = %e, "server unreachable, trying the next one");
                    last = Some(e);
                }
                Ok(mut c) => {
                    c.drain = Some(self.drain_signal(server)); // health
                    return Ok(c);
                }
                other => return other,
            }
        }
        if !tried && !self.endpoints.is_empty() {
            return Err(self.all_down()); // health
        }
        Err(last.unwrap_or_else(|| self.no_servers()))
    }
}

/// Whether the upgrade request counts as idempotent when deciding if it may
/// be repeated on another server ([`Retry::allows`](error::Retry::allows)).
/// It is a `GET`, which HTTP calls idempotent, and nginx's
/// `proxy_next_upstream` treats it so; a backend that acts on the upgrade
/// itself (registers a session, say) may see it twice. Today's behaviour;
/// the next policy revisits it.
const UPGRADE_IS_IDEMPOTENT: bool = true;

/// Whether a failed attempt moves on to the next server: when a retry is
/// safe ([`UpstreamError::retry`], with the upgrade taken as idempotent)
/// *and* the server could not be reached or broke the connection before a
/// complete answer (an I/O error or a close, in any [`Phase`]), as nginx's
/// `proxy_next_upstream error` does for a `GET`.
///
/// Not after a timeout, though one in TCP or TLS is safe to retry: each
/// attempt would cost the client its whole timeout again, and there is no
/// deadline across attempts yet. Not after an answer, a refusal or an
/// invalid 101: the server is up and said what it meant.
fn fails_over(e: &UpstreamError) -> bool {
    e.retry().allows(UPGRADE_IS_IDEMPOTENT) && matches!(e, UpstreamError::Unreachable { .. })
}

/// One server: dial, then handshake.
async fn attempt(
    endpoint: &Endpoint,
    req: &UpstreamRequest<'_>,
    policy: &Timeouts,
) -> Result<Connected, UpstreamError> {
    let io = dial::dial(endpoint, policy.connect).await?;
    let done = ws::handshake(io, endpoint, req, policy.handshake).await?;
    Ok(Connected {
        io: Stream::new(done.io, done.early),
        protocol: done.protocol,
        headers: done.headers,
        server: endpoint.label().to_owned(),
        // Set to the server's own signal by `Upstream::connect`.
        drain: None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use http::StatusCode;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    #[test]
    fn only_a_failure_to_reach_fails_over() {
        let s = "ws://10.0.0.5:8080";
        let limit = Duration::from_secs(1);
        let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
        let cases = [
            (UpstreamError::unreachable(s, Phase::Connect, eof()), true),
            (UpstreamError::unreachable(s, Phase::Tls, eof()), true),
            (UpstreamError::unreachable(s, Phase::Upgrade, eof()), true),
            (UpstreamError::timeout(s, Phase::Connect, limit), false),
            (UpstreamError::timeout(s, Phase::Tls, limit), false),
            (UpstreamError::timeout(s, Phase::Upgrade, limit), false),
            (
                UpstreamError::Refused {
                    server: s.into(),
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    answer: Box::default(),
                },
                false,
            ),
            (
                UpstreamError::invalid(s, "wrong or missing Sec-WebSocket-Accept"),
                false,
            ),
        ];
        for (e, fails_over_today) in cases {
            assert_eq!(fails_over(&e), fails_over_today, "{e}");
            // Never beyond what is safe for an idempotent request (a GET).
            if fails_over(&e) {
                assert!(e.retry().allows(true), "{e}");
            }
        }
    }

    /// How a test server treats each connection.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// Completes the upgrade.
        Accept,
        /// Reads the request and closes without answering.
        HangUp,
        /// Reads the request and never answers.
        Silent,
        /// Answers 503.
        Refuse,
    }

    /// A loopback server; counts the connections it accepted.
    async fn server(behaviour: Behaviour) -> (ServerSpec, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !got.ends_with(b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let got = String::from_utf8(got).unwrap();
                    let key = got
                        .lines()
                        .find_map(|l| l.strip_prefix("sec-websocket-key: "))
                        .unwrap();
                    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
                    let answer = match behaviour {
                        Behaviour::HangUp => return,
                        Behaviour::Silent => String::new(),
                        Behaviour::Accept => format!(
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                        ),
                        Behaviour::Refuse => {
                            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".into()
                        }
                    };
                    let _ = s.write_all(answer.as_bytes()).await;
                    let _ = s.read(&mut buf).await;
                });
            }
        });
        (ServerSpec::plain(addr), accepted)
    }

    async fn closed_port() -> ServerSpec {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        ServerSpec::plain(l.local_addr().unwrap())
    }

    fn request() -> UpstreamRequest<'static> {
        UpstreamRequest {
            path: "/".into(),
            headers: HeaderMap::new(),
            host: None,
            protocols: &[],
        }
    }

    const POLICY: Timeouts = Timeouts {
        connect: Duration::from_secs(5),
        handshake: Duration::from_secs(5),
    };

    async fn connect(up: &Upstream, policy: &Timeouts) -> Result<Connected, UpstreamError> {
        up.connect(request(), policy).await
    }

    #[tokio::test]
    async fn servers_are_taken_in_turn() {
        let (a, a_n) = server(Behaviour::Accept).await;
        let (b, b_n) = server(Behaviour::Accept).await;
        let (a_url, b_url) = (a.url.clone(), b.url.clone());
        let up = Upstream::new("pool".into(), PoolLimits::default(), vec![a, b]);
        let mut order = Vec::new();
        for _ in 0..4 {
            order.push(connect(&up, &POLICY).await.unwrap().server);
        }
        assert_eq!(order, [&a_url, &b_url, &a_url, &b_url].map(String::as_str));
        assert_eq!(
            (a_n.load(Ordering::SeqCst), b_n.load(Ordering::SeqCst)),
            (2, 2)
        );
    }

    #[tokio::test]
    async fn a_refused_connection_fails_over_to_the_next() {
        let dead = closed_port().await;
        let (live, live_n) = server(Behaviour::Accept).await;
        let live_url = live.url.clone();
        let up = Upstream::new("pool".into(), PoolLimits::default(), vec![dead, live]);
        // The first starts at the dead server, the second at the live one.
        for _ in 0..2 {
            assert_eq!(connect(&up, &POLICY).await.unwrap().server, live_url);
        }
        assert_eq!(live_n.load(Ordering::SeqCst), 2);
    }

    /// Today's rule: a server that takes the request and hangs up counts as
    /// unreachable, so the request goes to the next server.
    #[tokio::test]
    async fn a_hang_up_during_the_upgrade_fails_over_to_the_next() {
        let (flaky, flaky_n) = server(Behaviour::HangUp).await;
        let (live, _) = server(Behaviour::Accept).await;
        let live_url = live.url.clone();
        let up = Upstream::new("pool".into(), PoolLimits::default(), vec![flaky, live]);
        assert_eq!(connect(&up, &POLICY).await.unwrap().server, live_url);
        assert_eq!(flaky_n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_timeout_does_not_fail_over() {
        let (silent, _) = server(Behaviour::Silent).await;
        let (live, live_n) = server(Behaviour::Accept).await;
        let up = Upstream::new("pool".into(), PoolLimits::default(), vec![silent, live]);
        let policy = Timeouts {
            handshake: Duration::from_millis(200),
            ..POLICY
        };
        let err = connect(&up, &policy).await.err().unwrap();
        assert!(
            matches!(
                err,
                UpstreamError::Timeout {
                    phase: Phase::Upgrade,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(live_n.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_refusal_does_not_fail_over() {
        let (refusing, _) = server(Behaviour::Refuse).await;
        let (live, live_n) = server(Behaviour::Accept).await;
        let up = Upstream::new("pool".into(), PoolLimits::default(), vec![refusing, live]);
        let err = connect(&up, &POLICY).await.err().unwrap();
        assert!(
            matches!(err, UpstreamError::Refused { status, .. } if status == StatusCode::SERVICE_UNAVAILABLE),
            "{err:?}"
        );
        assert_eq!(live_n.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn when_every_server_fails_the_last_failure_is_the_answer() {
        let first = closed_port().await;
        let (second, _) = server(Behaviour::HangUp).await;
        let second_url = second.url.clone();
        let up = Upstream::new("pool".into(), PoolLimits::default(), vec![first, second]);
        let err = connect(&up, &POLICY).await.err().unwrap();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot reach {second_url}: ")),
            "{err}"
        );
        assert_eq!(err.phase(), Phase::Upgrade);
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn a_group_without_servers_is_unreachable() {
        let up = Upstream::new("empty".into(), PoolLimits::default(), Vec::new());
        let err = connect(&up, &POLICY).await.err().unwrap();
        assert_eq!(err.to_string(), "cannot reach empty: no servers");
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    }
}
