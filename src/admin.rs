//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`,
//! `/status.json`, the status page `/`, and runtime drain of a server
//! (`POST /upstreams/{group}/servers/{label}/drain` and `/undrain`).
//!
//! It has its own address (loopback by default) and never shares a public
//! listener. Its traffic is a scraper and an operator, so it is served by
//! hyper on worker 0's runtime; nothing here is on the data path. Rates
//! for the status page come from a ring of once-a-second snapshots of the
//! metrics' totals, taken by the admin task.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::{net::TcpListener, time::Instant};
use tokio_util::sync::CancellationToken;

pub mod client;

use crate::{
    log::Secret,
    observe::{Metrics, ServerLabels, Totals},
    proto::host::Authority,
    shutdown::Sessions,
    upstream::health::{AdminDrainError, Registry},
};

/// The status page: self-contained (no external assets), it refreshes
/// from `/status.json`.
const PAGE: &str = include_str!("admin/status.html");

/// Snapshots kept for rates: five minutes at one a second.
const RING: usize = 300;

/// Admin connections served at once; one past this is closed at accept.
/// The admin listener is the operator's and the scraper's, a few at a time.
pub const MAX_CONNECTIONS: usize = 64;

/// What the admin endpoints read and act on; all of it outlives reloads.
pub struct State {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Registry>,
    pub sessions: Arc<Sessions>,
    pub ready: Arc<AtomicBool>,
    pub token: Option<Secret<String>>,
    ring: Mutex<VecDeque<(Instant, Totals)>>,
    /// Held by a `/metrics` scrape while it rebuilds and renders; holds
    /// the gate event counts the counters were last brought up to.
    scrape: Mutex<(u64, u64)>,
    admission: Arc<crate::admission::Shared>,
}

impl State {
    pub fn new(
        metrics: Arc<Metrics>,
        health: Arc<Registry>,
        sessions: Arc<Sessions>,
        ready: Arc<AtomicBool>,
        token: Option<Secret<String>>,
        admission: Arc<crate::admission::Shared>,
    ) -> Self {
        State {
            metrics,
            health,
            sessions,
            ready,
            token,
            ring: Mutex::default(),
            scrape: Mutex::default(),
            admission,
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, Totals)>> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves `listener` until `stop`; snapshots the totals once a second.
pub async fn serve(listener: std::net::TcpListener, state: Arc<State>, stop: CancellationToken) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the admin socket");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                let totals = state.metrics.totals();
                let mut ring = state.ring();
                if ring.len() == RING {
                    ring.pop_front();
                }
                ring.push_back((Instant::now(), totals));
            }
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    // Out of descriptors, say: try again later, not at once.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue; // over MAX_CONNECTIONS: dropped, so closed
                };
                let state = state.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, req)) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    // A slow client cannot hold the admin task: bounded, and
                    // cut when the gateway stops.
                    tokio::select! {
                        _ = tokio::time::timeout(Duration::from_secs(60), conn) => {}
                        () = stop.cancelled() => {}
                    }
                    drop(slot);
                });
            }
        }
    }
}

type Answer = Response<Full<Bytes>>;

fn reply(status: StatusCode, kind: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Answer {
    reply(status, "text/plain; charset=utf-8", body)
}

fn answer(state: &State, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_owned();
    let open = matches!(path.as_str(), "/healthz" | "/readyz" | "/");
    if !open && !authorized(state.token.as_ref().map(|t| t.expose().as_str()), &req) {
        let mut r = text(StatusCode::UNAUTHORIZED, "bearer token required\n");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => match state.ready.load(Ordering::Relaxed) {
            true => text(StatusCode::OK, "ready\n"),
            false if state.sessions.is_draining() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            false => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        },
        (&Method::GET, "/metrics") => {
            // One scrape at a time: the server families are cleared and
            // rebuilt, so two at once would see each other's halves.
            let body = {
                let mut seen = state.scrape.lock().unwrap_or_else(|e| e.into_inner());
                refresh_gauges(state, &mut seen);
                state.metrics.render()
            };
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            )
        }
        (&Method::GET, "/status.json") => reply(
            StatusCode::OK,
            "application/json",
            status(state).to_string(),
        ),
        (&Method::GET, "/") => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        // A page elsewhere that the operator's browser has open could
        // otherwise post here (a form or `no-cors` fetch needs no
        // preflight), and with no token set, be obeyed; with no token, a
        // page of a name rebound to this address (DNS rebinding) too.
        (&Method::POST, _) if cross_site(&req, state.token.is_none()) => {
            text(StatusCode::FORBIDDEN, "cross-site request refused\n")
        }
        (&Method::POST, p) => match drain_target(p) {
            Some((group, label, on)) => match state.health.admin_drain(&group, &label, on) {
                Ok(changed) => text(
                    StatusCode::OK,
                    format!(
                        "{} {group} {label}{}\n",
                        if on { "draining" } else { "undrained" },
                        if changed { "" } else { " (already)" }
                    ),
                ),
                Err(e @ AdminDrainError::NotFound) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
                Err(e @ AdminDrainError::ByConfig) => text(StatusCode::CONFLICT, format!("{e}\n")),
            },
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Whether `req` carries the token (compared in constant time), or no
/// token is configured.
fn authorized(token: Option<&str>, req: &Request<Incoming>) -> bool {
    let Some(token) = token else { return true };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

/// A browser's request from a page of another origin: its `Origin` does
/// not name the host it asked. The status page's own posts are
/// same-origin; the CLI and curl send no `Origin`. With `by_address`, a
/// browser's request must also have asked for the listener by address or
/// as `localhost`: a rebinding page's name resolves here, and its `Origin`
/// and `Host` agree.
fn cross_site(req: &Request<Incoming>, by_address: bool) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return false;
    };
    let origin = origin.as_bytes();
    let authority = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"));
    let host = req.headers().get(header::HOST).map(|h| h.as_bytes());
    let named = || {
        host.and_then(|h| Authority::parse(h).ok())
            .is_none_or(|a| !a.is_address() && a.host() != "localhost")
    };
    authority.is_none() || authority != host || (by_address && named())
}

/// Equal without an early exit at the first difference (`subtle`); only
/// the length shows through the timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// `/upstreams/{group}/servers/{label}/drain|undrain`, the segments
/// percent-decoded (a label holds `:` and may hold `/`).
fn drain_target(path: &str) -> Option<(String, String, bool)> {
    let rest = path.strip_prefix("/upstreams/")?;
    let (group, rest) = rest.split_once("/servers/")?;
    let (label, action) = rest.rsplit_once('/')?;
    let on = match action {
        "drain" => true,
        "undrain" => false,
        _ => return None,
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    Some((decode(group)?, decode(label)?, on))
}

/// The pool and drain gauges, read from their owners at scrape time.
fn refresh_gauges(state: &State, seen: &mut (u64, u64)) {
    let m = &state.metrics;
    // The gates count in admission's events (no metrics handle on the
    // relay's path); the counters are brought up to them.
    let (throttled, expired) = state.admission.gate_events();
    m.throttles.inc_by(throttled.saturating_sub(seen.0));
    m.expiry_closes.inc_by(expired.saturating_sub(seen.1));
    *seen = (throttled, expired);
    let now = Instant::now();
    // Removed servers leave the families with the registry.
    m.server_up.clear();
    m.server_draining.clear();
    m.server_sessions.clear();
    m.server_opened.clear();
    for (upstream, server, s) in state.health.list() {
        let key = ServerLabels { upstream, server };
        m.server_up
            .get_or_create(&key)
            .set(i64::from(s.healthy(now)));
        m.server_draining
            .get_or_create(&key)
            .set(i64::from(s.is_draining()));
        m.server_sessions.get_or_create(&key).set(s.load() as i64);
        // Rebuilt at each scrape from the server's own count, which only
        // grows while the server is listed: still a counter to Prometheus.
        m.server_opened.get_or_create(&key).inc_by(s.opened());
    }
    let draining = state.sessions.is_draining();
    m.draining.set(i64::from(draining));
    m.drain_remaining.set(if draining {
        state.sessions.active() as i64
    } else {
        0
    });
}

/// `/status.json`: live state, totals, and rates from the snapshot ring.
fn status(state: &State) -> Value {
    let now = Instant::now();
    let totals = state.metrics.totals();
    let ring = state.ring();
    // Per-second rates over the last snapshot interval (up to ~2 s back).
    let last = ring
        .iter()
        .rev()
        .find(|(t, _)| now.duration_since(*t) >= Duration::from_millis(500));
    let window = ring.front();
    report(&totals, last, window, now, state)
}

fn report(
    totals: &Totals,
    last: Option<&(Instant, Totals)>,
    window: Option<&(Instant, Totals)>,
    now: Instant,
    state: &State,
) -> Value {
    let rate = |f: &dyn Fn(&Totals) -> u64| -> f64 {
        match last {
            Some((t, then)) => {
                let secs = now.duration_since(*t).as_secs_f64().max(1e-3);
                f(totals).saturating_sub(f(then)) as f64 / secs
            }
            None => 0.0,
        }
    };
    let refused_total = |t: &Totals| t.refusals.iter().map(|r| r.2).sum::<u64>();
    let http_total = |t: &Totals| t.http.iter().map(|r| r.1).sum::<u64>();
    let since = |t: &Totals, pick: &dyn Fn(&Totals) -> Vec<(String, u64)>| -> Vec<Value> {
        let before = window.map(|(_, w)| pick(w)).unwrap_or_default();
        pick(t)
            .into_iter()
            .map(|(k, n)| {
                let was = before.iter().find(|(b, _)| *b == k).map_or(0, |b| b.1);
                json!({ "key": k, "total": n, "recent": n - was.min(n) })
            })
            .collect()
    };
    let codes = |t: &Totals| {
        t.close_codes
            .iter()
            .map(|(side, code, n)| (format!("{side} {code}"), *n))
            .collect::<Vec<_>>()
    };
    let refusals = |t: &Totals| {
        t.refusals
            .iter()
            .map(|(s, r, n)| (format!("{s} {r}"), *n))
            .collect::<Vec<_>>()
    };
    let http_pick = |t: &Totals| t.http.clone();
    let http_rates: Vec<Value> = ["1xx", "2xx", "3xx", "4xx", "5xx"]
        .iter()
        .map(|c| {
            let count = |t: &Totals| t.http.iter().find(|h| h.0 == *c).map_or(0, |h| h.1);
            json!({ "class": c, "total": count(totals), "per_s": rate(&count) })
        })
        .collect();
    let now_i = Instant::now();
    let servers: Vec<Value> = state
        .health
        .list()
        .into_iter()
        .map(|(group, label, s)| {
            json!({
                "upstream": group,
                "server": label,
                "sessions": s.load(),
                "healthy": s.healthy(now_i),
                "draining": s.is_draining(),
            })
        })
        .collect();
    let routes: Vec<Value> = state
        .metrics
        .routes()
        .into_iter()
        .map(|(label, r)| json!({ "route": label, "open": r.open(), "started": r.started() }))
        .collect();
    let rtt = |i: usize| match totals.ping_rtt[i] {
        Some([p50, p90, p99]) => json!({ "p50_s": p50, "p90_s": p90, "p99_s": p99 }),
        None => Value::Null,
    };
    let draining = state.sessions.is_draining();
    json!({
        "ready": state.ready.load(Ordering::Relaxed),
        "draining": draining,
        "sessions_open": state.sessions.active(),
        "drain": { "draining": draining, "remaining": if draining { state.sessions.active() } else { 0 } },
        "routes": routes,
        "servers": servers,
        "handshakes": { "total": totals.sessions_started, "per_s": rate(&|t| t.sessions_started) },
        "refusals": { "total": refused_total(totals), "per_s": rate(&refused_total), "by_reason": since(totals, &refusals) },
        "frames": { "up_total": totals.frames[0], "down_total": totals.frames[1],
                    "up_per_s": rate(&|t| t.frames[0]), "down_per_s": rate(&|t| t.frames[1]) },
        "bytes": { "up_total": totals.bytes[0], "down_total": totals.bytes[1],
                   "up_per_s": rate(&|t| t.bytes[0]), "down_per_s": rate(&|t| t.bytes[1]) },
        "close_codes": since(totals, &codes),
        "close_codes_window_s": window.map_or(0.0, |(t, _)| now.duration_since(*t).as_secs_f64()),
        "ping_rtt": { "client": rtt(0), "upstream": rtt(1) },
        "pong_timeouts": { "client": totals.pong_timeouts[0], "upstream": totals.pong_timeouts[1] },
        "http": { "total": http_total(totals), "per_s": rate(&http_total), "by_class": http_rates, "classes": since(totals, &http_pick) },
    })
}

/// The address the admin listener is bound to, logged at start.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_paths_decode_their_segments() {
        assert_eq!(
            drain_target("/upstreams/chat/servers/ws%3A%2F%2F10.0.0.1%3A9000/drain"),
            Some(("chat".into(), "ws://10.0.0.1:9000".into(), true))
        );
        assert_eq!(
            drain_target("/upstreams/chat/servers/10.0.0.1:9000/undrain"),
            Some(("chat".into(), "10.0.0.1:9000".into(), false))
        );
        assert_eq!(drain_target("/upstreams/chat/servers/x/stop"), None);
        assert_eq!(drain_target("/metrics"), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
