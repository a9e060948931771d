//! Upstream groups: pick a server, connect (TCP, optional TLS) and complete
//! the WebSocket handshake *before* the client gets its 101, so a client
//! never sees a successful upgrade to a backend that is down.
//!
//! Its parts, each a module; an attempt at one server is two steps, [`dial`]
//! then [`ws`], each with its own timeout:
//!
//! - [`endpoint`]: what a server is (its label, address and TLS settings),
//!   built once per config.
//! - [`group`]: a group's servers as they are now (the config's IP servers
//!   and one per address of each name), rebuilt when an answer changes;
//!   what routes hold.
//! - [`balance`]: which servers to try, in order (round robin, least
//!   connections, two random choices, consistent hashing).
//! - [`affinity`]: the key a hashing group balances on, read from a request.
//! - [`sticky`]: the cookie a `sticky_cookie` group sets to name the server
//!   that took a client, and reads back to send it there again.
//! - [`dial`]: TCP, then TLS with SNI for `wss://`, to a
//!   [`Transport`] (`connect_timeout` for each);
//!   [`tcp`]: which of the server's addresses, from which source address.
//! - [`resolve`]: server names resolved in the background (never at a
//!   dial), one task per group, run by the gateway like the probes; the
//!   system's resolver or the `[resolver]` section's DNS servers.
//! - [`ws`]: the client handshake over that transport: the upgrade request,
//!   the 101 and its checks (`handshake_timeout`).
//! - [`error`]: why an attempt failed, what the client is told, and whether
//!   another server may be tried ([`Retry`](error::Retry)).
//! - [`pool`]: idle keep-alive connections per server, for plain HTTP.
//! - [`health`]: whether a server may take new sessions (passive ejection,
//!   probe verdicts, draining) and its live count, kept across reloads;
//!   [`probe`]: the active probes, one task per group, run by the gateway.
//! - [`rebalance`]: after a scale-out, moves sessions off servers above
//!   their share, a bounded number per second; one task per group that
//!   asks for it, run by the gateway like the probes.
//!
//! This module is one snapshot of a group ([`Upstream`]: its servers fixed,
//! indexed from 0): it takes the balancer's candidates in order,
//! dials and handshakes each, and moves on to the next while its failover
//! rule ([`Upstream::connect`]) allows. Plain HTTP requests take a
//! connection with [`Upstream::checkout`] (a pooled one when the chosen
//! server has one) and give it back with [`Group::checkin`]. Routes reach
//! these through the [`Group`], which hands each connection its current
//! snapshot.

mod affinity;
mod balance;
mod dial;
mod endpoint;
mod error;
mod group;
pub mod health;
mod pool;
pub mod probe;
pub mod rebalance;
pub mod resolve;
mod sticky;
mod tcp;
mod ws;

use std::{io, net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderValue};
use smallvec::SmallVec;
use tokio::time::Instant;

pub use self::{
    affinity::{Facts, Key, KeySource},
    balance::{Pick, MAX_WEIGHT},
    endpoint::ServerSpec,
    error::UpstreamError,
    group::{Group, GroupSpec},
    health::InFlight,
    pool::PoolLimits,
    sticky::{CookieKey, CookieToSet, SameSite, ServerId, StickyCookie},
    ws::{UpstreamRequest, MAX_RESPONSE_HEAD, MAX_RESPONSE_HEADERS},
};
use self::{balance::Balancer, endpoint::Endpoint, error::Phase, sticky::ServerIds};
use crate::{
    proto::head::Lines,
    stream::{Stream, Transport},
};

/// How long reaching an upstream may take (from the route's policy).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect, and then the TLS handshake for `wss://` (each has the
    /// whole of it), at each server tried.
    pub connect: Duration,
    /// From the first attempt to the upstream's 101, across every server
    /// tried: the longest a client waits before its 504.
    pub handshake: Duration,
    /// How long one server has to answer the upgrade while another server
    /// is left to try; the last server tried has what is left of
    /// `handshake`.
    pub attempt: Duration,
}

/// A finished upstream handshake.
pub struct Connected {
    pub io: Stream,
    /// The subprotocol the upstream chose (one the client offered).
    pub protocol: Option<HeaderValue>,
    /// End-to-end headers of the upstream's 101 (e.g. `Set-Cookie`), as
    /// it sent them.
    pub headers: Lines,
    /// Counts the session on its server (least connections): hold it for
    /// the session's life. It also names the server, for logs.
    pub load: InFlight,
    /// Tells the session when its server drains or sheds it (health.rs,
    /// rebalance.rs), and when the gateway drains.
    pub drain: crate::relay::DrainSignal,
    /// How long the server that answered took to connect (TCP, and TLS for
    /// `wss://`) and then to answer the upgrade, for the metrics.
    pub connect_took: Duration,
    pub handshake_took: Duration,
    /// The sticky cookie the client's 101 sets, when the server that took
    /// it is not the one its cookie named (sticky.rs).
    pub cookie: Option<CookieToSet>,
}

/// How a group spreads its connections (`[upstream.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub pick: Pick,
    /// The key of [`Pick::Hash`].
    pub source: Option<KeySource>,
    /// Servers tried for one connection at most (the first included).
    pub max_attempts: usize,
    /// Sessions moved per second at most, when the group rebalances
    /// (rebalance.rs); `None`: it does not.
    pub rebalance: Option<NonZeroU32>,
    /// The cookie that names a client's server, when the group sets one
    /// (sticky.rs); the policy above places clients without it.
    pub sticky: Option<Arc<StickyCookie>>,
}

impl Default for Balance {
    fn default() -> Self {
        Balance {
            pick: Pick::RoundRobin,
            source: None,
            max_attempts: 3,
            rebalance: None,
            sticky: None,
        }
    }
}

/// What a request asks of its group's balance, read from the request as the
/// client sent it: the key of a hashing group, and the server its sticky
/// cookie names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placement {
    pub key: Option<Key>,
    /// A valid id, not yet known to be one of the group's servers.
    pub pinned: Option<ServerId>,
}

/// Where a group's connections come from and how its names are kept
/// current (`source_addresses`, `resolve_interval`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Local IPs upstream connections are made from, in turn (tcp.rs).
    pub sources: Vec<IpAddr>,
    /// How often server names are resolved again (group.rs).
    pub resolve_interval: Duration,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            sources: Vec::new(),
            resolve_interval: Duration::from_secs(30),
        }
    }
}

/// A named group of servers and how connections are spread over them, as
/// of one answer of its names: replaced whole, never changed, when an
/// answer changes ([`Group`]), so servers are indexed from 0 for its life.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    endpoints: Vec<Endpoint>,
    balance: Balancer,
    source: Option<KeySource>,
    /// The group's sticky cookie, and each server's id in it.
    sticky: Option<Arc<StickyCookie>>,
    ids: ServerIds,
    max_attempts: usize,
    /// Sessions moved per second at most (rebalance.rs).
    rebalance: Option<NonZeroU32>,
    pool: Arc<pool::Pool>,
    /// Health and draining, index for index with `endpoints` (health.rs).
    health: health::Group,
}

/// A connection for one plain HTTP request: give it back with
/// [`Group::checkin`] if the exchange left it reusable, else drop it. It
/// holds the snapshot it came from, which goes on serving it after a newer
/// answer replaced it.
pub struct Conn {
    pub io: Transport,
    upstream: Arc<Upstream>,
    server: usize,
    /// It came from the pool (so the server may have closed it just now).
    pub reused: bool,
    /// The sticky cookie the response sets (as [`Connected::cookie`]).
    pub cookie: Option<CookieToSet>,
    /// Counts the request on its server while it is in flight.
    _load: InFlight,
}

impl Conn {
    fn endpoint(&self) -> &Endpoint {
        &self.upstream.endpoints[self.server]
    }

    /// The server's label, for logs.
    pub fn server(&self) -> Arc<str> {
        self.endpoint().shared_label()
    }

    /// The server's `host:port`, the `Host` sent when the client's is not.
    pub fn authority(&self) -> &HeaderValue {
        self.endpoint().authority()
    }

    /// A new connection to the same server, in place of a pooled one that
    /// broke before answering.
    async fn redial(&self, connect: Duration) -> Result<Conn, UpstreamError> {
        let up = &self.upstream;
        let dialed = dial::dial(self.endpoint(), connect, false).await;
        up.report(self.server, &dialed); // health
        Ok(Conn {
            io: dialed?,
            upstream: up.clone(),
            server: self.server,
            reused: false,
            cookie: self.cookie.clone(),
            _load: up.in_flight(self.server), // health
        })
    }

    /// Keeps a connection whose exchange ended cleanly for the next request.
    fn checkin(self) {
        self.upstream.pool.put(self.server, self.io);
    }
}

impl Upstream {
    /// A round-robin group of servers written as IPs (see
    /// [`Upstream::with_balance`]).
    #[cfg(test)]
    pub fn new(name: String, pool: PoolLimits, specs: Vec<ServerSpec>) -> Self {
        Self::with_ips(name, pool, specs, Balance::default())
    }

    /// A group of servers written as IPs, for tests.
    #[cfg(test)]
    fn with_ips(name: String, pool: PoolLimits, specs: Vec<ServerSpec>, balance: Balance) -> Self {
        let endpoints = specs.iter().map(Endpoint::fixed).collect();
        Self::with_balance(name, pool, endpoints, balance)
    }

    fn with_balance(
        name: String,
        pool: PoolLimits,
        endpoints: Vec<Endpoint>,
        balance: Balance,
    ) -> Self {
        let balancer = Balancer::new(
            balance.pick,
            endpoints.iter().map(|e| (e.label(), e.weight())),
        );
        Upstream {
            name,
            pool: pool::Pool::new(endpoints.len(), pool),
            health: health::Group::standalone(endpoints.iter().map(Endpoint::label)),
            ids: ServerIds::new(
                endpoints.iter().map(Endpoint::label),
                balance.sticky.as_deref().map_or(&[], |c| &c.keys),
            ),
            endpoints,
            balance: balancer,
            source: balance.source,
            sticky: balance.sticky,
            max_attempts: balance.max_attempts.max(1),
            rebalance: balance.rebalance,
        }
    }

    /// The group with the servers' shared health states (from the
    /// gateway's [`health::Registry`]), one per server in order.
    fn with_health(mut self, health: health::Group) -> Self {
        assert_eq!(health.servers.len(), self.endpoints.len());
        self.health = health;
        self
    }

    /// The group with its source addresses.
    fn with_sources(mut self, sources: &Arc<tcp::Sources>) -> Self {
        for e in &mut self.endpoints {
            e.set_sources(sources.clone());
        }
        self
    }

    /// What the request asks of the balance: its key, when the group
    /// hashes one, and the server its sticky cookie names, when the group
    /// sets one. The one reading of both that the upgrade and plain
    /// requests share, so both reach the same server.
    pub fn placement(&self, facts: &Facts<'_>) -> Placement {
        Placement {
            key: self.source.as_ref().and_then(|s| s.key(facts)),
            pinned: self
                .sticky
                .as_ref()
                .and_then(|c| c.requested(facts.headers)),
        }
    }

    /// Removes the group's sticky cookie from a request to be forwarded.
    pub fn strip_cookie(&self, headers: &mut HeaderMap) {
        if let Some(c) = &self.sticky {
            c.strip(headers);
        }
    }

    /// The cookie to set when `server` took a request placed so: none
    /// without a sticky cookie, or when the request's cookie named it.
    fn cookie_to_set(&self, placement: &Placement, server: usize) -> Option<CookieToSet> {
        let cookie = self.sticky.as_ref()?;
        let id = self.ids.of(server);
        (placement.pinned != Some(id)).then(|| CookieToSet {
            cookie: cookie.clone(),
            server: id,
        })
    }

    /// A connection to the chosen server for a plain HTTP request: an idle
    /// one from the pool if that server has one, else a new one, failing
    /// over to the next candidate while a server cannot be reached
    /// (refused, timed out, TLS failed: nothing of the request was sent,
    /// so this is safe for any method), within `max_attempts` and the
    /// `handshake` deadline.
    async fn checkout(
        self: &Arc<Self>,
        policy: &Timeouts,
        placement: Placement,
    ) -> Result<Conn, UpstreamError> {
        // One clock read for the deadline, the choice and the first
        // server's time; read again only after a server failed.
        let mut now = Instant::now();
        let deadline = now + policy.handshake;
        let mut last = None;
        let servers = self.available_candidates(&placement, now);
        if servers.is_empty() {
            // None up, or none at all (a name with no answer yet): 503.
            return Err(self.all_down()); // health
        }
        for server in servers {
            let Some(left) = time_left(deadline, now) else {
                break;
            };
            let load = self.in_flight(server); // health
            let conn = |io, reused| Conn {
                io,
                upstream: self.clone(),
                server,
                reused,
                cookie: self.cookie_to_set(&placement, server),
                _load: load,
            };
            if let Some(io) = self.pool.take(server) {
                return Ok(conn(io, true));
            }
            let dialed = dial::dial(&self.endpoints[server], policy.connect.min(left), false).await;
            self.report(server, &dialed); // health
            match dialed {
                Ok(io) => return Ok(conn(io, false)),
                Err(e) if fails_over(&e) => {
                    tracing::warn!(upstream = %self.name, error = %e, "server failed, trying the next one");
                    last = Some(e);
                    now = Instant::now();
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| self.no_servers()))
    }

    /// The servers to try for one connection, best first: the server the
    /// request's sticky cookie names, then the balancer's candidates, those
    /// that are up and not draining (health), at most `max_attempts` of
    /// them. A request not balanced by its key tries the servers a
    /// rebalance found above their share last (rebalance.rs), so that the
    /// sessions it moves land elsewhere; one with a key always goes where
    /// its key says.
    fn available_candidates(&self, placement: &Placement, now: Instant) -> Tries {
        let loads = |i: usize| self.load(i); // health
        let pinned = placement
            .pinned
            .and_then(|id| self.ids.server(id))
            .filter(|&server| self.available(server, now)); // health
        let mut servers: Tries = pinned.into_iter().collect();
        let candidates = self
            .balance
            .candidates(placement.key, &loads)
            .filter(|&server| Some(server) != pinned);
        if placement.key.is_some() {
            let left = self.max_attempts - servers.len();
            servers.extend(
                candidates
                    .filter(|&server| self.available(server, now))
                    .take(left),
            );
            return servers;
        }
        // The balancer's order within each part; no further than needed.
        let mut crowded = Vec::new();
        for server in candidates {
            match self.standing(server, now) {
                Some(false) => servers.push(server),
                Some(true) => crowded.push(server),
                None => {}
            }
            if servers.len() >= self.max_attempts {
                break;
            }
        }
        servers.extend(crowded);
        servers.truncate(self.max_attempts);
        servers
    }

    fn no_servers(&self) -> UpstreamError {
        UpstreamError::Unreachable {
            server: self.name.clone(),
            phase: Phase::Connect,
            source: io::Error::other("no servers"),
        }
    }

    /// Connects to the balancer's first candidate, failing over to the
    /// next while the failover rule (`fails_over`, below) allows, at most
    /// `max_attempts` servers and within the `handshake` deadline; the
    /// last failure is the answer when none succeeds.
    ///
    /// While another server is left to try, one that does not answer the
    /// upgrade has `attempt` (not the whole deadline), so a backend that
    /// accepts TCP and never answers costs its clients that much and not
    /// their 504.
    async fn connect(
        &self,
        req: UpstreamRequest<'_>,
        policy: &Timeouts,
        placement: Placement,
    ) -> Result<Connected, UpstreamError> {
        // One clock read for the deadline, the choice and the first
        // server's time; read again only after a server failed.
        let mut now = Instant::now();
        let deadline = now + policy.handshake;
        let servers = self.available_candidates(&placement, now);
        if servers.is_empty() {
            // None up, or none at all (a name with no answer yet): 503.
            return Err(self.all_down()); // health
        }
        let tries = servers.len();
        let mut last = None;
        for (n, server) in servers.into_iter().enumerate() {
            let Some(left) = time_left(deadline, now) else {
                break;
            };
            let endpoint = &self.endpoints[server];
            let limits = Timeouts {
                connect: policy.connect.min(left),
                handshake: match n + 1 < tries {
                    true => policy.attempt.min(left),
                    false => left,
                },
                attempt: policy.attempt,
            };
            // Counted from the moment it is chosen, so that a burst of
            // connections does not all pick the same least-loaded server.
            let load = self.in_flight(server); // health
            let drain = self.drain_signal(server, placement.key.map(|k| k.0)); // health
            let outcome = attempt(endpoint, &req, &limits, load, drain, now).await;
            self.report(server, &outcome); // health
            match outcome {
                Err(e) if fails_over(&e) => {
                    tracing::warn!(upstream = %self.name, error = %e, "server failed, trying the next one");
                    last = Some(e);
                    now = Instant::now();
                }
                Ok(connected) => {
                    return Ok(Connected {
                        cookie: self.cookie_to_set(&placement, server),
                        ..connected
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| self.no_servers()))
    }
}

/// The servers one connection tries, best first. Up to four (the default
/// `max_attempts` is 3) are held inline: choosing them allocates nothing.
type Tries = SmallVec<[usize; 4]>;

/// What is left before `deadline` at `now`; `None` once it has passed.
fn time_left(deadline: Instant, now: Instant) -> Option<Duration> {
    Some(deadline.saturating_duration_since(now)).filter(|d| !d.is_zero())
}

/// Whether the upgrade request counts as idempotent when deciding if it may
/// be repeated on another server ([`Retry::allows`](error::Retry::allows)).
/// It is a `GET`, which HTTP calls idempotent, and nginx's
/// `proxy_next_upstream` treats it so; a backend that acts on the upgrade
/// itself (registers a session, say) may see it twice.
const UPGRADE_IS_IDEMPOTENT: bool = true;

/// Whether a failed attempt moves on to the next server: when a retry is
/// safe ([`UpstreamError::retry`], with the upgrade taken as idempotent)
/// *and* the server could not be reached, broke the connection before a
/// complete answer, or gave none in time (an I/O error, a close, a failed
/// TLS handshake or a timeout, in any [`Phase`]), as nginx's `proxy_next_upstream error
/// timeout` does for a `GET`. The group's loop bounds what this costs:
/// `max_attempts` servers within one deadline.
///
/// Not after an answer, a refusal or an invalid 101: the server is up and
/// said what it meant. Never after the client's 101: by then there is no
/// attempt left to fail.
fn fails_over(e: &UpstreamError) -> bool {
    e.retry().allows(UPGRADE_IS_IDEMPOTENT)
        && matches!(
            e,
            UpstreamError::Unreachable { .. }
                | UpstreamError::Tls { .. }
                | UpstreamError::Timeout { .. }
        )
}

/// One server: dial, then handshake. `started` is when the server was
/// chosen (the caller's clock read), from which the connect is timed.
async fn attempt(
    endpoint: &Endpoint,
    req: &UpstreamRequest<'_>,
    policy: &Timeouts,
    load: InFlight,
    drain: crate::relay::DrainSignal,
    started: Instant,
) -> Result<Connected, UpstreamError> {
    let io = dial::dial(endpoint, policy.connect, true).await?;
    let dialed = Instant::now();
    let done = ws::handshake(io, endpoint, req, policy.handshake).await?;
    load.session_opened(); // health
    Ok(Connected {
        connect_took: dialed - started,
        handshake_took: dialed.elapsed(),
        io: Stream::new(done.io, done.early),
        protocol: done.protocol,
        headers: done.headers,
        load,
        drain,
        cookie: None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use http::{HeaderMap, StatusCode};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    #[test]
    fn a_failure_to_reach_or_a_silence_fails_over_an_answer_does_not() {
        let s = "ws://10.0.0.5:8080";
        let limit = Duration::from_secs(1);
        let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
        let cases = [
            (UpstreamError::unreachable(s, Phase::Connect, eof()), true),
            (UpstreamError::tls(s, eof()), true),
            (UpstreamError::unreachable(s, Phase::Upgrade, eof()), true),
            (UpstreamError::timeout(s, Phase::Connect, limit), true),
            (UpstreamError::timeout(s, Phase::Tls, limit), true),
            (UpstreamError::timeout(s, Phase::Upgrade, limit), true),
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
        for (e, fails_over_now) in cases {
            assert_eq!(fails_over(&e), fails_over_now, "{e}");
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

    /// A server nothing listens on; the port stays bound (never listening)
    /// while the socket is held, so no other test's listener can take it.
    async fn closed_port() -> (ServerSpec, tokio::net::TcpSocket) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        (ServerSpec::plain(socket.local_addr().unwrap()), socket)
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
        attempt: Duration::from_secs(5),
    };

    async fn connect(up: &Upstream, policy: &Timeouts) -> Result<Connected, UpstreamError> {
        up.connect(request(), policy, Placement::default()).await
    }

    #[tokio::test]
    async fn servers_are_taken_in_turn() {
        let (a, a_n) = server(Behaviour::Accept).await;
        let (b, b_n) = server(Behaviour::Accept).await;
        let (a_url, b_url) = (a.url.clone(), b.url.clone());
        let up = Upstream::new("pool".into(), PoolLimits::default(), vec![a, b]);
        let mut order = Vec::new();
        for _ in 0..4 {
            order.push(connect(&up, &POLICY).await.unwrap().load.label().to_owned());
        }
        assert_eq!(order, [&a_url, &b_url, &a_url, &b_url].map(String::as_str));
        assert_eq!(
            (a_n.load(Ordering::SeqCst), b_n.load(Ordering::SeqCst)),
            (2, 2)
        );
    }

    #[tokio::test]
    async fn a_refused_connection_fails_over_to_the_next() {
        let (dead, _held) = closed_port().await;
        let (live, live_n) = server(Behaviour::Accept).await;
        let live_url = live.url.clone();
        let up = Upstream::new("pool".into(), PoolLimits::default(), vec![dead, live]);
        // The first starts at the dead server, the second at the live one.
        for _ in 0..2 {
            assert_eq!(connect(&up, &POLICY).await.unwrap().load.label(), live_url);
        }
        assert_eq!(live_n.load(Ordering::SeqCst), 2);
    }

    /// A server that takes the request and hangs up counts as unreachable,
    /// so the request goes to the next server.
    #[tokio::test]
    async fn a_hang_up_during_the_upgrade_fails_over_to_the_next() {
        let (flaky, flaky_n) = server(Behaviour::HangUp).await;
        let (live, _) = server(Behaviour::Accept).await;
        let live_url = live.url.clone();
        let up = Upstream::new("pool".into(), PoolLimits::default(), vec![flaky, live]);
        assert_eq!(connect(&up, &POLICY).await.unwrap().load.label(), live_url);
        assert_eq!(flaky_n.load(Ordering::SeqCst), 1);
    }

    /// A server that accepts and never answers has `attempt`, then the next
    /// server is tried within what is left of the deadline.
    #[tokio::test(start_paused = true)]
    async fn a_silent_server_fails_over_after_its_attempt_timeout() {
        let (silent, silent_n) = server(Behaviour::Silent).await;
        let (live, live_n) = server(Behaviour::Accept).await;
        let live_url = live.url.clone();
        let up = Upstream::new("pool".into(), PoolLimits::default(), vec![silent, live]);
        let policy = Timeouts {
            attempt: Duration::from_secs(1),
            ..POLICY
        };
        let started = Instant::now();
        assert_eq!(connect(&up, &policy).await.unwrap().load.label(), live_url);
        // Paused clock: exactly the attempt timeout was spent on the silent one.
        assert_eq!(started.elapsed().as_secs(), 1);
        assert_eq!(silent_n.load(Ordering::SeqCst), 1);
        assert_eq!(live_n.load(Ordering::SeqCst), 1);
    }

    /// The last server tried has the whole of what is left of the deadline,
    /// and then the client gets a 504.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_every_attempt_together() {
        let (a, _) = server(Behaviour::Silent).await;
        let (b, _) = server(Behaviour::Silent).await;
        let up = Upstream::new("pool".into(), PoolLimits::default(), vec![a, b]);
        let policy = Timeouts {
            attempt: Duration::from_secs(2),
            ..POLICY
        };
        let started = Instant::now();
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
        assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(started.elapsed(), POLICY.handshake);
    }

    #[tokio::test]
    async fn max_attempts_bounds_the_servers_tried() {
        let ((first, _held1), (second, _held2)) = (closed_port().await, closed_port().await);
        let (live, live_n) = server(Behaviour::Accept).await;
        let balance = Balance {
            max_attempts: 2,
            ..Balance::default()
        };
        let up = Upstream::with_ips(
            "pool".into(),
            PoolLimits::default(),
            vec![first, second, live],
            balance,
        );
        // Starts at the first dead one and gives up before the live one.
        assert!(connect(&up, &POLICY).await.is_err());
        assert_eq!(live_n.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_session_is_counted_while_it_lives() {
        let (a, _) = server(Behaviour::Accept).await;
        let (b, _) = server(Behaviour::Accept).await;
        let balance = Balance {
            pick: Pick::LeastConn,
            ..Balance::default()
        };
        let up = Upstream::with_ips("pool".into(), PoolLimits::default(), vec![a, b], balance);
        let held = connect(&up, &POLICY).await.unwrap();
        // The next two go to the other server while the first is held.
        for _ in 0..2 {
            let other = connect(&up, &POLICY).await.unwrap();
            assert_ne!(other.load.label(), held.load.label());
        }
        assert_eq!((up.load(0) + up.load(1)), 1);
        drop(held);
        assert_eq!((up.load(0), up.load(1)), (0, 0));
    }

    #[tokio::test]
    async fn a_plain_request_is_counted_while_in_flight() {
        let (a, _) = server(Behaviour::Accept).await;
        let up = Arc::new(Upstream::new("pool".into(), PoolLimits::default(), vec![a]));
        let conn = up.checkout(&POLICY, Placement::default()).await.unwrap();
        assert_eq!(up.load(0), 1);
        conn.checkin();
        assert_eq!(up.load(0), 0);
        let conn = up.checkout(&POLICY, Placement::default()).await.unwrap();
        assert!(conn.reused);
        assert_eq!(up.load(0), 1);
        drop(conn);
        assert_eq!(up.load(0), 0);
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
        let (first, _held) = closed_port().await;
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

    /// A group with the sticky cookie `srv` over these servers.
    fn sticky(specs: Vec<ServerSpec>, max_attempts: usize) -> Arc<Upstream> {
        let balance = Balance {
            max_attempts,
            sticky: Some(Arc::new(StickyCookie::named("srv"))),
            ..Balance::default()
        };
        Arc::new(Upstream::with_ips(
            "pool".into(),
            PoolLimits::default(),
            specs,
            balance,
        ))
    }

    fn pinned_to(url: &str) -> Placement {
        Placement {
            key: None,
            pinned: Some(ServerId::of(url, None)),
        }
    }

    /// The cookie's server first, whatever the turn; a cookie is set only
    /// when the server that took the request is not the one it named.
    #[tokio::test]
    async fn a_cookie_pins_its_server_and_is_set_only_when_it_did_not_name_it() {
        let (a, _) = server(Behaviour::Accept).await;
        let (b, _) = server(Behaviour::Accept).await;
        let b_url = b.url.clone();
        let up = sticky(vec![a, b], 3);
        for _ in 0..4 {
            let c = up
                .connect(request(), &POLICY, pinned_to(&b_url))
                .await
                .unwrap();
            assert_eq!(c.load.label(), b_url);
            assert!(c.cookie.is_none());
            let conn = up.checkout(&POLICY, pinned_to(&b_url)).await.unwrap();
            assert_eq!(*conn.server(), *b_url);
            assert!(conn.cookie.is_none());
        }
        // No cookie, or one naming no server: the balance, and a cookie.
        let unknown = pinned_to("ws://gone:1");
        for placement in [Placement::default(), unknown] {
            let c = up.connect(request(), &POLICY, placement).await.unwrap();
            let set = c.cookie.expect("a cookie to set");
            assert_eq!(set.server, ServerId::of(c.load.label(), None));
        }
    }

    /// The cookie's server refuses the connection: the next candidate takes
    /// it, and the answer names that one.
    #[tokio::test]
    async fn a_refusing_cookie_server_fails_over_and_a_new_cookie_is_set() {
        let (dead, _held) = closed_port().await;
        let (live, _) = server(Behaviour::Accept).await;
        let (dead_url, live_url) = (dead.url.clone(), live.url.clone());
        let up = sticky(vec![dead, live], 2);
        let c = up
            .connect(request(), &POLICY, pinned_to(&dead_url))
            .await
            .unwrap();
        assert_eq!(c.load.label(), live_url);
        assert_eq!(c.cookie.unwrap().server, ServerId::of(&live_url, None));
        // With one attempt, the cookie's server is the only one tried: the
        // balance alone would have gone to the live server, listed first.
        let ((dead, _held), (live, _)) = (closed_port().await, server(Behaviour::Accept).await);
        let once = sticky(vec![live, dead], 1);
        let pinned = once.endpoints[1].label().to_owned();
        assert!(once
            .connect(request(), &POLICY, pinned_to(&pinned))
            .await
            .is_err());
    }

    #[tokio::test]
    /// No server at all (its names not answered yet): as when none is up,
    /// a 503 at once with a `Retry-After`.
    async fn a_group_without_servers_is_all_down() {
        let up = Upstream::new("empty".into(), PoolLimits::default(), Vec::new());
        let err = connect(&up, &POLICY).await.err().unwrap();
        assert!(matches!(err, UpstreamError::AllDown { .. }), "{err:?}");
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.retry_after(), Some(1));
    }
}
