//! Connection limits as RAII slots, and the handshake rate limiter.
//!
//! A session holds its [`Slots`] for its whole life, in the task that runs
//! it; dropping them gives the counts back, so every exit path (upstream
//! down, client gone before the 101, a panic) releases them. A key whose
//! count reaches zero is removed, so the map holds at most a few keys per
//! open session and shrinks back to nothing.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use governor::{
    clock::Clock, middleware::NoOpMiddleware, state::keyed::DashMapStateStore, Quota, RateLimiter,
};
use smallvec::SmallVec;
use tokio::time::Instant;

use crate::relay::gate::TokioClock;

/// Keyed GCRA on tokio's clock, so a paused clock drives it in tests.
type KeyedLimiter = RateLimiter<
    IpAddr,
    DashMapStateStore<IpAddr>,
    TokioClock,
    NoOpMiddleware<<TokioClock as Clock>::Instant>,
>;

/// A policy's `[limits]`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: Option<u32>,
    pub max_connections_per_ip: Option<u32>,
    pub max_connections_per_subject: Option<u32>,
    pub handshakes: Option<Quota>,
    pub retry_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: None,
            max_connections_per_ip: None,
            max_connections_per_subject: None,
            handshakes: None,
            retry_after: Duration::from_secs(5),
        }
    }
}

/// What is counted. Routes are named by their label, so one client on two
/// routes is two keys, and a route's counts survive a reload that keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Global,
    Route(Arc<str>),
    /// A client IP (IPv6: its network), on a route.
    Client(Arc<str>, IpAddr),
    /// A token subject, on a route.
    Subject(Arc<str>, String),
}

/// The key whose limit was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Over(pub Key);

/// Live session counts.
#[derive(Debug, Default)]
pub struct Counters {
    counts: Mutex<HashMap<Key, u32>>,
}

impl Counters {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, u32>> {
        // A panic while holding the lock cannot leave a count half-written.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one slot of each key, all or none: a key with a limit that is
    /// already reached refuses the lot. Keys without a limit are counted
    /// only when global (for [`Counters::totals`]); the others would be
    /// bookkeeping nobody reads.
    pub fn acquire(self: &Arc<Self>, keys: &[(Key, Option<u32>)]) -> Result<Slots, Over> {
        let mut counts = self.lock();
        for (key, limit) in keys {
            if let Some(max) = limit {
                if counts.get(key).copied().unwrap_or(0) >= *max {
                    return Err(Over(key.clone()));
                }
            }
        }
        let mut held = SmallVec::new();
        for (key, limit) in keys {
            if limit.is_some() || *key == Key::Global {
                *counts.entry(key.clone()).or_insert(0) += 1;
                held.push(key.clone());
            }
        }
        Ok(Slots {
            counters: self.clone(),
            held,
        })
    }

    /// Sessions open (the global count) and keys in the map.
    pub fn totals(&self) -> (u64, usize) {
        let counts = self.lock();
        (
            counts.get(&Key::Global).copied().map_or(0, u64::from),
            counts.len(),
        )
    }
}

/// Counts held by one session; given back on drop.
#[derive(Debug)]
pub struct Slots {
    counters: Arc<Counters>,
    /// Without per-route, per-IP or per-subject limits only the global
    /// count is held: inline, so admitting allocates nothing.
    held: SmallVec<[Key; 1]>,
}

impl Slots {
    /// Holds `other`'s counts too, for as long as these.
    pub fn merge(&mut self, mut other: Slots) {
        self.held.append(&mut other.held);
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let mut counts = self.counters.lock();
        for key in self.held.drain(..) {
            if let Some(n) = counts.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&key);
                }
            }
        }
    }
}

/// Forgotten clients are swept at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Upgrade requests per second per client, on one route (governor keyed GCRA).
///
/// Its memory is bounded: clients back at a full burst are indistinguishable
/// from new ones and are dropped by a sweep (at most every 10 s, on the
/// request path, so an idle gateway does no work). When `cap` clients are
/// still being limited, a new client is let through unlimited rather than
/// refused: with that many addresses an attacker gains nothing per address,
/// and refusing would lock out everyone else. Connection limits still apply.
#[derive(Debug)]
pub struct HandshakeLimiter {
    limiter: KeyedLimiter,
    quota: Quota,
    cap: usize,
    last_sweep: Mutex<Instant>,
}

impl HandshakeLimiter {
    pub fn new(quota: Quota, cap: usize) -> Self {
        HandshakeLimiter {
            limiter: RateLimiter::dashmap_with_clock(quota, TokioClock),
            quota,
            cap: cap.max(1),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Whether this limiter enforces `quota` over at most `cap` clients, so
    /// a reloaded config asking for the same can keep it.
    pub fn is_for(&self, quota: Quota, cap: usize) -> bool {
        self.quota == quota && self.cap == cap.max(1)
    }

    /// `Err(wait)` when `client` must wait before its next upgrade.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        self.sweep(false);
        if self.limiter.len() >= self.cap {
            self.sweep(true);
            if self.limiter.len() >= self.cap {
                tracing::warn!(
                    cap = self.cap,
                    "handshake rate limiter full of active clients; new clients are not rate-limited"
                );
                return Ok(());
            }
        }
        self.limiter
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Forgets clients that are back at a full burst.
    fn sweep(&self, now_anyway: bool) {
        let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
        if !now_anyway && last.elapsed() < SWEEP_EVERY {
            return;
        }
        *last = Instant::now();
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Clients remembered.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

/// `per_second` with a burst (default: one second's worth).
pub fn quota(per_second: NonZeroU32, burst: Option<NonZeroU32>) -> Quota {
    Quota::per_second(per_second).allow_burst(burst.unwrap_or(per_second))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn slots_are_all_or_nothing_and_keys_go_away() {
        let c = Arc::new(Counters::default());
        let r: Arc<str> = Arc::from("/chat");
        let keys = |n| {
            [
                (Key::Global, Some(10)),
                (Key::Route(r.clone()), None),
                (Key::Client(r.clone(), ip("192.0.2.1")), Some(n)),
            ]
        };
        let a = c.acquire(&keys(2)).unwrap();
        let b = c.acquire(&keys(2)).unwrap();
        assert_eq!(
            c.acquire(&keys(2)).unwrap_err(),
            Over(Key::Client(r.clone(), ip("192.0.2.1")))
        );
        // The refused attempt took nothing.
        assert_eq!(c.totals(), (2, 2));
        let mut s = c
            .acquire(&[
                (Key::Global, None),
                (Key::Client(r.clone(), ip("192.0.2.2")), Some(1)),
            ])
            .unwrap();
        s.merge(
            c.acquire(&[(Key::Subject(r.clone(), "alice".into()), Some(1))])
                .unwrap(),
        );
        assert!(c
            .acquire(&[(Key::Subject(r.clone(), "alice".into()), Some(1))])
            .is_err());
        assert_eq!(c.totals(), (3, 4));
        drop((a, b, s));
        assert_eq!(c.totals(), (0, 0));
    }

    #[test]
    fn handshake_limiter_limits_per_client_and_stays_bounded() {
        let q = quota(NonZeroU32::new(1).unwrap(), NonZeroU32::new(2));
        let l = HandshakeLimiter::new(q, 3);
        assert!(l.check(ip("192.0.2.1")).is_ok());
        assert!(l.check(ip("192.0.2.1")).is_ok());
        let wait = l.check(ip("192.0.2.1")).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(l.check(ip("192.0.2.2")).is_ok());
        assert!(l.check(ip("192.0.2.3")).is_ok());
        assert_eq!(l.tracked(), 3);
        // Full of active clients: a fourth is not tracked (and not refused).
        assert!(l.check(ip("192.0.2.4")).is_ok());
        assert!(l.check(ip("192.0.2.4")).is_ok());
        assert!(l.check(ip("192.0.2.4")).is_ok());
        assert_eq!(l.tracked(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_clients_are_forgotten() {
        let q = quota(NonZeroU32::new(1000).unwrap(), None);
        let l = HandshakeLimiter::new(q, 2);
        assert!(l.check(ip("192.0.2.1")).is_ok());
        assert!(l.check(ip("192.0.2.2")).is_ok());
        tokio::time::advance(Duration::from_millis(20)).await;
        // Both are back at a full burst: the sweep on a full limiter drops them.
        assert!(l.check(ip("192.0.2.3")).is_ok());
        assert_eq!(l.tracked(), 1);
    }
}
