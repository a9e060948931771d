//! Per-session message and byte rates, per direction.
//!
//! [`Meter`] is the decision, pure: given what a leg just sent, go on, wait
//! this long, or close. It is a pair of governor GCRA buckets that may go
//! into debt: what the relay has already read is charged in full (it cannot
//! be unread), and a throttled leg is not read again until the debt is paid.
//! Time comes from the clock `C`: tokio's in the gateway (so paused-clock
//! tests work), governor's fake clock in the unit tests.
//!
//! [`Gate`] is the relay's side: it owns the meter, sleeps while throttled
//! and, on the client leg, watches the token's expiry.

use std::{
    future::Future,
    num::NonZeroU32,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use governor::{
    clock::Clock,
    middleware::NoOpMiddleware,
    state::{InMemoryState, NotKeyed},
    Quota, RateLimiter,
};
use tokio::time::{sleep_until, Instant, Sleep};

use serde::Deserialize;

use crate::proto::close::{self, Verdict};

/// The violations a rate limit closes a session with (the access log's
/// `ending`); the metrics count them as rate-limit closes by these.
pub const MESSAGE_RATE_EXCEEDED: &str = "message rate exceeded";
pub const BYTE_RATE_EXCEEDED: &str = "byte rate exceeded";
/// What happens to a leg that sends faster than its rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateAction {
    /// Stop reading until the bucket refills.
    #[default]
    Throttle,
    /// Close with 1008 Policy Violation.
    Close,
}

/// Counters of what the relay gates did, for tests and operators.
#[derive(Debug, Default)]
pub struct Events {
    /// Times a leg was paused for sending faster than its rate.
    pub throttled: AtomicU64,
    /// Legs closed with 1008 for going over their rate.
    pub rate_closed: AtomicU64,
    /// Sessions closed because the token expired.
    pub expired: AtomicU64,
}

/// `[rate.client]` or `[rate.upstream]`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    /// Data frames: per-second rate and burst.
    pub frames: Option<Quota>,
    /// Payload bytes: per-second rate and burst.
    pub bytes: Option<Quota>,
    pub action: RateAction,
}

/// A policy's rates for what each leg sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    pub client: Option<RateSpec>,
    pub upstream: Option<RateSpec>,
}

/// What a leg may do after sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Go,
    /// Do not read it again for this long (throttle).
    Wait(Duration),
    /// Close it with 1008 (close), for the reason given.
    Close(&'static str),
}

/// The frames or bytes bucket of one leg.
struct Bucket<C: Clock> {
    limiter: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    burst: NonZeroU32,
    /// Charged but not yet let through the bucket.
    owed: u64,
}

impl<C: Clock> Bucket<C> {
    fn new(quota: Quota, clock: C) -> Self {
        Bucket {
            limiter: RateLimiter::direct_with_clock(quota, clock),
            burst: quota.burst_size(),
            owed: 0,
        }
    }

    /// Lets what is owed through the bucket, a burst at a time; `Err` is the
    /// wait before the rest can go.
    fn pay(&mut self) -> Result<(), Duration> {
        while self.owed > 0 {
            let n = self.owed.min(u64::from(self.burst.get())) as u32;
            let n = NonZeroU32::new(n).expect("owed > 0");
            match self.limiter.check_n(n) {
                Ok(Ok(())) => self.owed -= u64::from(n.get()),
                Ok(Err(not_until)) => {
                    return Err(not_until.wait_time_from(self.limiter.clock().now()))
                }
                // n never exceeds the burst.
                Err(_) => unreachable!("a burst-sized check always fits the bucket"),
            }
        }
        Ok(())
    }
}

/// One leg's rate decision.
pub struct Meter<C: Clock> {
    frames: Option<Bucket<C>>,
    bytes: Option<Bucket<C>>,
    action: RateAction,
}

impl<C: Clock + Clone> Meter<C> {
    pub fn new(spec: RateSpec, clock: C) -> Self {
        Meter {
            frames: spec.frames.map(|q| Bucket::new(q, clock.clone())),
            bytes: spec.bytes.map(|q| Bucket::new(q, clock)),
            action: spec.action,
        }
    }
}

impl<C: Clock> Meter<C> {
    /// The leg sent `frames` data frames with `bytes` of payload.
    pub fn charge(&mut self, frames: u64, bytes: u64) -> Decision {
        if let Some(b) = &mut self.frames {
            b.owed += frames;
        }
        if let Some(b) = &mut self.bytes {
            b.owed += bytes;
        }
        self.settle()
    }

    /// Pays what is owed: [`Decision::Go`] once it is all paid.
    pub fn settle(&mut self) -> Decision {
        let mut wait = Duration::ZERO;
        for (bucket, what) in [
            (&mut self.frames, MESSAGE_RATE_EXCEEDED),
            (&mut self.bytes, BYTE_RATE_EXCEEDED),
        ] {
            let Some(b) = bucket else { continue };
            if let Err(w) = b.pay() {
                if self.action == RateAction::Close {
                    return Decision::Close(what);
                }
                wait = wait.max(w);
            }
        }
        if wait.is_zero() {
            Decision::Go
        } else {
            Decision::Wait(wait)
        }
    }
}

/// governor time from tokio's clock, so the relay's sleeps and the buckets agree
/// (and tests with a paused clock see both stand still).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    // governor's clocks speak std's Instant; this one reads tokio's clock
    // and converts, so a paused clock still drives the meters.
    #[allow(clippy::disallowed_types)]
    type Instant = std::time::Instant;

    #[allow(clippy::disallowed_types)]
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

/// The close code for a leg over its rate (and for an expired token: see [`EXPIRED`]).
pub const POLICY_VIOLATION: u16 = close::POLICY;
/// The client's close when its token expires mid-session: 4001 so that a
/// client can tell "get a new token and reconnect" from other 1008s.
pub const EXPIRED: Verdict = Verdict {
    code: 4001,
    reason: "token expired",
};

/// What the relay asks of admission on one leg.
pub struct Gate {
    meter: Option<Meter<TokioClock>>,
    /// Set while the leg is throttled; allocated only then.
    paused: Option<Pin<Box<Sleep>>>,
    /// When the client's token expires (client leg, `close_on_expiry`).
    expiry: Option<Pin<Box<Sleep>>>,
    events: Arc<Events>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("metered", &self.meter.is_some())
            .field("paused", &self.paused.is_some())
            .field("expires", &self.expiry.as_ref().map(|s| s.deadline()))
            .finish()
    }
}

impl Gate {
    /// A gate for a leg with these limits; `None` when there is nothing to check.
    pub fn new(
        rate: Option<RateSpec>,
        expires: Option<SystemTime>,
        events: Arc<Events>,
    ) -> Option<Self> {
        if rate.is_none() && expires.is_none() {
            return None;
        }
        let expiry = expires.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Box::pin(sleep_until(Instant::now() + left))
        });
        Some(Gate {
            meter: rate.map(|spec| Meter::new(spec, TokioClock)),
            paused: None,
            expiry,
            events,
        })
    }

    /// Whether the leg may be read now: `Pending` while throttled (the task
    /// is woken when it may), `Err` when it must be closed.
    pub fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Verdict>> {
        if let Some(expiry) = &mut self.expiry {
            if expiry.as_mut().poll(cx).is_ready() {
                self.events.expired.fetch_add(1, Ordering::Relaxed);
                self.expiry = None;
                return Poll::Ready(Err(EXPIRED));
            }
        }
        while let Some(paused) = &mut self.paused {
            if paused.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match self.meter.as_mut().map_or(Decision::Go, Meter::settle) {
                Decision::Wait(d) => paused.as_mut().reset(Instant::now() + d),
                _ => self.paused = None,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Charges what the leg just sent; `Err` when it must be closed.
    pub fn charge(&mut self, frames: u64, bytes: u64) -> Result<(), Verdict> {
        let Some(meter) = &mut self.meter else {
            return Ok(());
        };
        match meter.charge(frames, bytes) {
            Decision::Go => Ok(()),
            Decision::Wait(d) => {
                self.events.throttled.fetch_add(1, Ordering::Relaxed);
                let deadline = Instant::now() + d;
                match &mut self.paused {
                    Some(p) => p.as_mut().reset(deadline),
                    None => self.paused = Some(Box::pin(sleep_until(deadline))),
                }
                Ok(())
            }
            Decision::Close(reason) => {
                self.events.rate_closed.fetch_add(1, Ordering::Relaxed);
                Err(Verdict {
                    code: POLICY_VIOLATION,
                    reason,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn spec(frames: Option<(u32, u32)>, bytes: Option<(u32, u32)>, action: RateAction) -> RateSpec {
        let q = |(rate, burst): (u32, u32)| {
            Quota::per_second(NonZeroU32::new(rate).unwrap())
                .allow_burst(NonZeroU32::new(burst).unwrap())
        };
        RateSpec {
            frames: frames.map(q),
            bytes: bytes.map(q),
            action,
        }
    }

    #[test]
    fn throttle_waits_until_the_debt_is_paid() {
        let clock = FakeRelativeClock::default();
        let mut m = Meter::new(
            spec(Some((10, 5)), None, RateAction::Throttle),
            clock.clone(),
        );
        assert_eq!(m.charge(5, 0), Decision::Go);
        // One more frame than the burst: 100 ms until the bucket has room.
        assert_eq!(m.charge(1, 0), Decision::Wait(Duration::from_millis(100)));
        clock.advance(Duration::from_millis(50));
        assert_eq!(m.settle(), Decision::Wait(Duration::from_millis(50)));
        clock.advance(Duration::from_millis(50));
        assert_eq!(m.settle(), Decision::Go);
        // Nothing is forgiven: 12 more frames take 1.2 s to pay off, waking
        // when told to (a burst at a time).
        let mut waited = Duration::ZERO;
        let mut next = m.charge(12, 0);
        while let Decision::Wait(d) = next {
            clock.advance(d);
            waited += d;
            next = m.settle();
        }
        assert_eq!(waited, Duration::from_millis(1200));
    }

    #[test]
    fn debts_larger_than_the_burst_are_paid_in_bursts() {
        let clock = FakeRelativeClock::default();
        let mut m = Meter::new(
            spec(None, Some((1000, 100)), RateAction::Throttle),
            clock.clone(),
        );
        // A 64 KiB read against a 100-byte burst: paid over ~65 s.
        assert!(matches!(m.charge(1, 65_536), Decision::Wait(_)));
        let mut waited = Duration::ZERO;
        while let Decision::Wait(d) = m.settle() {
            clock.advance(d);
            waited += d;
        }
        assert!(waited >= Duration::from_millis(65_000), "{waited:?}");
        assert!(waited <= Duration::from_millis(65_600), "{waited:?}");
    }

    #[test]
    fn close_action_closes_instead_of_waiting() {
        let clock = FakeRelativeClock::default();
        let mut m = Meter::new(
            spec(Some((10, 2)), Some((100, 100)), RateAction::Close),
            clock.clone(),
        );
        assert_eq!(m.charge(2, 10), Decision::Go);
        assert_eq!(m.charge(1, 10), Decision::Close("message rate exceeded"));
        let mut m = Meter::new(
            spec(Some((10, 2)), Some((100, 100)), RateAction::Close),
            clock.clone(),
        );
        assert_eq!(m.charge(1, 101), Decision::Close("byte rate exceeded"));
    }

    #[test]
    fn the_longest_wait_of_both_buckets_wins() {
        let clock = FakeRelativeClock::default();
        let mut m = Meter::new(
            spec(Some((10, 1)), Some((10, 10)), RateAction::Throttle),
            clock.clone(),
        );
        assert_eq!(m.charge(1, 10), Decision::Go);
        // Frames need 100 ms more, bytes a whole second.
        assert_eq!(m.charge(1, 10), Decision::Wait(Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn gate_pauses_the_leg_on_tokio_time() {
        let events = Arc::new(Events::default());
        let mut gate = Gate::new(
            Some(spec(Some((10, 1)), None, RateAction::Throttle)),
            None,
            events.clone(),
        )
        .unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(gate.charge(1, 0).is_ok());
        assert!(gate.poll_open(&mut cx).is_ready());
        assert!(gate.charge(2, 0).is_ok());
        assert_eq!(events.throttled.load(Ordering::Relaxed), 1);
        assert!(gate.poll_open(&mut cx).is_pending());
        // Two frames over: 100 ms each.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(gate.poll_open(&mut cx).is_pending());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(gate.poll_open(&mut cx), Poll::Ready(Ok(())));
        assert!(gate.paused.is_none(), "the sleep is freed once paid");
    }

    #[tokio::test(start_paused = true)]
    async fn gate_closes_at_token_expiry() {
        let events = Arc::new(Events::default());
        let at = SystemTime::now() + Duration::from_secs(60);
        let mut gate = Gate::new(None, Some(at), events.clone()).unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert_eq!(gate.poll_open(&mut cx), Poll::Ready(Ok(())));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(gate.poll_open(&mut cx), Poll::Ready(Err(EXPIRED)));
        assert_eq!(events.expired.load(Ordering::Relaxed), 1);
    }
}
