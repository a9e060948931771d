//! The gateway: its workers (one thread and runtime each, one socket per
//! listener), the config turned into what connections use (a generation,
//! swapped whole on reload), and the state that outlives reloads
//! (connection counts, rate limiters, the sessions being tracked).

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch, OnceCell},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::admission::{
    pending::{Pending, PendingStats},
    Admission, Stats,
};
use crate::{
    admin,
    config::{Config, UpstreamServers},
    echo, http, listener,
    log::Secret,
    observe::Metrics,
    route::{Route, Routes},
    shutdown::{DrainReport, Sessions},
    tls,
    upstream::{health, probe, rebalance, resolve, Group, GroupSpec, ServerSpec},
};

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
    /// The admin listener (`[admin]`) and what it serves.
    admin: Option<(std::net::TcpListener, Arc<admin::State>)>,
    handle: Handle,
}

/// Controls a running gateway: reload its config, read its state.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

struct Inner {
    /// What new connections use; replaced whole by a reload.
    current: Arc<ArcSwap<listener::Current>>,
    kept: Kept,
}

/// What outlives a reload.
struct Kept {
    sessions: Arc<Sessions>,
    /// Connection counts, admission events and handshake rate limiters,
    /// kept across reloads: the sessions already open still count against
    /// the new limits, and an unchanged rate keeps what clients used of it.
    admission: Arc<crate::admission::Shared>,
    /// Connections accepted and not yet upgraded, in all, and per client IP;
    /// kept across reloads like `admission` (the caps are the current config's).
    pending: Arc<Pending>,
    /// Listener addresses as configured; a reload cannot change them.
    addrs: Vec<SocketAddr>,
    /// `[admin]` as configured (address and token): read once at start,
    /// so a reload cannot change it either.
    admin: Option<(SocketAddr, Option<Secret<String>>)>,
    /// The built-in echo backend, started once and kept across reloads.
    echo: OnceCell<SocketAddr>,
    /// Servers' health, draining states and live counts by (group, label),
    /// kept across reloads and changed answers for the servers that stay
    /// (upstream/health.rs).
    health: Arc<health::Registry>,
    /// Stops the current generation's active probes, rebalance and name
    /// resolution when it is replaced.
    probes: std::sync::Mutex<CancellationToken>,
    /// Names' last good answers, which a new generation starts from.
    known: Arc<resolve::Known>,
    /// Counts go on across reloads; a route kept keeps its handles.
    metrics: Arc<Metrics>,
    /// Whether the gateway takes new connections: false until its
    /// listeners accept and again from the moment the drain begins
    /// (`/readyz`).
    ready: Arc<AtomicBool>,
}

impl Gateway {
    /// Starts built-in upstreams and binds every listener once per worker.
    pub async fn bind(config: Config, workers: NonZeroUsize) -> anyhow::Result<Gateway> {
        tls::install_provider();
        let sessions = Arc::<Sessions>::default();
        let kept = Kept {
            // The servers' beacons are under the gateway's: its drain
            // reaches every session through the one watch it has.
            health: Arc::new(health::Registry::under(sessions.beacon())),
            sessions,
            admission: Arc::default(),
            pending: Arc::default(),
            addrs: config.listeners.iter().map(|l| l.addr).collect(),
            admin: admin_of(&config),
            echo: OnceCell::new(),
            probes: std::sync::Mutex::default(),
            known: Arc::default(),
            metrics: Arc::default(),
            ready: Arc::default(),
        };
        let mut sockets: Vec<Vec<_>> = (0..workers.get()).map(|_| Vec::new()).collect();
        for l in &config.listeners {
            let bound = listener::bind(l.addr, workers)
                .with_context(|| format!("cannot listen on {}", l.addr))?;
            for (worker, socket) in sockets.iter_mut().zip(bound) {
                worker.push(socket);
            }
        }
        // Its address is read once: a reload cannot move it.
        let admin = match &config.admin {
            None => None,
            Some(a) => {
                let socket = admin::bind(a.addr)
                    .with_context(|| format!("cannot listen on {} (admin)", a.addr))?;
                let state = admin::State::new(
                    kept.metrics.clone(),
                    kept.health.clone(),
                    kept.sessions.clone(),
                    kept.ready.clone(),
                    a.token.clone(),
                    kept.admission.clone(),
                );
                Some((socket, Arc::new(state)))
            }
        };
        let current = kept.generation(config).await?;
        let inner = Inner {
            current: Arc::new(ArcSwap::from_pointee(current)),
            kept,
        };
        Ok(Gateway {
            workers: sockets,
            admin,
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

    /// The admin listener's bound address, if `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref()?.0.local_addr().ok()
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
                    .listeners
                    .get(index)
                    .is_some_and(|l| l.tls.is_some());
                tracing::info!(
                    addr = %addr,
                    scheme = if tls { "wss" } else { "ws" },
                    workers = self.workers.len(),
                    "listening"
                );
            }
        }
        let admin_stop = CancellationToken::new();
        if let Some((socket, state)) = self.admin {
            if let Ok(addr) = socket.local_addr() {
                tracing::info!(addr = %addr, "admin listening");
            }
            tokio::spawn(admin::serve(socket, state, admin_stop.clone()));
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
                    let pending = inner.kept.pending.clone();
                    move || worker(sockets, current, pending, accepting, finished, exited)
                });
            if let Err(e) = thread {
                tracing::error!(error = %e, "cannot start a worker thread; serving with fewer");
            }
        }
        drop(exited);
        let own = accept(
            own,
            inner.current.clone(),
            inner.kept.pending.clone(),
            accepting,
        );
        // The sockets are listening since `bind`; from here they accept.
        inner.kept.ready.store(true, Ordering::Relaxed);
        tokio::join!(own, async {
            stop.await;
            // Not ready before the listeners close, so that a load balancer
            // polling `/readyz` stops sending here first.
            inner.kept.ready.store(false, Ordering::Relaxed);
            tracing::info!("not ready: the drain begins");
            drop(stop_accepting);
        });
        let timeout = inner.current.load().http.server.drain_timeout;
        let sessions = &inner.kept.sessions;
        tracing::info!(
            sessions = sessions.active(),
            timeout_s = timeout.as_secs_f64(),
            "draining"
        );
        let report = sessions.drain(timeout).await;
        inner
            .kept
            .probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cancel();
        finished.cancel();
        let _ = all_exited.recv().await;
        admin_stop.cancel();
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
    current: Arc<ArcSwap<listener::Current>>,
    pending: Arc<Pending>,
    accepting: watch::Receiver<()>,
    finished: CancellationToken,
    _exited: mpsc::Sender<()>,
) {
    crate::log::buffer_this_thread();
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(crate::log::flush_this_thread)
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
    current: Arc<ArcSwap<listener::Current>>,
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

/// What of `[admin]` the admin listener was started with.
fn admin_of(config: &Config) -> Option<(SocketAddr, Option<Secret<String>>)> {
    config.admin.as_ref().map(|a| (a.addr, a.token.clone()))
}

impl Handle {
    /// Serves new connections with `config` from now on. Running sessions
    /// keep their route, upstream and policy. Listener addresses and
    /// `[admin]` cannot change without a restart.
    pub async fn reload(&self, config: Config) -> anyhow::Result<()> {
        let addrs: Vec<_> = config.listeners.iter().map(|l| l.addr).collect();
        let kept = &self.inner.kept;
        anyhow::ensure!(
            addrs == kept.addrs,
            "listener addresses changed ({:?} -> {:?}); restart to apply",
            kept.addrs,
            addrs
        );
        // Refused rather than half applied: an operator rotating a leaked
        // token must not be told "reloaded" while the old one still works.
        anyhow::ensure!(
            admin_of(&config) == kept.admin,
            "[admin] changed (its address or token); restart to apply"
        );
        let current = kept.generation(config).await?;
        self.inner.current.store(Arc::new(current));
        Ok(())
    }

    /// Sessions currently open.
    pub fn active_sessions(&self) -> usize {
        self.inner.kept.sessions.active()
    }

    /// Admission's live counts; every one returns to zero when no session is open.
    pub fn admission_stats(&self) -> Stats {
        self.inner.current.load().http.admission.stats()
    }

    /// Connections accepted and not yet upgraded (in their TLS handshake,
    /// request head, admission or upstream handshake).
    pub fn pending_connections(&self) -> u64 {
        self.inner.kept.pending.stats().open
    }

    /// The pending-connection counts, and how many connections the caps
    /// closed at accept since start.
    pub fn pending_stats(&self) -> PendingStats {
        self.inner.kept.pending.stats()
    }
}

impl Kept {
    /// Builds what new connections use from a checked config.
    async fn generation(&self, config: Config) -> anyhow::Result<listener::Current> {
        let mut specs = Vec::new();
        for (name, spec) in config.upstreams {
            let servers = match spec.servers {
                UpstreamServers::Servers(servers) => servers,
                UpstreamServers::BuiltinEcho => {
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
                        server_name: None,
                        weight: 1,
                    }]
                }
            };
            specs.push(GroupSpec {
                name,
                servers,
                pool: spec.pool,
                balance: spec.balance,
                network: spec.network,
                health: spec.health,
                draining: spec.draining,
            });
        }
        // dns: the names' last answers (from the last generation), then the
        // first resolution of every name, awaited (each bounded) so this
        // generation has its servers when it serves.
        let resolver = resolve::Resolver::new(config.resolver.as_ref());
        let mut names: Vec<String> = specs.iter().flat_map(GroupSpec::names).collect();
        names.sort_unstable();
        names.dedup();
        self.known.keep_only(&names);
        resolve::refresh(&names, &resolver, &self.known).await;
        // The last generation's probes and resolution stop here, before its
        // servers' states are handed over (a late answer of its own could
        // not regroup them anyway, see health::Registry::regroup).
        let probes = CancellationToken::new();
        let old = std::mem::replace(
            &mut *self.probes.lock().unwrap_or_else(|e| e.into_inner()),
            probes.clone(),
        );
        old.cancel();
        // health: states kept for servers that stay; removed ones drain.
        let mut building = self.health.begin();
        let mut upstreams = HashMap::new();
        for spec in specs {
            let answers = self.known.answers(&spec.names());
            let name = spec.name.clone();
            let group = Group::new(spec, answers, &mut building, self.health.clone());
            upstreams.insert(name, Arc::new(group));
        }
        building.finish();
        for group in upstreams.values() {
            probe::spawn(group, probes.clone()); // health
            rebalance::spawn(group, probes.clone()); // health
            group.follow(resolver.clone(), self.known.clone(), probes.clone()); // dns
        }
        let routes: Vec<Arc<Route>> = config
            .routes
            .into_iter()
            .map(|r| {
                let route = Route::new(
                    r.listeners,
                    r.host.as_deref(),
                    &r.path,
                    r.rewrite.as_deref(),
                    upstreams[&r.upstream].clone(),
                    r.policy,
                    r.preserve_host,
                )
                .with_http(r.http);
                let metrics = self.metrics.route(&route.label);
                Arc::new(route.with_metrics(metrics))
            })
            .collect();
        let admission = Admission::new(
            config.server.admission.clone(),
            routes
                .iter()
                .map(|r| (r.label.as_str(), &*r.policy.admission)),
            &self.admission,
        );
        let names = config.listeners.iter().map(|l| l.name.as_deref());
        let http = http::Context {
            routes: Routes::new(&routes, names),
            server: config.server,
            sessions: self.sessions.clone(),
            metrics: self.metrics.clone(),
            admission: Arc::new(admission),
        };
        Ok(listener::Current {
            listeners: config
                .listeners
                .into_iter()
                .map(|l| listener::Settings {
                    tls: l.tls.map(TlsAcceptor::from),
                    proxy_protocol: l.proxy_protocol,
                })
                .collect(),
            http: Arc::new(http),
        })
    }
}
