//! The access log: one structured line per WebSocket session when it ends,
//! one per plain HTTP request and one per refusal; how lines look
//! ([`format`](mod@format)); and where they go ([`Access`] for access lines, standard
//! error for the rest; [`init`] sets both up from `[log]`).
//!
//! Only the path is logged, never the query string, which is where browser
//! clients often put tokens.

mod format;

use std::{
    cell::RefCell,
    fs::File,
    io::{self, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};

use arc_swap::ArcSwap;
use tracing_subscriber::{
    filter::filter_fn, layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Layer,
    Registry,
};

pub use format::{escape_into, needs_escape, Format};

/// A value that must never reach a log line or a panic message (a token,
/// a key): its `Debug` says `<redacted>`, it has no `Display`, and where it
/// is used it is read with [`Secret::expose`]. A config holding one can be
/// printed whole.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The target of access lines: the ones [`Access`] writes.
pub const ACCESS: &str = "framegate::access";

/// `[log]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// An `EnvFilter` directive: `info`, `debug,framegate::access=off`...
    pub level: String,
    pub format: Format,
    pub access: Destination,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            level: "info".into(),
            format: Format::Text,
            access: Destination::Stdout,
        }
    }
}

/// Where access lines go (`[log] access`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    Stderr,
    /// Not written at all.
    Off,
    /// Appended to this file, reopened on reload (for logrotate).
    File(PathBuf),
}

impl Destination {
    /// `stdout`, `stderr`, `off`, or a file path.
    pub fn parse(s: &str) -> Destination {
        match s {
            "stdout" => Destination::Stdout,
            "stderr" => Destination::Stderr,
            "off" => Destination::Off,
            path => Destination::File(path.into()),
        }
    }
}

/// The environment's overrides of `[log]`: `FRAMEGATE_LOG` (or, if unset,
/// `RUST_LOG`) for the level, `FRAMEGATE_LOG_FORMAT` for the format.
pub fn from_env(mut settings: Settings) -> Result<Settings, String> {
    let level = std::env::var("FRAMEGATE_LOG").or_else(|_| std::env::var("RUST_LOG"));
    if let Ok(level) = level {
        settings.level = level;
    }
    if let Ok(f) = std::env::var("FRAMEGATE_LOG_FORMAT") {
        settings.format = Format::parse(&f)
            .ok_or_else(|| format!("FRAMEGATE_LOG_FORMAT={f:?}: expected \"text\" or \"json\""))?;
    }
    Ok(settings)
}

/// The installed logging, changed on reload.
pub struct Logging {
    level: reload::Handle<EnvFilter, Registry>,
    settings: Settings,
}

/// Where [`Access`] writes; a file is swapped whole when reopened.
enum Sink {
    Stdout,
    Stderr,
    File(ArcSwap<File>),
}

static SINK: OnceLock<Sink> = OnceLock::new();

fn open(path: &std::path::Path) -> io::Result<File> {
    File::options().create(true).append(true).open(path)
}

/// Installs the global subscriber: access lines (target [`ACCESS`]) to
/// `settings.access`, every other line to standard error, both in
/// `settings.format` and filtered by `settings.level`. Call once.
pub fn init(settings: Settings) -> Result<Logging, String> {
    let filter = EnvFilter::try_new(&settings.level)
        .map_err(|e| format!("log level {:?}: {e}", settings.level))?;
    let log_crate_max = log_crate_level(&filter);
    let sink = match &settings.access {
        Destination::Stdout | Destination::Off => Sink::Stdout,
        Destination::Stderr => Sink::Stderr,
        Destination::File(path) => Sink::File(ArcSwap::from_pointee(
            open(path).map_err(|e| format!("access log {}: {e}", path.display()))?,
        )),
    };
    let _ = SINK.set(sink);
    let (filter, level) = reload::Layer::new(filter);
    let format = settings.format;
    let access = (settings.access != Destination::Off).then(|| {
        tracing_subscriber::fmt::layer()
            .event_format(format)
            .with_writer(Access)
            .with_filter(filter_fn(|m| m.target() == ACCESS))
    });
    let rest = tracing_subscriber::fmt::layer()
        .event_format(format)
        .with_writer(io::stderr)
        .with_filter(filter_fn(|m| m.target() != ACCESS));
    tracing_subscriber::registry()
        .with(filter)
        .with(access)
        .with(rest)
        .try_init()
        .map_err(|e| e.to_string())?;
    // After `try_init`, which set it from the subscriber's hint: the
    // per-layer filters leave that at TRACE.
    log::set_max_level(log_crate_max);
    Ok(Logging { level, settings })
}

impl Logging {
    /// Applies a reloaded `[log]` (after the environment's overrides) once
    /// the reload is taken: the level changes at once; a new format or
    /// destination needs a restart, and says so.
    pub fn reload(&mut self, new: Settings) {
        if new.level != self.settings.level {
            match EnvFilter::try_new(&new.level) {
                Ok(f) => {
                    log::set_max_level(log_crate_level(&f));
                    let _ = self.level.reload(f);
                    tracing::info!(filter = %new.level, "log level changed");
                }
                // `filter`, not `level`: a JSON line has a `level` of its own.
                Err(e) => tracing::error!(filter = %new.level, error = %e, "log level refused"),
            }
        }
        if new.format != self.settings.format || new.access != self.settings.access {
            tracing::warn!("[log] format and access take effect on restart");
        }
        self.settings.level = new.level;
    }

    /// Reopens an access file (logrotate's `create` then SIGHUP): on every
    /// SIGHUP, whether or not the config it rereads is taken, or a rotated
    /// file would go on being written while a broken config is on disk.
    pub fn reopen(&self) {
        if let (Some(Sink::File(file)), Destination::File(path)) =
            (SINK.get(), &self.settings.access)
        {
            match open(path) {
                Ok(f) => file.store(Arc::new(f)),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot reopen the access log")
                }
            }
        }
    }
}

/// The most verbose level `filter` lets through, for the `log` crate.
/// tungstenite and rustls log through it, and tracing-log hands every call
/// it lets through to the subscriber: tungstenite's `trace!` per frame
/// header cost 2,000 instructions a handshake on the way to being dropped.
fn log_crate_level(filter: &EnvFilter) -> log::LevelFilter {
    use tracing_subscriber::filter::LevelFilter as L;
    match filter.max_level_hint() {
        Some(L::OFF) => log::LevelFilter::Off,
        Some(L::ERROR) => log::LevelFilter::Error,
        Some(L::WARN) => log::LevelFilter::Warn,
        Some(L::INFO) => log::LevelFilter::Info,
        Some(L::DEBUG) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

use crate::{
    proto::forwarded::IpText,
    relay::{CloseFrame, Ending, Summary},
};

/// What the session line says about the session beyond its [`Summary`]:
/// who, where, and over what. The token itself is never here, only its subject.
pub struct Session<'a> {
    pub client: SocketAddr,
    /// The validated `Host` (or absolute-form authority), if the request had one.
    pub host: Option<&'a str>,
    pub route: &'a str,
    pub path: &'a str,
    /// The subprotocol the upstream chose, if any.
    pub subprotocol: Option<&'a str>,
    /// The `sub` claim of the client's token, on routes with `[auth]`.
    pub subject: Option<&'a str>,
    /// The upstream server.
    pub upstream: &'a str,
    pub took: Duration,
}

/// Logs a finished session. Absent values (no close frame, never pinged,
/// no Host) are left out, never written as a stand-in value.
pub fn session(s: &Session<'_>, sum: &Summary) {
    let (closed_by, ending) = match sum.ending {
        Some(Ending::Closed { by, .. }) => (by.name(), "close frame"),
        Some(Ending::Violation { by, reason, .. }) => (by.name(), reason),
        Some(Ending::Vanished { by }) => (by.name(), "connection lost without a close frame"),
        Some(Ending::Unresponsive { by }) => (by.name(), "no answer to keepalive ping"),
        Some(Ending::Gateway { reason }) => ("gateway", reason),
        None => ("gateway", "ended"),
    };
    let us = |d: Option<Duration>| d.map(|d| d.as_micros() as u64);
    let (cl, up) = (&sum.client_close, &sum.upstream_close);
    tracing::info!(
        target: "framegate::access",
        client = IpText::socket(s.client).as_str(),
        host = s.host,
        route = s.route,
        path = s.path,
        subprotocol = s.subprotocol,
        subject = s.subject,
        upstream = s.upstream,
        duration_ms = s.took.as_millis() as u64,
        frames_up = sum.client_to_upstream.frames,
        bytes_up = sum.client_to_upstream.bytes,
        frames_down = sum.upstream_to_client.frames,
        bytes_down = sum.upstream_to_client.bytes,
        closed_by,
        ending,
        client_sent_code = code(&cl.sent),
        client_sent_reason = reason(&cl.sent),
        client_received_code = code(&cl.received),
        client_received_reason = reason(&cl.received),
        upstream_sent_code = code(&up.sent),
        upstream_sent_reason = reason(&up.sent),
        upstream_received_code = code(&up.received),
        upstream_received_reason = reason(&up.received),
        clean = sum.clean,
        rtt_client_us = us(sum.client_rtt),
        rtt_upstream_us = us(sum.upstream_rtt),
        "session ended"
    );
}

fn code(c: &Option<CloseFrame>) -> Option<u16> {
    c.as_ref().map(|c| c.code)
}

/// A close's reason; none when it had none.
fn reason(c: &Option<CloseFrame>) -> Option<&str> {
    c.as_ref().map(|c| &*c.reason).filter(|r| !r.is_empty())
}

/// One plain HTTP request proxied (or abandoned after it reached an
/// upstream): what was asked, what came back, and over which connection.
pub struct Request<'a> {
    pub client: SocketAddr,
    /// The validated `Host`, if the request had one.
    pub host: Option<&'a str>,
    pub route: &'a str,
    pub method: &'a http::Method,
    pub path: &'a str,
    /// `None` when no status reached the client.
    pub status: Option<u16>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub took: Duration,
    /// The server reached, if one was.
    pub upstream: Option<&'a str>,
    /// The upstream connection came from the keep-alive pool.
    pub reused: bool,
    /// Why it ended early, if it did.
    pub error: Option<&'a str>,
}

/// Logs a finished HTTP request.
pub fn request(r: &Request<'_>) {
    tracing::info!(
        target: "framegate::access",
        client = IpText::socket(r.client).as_str(),
        host = r.host,
        route = r.route,
        method = r.method.as_str(),
        path = r.path,
        status = r.status,
        bytes_in = r.bytes_in,
        bytes_out = r.bytes_out,
        duration_ms = r.took.as_millis() as u64,
        upstream = r.upstream,
        reused = r.reused,
        error = r.error,
        "http request"
    );
}

/// A request refused before it reached an upstream (an upgrade or a plain
/// request): the answer's status and reason, and where it was going.
pub struct Refusal<'a> {
    /// "upgrade refused" or "request refused".
    pub what: &'static str,
    pub client: SocketAddr,
    pub host: Option<&'a str>,
    /// The route, once one was picked.
    pub route: Option<&'a str>,
    /// `None` when the request could not be read.
    pub path: Option<&'a str>,
    pub status: u16,
    pub reason: &'a str,
    /// What decided the refusal, as the metrics label it
    /// (`framegate_refusals_total{reason}`): `reason` says it to a person.
    pub cause: &'static str,
}

/// Logs a refusal, on the access log: it answers a request.
pub fn refusal(r: &Refusal<'_>) {
    tracing::info!(
        target: "framegate::access",
        client = IpText::socket(r.client).as_str(),
        host = r.host,
        route = r.route,
        path = r.path,
        status = r.status,
        reason = r.reason,
        cause = r.cause,
        "{}",
        r.what
    );
}

/// At most [`Throttle::PER_SECOND`] lines a second of one kind (per worker:
/// each keeps its own): a flood of bad handshakes cannot flood the log. The
/// first line after a suppressed stretch says how many were left out.
#[derive(Debug, Default)]
pub struct Throttle {
    window: Option<tokio::time::Instant>,
    logged: u32,
    suppressed: u64,
}

impl Throttle {
    pub const PER_SECOND: u32 = 10;

    pub const fn new() -> Self {
        Throttle {
            window: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be written at `now`: `Some(k)` with the number of
    /// lines suppressed since the last one written, `None` to suppress it.
    pub fn admit(&mut self, now: tokio::time::Instant) -> Option<u64> {
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            self.window = Some(now);
            self.logged = 0;
        }
        if self.logged >= Self::PER_SECOND {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
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
        let _ = write_sink(lines);
        lines.clear();
    }
}

/// Writes whole lines to the access destination (standard output before
/// [`init`]).
fn write_sink(lines: &[u8]) -> io::Result<()> {
    match SINK.get() {
        None | Some(Sink::Stdout) => io::stdout().lock().write_all(lines),
        Some(Sink::Stderr) => io::stderr().lock().write_all(lines),
        // One `write` per batch on an O_APPEND file: batches from
        // different workers never interleave within a line.
        Some(Sink::File(f)) => (&*f.load_full()).write_all(lines),
    }
}

/// Access lines go to their destination ([`init`]). On a gateway worker thread (see
/// [`buffer_this_thread`]) they are gathered and written when the thread's
/// runtime runs out of work ([`flush_this_thread`], its park hook) or
/// 64 KiB are pending: a busy worker writes a batch of lines with one
/// system call instead of one per plain HTTP request (a tenth of a small
/// request's CPU, measured), and an idle one holds nothing back.
/// Nothing is dropped, and no other thread is involved.
#[derive(Debug, Clone, Copy, Default)]
pub struct Access;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Access {
    type Writer = Access;

    fn make_writer(&'a self) -> Access {
        Access
    }
}

impl Write for Access {
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
            write_sink(line)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// What `format` writes for the lines `emit` logs, under `filter`.
    pub(super) fn logged<L>(filter: L, format: Format, emit: impl FnOnce()) -> String
    where
        L: Layer<Registry> + Send + Sync + 'static,
    {
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = out.clone();
        let lines = tracing_subscriber::fmt::layer()
            .event_format(format)
            .with_writer(move || Sink(writer.clone()));
        let subscriber = tracing_subscriber::registry().with(filter).with(lines);
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reloaded_level_is_logged_under_a_key_of_its_own() {
        let (filter, level) = reload::Layer::new(EnvFilter::new("info"));
        let mut logging = Logging {
            level,
            settings: Settings::default(),
        };
        let new = Settings {
            level: "debug".into(),
            ..Settings::default()
        };
        let line = logged(filter, Format::Json, || logging.reload(new));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["message"], "log level changed", "{line}");
        assert_eq!(v["filter"], "debug", "{line}");
        // Parsed into a map, a second `level` would have replaced the first.
        assert_eq!(line.matches(r#""level":"#).count(), 1, "{line}");
    }

    #[test]
    fn the_log_crate_is_held_to_the_filters_most_verbose_level() {
        for (level, max) in [
            ("off", log::LevelFilter::Off),
            ("info", log::LevelFilter::Info),
            ("warn,framegate::access=info", log::LevelFilter::Info),
            ("debug,framegate::access=off", log::LevelFilter::Debug),
            ("info,tungstenite=trace", log::LevelFilter::Trace),
        ] {
            assert_eq!(log_crate_level(&EnvFilter::new(level)), max, "{level}");
        }
    }

    #[test]
    fn the_throttle_passes_ten_a_second_then_counts_what_it_left_out() {
        let t0 = Instant::now();
        let mut t = Throttle::new();
        for _ in 0..Throttle::PER_SECOND {
            assert_eq!(t.admit(t0), Some(0));
        }
        assert_eq!(t.admit(t0 + Duration::from_millis(999)), None);
        assert_eq!(t.admit(t0 + Duration::from_millis(999)), None);
        assert_eq!(t.admit(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(t.admit(t0 + Duration::from_secs(1)), Some(0));
    }
}
