//! Where a session as a whole stands ([`Phase`]), and what happens to both
//! legs when something happens on one of them ([`on`]): the transitions of
//! `LIFECYCLE.md`, one match arm per row.
//!
//! The phase is one enum rather than an `Option<Ending>`, a `draining` flag,
//! a count of expired deadlines and "armed" flags, because those were never
//! independent: a session drains only once it has ended, a close deadline
//! runs only once it has ended, and which timer the session's one `Sleep`
//! measures follows from the phase.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{sleep_until, Instant, Sleep};

use super::{
    leg::{Leg, LegState},
    lifecycle::Lifecycle,
    DrainBy, Ending,
};
use crate::{
    proto::close::{self, Verdict},
    stream::Socket,
};

/// Where the session stands. The rows of `LIFECYCLE.md`'s "Session phase" table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Relaying both ways; the lifecycle's timers run. `armed` is when the
    /// session's timer fires for them, if it is set: activity only moves
    /// deadlines later, so the timer stays at the earlier time and is set
    /// again when it fires early, instead of being reset on every read.
    Open { armed: Option<Instant> },
    /// The gateway is shutting down, or the session's server drains: each
    /// leg gets its drain close ([`DrainBy::close`]) as soon as no message to
    /// it is half relayed, and the close deadline runs.
    Draining(DrainBy),
    /// Something ended the session: each leg's close handshake runs until
    /// the close deadline.
    Closing(Ending),
    /// The close deadline passed: no close is waited for any more, and what
    /// is queued is written until a second deadline, when the sockets are
    /// dropped. A session that gets here did not close cleanly.
    Lingering(Ending),
}

impl Phase {
    /// Why the session ended, once it has.
    pub(super) fn ending(&self) -> Option<Ending> {
        match *self {
            Phase::Open { .. } => None,
            Phase::Draining(by) => Some(Ending::Gateway {
                reason: by.reason(),
            }),
            Phase::Closing(e) | Phase::Lingering(e) => Some(e),
        }
    }
}

/// The session's one `Sleep`: the next lifecycle deadline while open, the
/// close deadlines once closing, the shutdown at the end. Allocated the
/// first time it is needed: a session without timers never has one.
#[derive(Default)]
pub(super) struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    pub(super) fn arm(&mut self, at: Instant) {
        match &mut self.0 {
            Some(t) => t.as_mut().reset(at),
            None => self.0 = Some(Box::pin(sleep_until(at))),
        }
    }

    /// Polls the timer; it must have been armed.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().expect("armed first").as_mut().poll(cx)
    }
}

/// What both directions share while pumping.
pub(super) struct State {
    pub(super) phase: Phase,
    pub(super) life: Lifecycle,
    /// The time this round of pumping started.
    pub(super) now: Instant,
    pub(super) timer: Timer,
    pub(super) close_timeout: Duration,
}

impl State {
    pub(super) fn new(life: Lifecycle, close_timeout: Duration, now: Instant) -> Self {
        State {
            phase: Phase::Open { armed: None },
            life,
            now,
            timer: Timer::default(),
            close_timeout,
        }
    }

    /// Who is draining the session, while it drains.
    pub(super) fn draining(&self) -> Option<DrainBy> {
        match self.phase {
            Phase::Draining(by) => Some(by),
            _ => None,
        }
    }

    /// The session ended for `ending`, unless it already had (the first
    /// reason is the one logged): the close deadline starts.
    pub(super) fn end(&mut self, ending: Ending) {
        if let Phase::Open { .. } = self.phase {
            self.phase = Phase::Closing(ending);
            self.timer.arm(self.now + self.close_timeout);
        }
    }

    /// The drain reached this session: it ends, closing each leg at its
    /// next message boundary.
    pub(super) fn drain(&mut self, by: DrainBy) {
        if let Phase::Open { .. } = self.phase {
            self.phase = Phase::Draining(by);
            self.timer.arm(self.now + self.close_timeout);
        }
    }

    /// The first close deadline passed: stop waiting, and give what is
    /// queued until a second deadline.
    pub(super) fn linger(&mut self) {
        if let Some(ending) = self.phase.ending() {
            self.phase = Phase::Lingering(ending);
            self.timer.arm(Instant::now() + self.close_timeout);
        }
    }

    /// While open, sets the timer for the lifecycle's next deadline `wake`
    /// (unless it is set earlier already) and polls it; returns whether it
    /// fired.
    pub(super) fn poll_wake(&mut self, cx: &mut Context<'_>, wake: Instant) -> bool {
        let Phase::Open { armed } = &mut self.phase else {
            return false;
        };
        if armed.is_none_or(|at| wake < at) {
            self.timer.arm(wake);
            *armed = Some(wake);
        }
        if self.timer.poll(cx).is_ready() {
            *armed = None;
            return true;
        }
        false
    }
}

/// Something that happened on one leg (X) that concerns both. The rows of
/// `LIFECYCLE.md`'s "Transitions" table that start on one leg; the
/// session-wide ones are [`Due`](super::lifecycle::Due)s and the close
/// deadlines, in `Session::act` and `Session::poll_relay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    /// X sent a valid close frame with this code, relayed in-stream to Y.
    CloseReceived(Option<u16>),
    /// X broke the protocol, or its gate closed it (a `close` rate, the
    /// client's token expiry): it gets this verdict.
    Violation(Verdict),
    /// X's socket ended or failed (reading it, or writing to it).
    Vanished,
    /// X answered no keepalive ping in time.
    Unresponsive,
}

/// Moves both legs on after `event` on `x`; `y` is the other leg.
pub(super) fn on<X, Y>(x: &mut Leg<X>, y: &mut Leg<Y>, state: &mut State, event: Event)
where
    X: Socket,
    Y: Socket,
{
    let ending = match event {
        Event::CloseReceived(code) => {
            y.close_relayed(x.close_received(code));
            Ending::Closed { by: x.side, code }
        }
        Event::Violation(v) => {
            x.abandon(Some(v.code), v.reason);
            let peer = close::peer_of_violation(x.side, v.code);
            y.close(Some(peer.code), peer.reason);
            Ending::Violation {
                by: x.side,
                code: v.code,
                reason: v.reason,
            }
        }
        Event::Vanished => {
            x.kill();
            match y.state {
                // Y started closing: its handshake completes with its own code.
                LegState::CloseReceived(code) => y.close(code, ""),
                _ => {
                    let v = close::peer_of_vanished(x.side);
                    y.close(Some(v.code), v.reason);
                }
            }
            Ending::Vanished { by: x.side }
        }
        Event::Unresponsive => {
            // Best effort: it may still read.
            x.abandon(Some(1001), "ping timeout");
            let v = close::peer_of_vanished(x.side);
            y.close(Some(v.code), v.reason);
            Ending::Unresponsive { by: x.side }
        }
    };
    state.end(ending);
}
