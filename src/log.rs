//! The access log: one structured line per WebSocket session when it ends,
//! and one per plain HTTP request; and where log lines are written
//! ([`Stdout`]).
//!
//! Only the path is logged, never the query string, which is where browser
//! clients often put tokens.

use std::{
    cell::RefCell,
    io::{self, Write},
    net::SocketAddr,
    time::Duration,
};

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

thread_local! {
    /// Lines logged on this thread and not yet written; `None` where lines
    /// are written at once (any thread but a gateway worker's).
    static PENDING: RefCell<Option<Pending>> = const { RefCell::new(None) };
}

/// Lines are written once this many bytes are pending, idle or not.
const FLUSH_AT: usize = 64 * 1024;

/// A worker thread's pending lines; written when the thread ends, too.
struct Pending(Vec<u8>);

impl Drop for Pending {
    fn drop(&mut self) {
        write_out(&mut self.0);
    }
}

fn write_out(lines: &mut Vec<u8>) {
    if !lines.is_empty() {
        let _ = io::stdout().lock().write_all(lines);
        lines.clear();
    }
}

/// Log lines go to standard output. On a gateway worker thread (see
/// [`buffer_this_thread`]) they are gathered and written when the thread's
/// runtime runs out of work ([`flush_this_thread`], its park hook) or
/// 64 KiB are pending: a busy worker writes a batch of lines with one
/// system call instead of one per plain HTTP request (a tenth of a small
/// request's CPU, measured), and an idle one holds nothing back.
/// Nothing is dropped, and no other thread is involved.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stdout;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stdout {
    type Writer = Stdout;

    fn make_writer(&'a self) -> Stdout {
        Stdout
    }
}

impl Write for Stdout {
    /// Takes one whole formatted line (the fmt layer writes each event at once).
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let gathered = PENDING.with_borrow_mut(|pending| {
            let Some(Pending(lines)) = pending else {
                return false;
            };
            lines.extend_from_slice(line);
            if lines.len() >= FLUSH_AT {
                write_out(lines);
            }
            true
        });
        if !gathered {
            io::stdout().lock().write_all(line)?;
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Makes this thread gather its log lines (a gateway worker's, whose
/// runtime calls [`flush_this_thread`] before it parks).
pub fn buffer_this_thread() {
    PENDING.with_borrow_mut(|p| *p = Some(Pending(Vec::new())));
}

/// Writes this thread's gathered lines.
pub fn flush_this_thread() {
    PENDING.with_borrow_mut(|p| {
        if let Some(Pending(lines)) = p {
            write_out(lines);
        }
    });
}
