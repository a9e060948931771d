//! Rebalance after a scale-out: a server added to a group starts empty
//! while the others keep the long-lived sessions they had. A group with
//! `rebalance_per_second` moves sessions off the servers above their fair
//! share, the way a drain does (the client gets 1012 and reconnects, the
//! backend 1001, each at a message boundary), a bounded number per second,
//! until the spread is even.
//!
//! One task per group that asks for it, per config generation, run by the
//! gateway like the probes and stopped with its generation. Once a
//! [`TICK`] it reads each server's sessions (those that stay: the ones
//! already moving are not counted), and:
//!
//! - the **fair share** of each *available* server (up and not draining) is
//!   the sessions of the available servers × its weight / the sum of their
//!   weights; a draining server's sessions are moved by its drain, and a
//!   down server's are left alone, so neither counts;
//! - a server holding more than its share plus the [`tolerance`] (10% of
//!   the share, at least one session) is *crowded*: it sheds down to that
//!   bound, within the group's budget ([`Budget`], `rebalance_per_second`,
//!   at most one second's worth at once), the largest excess first; and
//!   until the next look, requests not balanced by a key try it after the
//!   others, so the sessions it sheds land on the servers below their share
//!   instead of coming straight back (round robin would send most of them to
//!   another crowded server, or back);
//! - in a hashing group only sessions whose key now goes to another server
//!   are shed: they land where their key says (usually the new server), and
//!   the others would come straight back. A server whose keys put it above
//!   its share stays so; hashing is only as even as its keys.
//!
//! The server's beacon wakes exactly the sessions it sheds; the others
//! never hear of it ([`Beacon::shed`](crate::relay::beacon::Beacon::shed)).
//! Nothing here runs per frame, and the sessions' count is read once per
//! server per tick.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use tokio::time::{interval, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{health::Server, Group, Key, Upstream};

/// How often a group's spread is looked at.
pub const TICK: Duration = Duration::from_secs(1);

/// How long a crowded mark holds unless renewed: two looks, so a mark left
/// by a rebalance that a reload stopped wears off by itself.
const MARK: Duration = Duration::from_secs(2);

/// Starts `group`'s rebalance, if it has one, until `stop` is cancelled.
pub fn spawn(group: &Arc<Group>, stop: CancellationToken) {
    let Some(rate) = group.current().rebalance else {
        return;
    };
    let group = group.clone();
    tokio::spawn(async move {
        let mut every = interval(TICK);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut budget = Budget::new(rate, Instant::now());
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            // The servers as they are now (a changed answer swaps them);
            // their counts and marks are the servers' own, by label.
            group.current().rebalance(&mut budget, Instant::now());
        }
    });
}

/// One server as [`plan`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    /// Its sessions that stay (not already moving).
    pub sessions: usize,
    pub weight: u32,
    /// Up and not draining.
    pub available: bool,
}

/// What [`plan`] says of one server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Above its share plus the tolerance.
    pub crowded: bool,
    /// Sessions above that bound: how many it should shed.
    pub excess: usize,
}

/// How far above its fair share a server may be: 10% of the share, and at
/// least one session (a share is rarely a whole number, and one session
/// more than the share is as even as whole sessions allow).
pub fn tolerance(share: f64) -> f64 {
    (share / 10.0).max(1.0)
}

/// Each server's verdict, in order: its fair share is the sessions of the
/// available servers × its weight / the sum of their weights; above that
/// plus the [`tolerance`] it is crowded. Unavailable servers are neither
/// counted nor crowded.
pub fn plan(seats: &[Seat]) -> Vec<Verdict> {
    let available = seats.iter().filter(|s| s.available);
    let total: usize = available.clone().map(|s| s.sessions).sum();
    let weights: u64 = available.map(|s| u64::from(s.weight)).sum();
    seats
        .iter()
        .map(|s| {
            if !s.available || weights == 0 {
                return Verdict::default();
            }
            let share = total as f64 * f64::from(s.weight) / weights as f64;
            // Sessions are whole: above `share + tolerance` is above its floor.
            let bound = (share + tolerance(share)).floor() as usize;
            match s.sessions > bound {
                true => Verdict {
                    crowded: true,
                    excess: s.sessions - bound,
                },
                false => Verdict::default(),
            }
        })
        .collect()
}

/// Spreads `allowance` sheds over the verdicts, one at a time to the
/// server with the most excess left (the first on a tie), never more than
/// a server's excess.
pub fn split(verdicts: &[Verdict], allowance: usize) -> Vec<usize> {
    let mut left: Vec<usize> = verdicts.iter().map(|v| v.excess).collect();
    let mut shed = vec![0; verdicts.len()];
    for _ in 0..allowance {
        let Some((i, _)) = left
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .max_by_key(|&(i, &n)| (n, std::cmp::Reverse(i)))
        else {
            break;
        };
        left[i] -= 1;
        shed[i] += 1;
    }
    shed
}

/// The group's sheds per second: a token bucket that refills at
/// `rebalance_per_second` and holds at most one second's worth, so a look
/// that comes late does not shed more than the rate allows.
#[derive(Debug)]
pub struct Budget {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Budget {
    /// A full bucket: the first look may shed a second's worth.
    pub fn new(per_second: NonZeroU32, now: Instant) -> Self {
        let rate = f64::from(per_second.get());
        Budget {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Takes up to `want` sheds at `now`; returns how many it may.
    pub fn take(&mut self, now: Instant, want: usize) -> usize {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
        let n = (self.tokens.floor() as usize).min(want);
        self.tokens -= n as f64;
        n
    }

    /// Returns sheds taken and not used (no session could be moved).
    pub fn give_back(&mut self, n: usize) {
        self.tokens = (self.tokens + n as f64).min(self.rate);
    }
}

// === the look, on the group ===

impl Upstream {
    /// One look at the group's spread: marks the crowded servers and sheds
    /// what the budget allows.
    fn rebalance(&self, budget: &mut Budget, now: Instant) {
        let servers = &self.health.servers;
        // Twins (the same URL twice) share one state: counted once, with
        // their weights together.
        let first: Vec<usize> = (0..servers.len())
            .filter(|&i| !servers[..i].iter().any(|s| Arc::ptr_eq(s, &servers[i])))
            .collect();
        let available: Vec<bool> = servers.iter().map(|s| s.available(now)).collect();
        let seats: Vec<Seat> = first
            .iter()
            .map(|&i| Seat {
                sessions: servers[i].beacon().watching(),
                weight: self.balance.pooled_weight(i),
                available: available[i],
            })
            .collect();
        let verdicts = plan(&seats);
        let excess = verdicts.iter().map(|v| v.excess).sum();
        let sheds = split(&verdicts, budget.take(now, excess));
        for (((&i, seat), verdict), n) in first.iter().zip(&seats).zip(&verdicts).zip(sheds) {
            let server = &servers[i];
            server.with_state(|s| s.crowd(verdict.crowded.then_some(now + MARK)));
            if n == 0 {
                continue;
            }
            let moved = server
                .beacon()
                .shed(n, |key| self.lands_elsewhere(key, server, &available));
            budget.give_back(n - moved);
            if moved > 0 {
                tracing::info!(
                    upstream = %self.name,
                    server = server.label(),
                    sessions = seat.sessions,
                    moved,
                    "rebalance: sessions moved off a server above its share"
                );
            }
        }
    }

    /// Whether a session balanced on `key` would reach another server than
    /// `server` if it reconnected now: always without a key (it goes by
    /// turn or load, and crowded servers are tried last); with one, when
    /// its first available candidate is another server.
    fn lands_elsewhere(&self, key: Option<u64>, server: &Arc<Server>, available: &[bool]) -> bool {
        let Some(key) = key else {
            return true;
        };
        self.balance
            .candidates(Some(Key(key)), &|_| 0)
            .find(|&i| available[i])
            .is_some_and(|i| !Arc::ptr_eq(&self.health.servers[i], server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat(sessions: usize) -> Seat {
        Seat {
            sessions,
            weight: 1,
            available: true,
        }
    }

    fn excess(v: &[Verdict]) -> Vec<usize> {
        v.iter().map(|v| v.excess).collect()
    }

    #[test]
    fn a_new_server_makes_the_others_crowded_down_to_share_plus_tolerance() {
        // 180 sessions, 4 servers: a share of 45, a tolerance of 4.5.
        let v = plan(&[seat(60), seat(60), seat(60), seat(0)]);
        assert_eq!(excess(&v), [11, 11, 11, 0]);
        assert!(v[..3].iter().all(|v| v.crowded) && !v[3].crowded);
        // Once each holds 49 (at most 49.5), nothing is crowded.
        let v = plan(&[seat(49), seat(49), seat(49), seat(33)]);
        assert_eq!(v, [Verdict::default(); 4]);
    }

    #[test]
    fn the_share_follows_the_weights() {
        let heavy = Seat {
            weight: 2,
            ..seat(40)
        };
        // 120 sessions over weights 1, 1, 2: shares 30, 30, 60.
        let v = plan(&[seat(40), seat(40), heavy]);
        assert_eq!(excess(&v), [7, 7, 0]);
    }

    #[test]
    fn unavailable_servers_are_neither_counted_nor_shed() {
        let draining = Seat {
            available: false,
            ..seat(100)
        };
        let v = plan(&[draining, seat(10), seat(10)]);
        assert_eq!(v, [Verdict::default(); 3]);
        let v = plan(&[draining, seat(30), seat(0)]);
        // A share of 15, a tolerance of 1.5: down to 16.
        assert_eq!(excess(&v), [0, 14, 0]);
        assert_eq!(plan(&[draining]), [Verdict::default()]);
    }

    #[test]
    fn the_tolerance_is_at_least_one_session() {
        assert_eq!(tolerance(45.0), 4.5);
        assert_eq!(tolerance(3.0), 1.0);
        // 3 sessions on 2 servers: 2 and 1 is as even as it gets.
        assert_eq!(plan(&[seat(2), seat(1)]), [Verdict::default(); 2]);
        assert_eq!(excess(&plan(&[seat(3), seat(0)])), [1, 0]);
    }

    #[test]
    fn sheds_go_to_the_largest_excess_first_and_never_past_it() {
        let v = |excess| Verdict {
            crowded: excess > 0,
            excess,
        };
        assert_eq!(split(&[v(11), v(11), v(11), v(0)], 20), [7, 7, 6, 0]);
        assert_eq!(split(&[v(2), v(9)], 5), [0, 5]);
        assert_eq!(split(&[v(2), v(3)], 100), [2, 3]);
        assert_eq!(split(&[v(0)], 10), [0]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_the_rate_per_second_and_one_second_at_once() {
        let rate = NonZeroU32::new(20).unwrap();
        let mut b = Budget::new(rate, Instant::now());
        assert_eq!(b.take(Instant::now(), 50), 20, "a second's worth at first");
        assert_eq!(b.take(Instant::now(), 50), 0);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(b.take(Instant::now(), 50), 10);
        assert_eq!(b.take(Instant::now(), 3), 0, "nothing left this instant");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(b.take(Instant::now(), 1), 1, "asked for less than it has");
        b.give_back(1);
        assert_eq!(b.take(Instant::now(), 50), 2);
        // A late look: still at most one second's worth.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.take(Instant::now(), 50), 20);
    }
}
