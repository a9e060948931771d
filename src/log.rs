//! The access log: one structured line per session when it ends.
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
