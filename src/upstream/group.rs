//! A group's servers as they are now. The config lists servers by URL: a
//! URL whose host is an IP is one server; a URL whose host is a name is one
//! server per address of the name's last answer ([`super::resolve`]), none
//! before its first. Each address has the name's weight and TLS settings,
//! sends the name as `Host` and SNI, and has its own health, draining and
//! least-connections state and its own idle pool, kept by its label
//! (`ws://chat.internal:8080 (10.0.0.5)`, see [`Endpoint`]) in the
//! gateway's [`health::Registry`]. So a Kubernetes headless service's pods
//! are servers one by one, and `balance = "client_ip"` keeps a client on
//! one pod.
//!
//! Routes hold a [`Group`]; each connection takes its current [`Upstream`]
//! (one `Arc` clone), a snapshot whose servers never change, so balancing,
//! health and pools stay indexed from 0. When an answer changes
//! ([`Group::update`], from the group's resolve task), a new snapshot is
//! built from the same config and swapped in atomically: servers that stay
//! keep their state (the registry hands back the same one), new addresses
//! start fresh, and sessions and requests under way keep the snapshot they
//! started on.
//!
//! An address that leaves its name's answer gets no new sessions, but its
//! live sessions are *not* drained: answers can be partial or rotating
//! subsets (a DNS server that returns a few of many records, round-robin
//! DNS), and moving every session off whatever dropped out of one answer
//! would churn sessions for nothing; a backend that is really gone closes
//! its sessions itself. Its idle pooled connections are let go with the
//! old snapshot. A reload that removes a server, or the whole name, from
//! the config is different: that drains its sessions (health.rs).

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::{
    health::{self, Listed},
    resolve::{self, Answers, Known, Resolver},
    tcp::Sources,
    Balance, Conn, Connected, Endpoint, Facts, Network, Placement, PoolLimits, ServerSpec,
    Timeouts, Upstream, UpstreamError, UpstreamRequest,
};

/// What the config says about one group: enough to build its servers again
/// whenever an answer changes.
#[derive(Debug, Clone, Default)]
pub struct GroupSpec {
    pub name: String,
    pub servers: Vec<ServerSpec>,
    pub pool: PoolLimits,
    pub balance: Balance,
    pub network: Network,
    pub health: health::Settings,
    /// URLs of the servers marked `drain = true` (for a name: each of its
    /// addresses).
    pub draining: BTreeSet<String>,
}

impl GroupSpec {
    /// The names its servers are written with, each once, sorted.
    pub fn names(&self) -> Vec<String> {
        let names: BTreeSet<&str> = self
            .servers
            .iter()
            .filter(|s| s.ip().is_none())
            .map(|s| s.host.as_str())
            .collect();
        names.into_iter().map(str::to_owned).collect()
    }

    /// Its servers under `answers`, in config order, a name's addresses in
    /// the answer's (sorted) order; the URL each comes from.
    fn endpoints<'s>(&'s self, answers: &Answers) -> Vec<(Endpoint, &'s str)> {
        let mut out = Vec::new();
        for spec in &self.servers {
            let fixed = spec.ip();
            let ips: &[IpAddr] = match &fixed {
                Some(ip) => std::slice::from_ref(ip),
                None => answers.get(&spec.host).map_or(&[], |a| a.as_slice()),
            };
            out.extend(
                ips.iter()
                    .map(|&ip| (Endpoint::new(spec, ip), spec.url.as_str())),
            );
        }
        out
    }

    /// A snapshot of its servers under `answers`, their states from
    /// `states` (`None` when it has none to give).
    fn build(
        &self,
        answers: &Answers,
        sources: &Arc<Sources>,
        states: impl FnOnce(&[Listed<'_>]) -> Option<health::Group>,
    ) -> Option<Upstream> {
        let (endpoints, urls): (Vec<Endpoint>, Vec<&str>) =
            self.endpoints(answers).into_iter().unzip();
        let listed: Vec<Listed<'_>> = endpoints
            .iter()
            .zip(&urls)
            .map(|(e, &url)| Listed {
                label: e.label(),
                url,
                drain: self.draining.contains(url),
            })
            .collect();
        let health = states(&listed)?;
        let up = Upstream::with_balance(
            self.name.clone(),
            self.pool,
            endpoints,
            self.balance.clone(),
        )
        .with_health(health)
        .with_sources(sources);
        Some(up)
    }
}

/// A group as routes hold it: its servers now, replaced whole when an
/// answer of one of its names changes.
#[derive(Debug)]
pub struct Group {
    spec: GroupSpec,
    /// `spec.names()`, looked up every `resolve_interval`.
    names: Vec<String>,
    /// Shared by every snapshot: the rotation over source addresses goes on.
    sources: Arc<Sources>,
    registry: Arc<health::Registry>,
    /// The config generation it belongs to ([`health::Registry::regroup`]).
    generation: u64,
    current: ArcSwap<Upstream>,
    /// The answers `current` was built from (its names' only); taken by
    /// [`Group::update`] so that two updates cannot interleave.
    built_from: Mutex<Answers>,
}

impl Group {
    /// The group of `spec` in the generation being built, its names at
    /// their `answers` (as [`Known::answers`] has them).
    pub fn new(
        spec: GroupSpec,
        answers: Answers,
        building: &mut health::Building<'_>,
        registry: Arc<health::Registry>,
    ) -> Self {
        let names = spec.names();
        let sources = Arc::new(Sources::new(spec.network.sources.clone()));
        let upstream = spec
            .build(&answers, &sources, |listed| {
                Some(building.group(&spec.name, listed, spec.health.clone()))
            })
            .expect("a building gives every state");
        log_changes(&spec.name, &Answers::new(), &answers);
        Group {
            names,
            sources,
            registry,
            generation: building.generation(),
            current: ArcSwap::from_pointee(upstream),
            built_from: Mutex::new(answers),
            spec,
        }
    }

    /// A group with states of its own (no registry shared with another),
    /// its names unanswered, for tests.
    #[cfg(test)]
    pub(crate) fn standalone(spec: GroupSpec) -> Self {
        let registry = Arc::new(health::Registry::default());
        let mut building = registry.begin();
        let group = Group::new(spec, Answers::new(), &mut building, registry.clone());
        building.finish();
        group
    }

    /// Its servers now. Hold it no longer than a connection attempt or a
    /// request: a newer answer replaces it.
    pub fn current(&self) -> Arc<Upstream> {
        self.current.load_full()
    }

    /// Rebuilds the servers if the answers of its names (taken from
    /// `answers`; a name missing from it has none) differ from those of
    /// the current snapshot; whether they did. Logs each name that changed.
    pub fn update(&self, answers: &Answers) -> bool {
        let answers: Answers = self
            .names
            .iter()
            .filter_map(|n| Some((n.clone(), answers.get(n)?.clone())))
            .collect();
        let mut built_from = self.built_from.lock().unwrap_or_else(|e| e.into_inner());
        if *built_from == answers {
            return false;
        }
        let rebuilt = self.spec.build(&answers, &self.sources, |listed| {
            let (name, settings) = (&self.spec.name, &self.spec.health);
            self.registry
                .regroup(self.generation, name, listed, settings)
        });
        let Some(upstream) = rebuilt else {
            // A reload replaced this group; its task is being stopped.
            return false;
        };
        self.current.store(Arc::new(upstream));
        log_changes(&self.spec.name, &built_from, &answers);
        *built_from = answers;
        true
    }

    /// Resolves its names again every `resolve_interval` and follows their
    /// answers ([`Group::update`]) until `stop` is cancelled. The first
    /// resolution is the generation's (awaited before it serves), so this
    /// starts with a wait. Nothing to do for a group without names.
    pub fn follow(
        self: &Arc<Self>,
        resolver: Resolver,
        known: Arc<Known>,
        stop: CancellationToken,
    ) {
        if self.names.is_empty() {
            return;
        }
        let group = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(group.spec.network.resolve_interval) => {}
                }
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    () = resolve::refresh(&group.names, &resolver, &known) => {}
                }
                group.update(&known.answers(&group.names));
            }
        });
    }

    // === what a connection asks of the group: its current snapshot ===

    /// What the request asks of the balance ([`Upstream::placement`]).
    pub fn placement(&self, facts: &Facts<'_>) -> Placement {
        self.current.load().placement(facts)
    }

    /// Removes the group's sticky cookie from a request to be forwarded
    /// ([`Upstream::strip_cookie`]).
    pub fn strip_cookie(&self, headers: &mut http::HeaderMap) {
        self.current.load().strip_cookie(headers);
    }

    /// A WebSocket connection to one of its servers ([`Upstream::connect`]).
    pub async fn connect(
        &self,
        req: UpstreamRequest<'_>,
        policy: &Timeouts,
        placement: Placement,
    ) -> Result<Connected, UpstreamError> {
        self.current().connect(req, policy, placement).await
    }

    /// A connection for a plain HTTP request ([`Upstream::checkout`]).
    pub async fn checkout(
        &self,
        policy: &Timeouts,
        placement: Placement,
    ) -> Result<Conn, UpstreamError> {
        self.current().checkout(policy, placement).await
    }

    /// A new connection to the server `conn` was to (in the snapshot it
    /// came from), in place of a pooled one that broke before answering.
    pub async fn redial(
        &self,
        conn: &Conn,
        connect: std::time::Duration,
    ) -> Result<Conn, UpstreamError> {
        conn.redial(connect).await
    }

    /// Keeps a connection whose exchange ended cleanly for the next request
    /// (in the pool of the snapshot it came from).
    pub fn checkin(&self, conn: Conn) {
        conn.checkin();
    }
}

/// Logs each name of `group` whose addresses differ between `before` and
/// `after`: one line per change, not per connection.
fn log_changes(group: &str, before: &Answers, after: &Answers) {
    for (name, now) in after {
        let was = before.get(name);
        if was == Some(now) {
            continue;
        }
        let added = now.iter().filter(|a| !was.is_some_and(|w| w.contains(a)));
        let removed = was.map_or(0, |w| w.iter().filter(|a| !now.contains(a)).count());
        // Cold path (an answer changed): one string, "10.0.0.5 10.0.0.6".
        let addresses = now.iter().map(ToString::to_string).collect::<Vec<_>>();
        tracing::info!(
            upstream = group,
            name = %name,
            addresses = %addresses.join(" "),
            added = added.count(),
            removed,
            "server addresses changed: one server per address (sessions on a removed one stay)"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::{io, time::Duration};

    use http::StatusCode;
    use tokio::sync::mpsc;

    use super::*;
    use crate::upstream::{affinity::KeySource, Key, Pick};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn named(host: &str, port: u16, weight: u32) -> ServerSpec {
        ServerSpec {
            url: format!("ws://{host}:{port}"),
            host: host.into(),
            weight,
            ..ServerSpec::plain(([127, 0, 0, 1], port).into())
        }
    }

    fn spec(servers: Vec<ServerSpec>) -> GroupSpec {
        GroupSpec {
            name: "app".into(),
            servers,
            ..GroupSpec::default()
        }
    }

    fn answers(list: &[(&str, &[&str])]) -> Answers {
        list.iter()
            .map(|(name, ips)| {
                (
                    name.to_string(),
                    Arc::new(ips.iter().map(|s| ip(s)).collect()),
                )
            })
            .collect()
    }

    fn labels(g: &Group) -> Vec<String> {
        let up = g.current();
        up.endpoints.iter().map(|e| e.label().to_owned()).collect()
    }

    #[test]
    fn every_address_of_a_name_is_a_server_of_its_own() {
        let g = Group::standalone(spec(vec![
            ServerSpec::plain("10.9.9.9:81".parse().unwrap()),
            named("chat.test", 80, 3),
        ]));
        assert_eq!(g.names, ["chat.test"]);
        assert_eq!(
            labels(&g),
            ["ws://10.9.9.9:81"],
            "no answer yet: no servers"
        );
        assert!(g.update(&answers(&[("chat.test", &["10.0.0.1", "10.0.0.2"])])));
        assert_eq!(
            labels(&g),
            [
                "ws://10.9.9.9:81",
                "ws://chat.test:80 (10.0.0.1)",
                "ws://chat.test:80 (10.0.0.2)",
            ]
        );
        let up = g.current();
        assert_eq!(up.endpoints[2].addr(), "10.0.0.2:80".parse().unwrap());
        assert_eq!(up.endpoints[2].weight(), 3, "the name's weight");
        assert_eq!(up.endpoints[2].authority(), "chat.test:80");
        assert_eq!(up.health.servers.len(), 3, "a state each");
        assert!(
            !g.update(&answers(&[("chat.test", &["10.0.0.1", "10.0.0.2"])])),
            "no change"
        );
    }

    /// A new answer: the servers that stay keep their state, a new address
    /// starts fresh, the one that left is not drained; sessions keep the
    /// snapshot they started on.
    #[test]
    fn a_changed_answer_keeps_the_state_of_servers_that_stay() {
        let g = Group::standalone(spec(vec![named("chat.test", 80, 1)]));
        g.update(&answers(&[("chat.test", &["10.0.0.1", "10.0.0.2"])]));
        let before = g.current();
        g.update(&answers(&[("chat.test", &["10.0.0.2", "10.0.0.3"])]));
        let after = g.current();
        assert_eq!(
            labels(&g),
            [
                "ws://chat.test:80 (10.0.0.2)",
                "ws://chat.test:80 (10.0.0.3)"
            ]
        );
        assert!(Arc::ptr_eq(
            &before.health.servers[1],
            &after.health.servers[0]
        ));
        assert!(
            !before.health.servers[0].is_draining(),
            "10.0.0.1's sessions stay"
        );
        assert_eq!(before.endpoints.len(), 2, "the old snapshot is unchanged");
    }

    /// Hashing ranks servers by label, so the same key reaches the same
    /// address on any gateway with the same answer, whatever the order of
    /// the config's servers.
    #[test]
    fn a_key_reaches_the_same_address_whatever_the_order() {
        let hashed = |servers| GroupSpec {
            balance: Balance {
                pick: Pick::Hash,
                source: Some(KeySource::ClientIp),
                ..Balance::default()
            },
            ..spec(servers)
        };
        let (ip_server, name) = (
            ServerSpec::plain("10.9.9.9:80".parse().unwrap()),
            named("chat.test", 80, 1),
        );
        let a = Group::standalone(hashed(vec![ip_server.clone(), name.clone()]));
        let b = Group::standalone(hashed(vec![name, ip_server]));
        let answer = answers(&[("chat.test", &["10.0.0.3", "10.0.0.1", "10.0.0.2"])]);
        a.update(&answer);
        b.update(&answer);
        let (a, b) = (a.current(), b.current());
        let mut chosen = BTreeSet::new();
        for k in 0..200u64 {
            let first = |up: &Upstream| {
                let i = up.balance.candidates(Some(Key(k)), &|_| 0).next().unwrap();
                up.endpoints[i].label().to_owned()
            };
            assert_eq!(first(&a), first(&b));
            chosen.insert(first(&a));
        }
        assert_eq!(chosen.len(), 4, "every server is chosen for some key");
    }

    /// No answer yet and nothing else: the all-down 503, at once.
    #[tokio::test]
    async fn a_group_with_no_server_yet_is_all_down() {
        let g = Group::standalone(spec(vec![named("chat.test", 80, 1)]));
        let policy = Timeouts {
            connect: Duration::from_secs(1),
            handshake: Duration::from_secs(1),
            attempt: Duration::from_secs(1),
        };
        let req = UpstreamRequest {
            path: "/".into(),
            headers: http::HeaderMap::new(),
            host: None,
            protocols: &[],
        };
        let err = g
            .connect(req, &policy, Placement::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, UpstreamError::AllDown { .. }), "{err:?}");
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        let err = g
            .checkout(&policy, Placement::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, UpstreamError::AllDown { .. }), "{err:?}");
    }

    /// The task on a paused clock: the answer changes and the group's
    /// servers follow after the next interval, without a reload; a failed
    /// lookup keeps them; cancelling stops the task.
    #[tokio::test(start_paused = true)]
    async fn the_servers_follow_the_answer_at_each_interval() {
        let every = Duration::from_secs(30);
        let answer: Arc<Mutex<io::Result<Vec<IpAddr>>>> =
            Arc::new(Mutex::new(Ok(vec![ip("10.0.0.1")])));
        let (tx, mut calls) = mpsc::unbounded_channel();
        let now = answer.clone();
        let resolver = Resolver::from_fn(resolve::RESOLVE_TIMEOUT, move |name| {
            let _ = tx.send(name);
            let r = match &*now.lock().unwrap() {
                Ok(a) => Ok(a.clone()),
                Err(e) => Err(io::Error::other(e.to_string())),
            };
            Box::pin(async move { r })
        });
        let mut s = spec(vec![named("chat.test", 80, 1)]);
        s.network.resolve_interval = every;
        let g = Arc::new(Group::standalone(s));
        let known = Arc::new(Known::default());
        // The generation's first resolution, then the task.
        resolve::refresh(&g.names, &resolver, &known).await;
        g.update(&known.answers(&g.names));
        calls.recv().await.unwrap();
        assert_eq!(labels(&g), ["ws://chat.test:80 (10.0.0.1)"]);
        let stop = CancellationToken::new();
        g.follow(resolver, known, stop.clone());

        *answer.lock().unwrap() = Ok(vec![ip("10.0.0.2"), ip("10.0.0.1")]);
        let started = tokio::time::Instant::now();
        assert_eq!(calls.recv().await.unwrap(), "chat.test");
        assert_eq!(started.elapsed(), every);
        // The swap follows the call at once: let the task finish its round.
        tokio::task::yield_now().await;
        assert_eq!(
            labels(&g),
            [
                "ws://chat.test:80 (10.0.0.1)",
                "ws://chat.test:80 (10.0.0.2)"
            ]
        );
        *answer.lock().unwrap() = Err(io::Error::other("SERVFAIL"));
        calls.recv().await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(labels(&g).len(), 2, "a failure keeps the servers");
        assert_eq!(started.elapsed(), every * 2);

        stop.cancel();
        tokio::time::sleep(every * 2).await;
        assert!(calls.try_recv().is_err(), "no lookups after the stop");
    }
}
