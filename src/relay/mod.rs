//! The relay: one task per session moves frames both ways and closes both
//! legs properly. See `LIFECYCLE.md` beside this file for the state machine
//! and the close-code table.
//!
//! - this file: the public face ([`Session`], [`SessionRules`], [`Summary`],
//!   [`Jitter`]) and the session's loop: pump, then see what the phase asks for;
//! - `pump.rs`: the hot path, frames from one leg to the other;
//! - `leg.rs`: one leg and where its close handshake stands (`LegState`);
//! - `phase.rs`: where the session stands (`Phase`) and what an event on
//!   one leg does to both (`on`);
//! - [`lifecycle`]: the timers, pure; [`gate`]: admission's per-leg checks;
//! - [`beacon`]: how a session hears of a drain or a shed, one registration
//!   per session and one atomic load per poll;
//! - [`Traffic`]: the gateway's frame and byte totals, which each open
//!   session adds to about once a second.
//!
//! Memory: a session owns no buffer while idle. Reads go into a per-thread
//! scratch buffer and are rewritten in place by [`Decoder`](crate::proto::frame::Decoder); bytes a
//! leg cannot take yet go to that leg's `outbox`, which exists only until it
//! drains. A direction is read only when the leg it writes to has nothing
//! waiting, so a slow reader stops the gateway reading from the other side
//! (TCP backpressure) instead of growing a queue.

pub mod beacon;
pub mod gate;
mod leg;
pub mod lifecycle;
mod phase;
mod pump;
#[cfg(test)]
mod tests;

use std::{
    future::poll_fn,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    proto::frame::{FrameLimits, Side},
    stream::Socket,
};
use beacon::{Beacon, Watch};
use gate::Gate;
use leg::{Leg, LegState};
use lifecycle::{Due, Lifecycle};
use phase::{on, Event, Phase, State};
use pump::{close_for_drain, pump, SCRATCH};

/// What a session is held to: frame limits per leg, its timers, and how
/// long a close handshake may take (from the route's policy).
#[derive(Debug, Clone, Copy)]
pub struct SessionRules {
    /// Limits on frames read from the client.
    pub client: FrameLimits,
    /// Limits on frames read from the upstream.
    pub upstream: FrameLimits,
    pub close_timeout: Duration,
    /// Keepalive, idle and lifetime timers.
    pub timers: lifecycle::Rules,
}

/// How a session ended, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A peer sent a close frame first.
    Closed { by: Side, code: Option<u16> },
    /// A peer broke the protocol and was closed with `code`.
    Violation {
        by: Side,
        code: u16,
        reason: &'static str,
    },
    /// A peer's TCP connection ended without a close frame.
    Vanished { by: Side },
    /// A peer answered no keepalive ping in time.
    Unresponsive { by: Side },
    /// The gateway closed both legs: idle, lifetime or drain.
    Gateway { reason: &'static str },
}

/// Traffic in one direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub frames: u64,
    pub bytes: u64,
}

impl Counts {
    /// What `self` counted since `earlier`.
    fn since(self, earlier: Counts) -> Counts {
        Counts {
            frames: self.frames - earlier.frames,
            bytes: self.bytes - earlier.bytes,
        }
    }
}

/// Data frames and payload bytes relayed each way by a gateway's sessions,
/// open ones included: each session adds what it counted since it last did
/// about once a second ([`lifecycle::PUBLISH_EVERY`]) and when it ends, so
/// that a gateway of hour-long sessions shows their traffic as it flows.
/// The relay owns this type (the metrics read it) because the metrics sit
/// above the relay. A few relaxed additions per session-second; nothing
/// per frame (the frames are counted in each leg's [`Counts`]).
#[derive(Debug, Default)]
pub struct Traffic {
    /// `[up, down]`: client to upstream, upstream to client.
    frames: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
}

impl Traffic {
    /// Frames relayed so far, `[up, down]`.
    pub fn frames(&self) -> [u64; 2] {
        self.frames.each_ref().map(|c| c.load(Ordering::Relaxed))
    }

    /// Payload bytes relayed so far, `[up, down]`.
    pub fn bytes(&self) -> [u64; 2] {
        self.bytes.each_ref().map(|c| c.load(Ordering::Relaxed))
    }

    fn add(&self, direction: usize, c: Counts) {
        self.frames[direction].fetch_add(c.frames, Ordering::Relaxed);
        self.bytes[direction].fetch_add(c.bytes, Ordering::Relaxed);
    }
}

/// Where a session publishes its traffic, and what it has published.
struct Publisher {
    to: Arc<Traffic>,
    /// The legs' counts at the last publish, `[client, upstream]`.
    published: [Counts; 2],
}

/// One close frame: its code and its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// 1005 ("no status received", RFC 6455 §7.1.5) when the frame carried
    /// no code: the value the RFC defines for exactly that, not one of ours.
    pub code: u16,
    /// Empty when the frame carried none.
    pub reason: std::borrow::Cow<'static, str>,
}

impl CloseFrame {
    fn new(code: Option<u16>, reason: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        CloseFrame {
            code: code.unwrap_or(1005),
            reason: reason.into(),
        }
    }
}

/// The close frames one leg exchanged with the gateway. Recorded when a
/// close is read or queued (once per leg), never per frame.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LegClose {
    /// The close this leg sent to the gateway.
    pub sent: Option<CloseFrame>,
    /// The close the gateway sent to this leg: the other leg's, relayed in
    /// the stream, or the gateway's own.
    pub received: Option<CloseFrame>,
}

impl LegClose {
    /// Both closes went: this leg's close handshake completed.
    pub fn complete(&self) -> bool {
        self.sent.is_some() && self.received.is_some()
    }
}

/// What the access log line reports.
#[derive(Debug, Clone)]
pub struct Summary {
    pub ending: Option<Ending>,
    pub client_to_upstream: Counts,
    pub upstream_to_client: Counts,
    /// The close frames each leg sent and received.
    pub client_close: LegClose,
    pub upstream_close: LegClose,
    /// The close handshake completed on both legs (each sent a close and
    /// was sent one) before the close deadline.
    pub clean: bool,
    /// Last keepalive round trip to each leg.
    pub client_rtt: Option<Duration>,
    pub upstream_rtt: Option<Duration>,
}

/// What a session watches to learn that it must stop or move: its server's
/// [`Beacon`] (under the gateway's, so the gateway's drain reaches it too;
/// or the gateway's own), and the spreads of which it waits its share
/// ([`Jitter::drain`]) after each drain.
pub struct DrainSignal {
    pub beacon: Arc<Beacon>,
    /// The gateway's shutdown is spread over this (`drain_spread`).
    pub spread: Option<Duration>,
    /// The server's drain is spread over this (its group's `drain_window`).
    pub window: Option<Duration>,
    /// The key the session was balanced on (hashing groups): a shed takes
    /// only sessions whose key now goes to another server.
    pub key: Option<u64>,
}

/// Who drains a session, which decides what each leg is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainBy {
    /// The gateway shuts down: 1001 "going away" to both legs.
    Gateway,
    /// The session's server drains (or was removed by a reload): the client
    /// gets 1012 "service restart", which tells it to reconnect, and it lands
    /// on another server; the backend gets 1001 "going away".
    Server,
    /// Its server holds more than its share of the group's sessions
    /// (rebalance): told as for [`DrainBy::Server`], at once.
    Rebalance,
}

impl DrainBy {
    /// The close a leg on `side` gets.
    pub fn close(self, side: Side) -> (u16, &'static str) {
        match (self, side) {
            (DrainBy::Server | DrainBy::Rebalance, Side::Client) => (1012, "service restart"),
            _ => (1001, "going away"),
        }
    }

    /// Why the session ended, for the access log.
    fn reason(self) -> &'static str {
        match self {
            DrainBy::Gateway => "going away",
            DrainBy::Server => "server draining",
            DrainBy::Rebalance => "rebalanced",
        }
    }
}

/// The session's watch, and its delays after each drain, in milliseconds
/// (every session carries them: 8 bytes rather than 32).
struct Watched {
    watch: Watch,
    /// Its share of the gateway's `drain_spread`.
    gateway_ms: u32,
    /// Its share of the server's `drain_window`.
    server_ms: u32,
}

impl Watched {
    fn new(d: DrainSignal, share: f64) -> Self {
        let ms = |spread: Option<Duration>| {
            let delay = spread.map_or(Duration::ZERO, |s| s.mul_f64(share));
            u32::try_from(delay.as_millis()).unwrap_or(u32::MAX)
        };
        Watched {
            watch: Watch::new(d.beacon, d.key),
            gateway_ms: ms(d.spread),
            server_ms: ms(d.window),
        }
    }
}

/// The random parts of a session's timing, drawn once by whoever starts it:
/// [`Jitter::random`] in the gateway, fixed or seeded values in tests, so
/// that the session itself is deterministic given its inputs and the clock.
///
/// Both are fractions in `[0, 1)`. They spread what would otherwise happen
/// to every session at once: sessions opened together would all reach their
/// lifetime together, and a drain would close every session in the same
/// instant, and their clients would all reconnect at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter {
    /// How far into the last 10% of `max_lifetime` the session is cut short:
    /// 0 ends it at `max_lifetime`, 0.5 at 95% of it.
    pub lifetime: f64,
    /// The session's share of the drain's `spread`: 0 closes it as soon as
    /// the drain starts, 0.5 halfway through the spread.
    pub drain: f64,
}

impl Jitter {
    /// Independent uniform draws from the thread's generator.
    pub fn random() -> Self {
        Self::from_rng(&mut rand::rng())
    }

    /// Independent uniform draws from `rng` (seed it for repeatable tests).
    pub fn from_rng<R: rand::Rng + ?Sized>(rng: &mut R) -> Self {
        Jitter {
            lifetime: rng.random(),
            drain: rng.random(),
        }
    }
}

/// A WebSocket session between a client and an upstream, both handshakes done.
pub struct Session<C, U> {
    client: Leg<C>,
    upstream: Leg<U>,
    state: State,
    /// The one thing it waits on besides its sockets and its timer: the
    /// gateway's drain, its server's, and a rebalance's shed.
    watch: Option<Watched>,
    /// Where its traffic is published while it runs, if anywhere.
    traffic: Option<Publisher>,
}

impl<C, U> Session<C, U>
where
    C: Socket,
    U: Socket,
{
    /// A session held to `rules`, told by `drain` when the gateway drains
    /// (1001 to both legs) and when its server drains or sheds it (the
    /// client 1012, the backend 1001, each at a message boundary), its
    /// lifetime and drain moment spread by `jitter` ([`Jitter::random`]
    /// outside tests).
    pub fn new(
        client: C,
        upstream: U,
        rules: &SessionRules,
        drain: Option<DrainSignal>,
        jitter: Jitter,
    ) -> Self {
        let now = Instant::now();
        let policy = rules;
        let mut rules = policy.timers;
        // Each session ends somewhere in the last 10% of its lifetime.
        rules.max_lifetime = rules
            .max_lifetime
            .map(|d| d.mul_f64(1.0 - jitter.lifetime * 0.1));
        Session {
            client: Leg::new(Side::Client, client, policy),
            upstream: Leg::new(Side::Upstream, upstream, policy),
            state: State::new(Lifecycle::new(rules, now), policy.close_timeout, now),
            watch: drain.map(|d| Watched::new(d, jitter.drain)),
            traffic: None,
        }
    }

    /// Adds admission's per-leg checks: what each leg may send, and when the
    /// client's token expires.
    pub fn gated(mut self, client: Option<Gate>, upstream: Option<Gate>) -> Self {
        self.client.gate = client.map(Box::new);
        self.upstream.gate = upstream.map(Box::new);
        self
    }

    /// Publishes the session's frames and bytes to `traffic` while it runs
    /// (about once a second) and when it ends.
    pub fn counted_in(mut self, traffic: Arc<Traffic>) -> Self {
        self.traffic = Some(Publisher {
            to: traffic,
            published: [Counts::default(); 2],
        });
        self
    }

    /// Whether it counted traffic that is not yet published.
    fn unpublished(&self) -> bool {
        self.traffic
            .as_ref()
            .is_some_and(|p| p.published != [self.client.counts, self.upstream.counts])
    }

    /// Adds what it counted since the last publish to its [`Traffic`].
    fn publish(&mut self) {
        let Some(p) = &mut self.traffic else { return };
        let now = [self.client.counts, self.upstream.counts];
        for (direction, (now, was)) in now.into_iter().zip(p.published).enumerate() {
            p.to.add(direction, now.since(was));
        }
        p.published = now;
    }

    /// Relays until both legs are closed, then shuts both sockets down.
    pub async fn run(&mut self) -> Summary {
        poll_fn(|cx| self.poll_relay(cx)).await;
        // Nothing is counted any more: the last of it goes to the totals.
        self.publish();
        let in_time = !matches!(self.state.phase, Phase::Lingering(_));
        // Shutting down is bounded by the close timeout too, on the
        // session's own timer (a session carries one timer, not two).
        self.state
            .timer
            .arm(Instant::now() + self.state.close_timeout);
        let (mut client_done, mut upstream_done) = (false, false);
        poll_fn(|cx| {
            client_done = client_done || self.client.io.poll_finish(cx).is_ready();
            upstream_done = upstream_done || self.upstream.io.poll_finish(cx).is_ready();
            if client_done && upstream_done {
                return Poll::Ready(());
            }
            self.state.timer.poll(cx)
        })
        .await;
        let client_close = self.client.take_close();
        let upstream_close = self.upstream.take_close();
        Summary {
            ending: self.state.phase.ending(),
            client_to_upstream: self.client.counts,
            upstream_to_client: self.upstream.counts,
            clean: in_time && client_close.complete() && upstream_close.complete(),
            client_close,
            upstream_close,
            client_rtt: self.state.life.rtt(Side::Client),
            upstream_rtt: self.state.life.rtt(Side::Upstream),
        }
    }

    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            self.state.now = Instant::now();
            if let Some(by) = self.state.draining() {
                close_for_drain(&mut self.client, &self.upstream, by);
                close_for_drain(&mut self.upstream, &self.client, by);
            }
            SCRATCH.with_borrow_mut(|buf| {
                while pump(
                    &mut self.client,
                    &mut self.upstream,
                    cx,
                    buf,
                    &mut self.state,
                ) | pump(
                    &mut self.upstream,
                    &mut self.client,
                    cx,
                    buf,
                    &mut self.state,
                ) {}
            });
            if self.client.finished() && self.upstream.finished() {
                return Poll::Ready(());
            }
            match self.state.phase {
                Phase::Open { .. } => {
                    if self.poll_open(cx) {
                        continue;
                    }
                    return Poll::Pending;
                }
                // The first close deadline: stop waiting for closes, send
                // each leg the close it is still owed.
                Phase::Draining(_) | Phase::Closing(_) => {
                    ready!(self.state.timer.poll(cx));
                    let by = self.state.draining();
                    debug_assert!(
                        by.is_some()
                            || ![self.client.state, self.upstream.state].contains(&LegState::Open),
                        "only a drain leaves a leg open until the close deadline"
                    );
                    let by = by.unwrap_or(DrainBy::Gateway);
                    self.state.linger();
                    self.client.give_up(by);
                    self.upstream.give_up(by);
                }
                // The second: drop the sockets, written out or not.
                Phase::Lingering(_) => {
                    ready!(self.state.timer.poll(cx));
                    return Poll::Ready(());
                }
            }
        }
    }

    /// While open: watch for drain and run what the lifecycle says is due.
    /// Returns whether anything was done (the pumps should run again).
    fn poll_open(&mut self, cx: &mut Context<'_>) -> bool {
        let now = self.state.now;
        if let Some(w) = &mut self.watch {
            if let Poll::Ready(news) = w.watch.poll(cx) {
                let life = &mut self.state.life;
                let ms = |n| Duration::from_millis(u64::from(n));
                if news.gateway {
                    life.drain(now, ms(w.gateway_ms), DrainBy::Gateway);
                }
                if news.drained {
                    life.drain(now, ms(w.server_ms), DrainBy::Server);
                }
                if news.shed {
                    life.drain(now, Duration::ZERO, DrainBy::Rebalance);
                }
            }
        }
        if self.unpublished() {
            self.state.life.unpublished(now);
        }
        let mut acted = false;
        while let Some(due) = self.state.life.due(now) {
            // A publish touches no socket: nothing for the pumps to redo.
            acted |= !matches!(due, Due::Publish);
            self.act(due);
        }
        if acted {
            return true;
        }
        let Some(wake) = self.state.life.next_wake() else {
            return false;
        };
        self.state.poll_wake(cx, wake)
    }

    /// Runs what the lifecycle says is due: one arm per row of
    /// `LIFECYCLE.md`'s "Transitions" table that a timer starts.
    fn act(&mut self, due: Due) {
        let (client, upstream, state) = (&mut self.client, &mut self.upstream, &mut self.state);
        match due {
            Due::Ping(Side::Client, payload) => client.ping(payload),
            Due::Ping(Side::Upstream, payload) => upstream.ping(payload),
            Due::Dead(Side::Client) => on(client, upstream, state, Event::Unresponsive),
            Due::Dead(Side::Upstream) => on(upstream, client, state, Event::Unresponsive),
            Due::Idle => gateway_close(client, upstream, state, "idle timeout"),
            Due::Lifetime => gateway_close(client, upstream, state, "session lifetime reached"),
            Due::Drain(by) => state.drain(by),
            Due::Publish => self.publish(),
        }
    }
}

/// Closes both legs with 1001 for a reason of the gateway's own.
fn gateway_close<C, U>(
    client: &mut Leg<C>,
    upstream: &mut Leg<U>,
    state: &mut State,
    reason: &'static str,
) where
    C: Socket,
    U: Socket,
{
    client.close(Some(1001), reason);
    upstream.close(Some(1001), reason);
    state.end(Ending::Gateway { reason });
}
