//! Server host names, resolved in the background: once when a config
//! generation is built (awaited, bounded, so a fresh gateway dials at once),
//! then every `resolve_interval` by one task per group, run by the gateway
//! beside the probes and stopped with its generation. A dial never calls
//! the resolver; it reads the addresses last stored ([`Addrs`]).
//!
//! Every address of a name is a dialable address of that *one* server: the
//! balancer keeps the config's server list, and a dial takes the server's
//! addresses in turn ([`super::tcp::connect`]). Simpler than growing and
//! shrinking the balancer's servers (weights, hash rings, health and pool
//! state are all indexed by server), at the cost that a name's addresses
//! share one weight and one health state.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use futures_util::future::{join_all, BoxFuture};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::Upstream;

/// Addresses kept per name at most: a bound on what one answer can cost
/// (memory, and dial attempts within one connect timeout).
pub const MAX_ADDRS: usize = 64;

/// How long one resolution may take; a slower one keeps the last addresses.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Looks a name up: `(host, port)` to its socket addresses. Injectable so
/// tests can change the answer; production is [`system`].
pub type Resolver =
    Arc<dyn Fn(String, u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// The system's resolver (`getaddrinfo` on tokio's blocking pool: it reads
/// `/etc/hosts` and `/etc/resolv.conf` as every other program does).
pub fn system() -> Resolver {
    Arc::new(|host, port| {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    })
}

/// The addresses one server is dialed at: fixed for an IP literal, the last
/// answer for a name (empty until the first one).
#[derive(Debug)]
pub struct Addrs {
    /// The name to resolve; `None` for an IP literal.
    name: Option<String>,
    current: ArcSwap<Vec<SocketAddr>>,
    /// Rotation over `current`: the next dial starts at this one.
    next: AtomicUsize,
}

impl Addrs {
    pub fn new(host: &str, port: u16) -> Self {
        let (name, current) = match host.parse::<IpAddr>() {
            Ok(ip) => (None, vec![SocketAddr::new(ip, port)]),
            Err(_) => (Some(host.to_owned()), Vec::new()),
        };
        Addrs {
            name,
            current: ArcSwap::from_pointee(current),
            next: AtomicUsize::new(0),
        }
    }

    /// The current addresses, and where this dial starts among them.
    pub fn next(&self) -> (Arc<Vec<SocketAddr>>, usize) {
        (
            self.current.load_full(),
            self.next.fetch_add(1, Ordering::Relaxed),
        )
    }

    pub fn current(&self) -> Arc<Vec<SocketAddr>> {
        self.current.load_full()
    }

    /// Stores a fresh answer, sorted and without duplicates (so that the
    /// same set in another order is no change), at most [`MAX_ADDRS`] of
    /// it. Whether the set changed.
    pub fn update(&self, mut addrs: Vec<SocketAddr>) -> bool {
        addrs.sort_unstable();
        addrs.dedup();
        addrs.truncate(MAX_ADDRS);
        if **self.current.load() == addrs {
            return false;
        }
        self.current.store(Arc::new(addrs));
        true
    }
}

/// The last good answer for each `(name, port)`, kept by the gateway across
/// reloads: a new generation's servers start from it, so that a reload
/// during a DNS outage keeps the addresses that worked, as a failed
/// lookup within a generation does.
#[derive(Debug, Default)]
pub struct Known(Mutex<Answers>);

/// The last good answer (sorted, bounded) for each `(name, port)`.
type Answers = HashMap<(String, u16), Arc<Vec<SocketAddr>>>;

impl Known {
    fn lock(&self) -> std::sync::MutexGuard<'_, Answers> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the named servers of `groups` (a new generation's) from the
    /// last answers, and forgets the names no group has any more.
    pub fn seed<'a>(&self, groups: impl IntoIterator<Item = &'a Arc<Upstream>>) {
        let mut known = self.lock();
        let mut kept = HashMap::new();
        for e in groups.into_iter().flat_map(|g| g.endpoints.iter()) {
            let Some(name) = &e.addrs().name else {
                continue;
            };
            let key = (name.clone(), e.port());
            if let Some(addrs) = known.get(&key) {
                e.addrs().current.store(addrs.clone());
                kept.insert(key, addrs.clone());
            }
        }
        *known = kept;
    }

    fn note(&self, name: &str, port: u16, addrs: Arc<Vec<SocketAddr>>) {
        self.lock().insert((name.to_owned(), port), addrs);
    }
}

/// Resolves every server of `group` whose host is a name, all at once,
/// each within [`RESOLVE_TIMEOUT`], and notes the answers in `known`. A
/// failure, a timeout or an empty answer keeps the addresses last stored
/// (a DNS outage does not take working servers away) and is logged; a
/// change of addresses is logged.
pub async fn refresh(group: &Upstream, resolver: &Resolver, known: &Known) {
    let named = group
        .endpoints
        .iter()
        .filter_map(|e| Some((e, e.addrs().name.clone()?)));
    let lookups = named.map(|(e, name)| async move {
        let answer = timeout(RESOLVE_TIMEOUT, resolver(name.clone(), e.port())).await;
        match answer {
            Ok(Ok(addrs)) if !addrs.is_empty() => {
                let changed = e.addrs().update(addrs);
                known.note(&name, e.port(), e.addrs().current());
                if changed {
                    tracing::info!(
                        upstream = %group.name,
                        server = e.label(),
                        addresses = ?e.addrs().current(),
                        "server addresses changed"
                    );
                }
            }
            failed => {
                let error = match failed {
                    Ok(Ok(_)) => "no addresses".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {RESOLVE_TIMEOUT:?}"),
                };
                tracing::warn!(
                    upstream = %group.name,
                    server = e.label(),
                    name = %name,
                    error = %error,
                    kept = e.addrs().current().len(),
                    "cannot resolve a server's name; keeping its last addresses"
                );
            }
        }
    });
    join_all(lookups).await;
}

/// Whether any server of `group` is named (not an IP literal).
pub fn has_names(group: &Upstream) -> bool {
    group.endpoints.iter().any(|e| e.addrs().name.is_some())
}

/// Resolves `group`'s names again every `group.resolve_interval` until
/// `stop` is cancelled. The first resolution is the generation's
/// ([`refresh`], awaited before it serves), so this starts with a wait.
pub fn spawn(
    group: &Arc<Upstream>,
    resolver: Resolver,
    known: Arc<Known>,
    stop: CancellationToken,
) {
    if !has_names(group) {
        return;
    }
    let group = group.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep(group.resolve_interval) => {}
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = refresh(&group, &resolver, &known) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
        sync::mpsc,
    };

    use super::*;
    use crate::upstream::{Network, PoolLimits, ServerSpec};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A resolver that answers from `answer` (as it is at each call) and
    /// reports each call on `calls`.
    fn fake(
        answer: Arc<Mutex<io::Result<Vec<SocketAddr>>>>,
    ) -> (Resolver, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let resolver: Resolver = Arc::new(move |host, _port| {
            let _ = tx.send(host);
            let now = match &*answer.lock().unwrap() {
                Ok(a) => Ok(a.clone()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            Box::pin(async move { now })
        });
        (resolver, rx)
    }

    fn named(host: &str, port: u16) -> ServerSpec {
        ServerSpec {
            url: format!("ws://{host}:{port}"),
            host: host.into(),
            ..ServerSpec::plain(SocketAddr::new([127, 0, 0, 1].into(), port))
        }
    }

    fn group(servers: Vec<ServerSpec>, every: Duration) -> Arc<Upstream> {
        Arc::new(
            Upstream::new("app".into(), PoolLimits::default(), servers).with_network(Network {
                sources: Vec::new(),
                resolve_interval: every,
            }),
        )
    }

    #[test]
    fn an_ip_literal_is_fixed_and_a_name_starts_empty() {
        let ip = Addrs::new("10.0.0.5", 80);
        assert_eq!(*ip.current(), [addr("10.0.0.5:80")]);
        assert!(ip.name.is_none());
        let v6 = Addrs::new("::1", 81);
        assert_eq!(*v6.current(), [addr("[::1]:81")]);
        let name = Addrs::new("backend.internal", 82);
        assert!(name.current().is_empty());
        assert_eq!(name.name.as_deref(), Some("backend.internal"));
    }

    #[test]
    fn an_answer_is_a_set_and_is_bounded() {
        let a = Addrs::new("backend.internal", 80);
        assert!(a.update(vec![addr("10.0.0.2:80"), addr("10.0.0.1:80")]));
        // The same set, reordered and repeated: no change.
        assert!(!a.update(vec![
            addr("10.0.0.1:80"),
            addr("10.0.0.2:80"),
            addr("10.0.0.1:80")
        ]));
        let many = (0..200u8)
            .map(|n| SocketAddr::new([10, 1, 0, n].into(), 80))
            .collect();
        assert!(a.update(many));
        assert_eq!(a.current().len(), MAX_ADDRS);
    }

    /// The loop on a paused clock: the answer changes, and the group's
    /// server has the new addresses after the next interval, without a
    /// reload; a failure keeps the last ones; cancelling stops the loop.
    #[tokio::test(start_paused = true)]
    async fn a_changed_answer_is_picked_up_at_the_next_interval() {
        let every = Duration::from_secs(30);
        let answer = Arc::new(Mutex::new(Ok(vec![addr("10.0.0.1:80")])));
        let (resolver, mut calls) = fake(answer.clone());
        let up = group(
            vec![
                named("backend.test", 80),
                ServerSpec::plain(addr("10.9.9.9:81")),
            ],
            every,
        );
        let addrs = |i: usize| up.endpoints[i].addrs().current();
        // The generation's first resolution; the IP literal is not looked up.
        let known = Arc::new(Known::default());
        refresh(&up, &resolver, &known).await;
        assert_eq!(calls.recv().await.unwrap(), "backend.test");
        assert!(calls.try_recv().is_err());
        assert_eq!(*addrs(0), [addr("10.0.0.1:80")]);
        assert_eq!(*addrs(1), [addr("10.9.9.9:81")]);

        let stop = CancellationToken::new();
        spawn(&up, resolver, known, stop.clone());
        *answer.lock().unwrap() = Ok(vec![addr("10.0.0.3:80"), addr("10.0.0.2:80")]);
        let started = tokio::time::Instant::now();
        calls.recv().await.unwrap();
        assert_eq!(started.elapsed(), every);
        // The store follows the call at once: let the task finish its round.
        tokio::task::yield_now().await;
        assert_eq!(*addrs(0), [addr("10.0.0.2:80"), addr("10.0.0.3:80")]);

        // A failed lookup keeps what was there.
        *answer.lock().unwrap() = Err(io::Error::other("SERVFAIL"));
        calls.recv().await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(*addrs(0), [addr("10.0.0.2:80"), addr("10.0.0.3:80")]);
        *answer.lock().unwrap() = Ok(Vec::new());
        calls.recv().await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(addrs(0).len(), 2);
        assert_eq!(started.elapsed(), every * 3);

        stop.cancel();
        tokio::time::sleep(every * 2).await;
        assert!(calls.try_recv().is_err(), "no lookups after the stop");
    }

    /// A new generation (a reload) starts from the last good answers, so a
    /// lookup that fails then keeps them; names no longer listed are forgotten.
    #[tokio::test]
    async fn a_reload_during_an_outage_keeps_the_last_addresses() {
        let every = Duration::from_secs(30);
        let answer = Arc::new(Mutex::new(Ok(vec![addr("10.0.0.1:80")])));
        let (resolver, _calls) = fake(answer.clone());
        let known = Known::default();
        let first = group(
            vec![named("backend.test", 80), named("old.test", 80)],
            every,
        );
        known.seed([&first]);
        refresh(&first, &resolver, &known).await;
        *answer.lock().unwrap() = Err(io::Error::other("SERVFAIL"));
        let second = group(vec![named("backend.test", 80)], every);
        known.seed([&second]);
        refresh(&second, &resolver, &known).await;
        assert_eq!(
            *second.endpoints[0].addrs().current(),
            [addr("10.0.0.1:80")]
        );
        assert_eq!(known.lock().len(), 1, "old.test is forgotten");
        // Another port of the same name is another server.
        let third = group(vec![named("backend.test", 81)], every);
        known.seed([&third]);
        assert!(third.endpoints[0].addrs().current().is_empty());
    }

    /// A resolver that never answers costs [`RESOLVE_TIMEOUT`], not a hang.
    #[tokio::test(start_paused = true)]
    async fn a_silent_resolver_is_bounded() {
        let resolver: Resolver = Arc::new(|_, _| Box::pin(std::future::pending()));
        let up = group(vec![named("backend.test", 80)], Duration::from_secs(30));
        let started = tokio::time::Instant::now();
        refresh(&up, &resolver, &Known::default()).await;
        assert_eq!(started.elapsed(), RESOLVE_TIMEOUT);
        assert!(up.endpoints[0].addrs().current().is_empty());
    }

    /// A backend that answers each connection's upgrade request with its
    /// own name (enough for a dial test: the first bytes it sends).
    async fn backend(name: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let _ = s.write_all(name.as_bytes()).await;
            }
        });
        at
    }

    /// End to end through the group's dial, with real sockets: the name
    /// first points at `a`, then at `b`; connections follow without a
    /// reload, and the resolver is called once per interval, never per
    /// connection.
    #[tokio::test]
    async fn dials_follow_the_answer_and_never_resolve() {
        let (a, b) = (backend("a").await, backend("b").await);
        let answer = Arc::new(Mutex::new(Ok(vec![a])));
        let (resolver, mut calls) = fake(answer.clone());
        // A long interval: the refreshes below are driven by the test.
        let up = group(vec![named("backend.test", 1)], Duration::from_secs(3600));
        let known = Known::default();
        refresh(&up, &resolver, &known).await;
        calls.recv().await.unwrap();
        let who = || async {
            let policy = crate::upstream::Timeouts {
                connect: Duration::from_secs(5),
                handshake: Duration::from_secs(5),
                attempt: Duration::from_secs(5),
            };
            let mut conn = up.checkout(&policy, None).await.unwrap();
            let mut got = [0u8; 1];
            conn.io.read_exact(&mut got).await.unwrap();
            got[0] as char
        };
        for _ in 0..5 {
            assert_eq!(who().await, 'a');
        }
        *answer.lock().unwrap() = Ok(vec![b]);
        refresh(&up, &resolver, &known).await;
        for _ in 0..5 {
            assert_eq!(who().await, 'b');
        }
        calls.recv().await.unwrap();
        assert!(calls.try_recv().is_err(), "two lookups for ten connections");
    }
}
