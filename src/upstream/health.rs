//! Whether a server may take new sessions: passive health (consecutive
//! failures eject it for a growing, jittered back-off), active probes
//! (up/down after `rise`/`fall` results in a row), and draining (no new
//! sessions, and the live ones are moved off, see [`Server::drain_signal`]).
//!
//! The decisions are a pure state machine ([`State`]) that is told what
//! happened and what time it is, unit-tested on tokio's paused clock. Around
//! it, [`Server`] is one server's shared state (behind a lock taken once per
//! attempt, never per frame), with its live count ([`InFlight`], what least
//! connections compares) and the beacon its sessions watch; [`Registry`]
//! keeps a [`Server`] per `(group, label)` across reloads and changed
//! answers of names, so a server that stays keeps its health, its draining
//! state and its count of the sessions opened before, and one a reload
//! removes is drained. An address that only left its name's answer is
//! forgotten without draining (see [`super::group`] for why).
//!
//! Availability filters the balancer's candidates (see
//! [`Upstream::available`](super::Upstream::available)); it does not choose
//! an order, so any balancing policy's output can pass through it.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{error::UpstreamError, Upstream};
use crate::relay::{beacon::Beacon, DrainSignal};

/// Passive health: how failures of real traffic eject a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passive {
    /// Consecutive failures that eject a server; 0 never ejects.
    pub eject_after: u32,
    /// The first ejection's length; each one after it (without a success
    /// between) doubles, up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl Default for Passive {
    fn default() -> Self {
        Passive {
            eject_after: 3,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// How far the back-off is shortened at random: up to this fraction, so
/// that servers ejected together (a network blip) are not all retried in
/// the same instant, and the back-off never exceeds its cap.
const BACKOFF_JITTER: f64 = 0.2;

/// What an active probe asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// The TCP connection (and TLS for `wss://`) completes.
    Tcp,
    /// `GET path` is answered with status `expect`.
    Http { path: String, expect: u16 },
    /// A WebSocket upgrade to `path` is answered with 101.
    WebSocket { path: String },
}

/// Active probes of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub kind: ProbeKind,
    /// Time between the starts of two rounds.
    pub interval: Duration,
    /// Bound on one probe (connect, TLS, request and answer).
    pub timeout: Duration,
    /// Successes in a row that bring a down server up.
    pub rise: u32,
    /// Failures in a row that take an up server down.
    pub fall: u32,
}

/// A change worth one log line: logged once per transition, not per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Passive: ejected for this long.
    Ejected(Duration),
    /// Passive: a success after an ejection.
    Recovered,
    /// Active: `fall` failed probes in a row.
    ProbeDown,
    /// Active: `rise` good probes in a row.
    ProbeUp,
}

/// One server's health, pure: told what happened and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Consecutive failures since the last success or ejection.
    fails: u32,
    /// Ejections without a success between (the back-off's exponent).
    ejections: u32,
    /// Ejected until then; past it, the server gets a trial (the next
    /// failure ejects it again at once, a success recovers it).
    until: Option<Instant>,
    /// The active probes' verdict (up when there are no probes).
    up: bool,
    /// Probe results in a row that disagree with `up`.
    streak: u32,
    /// Rebalance found the server above its share: until then it is tried
    /// after the others (see `rebalance.rs`). A time rather than a flag, so
    /// that a mark left by a rebalance a reload stopped wears off.
    crowded_until: Option<Instant>,
}

impl Default for State {
    fn default() -> Self {
        State {
            fails: 0,
            ejections: 0,
            until: None,
            up: true,
            streak: 0,
            crowded_until: None,
        }
    }
}

impl State {
    /// Whether new sessions may go to the server at `now`.
    pub fn available(&self, now: Instant) -> bool {
        self.up && self.until.is_none_or(|t| now >= t)
    }

    /// Whether the server is marked above its share at `now`.
    pub fn crowded(&self, now: Instant) -> bool {
        self.crowded_until.is_some_and(|t| now < t)
    }

    /// Marks the server above its share until `until`, or clears the mark.
    pub fn crowd(&mut self, until: Option<Instant>) {
        self.crowded_until = until;
    }

    /// When an ejection ends, if the server is ejected at `now`.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        self.until.filter(|&t| now < t)
    }

    /// An attempt failed to reach the server. `jitter` in `[0, 1)`
    /// shortens the back-off by up to [`BACKOFF_JITTER`].
    pub fn failure(&mut self, rules: &Passive, now: Instant, jitter: f64) -> Option<Transition> {
        if rules.eject_after == 0 || self.ejected_until(now).is_some() {
            // Attempts that began before the ejection: already counted.
            return None;
        }
        self.fails += 1;
        let trial = self.until.is_some();
        if !trial && self.fails < rules.eject_after {
            return None;
        }
        let exp = self.ejections.min(16);
        let full = rules
            .backoff
            .saturating_mul(1 << exp)
            .min(rules.backoff_max);
        let d = full.mul_f64(1.0 - BACKOFF_JITTER * jitter.clamp(0.0, 1.0));
        self.ejections += 1;
        self.fails = 0;
        self.until = Some(now + d);
        Some(Transition::Ejected(d))
    }

    /// An attempt reached the server (a handshake or a response head).
    pub fn success(&mut self) -> Option<Transition> {
        self.fails = 0;
        let was_ejected = self.ejections > 0;
        self.ejections = 0;
        self.until = None;
        was_ejected.then_some(Transition::Recovered)
    }

    /// An active probe's result.
    pub fn probed(&mut self, ok: bool, rules: &Probe) -> Option<Transition> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { rules.fall } else { rules.rise };
        if self.streak < needed.max(1) {
            return None;
        }
        self.streak = 0;
        self.up = ok;
        if ok {
            // Probes found it serving again: forget the passive back-off too.
            self.success();
            Some(Transition::ProbeUp)
        } else {
            Some(Transition::ProbeDown)
        }
    }

    /// Probes were switched off by a reload: their verdict no longer holds.
    fn unprobed(&mut self) {
        self.up = true;
        self.streak = 0;
    }
}

/// One server's live state, shared by every generation that lists it.
#[derive(Debug)]
pub struct Server {
    label: String,
    state: Mutex<State>,
    /// Live sessions and in-flight requests ([`InFlight`]), whichever
    /// generation opened them: least connections compares these.
    load: AtomicUsize,
    /// WebSocket sessions opened here, in all (for the metrics).
    opened: std::sync::atomic::AtomicU64,
    /// What its sessions watch: draining (its own, or the gateway's above
    /// it) and sheds.
    beacon: Arc<Beacon>,
    /// The group's `drain_window` when last configured.
    window: Mutex<Option<Duration>>,
    /// Drained by the config (`drain = true`) and by the admin interface:
    /// it drains while either holds. The admin's survives reloads that keep
    /// the server, as the rest of its state does.
    by_config: AtomicBool,
    by_admin: AtomicBool,
}

impl Server {
    /// A server whose sessions also hear `gateway`'s drain, if given.
    pub fn new(label: &str, gateway: Option<&Arc<Beacon>>) -> Self {
        Server {
            label: label.to_owned(),
            state: Mutex::default(),
            load: AtomicUsize::new(0),
            opened: std::sync::atomic::AtomicU64::new(0),
            beacon: gateway.map_or_else(Beacon::new, Beacon::under),
            window: Mutex::default(),
            by_config: AtomicBool::new(false),
            by_admin: AtomicBool::new(false),
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn window(&self) -> MutexGuard<'_, Option<Duration>> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether new sessions may go here at `now`: healthy and not draining.
    pub fn available(&self, now: Instant) -> bool {
        !self.is_draining() && self.state().available(now)
    }

    /// `None` when no new session may go here at `now`; else whether it is
    /// marked above its share (one lock for both).
    pub fn standing(&self, now: Instant) -> Option<bool> {
        if self.is_draining() {
            return None;
        }
        let s = self.state();
        s.available(now).then(|| s.crowded(now))
    }

    pub fn is_draining(&self) -> bool {
        self.beacon.is_draining()
    }

    /// Live sessions and in-flight requests.
    pub fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    /// WebSocket sessions opened here since the server was first listed.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Counts one session or request here until the guard is dropped.
    pub fn in_flight(self: &Arc<Self>) -> InFlight {
        self.load.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn beacon(&self) -> &Arc<Beacon> {
        &self.beacon
    }

    /// What a session on this server balanced on `key` watches: when the
    /// server drains the session closes at a message boundary after its
    /// share of the window (client 1012, backend 1001); the gateway's drain
    /// and a rebalance's shed reach it the same way. The gateway's spread is
    /// the caller's to set.
    pub fn drain_signal(&self, key: Option<u64>) -> DrainSignal {
        DrainSignal {
            beacon: self.beacon.clone(),
            spread: None,
            window: *self.window(),
            key,
        }
    }

    /// Sets the draining state from the config; returns whether it changed.
    fn set_draining(&self, on: bool, window: Option<Duration>) -> bool {
        // Held while the beacon is set: a reload and the admin interface
        // each store their flag and set the beacon from both under it, so
        // neither can undo the other's drain in between.
        let mut serial = self.window();
        *serial = window;
        self.by_config.store(on, Ordering::Relaxed);
        self.beacon
            .set_draining(on || self.by_admin.load(Ordering::Relaxed))
    }

    /// Whether health (probes, passive checks) lets it take sessions now,
    /// draining aside.
    pub fn healthy(&self, now: Instant) -> bool {
        self.state().available(now)
    }

    /// Drains or undrains it at runtime (the admin interface). The config's
    /// `drain = true` wins: such a server cannot be undrained here.
    pub fn set_admin_drain(&self, on: bool) -> Result<bool, AdminDrainError> {
        let _serial = self.window(); // as in `set_draining`
        if !on && self.by_config.load(Ordering::Relaxed) {
            return Err(AdminDrainError::ByConfig);
        }
        self.by_admin.store(on, Ordering::Relaxed);
        Ok(self
            .beacon
            .set_draining(on || self.by_config.load(Ordering::Relaxed)))
    }

    /// Removed by a reload: its sessions move off over the last window.
    fn removed(&self) {
        self.beacon.set_draining(true);
    }

    pub(super) fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state())
    }
}

/// Why a runtime drain or undrain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminDrainError {
    #[error("no such server in that upstream")]
    NotFound,
    #[error("the config drains this server (drain = true); undrain it there")]
    ByConfig,
}

/// Counts one live session or in-flight request on a server (pingora's
/// `Inflight`): a WebSocket session holds it for its whole life, a plain
/// request while in flight, and every way out releases it. It counts on
/// the server's shared state, so a reload that keeps the server keeps the
/// count.
#[derive(Debug)]
pub struct InFlight(Arc<Server>);

impl InFlight {
    /// The server's label (its URL as written), for logs.
    pub fn label(&self) -> &str {
        self.0.label()
    }

    /// What it counts became a WebSocket session (its upstream's 101).
    pub(super) fn session_opened(&self) {
        self.0.opened.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One group's health settings and its servers' states, index for index
/// with its endpoints.
#[derive(Debug)]
pub struct Group {
    pub servers: Vec<Arc<Server>>,
    pub passive: Passive,
    pub probe: Option<Probe>,
}

impl Group {
    /// States of their own for `labels`, not shared with any registry (a
    /// group built outside a gateway, as in tests).
    pub fn standalone<'a>(labels: impl Iterator<Item = &'a str>) -> Self {
        Group {
            servers: labels.map(|l| Arc::new(Server::new(l, None))).collect(),
            passive: Passive::default(),
            probe: None,
        }
    }
}

/// What the config says about one group's health and draining.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub passive: Passive,
    pub probe: Option<Probe>,
    /// Sessions of a draining or removed server are closed spread over this.
    pub window: Option<Duration>,
}

/// One server a group lists: its label, the URL the config wrote it with
/// (the label itself for a server written as an IP, the name's URL for
/// each of a name's addresses), and whether the config drains it.
#[derive(Debug, Clone, Copy)]
pub struct Listed<'a> {
    pub label: &'a str,
    pub url: &'a str,
    pub drain: bool,
}

/// Server states by `(group, label)`, kept across reloads; holds exactly the
/// servers of the current config and answers (bounded by them).
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Servers>,
    /// The gateway's beacon, which every server's is under (none outside a
    /// gateway).
    gateway: Option<Arc<Beacon>>,
}

#[derive(Debug, Default)]
struct Servers {
    by_label: HashMap<Key, Entry>,
    /// The config generation they are the servers of: a group of an older
    /// one (whose resolve task has not stopped yet) may not regroup.
    generation: u64,
}

/// `(group, label)`.
type Key = (String, String);

#[derive(Debug)]
struct Entry {
    server: Arc<Server>,
    /// The URL it comes from ([`Listed::url`]).
    url: String,
}

/// One config generation being built: the servers it lists.
pub struct Building<'a> {
    registry: &'a Registry,
    generation: u64,
    seen: HashMap<Key, Entry>,
    /// `(group, URL)` of every server it lists.
    urls: HashSet<Key>,
}

impl Registry {
    /// A registry whose servers' sessions also hear `gateway`'s drain.
    pub fn under(gateway: &Arc<Beacon>) -> Self {
        Registry {
            inner: Mutex::default(),
            gateway: Some(gateway.clone()),
        }
    }

    pub fn begin(&self) -> Building<'_> {
        Building {
            registry: self,
            generation: self.lock().generation + 1,
            seen: HashMap::new(),
            urls: HashSet::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Servers> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every server of the current config and answers, by group and label.
    pub fn list(&self) -> Vec<(String, String, Arc<Server>)> {
        let mut all: Vec<_> = self
            .lock()
            .by_label
            .iter()
            .map(|((g, l), e)| (g.clone(), l.clone(), e.server.clone()))
            .collect();
        all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        all
    }

    /// Drains (`on`) or undrains server `label` of `group` at runtime;
    /// returns whether its state changed. Logged like a config drain.
    pub fn admin_drain(&self, group: &str, label: &str, on: bool) -> Result<bool, AdminDrainError> {
        let server = self
            .lock()
            .by_label
            .get(&(group.to_owned(), label.to_owned()))
            .map(|e| e.server.clone())
            .ok_or(AdminDrainError::NotFound)?;
        let changed = server.set_admin_drain(on)?;
        if changed {
            match on {
                true => tracing::info!(
                    upstream = group,
                    server = label,
                    "server draining (admin): no new sessions, live ones move off"
                ),
                false => {
                    tracing::info!(upstream = group, server = label, "server undrained (admin)")
                }
            }
        }
        Ok(changed)
    }

    /// The states of `group`'s servers after an answer of one of its names
    /// changed (within a generation, so the config is the same): those
    /// that stay keep theirs, new addresses get fresh ones, and the
    /// group's servers not listed any more (addresses that left an answer)
    /// are forgotten *without* draining: their live sessions stay.
    ///
    /// `None` when `generation` (the one the group was built in) has been
    /// replaced: a reload rebuilt every group, and the old one is retiring.
    pub fn regroup(
        &self,
        generation: u64,
        group: &str,
        servers: &[Listed<'_>],
        settings: &Settings,
    ) -> Option<Group> {
        let mut guard = self.lock();
        if guard.generation != generation {
            return None;
        }
        let kept = &mut guard.by_label;
        let mut listed = HashSet::with_capacity(servers.len());
        let mut states = Vec::with_capacity(servers.len());
        for l in servers {
            let key = (group.to_owned(), l.label.to_owned());
            let found = kept.get(&key).map(|e| e.server.clone());
            let server = configured(group, l, found, settings, self.gateway.as_ref());
            kept.insert(
                key.clone(),
                Entry {
                    server: server.clone(),
                    url: l.url.to_owned(),
                },
            );
            listed.insert(key);
            states.push(server);
        }
        kept.retain(|key, _| key.0 != group || listed.contains(key));
        Some(Group {
            servers: states,
            passive: settings.passive,
            probe: settings.probe.clone(),
        })
    }
}

/// `found` (or a new state for `l`) with its draining set as the config
/// says (logged when that changes), and no probe verdict when the group
/// has no probes.
fn configured(
    group: &str,
    l: &Listed<'_>,
    found: Option<Arc<Server>>,
    settings: &Settings,
    gateway: Option<&Arc<Beacon>>,
) -> Arc<Server> {
    let server = found.unwrap_or_else(|| Arc::new(Server::new(l.label, gateway)));
    if server.set_draining(l.drain, settings.window) {
        match l.drain {
            true => tracing::info!(
                upstream = group,
                server = l.label,
                "server draining: no new sessions, live ones move off"
            ),
            false => tracing::info!(upstream = group, server = l.label, "server undrained"),
        }
    }
    if settings.probe.is_none() {
        server.with_state(State::unprobed);
    }
    server
}

impl Building<'_> {
    /// Its number, for [`Registry::regroup`].
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The states of `group`'s servers (in config order), kept from the
    /// last generation where they were listed.
    pub fn group(&mut self, group: &str, servers: &[Listed<'_>], settings: Settings) -> Group {
        let kept = self.registry.lock();
        let mut states = Vec::with_capacity(servers.len());
        for l in servers {
            let key = (group.to_owned(), l.label.to_owned());
            let found = self.seen.get(&key).or_else(|| kept.by_label.get(&key));
            let server = configured(
                group,
                l,
                found.map(|e| e.server.clone()),
                &settings,
                self.registry.gateway.as_ref(),
            );
            self.urls.insert((group.to_owned(), l.url.to_owned()));
            self.seen.insert(
                key,
                Entry {
                    server: server.clone(),
                    url: l.url.to_owned(),
                },
            );
            states.push(server);
        }
        Group {
            servers: states,
            passive: settings.passive,
            probe: settings.probe,
        }
    }

    /// The generation is complete: servers it no longer lists are drained
    /// and forgotten, except an address of a name the group still lists,
    /// which only left the name's answer: forgotten without draining, as
    /// within a generation ([`Registry::regroup`]).
    pub fn finish(self) {
        let mut kept = self.registry.lock();
        for (key, entry) in kept.by_label.drain() {
            if self.seen.contains_key(&key) || self.urls.contains(&(key.0.clone(), entry.url)) {
                continue;
            }
            let (group, label) = key;
            tracing::info!(upstream = %group, server = %label, "server removed: live sessions move off");
            entry.server.removed();
        }
        kept.by_label = self.seen;
        kept.generation = self.generation;
    }
}

// === health on the group ===

impl Upstream {
    /// Whether server `index` may take a new session now. The candidate
    /// loops skip servers for which this is false.
    pub(super) fn available(&self, index: usize, now: Instant) -> bool {
        self.health.servers[index].available(now)
    }

    /// [`Server::standing`] of server `index`.
    pub(super) fn standing(&self, index: usize, now: Instant) -> Option<bool> {
        self.health.servers[index].standing(now)
    }

    /// Records how an attempt at server `index` went; logs transitions.
    /// A failure is not reaching it (unreachable, TLS failed or timed out); any answer,
    /// even a refusal or an invalid one, shows it is up.
    pub(super) fn report<T>(&self, index: usize, outcome: &Result<T, UpstreamError>) {
        let server = &self.health.servers[index];
        let reached = !matches!(
            outcome,
            Err(UpstreamError::Unreachable { .. }
                | UpstreamError::Tls { .. }
                | UpstreamError::Timeout { .. })
        );
        let change = server.with_state(|s| match reached {
            true => s.success(),
            false => s.failure(&self.health.passive, Instant::now(), rand::random()),
        });
        log(&self.name, server.label(), change);
    }

    /// Records an active probe's result; logs transitions.
    pub(super) fn probed(&self, index: usize, ok: bool) {
        let Some(rules) = &self.health.probe else {
            return;
        };
        let server = &self.health.servers[index];
        let change = server.with_state(|s| s.probed(ok, rules));
        log(&self.name, server.label(), change);
    }

    /// The answer when no server may take a session: 503 at once, with
    /// when to retry (the earliest end of an ejection, else a probe
    /// interval, else a second).
    pub(super) fn all_down(&self) -> UpstreamError {
        let now = Instant::now();
        let soonest = self
            .health
            .servers
            .iter()
            .filter(|s| !s.is_draining())
            .filter_map(|s| s.with_state(|st| st.ejected_until(now)))
            .min()
            .map(|t| t - now);
        let retry = soonest
            .or(self.health.probe.as_ref().map(|p| p.interval))
            .unwrap_or(Duration::from_secs(1));
        UpstreamError::AllDown {
            upstream: self.name.clone(),
            retry_after: retry.as_secs_f64().ceil().max(1.0) as u64,
        }
    }

    /// The signal a session on server `index` balanced on `key` watches.
    pub(super) fn drain_signal(&self, index: usize, key: Option<u64>) -> DrainSignal {
        self.health.servers[index].drain_signal(key)
    }

    /// Counts a session or request on server `index` while the guard lives.
    pub(super) fn in_flight(&self, index: usize) -> InFlight {
        self.health.servers[index].in_flight()
    }

    /// Server `index`'s live sessions and in-flight requests.
    pub(super) fn load(&self, index: usize) -> usize {
        self.health.servers[index].load()
    }
}

fn log(upstream: &str, server: &str, change: Option<Transition>) {
    match change {
        None => {}
        Some(Transition::Ejected(d)) => tracing::warn!(
            upstream,
            server,
            for_s = d.as_secs_f64(),
            "server ejected: no new sessions until the back-off ends"
        ),
        Some(Transition::Recovered) => tracing::info!(upstream, server, "server recovered"),
        Some(Transition::ProbeDown) => tracing::warn!(upstream, server, "server down (probes)"),
        Some(Transition::ProbeUp) => tracing::info!(upstream, server, "server up (probes)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Passive = Passive {
        eject_after: 3,
        backoff: Duration::from_secs(1),
        backoff_max: Duration::from_secs(4),
    };

    fn probe(rise: u32, fall: u32) -> Probe {
        Probe {
            kind: ProbeKind::Tcp,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            rise,
            fall,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_and_the_backoff_grows_to_its_cap() {
        let mut s = State::default();
        let t0 = Instant::now();
        assert_eq!(s.failure(&RULES, t0, 0.0), None);
        assert_eq!(s.failure(&RULES, t0, 0.0), None);
        assert!(s.available(t0));
        assert_eq!(
            s.failure(&RULES, t0, 0.0),
            Some(Transition::Ejected(Duration::from_secs(1)))
        );
        assert!(!s.available(t0));
        // Attempts begun before the ejection do not extend it.
        assert_eq!(s.failure(&RULES, t0, 0.0), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        let t1 = Instant::now();
        assert!(s.available(t1), "the back-off ended: a trial");
        // The trial fails: ejected again at once, for twice as long.
        assert_eq!(
            s.failure(&RULES, t1, 0.0),
            Some(Transition::Ejected(Duration::from_secs(2)))
        );
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(
            s.failure(&RULES, t2, 0.0),
            Some(Transition::Ejected(Duration::from_secs(4)))
        );
        let t3 = t2 + Duration::from_secs(4);
        assert_eq!(
            s.failure(&RULES, t3, 0.0),
            Some(Transition::Ejected(Duration::from_secs(4))),
            "capped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_only_shortens_the_backoff() {
        let mut s = State::default();
        let now = Instant::now();
        let rules = Passive {
            eject_after: 1,
            ..RULES
        };
        assert_eq!(
            s.failure(&rules, now, 0.5),
            Some(Transition::Ejected(Duration::from_millis(900)))
        );
        assert_eq!(s.ejected_until(now), Some(now + Duration::from_millis(900)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count_and_recovers() {
        let mut s = State::default();
        let now = Instant::now();
        s.failure(&RULES, now, 0.0);
        s.failure(&RULES, now, 0.0);
        assert_eq!(s.success(), None, "never ejected: nothing to log");
        s.failure(&RULES, now, 0.0);
        s.failure(&RULES, now, 0.0);
        assert!(s.available(now), "the count started again");
        s.failure(&RULES, now, 0.0);
        assert!(!s.available(now));
        let later = now + Duration::from_secs(1);
        assert_eq!(s.success(), Some(Transition::Recovered));
        assert!(s.available(later));
        // The back-off starts from the bottom again.
        for _ in 0..2 {
            s.failure(&RULES, later, 0.0);
        }
        assert_eq!(
            s.failure(&RULES, later, 0.0),
            Some(Transition::Ejected(Duration::from_secs(1)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_never_ejects() {
        let mut s = State::default();
        let now = Instant::now();
        let rules = Passive {
            eject_after: 0,
            ..RULES
        };
        for _ in 0..10 {
            assert_eq!(s.failure(&rules, now, 0.0), None);
        }
        assert!(s.available(now));
    }

    #[tokio::test(start_paused = true)]
    async fn probes_take_a_server_down_after_fall_and_up_after_rise() {
        let mut s = State::default();
        let now = Instant::now();
        let p = probe(2, 3);
        assert_eq!(s.probed(false, &p), None);
        assert_eq!(s.probed(false, &p), None);
        assert_eq!(s.probed(true, &p), None, "a good probe breaks the streak");
        assert_eq!(s.probed(false, &p), None);
        assert_eq!(s.probed(false, &p), None);
        assert_eq!(s.probed(false, &p), Some(Transition::ProbeDown));
        assert!(!s.available(now));
        assert_eq!(s.probed(false, &p), None);
        assert_eq!(s.probed(true, &p), None);
        assert_eq!(s.probed(true, &p), Some(Transition::ProbeUp));
        assert!(s.available(now));
    }

    #[tokio::test(start_paused = true)]
    async fn probes_up_clear_a_passive_ejection() {
        let mut s = State::default();
        let now = Instant::now();
        for _ in 0..3 {
            s.failure(&RULES, now, 0.0);
        }
        let p = probe(1, 1);
        s.probed(false, &p);
        assert_eq!(s.probed(true, &p), Some(Transition::ProbeUp));
        assert!(s.available(now));
    }

    /// Servers written as IPs: each labelled by its URL.
    fn ips<'a>(servers: &[(&'a str, bool)]) -> Vec<Listed<'a>> {
        servers
            .iter()
            .map(|&(label, drain)| Listed {
                label,
                url: label,
                drain,
            })
            .collect()
    }

    /// The addresses (labels) of the name written `url`.
    fn named<'a>(url: &'a str, labels: &[&'a str]) -> Vec<Listed<'a>> {
        labels
            .iter()
            .map(|&label| Listed {
                label,
                url,
                drain: false,
            })
            .collect()
    }

    #[test]
    fn the_registry_keeps_servers_that_stay_and_drains_removed_ones() {
        let reg = Registry::default();
        let settings = Settings::default();
        let mut b = reg.begin();
        let g1 = b.group(
            "pool",
            &ips(&[("ws://a", false), ("ws://b", false)]),
            settings.clone(),
        );
        b.finish();
        let (a, bb) = (g1.servers[0].clone(), g1.servers[1].clone());
        let removed = bb.drain_signal(None);

        let mut b = reg.begin();
        let g2 = b.group(
            "pool",
            &ips(&[("ws://a", false), ("ws://c", false)]),
            settings.clone(),
        );
        b.finish();
        assert!(Arc::ptr_eq(&a, &g2.servers[0]), "a stays: same state");
        assert!(bb.is_draining(), "b was removed: its sessions move off");
        drop(removed);
        assert_eq!(reg.lock().by_label.len(), 2, "bounded by the config");
    }

    /// An address that leaves its name's answer is forgotten, not drained,
    /// whether the answer changed within a generation or across a reload;
    /// the addresses of a name the config no longer lists are drained.
    #[test]
    fn an_address_that_leaves_an_answer_is_forgotten_not_drained() {
        let reg = Registry::default();
        let settings = Settings::default();
        let url = "ws://chat.test:80";
        let (a, b, c) = (
            "ws://chat.test:80 (10.0.0.1)",
            "ws://chat.test:80 (10.0.0.2)",
            "ws://chat.test:80 (10.0.0.3)",
        );
        let mut building = reg.begin();
        let gen = building.generation();
        let first = building.group("pool", &named(url, &[a, b]), settings.clone());
        building.finish();
        // The answer changes: b leaves, c joins.
        let second = reg
            .regroup(gen, "pool", &named(url, &[a, c]), &settings)
            .unwrap();
        assert!(
            Arc::ptr_eq(&first.servers[0], &second.servers[0]),
            "a stays"
        );
        assert!(!first.servers[1].is_draining(), "b's sessions stay");
        assert_eq!(reg.lock().by_label.len(), 2, "b is forgotten");
        // Another group's servers are not touched by a regroup.
        let mut building = reg.begin();
        let gen = building.generation();
        building.group("pool", &named(url, &[a, c]), settings.clone());
        let other = building.group("other", &ips(&[("ws://x", false)]), settings.clone());
        building.finish();
        assert!(
            reg.regroup(gen - 1, "pool", &named(url, &[b]), &settings)
                .is_none(),
            "a retired generation's group may not regroup"
        );
        reg.regroup(gen, "pool", &named(url, &[a]), &settings)
            .unwrap();
        assert_eq!(reg.lock().by_label.len(), 2, "pool's a and other's x");
        // A reload whose answer lacks c, the name still listed: not drained.
        let mut building = reg.begin();
        let third = building.group("pool", &named(url, &[a, c]), settings.clone());
        building.group("other", &ips(&[("ws://x", false)]), settings.clone());
        building.finish();
        let mut building = reg.begin();
        building.group("pool", &named(url, &[a]), settings.clone());
        building.group("other", &ips(&[("ws://x", false)]), settings.clone());
        building.finish();
        assert!(!third.servers[1].is_draining(), "c left the answer only");
        // A reload that removes the name: its addresses drain.
        let mut building = reg.begin();
        building.group(
            "pool",
            &ips(&[("ws://10.9.9.9:80", false)]),
            settings.clone(),
        );
        building.group("other", &ips(&[("ws://x", false)]), settings);
        building.finish();
        assert!(third.servers[0].is_draining(), "the name was removed");
        assert!(!other.servers[0].is_draining());
    }

    #[test]
    fn a_server_that_stays_keeps_its_count_of_sessions_opened_before_a_reload() {
        let reg = Registry::default();
        let listed = ips(&[("ws://a", false), ("ws://b", false)]);
        let mut b = reg.begin();
        let g1 = b.group("pool", &listed, Settings::default());
        b.finish();
        let held: Vec<InFlight> = (0..3).map(|_| g1.servers[0].in_flight()).collect();
        let mut b = reg.begin();
        let g2 = b.group("pool", &listed, Settings::default());
        b.finish();
        drop(g1);
        assert_eq!((g2.servers[0].load(), g2.servers[1].load()), (3, 0));
        let more = g2.servers[0].in_flight();
        assert_eq!(g2.servers[0].load(), 4);
        drop((held, more));
        assert_eq!(g2.servers[0].load(), 0, "every guard gave its count back");
    }

    #[test]
    fn a_servers_beacon_is_under_the_gateways() {
        let gateway = Beacon::new();
        let reg = Registry::under(&gateway);
        let mut b = reg.begin();
        let g = b.group("pool", &ips(&[("ws://a", false)]), Settings::default());
        b.finish();
        let signal = g.servers[0].drain_signal(Some(7));
        assert_eq!(signal.key, Some(7));
        let woken = std::sync::Arc::new(Woken::default());
        let waker = std::task::Waker::from(woken.clone());
        let mut watch = crate::relay::beacon::Watch::new(signal.beacon, signal.key);
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(watch.poll(&mut cx).is_pending());
        gateway.set_draining(true);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(watch.poll(&mut cx).is_ready());
        assert!(!g.servers[0].is_draining(), "only the gateway drains");
    }

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Woken(AtomicUsize);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_crowded_mark_wears_off() {
        let server = Server::new("ws://a", None);
        let now = Instant::now();
        assert_eq!(server.standing(now), Some(false));
        server.with_state(|s| s.crowd(Some(now + Duration::from_secs(2))));
        assert_eq!(server.standing(now), Some(true));
        assert_eq!(server.standing(now + Duration::from_secs(2)), Some(false));
        server.set_draining(true, None);
        assert_eq!(
            server.standing(now),
            None,
            "draining: not a candidate at all"
        );
    }

    #[test]
    fn draining_by_config_and_undraining() {
        let reg = Registry::default();
        let settings = Settings {
            window: Some(Duration::from_secs(30)),
            ..Settings::default()
        };
        let mut b = reg.begin();
        let g = b.group("pool", &ips(&[("ws://a", false)]), settings.clone());
        b.finish();
        let a = g.servers[0].clone();
        let before = a.drain_signal(None);
        assert_eq!(before.window, Some(Duration::from_secs(30)));
        let mut b = reg.begin();
        b.group("pool", &ips(&[("ws://a", true)]), settings.clone());
        b.finish();
        assert!(a.is_draining());
        assert!(!a.available(Instant::now()));
        let mut b = reg.begin();
        b.group("pool", &ips(&[("ws://a", false)]), settings);
        b.finish();
        assert!(!a.is_draining());
        assert!(a.available(Instant::now()));
    }

    #[test]
    fn the_admin_drain_and_the_configs_each_hold_the_server() {
        let reg = Registry::default();
        let reload = |drain| {
            let mut b = reg.begin();
            let g = b.group("pool", &ips(&[("ws://a", drain)]), Settings::default());
            b.finish();
            g.servers[0].clone()
        };
        let a = reload(true);
        assert!(matches!(
            a.set_admin_drain(false),
            Err(AdminDrainError::ByConfig)
        ));
        assert!(a.is_draining(), "the config's drain wins");
        assert_eq!(a.set_admin_drain(true), Ok(false), "already draining");
        let a = reload(false);
        assert!(a.is_draining(), "the admin's drain outlives the config's");
        assert_eq!(a.set_admin_drain(false), Ok(true));
        assert!(!a.is_draining());
    }
}
