//! The relay: one task per session moves frames both ways and closes both
//! legs properly. See `LIFECYCLE.md` beside this file for the state machine
//! and the close-code table.
//!
//! Memory: a session owns no buffer while idle. Reads go into a per-thread
//! scratch buffer and are rewritten in place by [`frame::Decoder`]; bytes a
//! leg cannot take yet go to that leg's `outbox`, which exists only until it
//! drains. A direction is read only when the leg it writes to has nothing
//! waiting, so a slow reader stops the gateway reading from the other side
//! (TCP backpressure) instead of growing a queue.

pub mod gate;
pub mod lifecycle;

use std::{
    cell::RefCell,
    future::{poll_fn, Future},
    io,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{sleep_until, Instant, Sleep},
};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tungstenite::protocol::frame::coding::{Control, OpCode};

use crate::proto::{
    close,
    frame::{self, Decoder, FrameLimits, Side, Stop},
};
use gate::Gate;
use lifecycle::{Due, Lifecycle};

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

/// A peer whose outbox (relayed data plus pongs it owes) reaches this size is
/// not read until it takes some: it cannot make the gateway queue pongs without bound.
const REPLY_LIMIT: usize = frame::READ_SIZE;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; frame::SCRATCH_SIZE].into_boxed_slice());
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
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub frames: u64,
    pub bytes: u64,
}

/// What the access log line reports.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub ending: Option<Ending>,
    pub client_to_upstream: Counts,
    pub upstream_to_client: Counts,
    /// Whether the close handshake finished on both legs before the deadline.
    pub clean: bool,
    /// Last keepalive round trip to each leg.
    pub client_rtt: Option<Duration>,
    pub upstream_rtt: Option<Duration>,
}

/// The gateway is shutting down: when `signal` resolves the session starts
/// closing, after its share ([`Jitter::drain`]) of `spread`.
pub struct DrainSignal {
    pub signal: WaitForCancellationFutureOwned,
    pub spread: Option<Duration>,
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

/// One leg: its socket, what we read from it, what we owe it.
struct Leg<S> {
    side: Side,
    io: S,
    decoder: Decoder,
    /// Whole frames waiting to be written to this leg.
    outbox: Vec<u8>,
    needs_flush: bool,
    /// A close frame has been queued for this leg; nothing may follow it.
    sent_close: bool,
    /// The code of the close frame this leg sent us, once it did.
    got_close: Option<Option<u16>>,
    /// Nothing more will be read from this leg.
    read_done: bool,
    /// The socket failed or ended; nothing more can be written either.
    dead: bool,
    counts: Counts,
    /// Admission's checks on what this leg sends (rate, token expiry), if any.
    gate: Option<Box<Gate>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Leg<S> {
    fn new(side: Side, io: S, rules: &SessionRules) -> Self {
        let limits = match side {
            Side::Client => rules.client,
            Side::Upstream => rules.upstream,
        };
        Leg {
            side,
            io,
            decoder: Decoder::new(side, limits),
            outbox: Vec::new(),
            needs_flush: false,
            sent_close: false,
            got_close: None,
            read_done: false,
            dead: false,
            counts: Counts::default(),
            gate: None,
        }
    }

    /// Done when its close handshake is over (or impossible) and all is written.
    fn finished(&self) -> bool {
        self.dead
            || (self.sent_close && self.read_done && self.outbox.is_empty() && !self.needs_flush)
    }

    /// Writes the outbox; `Ready(Ok)` once it is empty and flushed.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outbox.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outbox))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outbox.drain(..n);
            self.needs_flush = true;
        }
        // Release the allocation: an idle session keeps no buffer.
        self.outbox = Vec::new();
        if self.needs_flush {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.needs_flush = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes `data` now as far as the socket takes it; the rest waits in the outbox.
    fn send(&mut self, cx: &mut Context<'_>, mut data: &[u8]) -> io::Result<()> {
        if self.outbox.is_empty() {
            while !data.is_empty() {
                match Pin::new(&mut self.io).poll_write(cx, data) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => {
                        data = &data[n..];
                        self.needs_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
        }
        self.outbox.extend_from_slice(data);
        Ok(())
    }

    /// Queues a close frame the gateway itself sends, unless one was already sent.
    fn close(&mut self, code: Option<u16>, reason: &str) {
        if self.sent_close || self.dead {
            return;
        }
        frame::close_frame(&mut self.outbox, self.side, code, reason);
        self.sent_close = true;
    }

    /// Queues a keepalive ping carrying `payload`.
    fn ping(&mut self, payload: u64) {
        if !self.sent_close && !self.dead {
            frame::control_frame(
                &mut self.outbox,
                self.side,
                OpCode::Control(Control::Ping),
                &payload.to_be_bytes(),
            );
        }
    }

    /// The socket is gone: stop reading and writing it.
    fn kill(&mut self) {
        self.dead = true;
        self.read_done = true;
        self.outbox = Vec::new();
    }
}

/// What both directions share while pumping.
struct State {
    ending: Option<Ending>,
    life: Lifecycle,
    /// Draining: each leg gets 1001 as soon as no message to it is half-sent.
    draining: bool,
    now: Instant,
}

/// A WebSocket session between a client and an upstream, both handshakes done.
pub struct Session<C, U> {
    client: Leg<C>,
    upstream: Leg<U>,
    state: State,
    close_timeout: Duration,
    drain: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// How long after the drain signal this session starts draining.
    drain_delay: Duration,
    /// The next lifecycle deadline while open; the close deadlines once closing.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the timer fires while open. Activity only moves deadlines later,
    /// so the timer stays armed at the earlier time and is re-armed when it
    /// fires early, instead of being reset on every read.
    armed: Option<Instant>,
    /// How many close deadlines have passed: after the first the gateway
    /// stops waiting for closes, after the second it drops the sockets.
    expired: u8,
    closing_armed: bool,
}

impl<C, U> Session<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    /// A session held to `rules`, told of the gateway's drain by `drain`,
    /// its lifetime and drain moment spread by `jitter` ([`Jitter::random`]
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
        let (drain, drain_delay) = match drain {
            Some(d) => (
                Some(Box::pin(d.signal)),
                d.spread.map_or(Duration::ZERO, |s| s.mul_f64(jitter.drain)),
            ),
            None => (None, Duration::ZERO),
        };
        Session {
            client: Leg::new(Side::Client, client, policy),
            upstream: Leg::new(Side::Upstream, upstream, policy),
            state: State {
                ending: None,
                life: Lifecycle::new(rules, now),
                draining: false,
                now,
            },
            close_timeout: policy.close_timeout,
            drain,
            drain_delay,
            timer: None,
            armed: None,
            expired: 0,
            closing_armed: false,
        }
    }

    /// Adds admission's per-leg checks: what each leg may send, and when the
    /// client's token expires.
    pub fn gated(mut self, client: Option<Gate>, upstream: Option<Gate>) -> Self {
        self.client.gate = client.map(Box::new);
        self.upstream.gate = upstream.map(Box::new);
        self
    }

    /// Relays until both legs are closed, then shuts both sockets down.
    pub async fn run(&mut self) -> Summary {
        poll_fn(|cx| self.poll_relay(cx)).await;
        let clean = self.expired == 0;
        // Shutting down is bounded by the close timeout too, on the
        // session's own timer (a session carries one timer, not two).
        self.arm(Instant::now() + self.close_timeout);
        let (mut client_done, mut upstream_done) = (false, false);
        poll_fn(|cx| {
            client_done = client_done || Pin::new(&mut self.client.io).poll_shutdown(cx).is_ready();
            upstream_done =
                upstream_done || Pin::new(&mut self.upstream.io).poll_shutdown(cx).is_ready();
            if client_done && upstream_done {
                return Poll::Ready(());
            }
            self.timer.as_mut().expect("armed above").as_mut().poll(cx)
        })
        .await;
        Summary {
            ending: self.state.ending,
            client_to_upstream: self.client.counts,
            upstream_to_client: self.upstream.counts,
            clean,
            client_rtt: self.state.life.rtt(Side::Client),
            upstream_rtt: self.state.life.rtt(Side::Upstream),
        }
    }

    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            self.state.now = Instant::now();
            if self.state.draining {
                close_for_drain(&mut self.client, &self.upstream);
                close_for_drain(&mut self.upstream, &self.client);
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
            if self.state.ending.is_none() {
                if self.poll_open(cx) {
                    continue;
                }
                return Poll::Pending;
            }
            if !self.closing_armed {
                self.closing_armed = true;
                self.arm(self.state.now + self.close_timeout);
            }
            let timer = self.timer.as_mut().expect("armed above");
            ready!(timer.as_mut().poll(cx));
            self.expired += 1;
            if self.expired > 1 {
                return Poll::Ready(());
            }
            self.arm(Instant::now() + self.close_timeout);
            give_up_waiting(&mut self.client, &mut self.upstream, self.state.draining);
        }
    }

    /// While open: watch for drain and run what the lifecycle says is due.
    /// Returns whether anything was done (the pumps should run again).
    fn poll_open(&mut self, cx: &mut Context<'_>) -> bool {
        let now = self.state.now;
        if let Some(drain) = &mut self.drain {
            if drain.as_mut().poll(cx).is_ready() {
                self.drain = None;
                self.state.life.drain(now, self.drain_delay);
            }
        }
        let mut acted = false;
        while let Some(due) = self.state.life.due(now) {
            acted = true;
            self.act(due);
        }
        if acted {
            return true;
        }
        let Some(wake) = self.state.life.next_wake() else {
            return false;
        };
        if self.armed.is_none_or(|at| wake < at) {
            self.arm(wake);
            self.armed = Some(wake);
        }
        let timer = self.timer.as_mut().expect("armed above");
        if timer.as_mut().poll(cx).is_ready() {
            self.armed = None;
            return true;
        }
        false
    }

    fn act(&mut self, due: Due) {
        match due {
            Due::Ping(Side::Client, payload) => self.client.ping(payload),
            Due::Ping(Side::Upstream, payload) => self.upstream.ping(payload),
            Due::Dead(Side::Client) => {
                unresponsive(&mut self.client, &mut self.upstream, &mut self.state)
            }
            Due::Dead(Side::Upstream) => {
                unresponsive(&mut self.upstream, &mut self.client, &mut self.state)
            }
            Due::Idle => self.gateway_close("idle timeout"),
            Due::Lifetime => self.gateway_close("session lifetime reached"),
            Due::Drain => {
                self.state.draining = true;
                self.state.ending.get_or_insert(Ending::Gateway {
                    reason: "going away",
                });
            }
        }
    }

    /// Closes both legs with 1001 for a reason of the gateway's own.
    fn gateway_close(&mut self, reason: &'static str) {
        self.client.close(Some(1001), reason);
        self.upstream.close(Some(1001), reason);
        self.state.ending.get_or_insert(Ending::Gateway { reason });
    }

    fn arm(&mut self, at: Instant) {
        match &mut self.timer {
            Some(t) => t.as_mut().reset(at),
            None => self.timer = Some(Box::pin(sleep_until(at))),
        }
    }
}

/// During a drain, closes `leg` with 1001 once no message toward it is half
/// relayed (the close waits for the message in flight, bounded by the close
/// deadline).
fn close_for_drain<A, B>(leg: &mut Leg<A>, feeder: &Leg<B>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    if !feeder.decoder.mid_message() || feeder.read_done {
        leg.close(Some(1001), "going away");
    }
}

/// `dead` answered no ping in time: send it a close on the off chance it
/// reads, stop waiting for it, and tell the other leg it went away.
fn unresponsive<A, B>(dead: &mut Leg<A>, other: &mut Leg<B>, state: &mut State)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    dead.close(Some(1001), "ping timeout");
    dead.read_done = true;
    let v = close::peer_of_vanished(dead.side);
    other.close(Some(v.code), v.reason);
    state
        .ending
        .get_or_insert(Ending::Unresponsive { by: dead.side });
}

/// The close handshake timed out: answer whoever is still waiting for a
/// close (with its own code), close whatever a drain left open, and stop
/// waiting for anyone's close.
fn give_up_waiting<A, B>(a: &mut Leg<A>, b: &mut Leg<B>, draining: bool)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    a.read_done = true;
    b.read_done = true;
    if let Some(code) = a.got_close {
        a.close(code, "");
    }
    if let Some(code) = b.got_close {
        b.close(code, "");
    }
    if draining {
        a.close(Some(1001), "going away");
        b.close(Some(1001), "going away");
    }
}

/// Moves frames from `src` to `dst` until neither can make progress.
/// Returns whether anything happened.
fn pump<A, B>(
    src: &mut Leg<A>,
    dst: &mut Leg<B>,
    cx: &mut Context<'_>,
    buf: &mut [u8],
    state: &mut State,
) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let progress = relay_reads(src, dst, cx, buf, state);
    // `buf` is the thread's scratch buffer: a partial frame left in it must
    // be saved before the other direction or another session reads into it.
    src.decoder.park(buf);
    progress
}

/// [`pump`]'s loop: read, rewrite, forward, for as long as both legs can.
/// Successive reads reuse `buf`, so a partial frame stays in it meanwhile.
fn relay_reads<A, B>(
    src: &mut Leg<A>,
    dst: &mut Leg<B>,
    cx: &mut Context<'_>,
    buf: &mut [u8],
    state: &mut State,
) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut progress = false;
    loop {
        if !dst.dead {
            match dst.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => {
                    vanished(dst, src, &mut state.ending);
                    progress = true;
                    continue;
                }
                Poll::Pending => return progress,
            }
        }
        if src.read_done || src.outbox.len() >= REPLY_LIMIT {
            return progress;
        }
        if let Some(gate) = src.gate.as_deref_mut() {
            match gate.poll_open(cx) {
                Poll::Pending => {
                    // Throttled: we are the ones not reading, and data is
                    // waiting; neither dead-peer nor idle timers may fire.
                    state.life.heard(src.side, state.now);
                    state.life.data(state.now);
                    return progress;
                }
                Poll::Ready(Err(v)) => {
                    violation(src, dst, v, &mut state.ending);
                    progress = true;
                    continue;
                }
                Poll::Ready(Ok(())) => {}
            }
        }
        let at = src.decoder.begin(buf);
        let mut read = ReadBuf::new(&mut buf[at..at + frame::READ_SIZE]);
        let n = match Pin::new(&mut src.io).poll_read(cx, &mut read) {
            Poll::Pending => return progress,
            Poll::Ready(Ok(())) if read.filled().is_empty() => None,
            Poll::Ready(Ok(())) => Some(read.filled().len()),
            Poll::Ready(Err(_)) => None,
        };
        progress = true;
        let Some(n) = n else {
            vanished(src, dst, &mut state.ending);
            return true;
        };
        state.life.heard(src.side, state.now);
        // Once `dst` is closed or gone, `src` is still read for its close
        // frame, but what else it sends has nowhere to go.
        let forward = !dst.dead && !dst.sent_close;
        let chunk = src.decoder.process(buf, at + n, &mut src.outbox);
        src.counts.frames += chunk.frames;
        src.counts.bytes += chunk.bytes;
        if chunk.frames > 0 {
            state.life.data(state.now);
        }
        if let Some(payload) = chunk.pong {
            state.life.pong(src.side, payload, state.now);
        }
        // Over a `close` rate: what went over is not forwarded.
        let over = src
            .gate
            .as_deref_mut()
            .and_then(|g| g.charge(chunk.frames, chunk.bytes).err());
        if forward && over.is_none() && dst.send(cx, &buf[chunk.out]).is_err() {
            vanished(dst, src, &mut state.ending);
        }
        match over.map(Stop::Violation).or(chunk.stop) {
            None => {}
            Some(Stop::Close(code)) => {
                src.got_close = Some(code);
                src.read_done = true;
                dst.sent_close = true;
                state
                    .ending
                    .get_or_insert(Ending::Closed { by: src.side, code });
            }
            Some(Stop::Violation(v)) => violation(src, dst, v, &mut state.ending),
        }
        if state.draining && !src.decoder.mid_message() {
            dst.close(Some(1001), "going away");
        }
    }
}

/// `src` broke the rules: it gets `v`, its peer the matching "peer of a violation" close.
fn violation<A, B>(
    src: &mut Leg<A>,
    dst: &mut Leg<B>,
    v: close::Verdict,
    ending: &mut Option<Ending>,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    src.read_done = true;
    src.close(Some(v.code), v.reason);
    let peer = close::peer_of_violation(src.side, v.code);
    dst.close(Some(peer.code), peer.reason);
    ending.get_or_insert(Ending::Violation {
        by: src.side,
        code: v.code,
        reason: v.reason,
    });
}

/// `gone`'s socket ended or failed. The other leg gets a close: its own
/// code echoed if it had started closing, otherwise the "peer vanished" code.
fn vanished<A, B>(gone: &mut Leg<A>, other: &mut Leg<B>, ending: &mut Option<Ending>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    gone.kill();
    match other.got_close {
        Some(code) => other.close(code, ""),
        None => {
            let v = close::peer_of_vanished(gone.side);
            other.close(Some(v.code), v.reason);
        }
    }
    ending.get_or_insert(Ending::Vanished { by: gone.side });
}
