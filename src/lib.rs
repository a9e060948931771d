//! framegate: a WebSocket gateway that relays frames, not bytes.
//!
//! It completes the WebSocket handshake with the client *and* with the
//! backend, then relays parsed frames between the two legs. Seeing frames
//! is what lets it enforce message limits, answer pings per leg and close
//! both legs with a proper close frame.
//!
//! # Layout
//!
//! The data path, in the order a connection meets it:
//!
//! - [`listener`]: one socket per worker (SO_REUSEPORT), accept (with the
//!   caps on connections not yet upgraded, [`admission::pending`]), TCP
//!   options, TLS handshake with a deadline.
//! - [`tls`]: rustls configs; certificates chosen by SNI.
//! - [`proto`]: pure protocol rules: the request target normalised once,
//!   the `Host` validated.
//! - [`http`]: reads the upgrade request ([`http::head`]), checks it
//!   ([`http::upgrade`], RFC 6455), builds the upstream request's headers
//!   ([`http::forwarded`]), answers, and runs the session in the same task.
//! - [`route`]: host and longest-prefix path matching, path rewrite.
//! - [`admission`]: decided before the upstream is contacted: client IP,
//!   Origin, JWT, connection limits, handshake rate; and the per-session
//!   rate limits and token expiry the relay checks.
//! - [`upstream`]: pick a server, connect, complete its handshake *before*
//!   the client gets a 101.
//! - [`relay`]: the session: frames both ways, close handshake on both legs,
//!   over a [`stream::Stream`] per leg.
//! - [`log`]: one access-log line per session.
//! - [`shutdown`]: the session tracker; drain on SIGTERM.
//!
//! [`config`] turns the operator's TOML into checked values at start and on
//! reload; a reload swaps what *new* connections use and never touches a
//! running session.
//! [`echo`] is the built-in backend used by the default config.

#![forbid(unsafe_code)]

pub mod admission;
pub mod config;
pub mod echo;
pub mod http;
pub mod listener;
pub mod log;
pub mod proto;
pub mod relay;
pub mod route;
pub mod shutdown;
pub mod stream;
pub mod tls;
pub mod upstream;

use std::{collections::HashMap, future::Future, net::SocketAddr, num::NonZeroUsize, sync::Arc};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch, OnceCell},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use admission::{
    pending::{Pending, PendingStats},
    Admission, Stats,
};
use config::{Config, ServerSpec, UpstreamConfig};
use route::{Route, RouteTable};
use shutdown::{DrainReport, Sessions};
use upstream::Upstream;

/// A gateway with its sockets bound, ready to serve.
///
/// It runs as one or more workers. A worker is one thread with a
/// current-thread runtime and its own socket for every listener; a session
/// stays on the worker that accepted it, so its wake-ups never cross
/// threads. Config, limits, and the drain are shared by all workers.
pub struct Gateway {
    /// Per worker, one socket per configured listener, in config order.
    /// Worker 0 runs on the caller's runtime, the others on threads of their own.
    workers: Vec<Vec<std::net::TcpListener>>,
    handle: Handle,
}

/// Controls a running gateway: reload its config, read its state.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

struct Inner {
    current: Arc<ArcSwap<http::Context>>,
    sessions: Arc<Sessions>,
    /// Connection counts, admission events and handshake rate limiters,
    /// kept across reloads: the sessions already open still count against
    /// the new limits, and an unchanged rate keeps what clients used of it.
    admission: Arc<admission::Shared>,
    /// Connections accepted and not yet upgraded, in all, and per client IP;
    /// kept across reloads like `admission` (the caps are the current config's).
    pending: Arc<Pending>,
    /// Listener addresses as configured; a reload cannot change them.
    addrs: Vec<SocketAddr>,
    /// The built-in echo backend, started once and kept across reloads.
    echo: OnceCell<SocketAddr>,
}

impl Gateway {
    /// Starts built-in upstreams and binds every listener once per worker.
    pub async fn bind(config: Config, workers: NonZeroUsize) -> anyhow::Result<Gateway> {
        tls::install_provider();
        let inner = Inner {
            current: Arc::new(ArcSwap::from_pointee(http::Context {
                routes: RouteTable::default(),
                server: config.server.clone(),
                tls: Vec::new(),
                proxy_protocol: Vec::new(),
                sessions: Arc::default(),
                admission: Arc::new(Admission::new(
                    config.server.admission.clone(),
                    std::iter::empty(),
                    &Arc::default(),
                )),
            })),
            sessions: Arc::default(),
            admission: Arc::default(),
            pending: Arc::default(),
            addrs: config.listeners.iter().map(|l| l.addr).collect(),
            echo: OnceCell::new(),
        };
        let mut sockets: Vec<Vec<_>> = (0..workers.get()).map(|_| Vec::new()).collect();
        for l in &config.listeners {
            let bound = listener::bind(l.addr, workers)
                .with_context(|| format!("cannot listen on {}", l.addr))?;
            for (worker, socket) in sockets.iter_mut().zip(bound) {
                worker.push(socket);
            }
        }
        let ctx = inner.context(config).await?;
        inner.current.store(Arc::new(ctx));
        Ok(Gateway {
            workers: sockets,
            handle: Handle {
                inner: Arc::new(inner),
            },
        })
    }

    /// The bound addresses, in config order (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.workers[0]
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Serves until `stop` resolves, then drains: listeners close at once,
    /// every session gets 1001 and `drain_timeout` to finish closing.
    pub async fn run(self, stop: impl Future<Output = ()>) -> DrainReport {
        let inner = &self.handle.inner;
        for (index, socket) in self.workers[0].iter().enumerate() {
            if let Ok(addr) = socket.local_addr() {
                let tls = inner
                    .current
                    .load()
                    .tls
                    .get(index)
                    .is_some_and(Option::is_some);
                tracing::info!(
                    addr = %addr,
                    scheme = if tls { "wss" } else { "ws" },
                    workers = self.workers.len(),
                    "listening"
                );
            }
        }
        let (stop_accepting, accepting) = watch::channel(());
        // Each worker thread ends its runtime (dropping whatever sessions the
        // drain cut) once `finished` is cancelled, then drops its `exited`.
        let finished = CancellationToken::new();
        let (exited, mut all_exited) = mpsc::channel::<()>(1);
        let mut workers = self.workers.into_iter();
        let own = workers.next().unwrap_or_default();
        for (n, sockets) in workers.enumerate() {
            let thread = std::thread::Builder::new()
                .name(format!("framegate-worker-{}", n + 1))
                .spawn({
                    let (current, accepting) = (inner.current.clone(), accepting.clone());
                    let (finished, exited) = (finished.clone(), exited.clone());
                    let pending = inner.pending.clone();
                    move || worker(sockets, current, pending, accepting, finished, exited)
                });
            if let Err(e) = thread {
                tracing::error!(error = %e, "cannot start a worker thread; serving with fewer");
            }
        }
        drop(exited);
        let own = accept(own, inner.current.clone(), inner.pending.clone(), accepting);
        tokio::join!(own, async {
            stop.await;
            drop(stop_accepting);
        });
        let timeout = inner.current.load().server.drain_timeout;
        tracing::info!(
            sessions = inner.sessions.active(),
            timeout_s = timeout.as_secs_f64(),
            "draining"
        );
        let report = inner.sessions.drain(timeout).await;
        finished.cancel();
        let _ = all_exited.recv().await;
        tracing::info!(
            sessions = report.sessions,
            closed_cleanly = report.clean,
            closed_uncleanly = report.unclean,
            cut_at_deadline = report.cut,
            "drained"
        );
        report
    }
}

/// A worker thread: its own runtime, accepting until `accepting` closes and
/// kept alive (its sessions draining) until `finished`.
fn worker(
    sockets: Vec<std::net::TcpListener>,
    current: Arc<ArcSwap<http::Context>>,
    pending: Arc<Pending>,
    accepting: watch::Receiver<()>,
    finished: CancellationToken,
    _exited: mpsc::Sender<()>,
) {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(async {
            accept(sockets, current, pending, accepting).await;
            finished.cancelled().await;
        }),
        Err(e) => tracing::error!(error = %e, "cannot start a worker's runtime"),
    }
}

/// One worker's accept loops, one per listener, until `accepting` closes.
async fn accept(
    sockets: Vec<std::net::TcpListener>,
    current: Arc<ArcSwap<http::Context>>,
    pending: Arc<Pending>,
    accepting: watch::Receiver<()>,
) {
    let mut loops = Vec::new();
    for (index, socket) in sockets.into_iter().enumerate() {
        let socket = match TcpListener::from_std(socket) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot register a listening socket");
                continue;
            }
        };
        let mut accepting = accepting.clone();
        let stopped = async move {
            let _ = accepting.changed().await;
        };
        loops.push(tokio::spawn(listener::serve(
            index,
            socket,
            current.clone(),
            pending.clone(),
            stopped,
        )));
    }
    for l in loops {
        let _ = l.await;
    }
}

impl Handle {
    /// Serves new connections with `config` from now on. Running sessions
    /// keep their route, upstream and policy. Listener addresses cannot
    /// change without a restart.
    pub async fn reload(&self, config: Config) -> anyhow::Result<()> {
        let addrs: Vec<_> = config.listeners.iter().map(|l| l.addr).collect();
        anyhow::ensure!(
            addrs == self.inner.addrs,
            "listener addresses changed ({:?} -> {:?}); restart to apply",
            self.inner.addrs,
            addrs
        );
        let ctx = self.inner.context(config).await?;
        self.inner.current.store(Arc::new(ctx));
        Ok(())
    }

    /// Sessions currently open.
    pub fn active_sessions(&self) -> usize {
        self.inner.sessions.active()
    }

    /// Admission's live counts; every one returns to zero when no session is open.
    pub fn admission_stats(&self) -> Stats {
        self.inner.current.load().admission.stats()
    }

    /// Connections accepted and not yet upgraded (in their TLS handshake,
    /// request head, admission or upstream handshake).
    pub fn pending_connections(&self) -> u64 {
        self.inner.pending.stats().open
    }

    /// The pending-connection counts, and how many connections the caps
    /// closed at accept since start.
    pub fn pending_stats(&self) -> PendingStats {
        self.inner.pending.stats()
    }
}

impl Inner {
    /// Builds what new connections use from a checked config.
    async fn context(&self, config: Config) -> anyhow::Result<http::Context> {
        let mut upstreams = HashMap::new();
        for (name, spec) in config.upstreams {
            let servers = match spec {
                UpstreamConfig::Servers(servers) => servers,
                UpstreamConfig::BuiltinEcho => {
                    let addr = *self
                        .echo
                        .get_or_try_init(echo::spawn)
                        .await
                        .context("starting the built-in echo upstream")?;
                    vec![ServerSpec {
                        url: format!("ws://{addr} (builtin echo)"),
                        host: addr.ip().to_string(),
                        port: addr.port(),
                        tls: None,
                    }]
                }
            };
            upstreams.insert(name.clone(), Arc::new(Upstream::new(name, servers)));
        }
        let routes: Vec<Route> = config
            .routes
            .iter()
            .map(|r| {
                Route::new(
                    r.host.as_deref(),
                    &r.path,
                    r.rewrite.as_deref(),
                    upstreams[&r.upstream].clone(),
                    r.policy.clone(),
                    r.preserve_host,
                )
            })
            .collect();
        let admission = Admission::new(config.server.admission.clone(), &routes, &self.admission);
        Ok(http::Context {
            routes: RouteTable::new(routes),
            server: config.server,
            proxy_protocol: config.listeners.iter().map(|l| l.proxy_protocol).collect(),
            tls: config
                .listeners
                .into_iter()
                .map(|l| l.tls.map(TlsAcceptor::from))
                .collect(),
            sessions: self.sessions.clone(),
            admission: Arc::new(admission),
        })
    }
}
