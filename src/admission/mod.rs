//! Admission: everything decided about a connection *before* any backend
//! sees it, plus the per-frame checks the relay asks of it afterwards.
//!
//! [`Admission::admit`] runs between the upgrade checks and the upstream
//! connect (for plain HTTP requests too; [`Kind`] says which checks they
//! get), in this order (cheapest and most abusable first):
//!
//! 1. [`limits::HandshakeLimiter`]: upgrade requests per second per client → 429.
//! 2. [`origin`]: the browser `Origin` allow-list → 403.
//! 3. [`limits::Counters`]: sessions on the gateway / route → 503, per client → 429.
//! 4. [`jwt`]: the token (keys from [`jwks`]) → 401, or 403 for a missing claim or scope.
//! 5. Sessions per token subject → 429.
//!
//! The client address comes from [`client_ip`]. What is admitted holds
//! [`limits::Slots`], RAII counts released however the session ends. During
//! the session, [`crate::relay::gate::Gate`] meters each leg and watches
//! the token's expiry; [`Admitted::gates`] builds them.

pub mod client_ip;
pub mod jwks;
pub mod jwt;
pub mod limits;
pub mod origin;
pub mod pending;

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use http::{header, HeaderMap, HeaderValue, StatusCode, Uri};

use crate::{
    proto::reject::{Reason, Reject},
    relay::gate::{self, Events, Gate},
};
use client_ip::{ClientIp, TrustedProxies};
use jwt::Identity;
use limits::{Counters, HandshakeLimiter, Key, Over, Slots};

/// Gateway-wide admission settings from `[server]`.
#[derive(Debug, Clone, Default)]
pub struct ServerRules {
    /// Sessions open at once on the whole gateway.
    pub max_connections: Option<u32>,
    /// Connections not yet upgraded, on the whole gateway and per client IP
    /// (see [`pending`]).
    pub max_pending_connections: u32,
    pub max_pending_per_ip: u32,
    pub trusted_proxies: TrustedProxies,
    /// IPv6 clients are one client per network of this length.
    pub client_ipv6_prefix: u8,
    /// Bound on each route's handshake limiter.
    pub max_tracked_clients: usize,
}

/// A policy's admission rules, checked at load; see [`crate::config::file::PolicyFile`].
#[derive(Debug, Default)]
pub struct Rules {
    pub auth: Option<jwt::Auth>,
    pub origin: Option<origin::Origins>,
    pub limits: limits::Limits,
    pub rate: gate::Rates,
}

/// A snapshot of the live admission state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Sessions holding a slot (handshakes in progress included).
    pub open: u64,
    /// Keys in the connection-count map: (route, client), (route, subject), ...
    /// Zero when nothing is open: a key is removed with its last session.
    pub counted_keys: usize,
    /// Clients remembered by the handshake rate limiters.
    pub rate_limited_clients: usize,
    pub throttled: u64,
    pub rate_closed: u64,
    pub expired: u64,
}

/// What outlives a config reload: the counts of open sessions (they still
/// count against the new limits), the event counters, and the handshake
/// rate limiters of routes that keep their label (listeners, host and
/// path) and rate, so a reload does not hand every client a fresh burst.
#[derive(Debug, Default)]
pub struct Shared {
    counters: Arc<Counters>,
    events: Arc<Events>,
    handshakes: Mutex<HashMap<String, Arc<HandshakeLimiter>>>,
}

impl Shared {
    /// What the relay's gates did since start: (legs paused for going over
    /// their rate, sessions closed because their token expired).
    pub fn gate_events(&self) -> (u64, u64) {
        (
            self.events.throttled.load(Ordering::Relaxed),
            self.events.expired.load(Ordering::Relaxed),
        )
    }
}

/// Per-route runtime state.
#[derive(Debug)]
struct RouteState {
    /// The route's label, which its counts are kept under: a route that
    /// keeps its listeners, host and path across a reload keeps its counts.
    key: Arc<str>,
    handshakes: Option<Arc<HandshakeLimiter>>,
}

/// The gateway's admission control for one generation of the config.
#[derive(Debug)]
pub struct Admission {
    server: ServerRules,
    counters: Arc<Counters>,
    events: Arc<Events>,
    /// By route label (unique: config refuses two routes with one host and
    /// path on a listener, and the label names the listeners of a bound route).
    routes: HashMap<String, RouteState>,
}

impl Admission {
    /// Sets up the per-route state of `routes` (each route's label and
    /// rules), counting in `shared`. A route whose label and handshake rate
    /// are unchanged keeps its limiter.
    pub fn new<'a>(
        server: ServerRules,
        routes: impl IntoIterator<Item = (&'a str, &'a Rules)>,
        shared: &Shared,
    ) -> Self {
        let mut limiters = shared.handshakes.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = HashMap::new();
        let routes = routes
            .into_iter()
            .map(|(label, rules)| {
                let cap = server.max_tracked_clients;
                let handshakes = rules.limits.handshakes.map(|q| {
                    let limiter = limiters
                        .get(label)
                        .filter(|l| l.is_for(q, cap))
                        .cloned()
                        .unwrap_or_else(|| Arc::new(HandshakeLimiter::new(q, cap)));
                    kept.insert(label.to_owned(), limiter.clone());
                    limiter
                });
                let key = Arc::from(label);
                (label.to_owned(), RouteState { key, handshakes })
            })
            .collect();
        *limiters = kept;
        drop(limiters);
        Admission {
            server,
            counters: shared.counters.clone(),
            events: shared.events.clone(),
            routes,
        }
    }

    /// The client of a request from `peer`; `vouches` is false when the
    /// peer's PROXY header said it is the client itself, so even a trusted
    /// proxy's `X-Forwarded-For` is then the client's own writing.
    pub fn client(&self, peer: std::net::IpAddr, headers: &HeaderMap, vouches: bool) -> ClientIp {
        let nobody = TrustedProxies::default();
        let trusted = match vouches {
            true => &self.server.trusted_proxies,
            false => &nobody,
        };
        client_ip::resolve(peer, headers, trusted)
    }

    /// Whether `peer` may send a PROXY protocol header.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        self.server.trusted_proxies.contains(peer)
    }

    /// Decides whether a validated request on the route `label`, whose
    /// rules are `rules`, may go upstream. `kind` says which checks apply.
    pub async fn admit(
        &self,
        label: &str,
        rules: &Arc<Rules>,
        kind: Kind<'_>,
        client: &ClientIp,
        headers: &HeaderMap,
        uri: &Uri,
    ) -> Result<Admitted, Reject> {
        let rules = rules.clone();
        let state = &self.routes[label];
        let who = client_ip::client_key(client.ip, self.server.client_ipv6_prefix);
        if let Some(limiter) = &state.handshakes {
            limiter.check(who).map_err(|wait| {
                let message = match kind {
                    Kind::Upgrade { .. } => "too many connection attempts; slow down",
                    Kind::Http { .. } => "too many requests; slow down",
                };
                Reject::new(StatusCode::TOO_MANY_REQUESTS, Reason::RateLimited, message)
                    .retry_after(wait)
            })?;
        }
        if let Some(origins) = rules.origin.as_ref().filter(|_| kind.checks_origin()) {
            origins.check(headers)?;
        }
        let limits = &rules.limits;
        let retry = limits.retry_after;
        let mut slots = self
            .counters
            .acquire(&[
                (Key::Global, self.server.max_connections),
                (Key::Route(state.key.clone()), limits.max_connections),
                (
                    Key::Client(state.key.clone(), who),
                    limits.max_connections_per_ip,
                ),
            ])
            .map_err(|over| over_limit(over, retry))?;
        let identity = match rules.auth.as_ref().filter(|_| kind.checks_token()) {
            None => None,
            Some(auth) => {
                // Boxed: a key fetch's state is kilobytes, which every
                // admission (and upgrade) future would otherwise carry and
                // move, with or without a token to check.
                let id = Box::pin(auth.authenticate(headers, uri, kind.protocols()))
                    .await
                    .map_err(|e| e.reject())?;
                let sessions_per_subject = limits
                    .max_connections_per_subject
                    .filter(|_| matches!(kind, Kind::Upgrade { .. }));
                if let (Some(max), Some(sub)) = (sessions_per_subject, id.subject.clone()) {
                    let more = self
                        .counters
                        .acquire(&[(Key::Subject(state.key.clone(), sub), Some(max))])
                        .map_err(|over| over_limit(over, retry))?;
                    slots.merge(more);
                }
                Some(id)
            }
        };
        Ok(Admitted {
            slots,
            identity,
            rules,
            events: self.events.clone(),
        })
    }

    /// The live counts; every one returns to zero when no session is open.
    pub fn stats(&self) -> Stats {
        let (open, counted_keys) = self.counters.totals();
        Stats {
            open,
            counted_keys,
            rate_limited_clients: self
                .routes
                .values()
                .filter_map(|r| r.handshakes.as_deref())
                .map(HandshakeLimiter::tracked)
                .sum(),
            throttled: self.events.throttled.load(Ordering::Relaxed),
            rate_closed: self.events.rate_closed.load(Ordering::Relaxed),
            expired: self.events.expired.load(Ordering::Relaxed),
        }
    }
}

fn over_limit(over: Over, retry_after: Duration) -> Reject {
    let (status, reason, message) = match over.0 {
        Key::Global => (
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::LimitGlobal,
            "the gateway is at its connection limit; try again later",
        ),
        Key::Route(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::LimitRoute,
            "this service is at its connection limit; try again later",
        ),
        Key::Client(..) => (
            StatusCode::TOO_MANY_REQUESTS,
            Reason::LimitIp,
            "too many connections from your address",
        ),
        Key::Subject(..) => (
            StatusCode::TOO_MANY_REQUESTS,
            Reason::LimitSubject,
            "too many connections for this user",
        ),
    };
    Reject::new(status, reason, message).retry_after(retry_after)
}

/// Which checks a request gets. A plain HTTP request counts like a
/// handshake for the request rate, and holds a connection slot (gateway,
/// route, client) while it is in flight, as nginx's `limit_conn` counts
/// connections with a request in progress. Its token and Origin are
/// checked when the policy's `[http]` says so; sessions per token subject
/// count WebSocket sessions only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// A WebSocket upgrade offering these subprotocols (which may carry the token).
    Upgrade {
        protocols: &'a [String],
    },
    Http {
        token: bool,
        origin: bool,
    },
}

impl<'a> Kind<'a> {
    fn checks_origin(self) -> bool {
        matches!(self, Kind::Upgrade { .. } | Kind::Http { origin: true, .. })
    }

    fn checks_token(self) -> bool {
        matches!(self, Kind::Upgrade { .. } | Kind::Http { token: true, .. })
    }

    fn protocols(self) -> &'a [String] {
        match self {
            Kind::Upgrade { protocols } => protocols,
            Kind::Http { .. } => &[],
        }
    }
}

/// A request that passed admission: what it holds and what it changes upstream.
#[derive(Debug)]
pub struct Admitted {
    /// Released when the session ends, however it ends.
    pub slots: Slots,
    identity: Option<Identity>,
    rules: Arc<Rules>,
    events: Arc<Events>,
}

impl Admitted {
    /// Makes the upstream request safe: removes the token from wherever it
    /// came (unless forwarded on purpose) and replaces client-sent claim
    /// headers with the token's claims.
    pub fn prepare_upstream(
        &self,
        headers: &mut HeaderMap,
        path: &mut String,
        protocols: &mut Vec<String>,
    ) {
        if let (Some(auth), Some(id)) = (&self.rules.auth, &self.identity) {
            auth.prepare_upstream(id, headers, path, protocols);
        }
    }

    /// The checked token's claims, when the route has `[auth]`.
    pub fn claims(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.identity.as_ref().map(|id| &id.claims)
    }

    /// The token's `sub` claim, for the access log (never the token).
    pub fn subject(&self) -> Option<&str> {
        self.identity.as_ref()?.subject.as_deref()
    }

    /// The relay's checks for the client leg and the upstream leg.
    pub fn gates(&self) -> (Option<Gate>, Option<Gate>) {
        let expiry = self
            .rules
            .auth
            .as_ref()
            .filter(|a| a.close_on_expiry)
            .and_then(|a| Some(self.identity.as_ref()?.expires? + a.leeway));
        let rates = &self.rules.rate;
        (
            Gate::new(rates.client, expiry, self.events.clone()),
            Gate::new(rates.upstream, None, self.events.clone()),
        )
    }
}

impl Reject {
    /// Adds `Retry-After` in whole seconds (at least 1).
    pub fn retry_after(self, wait: Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.with_header(header::RETRY_AFTER, HeaderValue::from(secs.max(1)))
    }
}
