//! The access log: one structured line per WebSocket session when it ends,
//! and one per plain HTTP request.
//!
//! Only the path is logged, never the query string, which is where browser
//! clients often put tokens.

use std::{net::SocketAddr, time::Duration};

use crate::relay::{Ending, Summary};

/// Logs a finished session.
pub fn session(
    client: SocketAddr,
    route: &str,
    path: &str,
    upstream: &str,
    took: Duration,
    s: &Summary,
) {
    let (closed_by, code, reason) = match s.ending {
        Some(Ending::Closed { by, code }) => (by.name(), code, "close frame"),
        Some(Ending::Violation { by, code, reason }) => (by.name(), Some(code), reason),
        Some(Ending::Vanished { by }) => (by.name(), None, "connection lost without a close frame"),
        Some(Ending::Unresponsive { by }) => (by.name(), None, "no answer to keepalive ping"),
        Some(Ending::Gateway { reason }) => ("gateway", Some(1001), reason),
        None => ("gateway", None, "ended"),
    };
    let ms = |d: Option<Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
    tracing::info!(
        target: "framegate::access",
        client = %client,
        route,
        path,
        upstream,
        duration_ms = took.as_millis() as u64,
        frames_up = s.client_to_upstream.frames,
        bytes_up = s.client_to_upstream.bytes,
        frames_down = s.upstream_to_client.frames,
        bytes_down = s.upstream_to_client.bytes,
        closed_by,
        close_code = code.unwrap_or(0),
        reason,
        clean = s.clean,
        rtt_client_ms = ms(s.client_rtt),
        rtt_upstream_ms = ms(s.upstream_rtt),
        "session ended"
    );
}

/// One plain HTTP request proxied (or abandoned after it reached an
/// upstream): what was asked, what came back, and over which connection.
pub struct Request<'a> {
    pub client: SocketAddr,
    pub route: &'a str,
    pub method: &'a http::Method,
    pub path: &'a str,
    /// 0 when no status reached the client.
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub took: Duration,
    pub upstream: &'a str,
    /// The upstream connection came from the keep-alive pool.
    pub reused: bool,
    /// Why it ended early, if it did.
    pub error: Option<&'a str>,
}

/// Logs a finished HTTP request.
pub fn request(r: &Request<'_>) {
    tracing::info!(
        target: "framegate::access",
        client = %r.client,
        route = r.route,
        method = r.method.as_str(),
        path = r.path,
        status = r.status,
        bytes_in = r.bytes_in,
        bytes_out = r.bytes_out,
        duration_ms = r.took.as_millis() as u64,
        upstream = r.upstream,
        reused = r.reused,
        error = r.error.unwrap_or(""),
        "http request"
    );
}
