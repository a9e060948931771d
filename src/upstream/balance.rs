//! Choosing which servers to try for one connection, in order.
//!
//! A balancer does not connect; it yields *candidates*, best first, each
//! server at most once, and the group ([`super::Upstream`]) tries them in
//! that order for as long as its failover rule allows. That is pingora's
//! `select_with(key, max_iter, accept)` shape: policies that need a key
//! (a hash of the client or a cookie, for stickiness) or live state (the
//! in-flight counts of least-connections, health) take it here and still
//! yield candidates, so the group's loop stays the same.
//!
//! Round robin is the only policy today.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Servers taken in turn: each connection starts one server further along
/// than the previous one, and goes on from there (wrapping) if it has to.
#[derive(Debug, Default)]
pub struct RoundRobin {
    /// Connections started so far (wrapping); the next one starts at
    /// `next % n`.
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new() -> Self {
        Self::default()
    }

    /// The order to try `servers` in for one connection: every server once,
    /// starting at the next turn. Each call takes one turn, however many of
    /// its candidates are then tried.
    pub fn candidates<'a, T>(&self, servers: &'a [T]) -> Candidates<'a, T> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let start = if servers.is_empty() {
            0
        } else {
            turn % servers.len()
        };
        Candidates {
            servers,
            start,
            taken: 0,
        }
    }
}

/// The servers one connection may try, in order (see
/// [`RoundRobin::candidates`]).
#[derive(Debug, Clone)]
pub struct Candidates<'a, T> {
    servers: &'a [T],
    start: usize,
    taken: usize,
}

impl<'a, T> Candidates<'a, T> {
    /// The candidates with their indexes in the server list (which keys
    /// per-server state such as the idle connection pool).
    pub fn indexed(mut self) -> impl Iterator<Item = (usize, &'a T)> {
        std::iter::from_fn(move || {
            let i = self.next_index()?;
            Some((i, &self.servers[i]))
        })
    }

    fn next_index(&mut self) -> Option<usize> {
        let n = self.servers.len();
        if self.taken == n {
            return None;
        }
        // `start < n`, so this neither overflows nor needs a second modulo.
        let i = self.start + self.taken;
        self.taken += 1;
        Some(if i >= n { i - n } else { i })
    }
}

impl<'a, T> Iterator for Candidates<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        let i = self.next_index()?;
        Some(&self.servers[i])
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.servers.len() - self.taken;
        (left, Some(left))
    }
}

impl<T> ExactSizeIterator for Candidates<'_, T> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(rr: &RoundRobin, servers: &[char]) -> String {
        rr.candidates(servers).collect()
    }

    #[test]
    fn each_connection_starts_one_further_and_wraps() {
        let rr = RoundRobin::new();
        let servers = ['a', 'b', 'c'];
        assert_eq!(order(&rr, &servers), "abc");
        assert_eq!(order(&rr, &servers), "bca");
        assert_eq!(order(&rr, &servers), "cab");
        assert_eq!(order(&rr, &servers), "abc");
    }

    #[test]
    fn a_connection_takes_one_turn_however_many_it_tries() {
        let rr = RoundRobin::new();
        let servers = ['a', 'b', 'c'];
        // The first connection tries two servers; the next still starts at b.
        assert_eq!(rr.candidates(&servers).take(2).count(), 2);
        assert_eq!(order(&rr, &servers), "bca");
        // One that tries none takes its turn too.
        rr.candidates(&servers);
        assert_eq!(order(&rr, &servers), "abc");
    }

    #[test]
    fn one_server_is_always_the_only_candidate() {
        let rr = RoundRobin::new();
        for _ in 0..3 {
            assert_eq!(order(&rr, &['a']), "a");
        }
    }

    #[test]
    fn no_servers_no_candidates() {
        let rr = RoundRobin::new();
        let none: [char; 0] = [];
        assert_eq!(rr.candidates(&none).next(), None);
        assert_eq!(rr.candidates(&none).len(), 0);
    }

    #[test]
    fn the_count_is_exact() {
        let rr = RoundRobin::new();
        let servers = ['a', 'b', 'c', 'd'];
        let mut c = rr.candidates(&servers);
        assert_eq!(c.len(), 4);
        c.next();
        assert_eq!(c.size_hint(), (3, Some(3)));
    }

    #[test]
    fn the_turn_counter_wraps_without_overflow() {
        let rr = RoundRobin {
            next: AtomicUsize::new(usize::MAX),
        };
        let servers = ['a', 'b', 'c'];
        // usize::MAX % 3 == 0; the counter then wraps to 0.
        assert_eq!(order(&rr, &servers), "abc");
        assert_eq!(order(&rr, &servers), "abc");
        assert_eq!(order(&rr, &servers), "bca");
    }

    #[test]
    fn concurrent_connections_share_the_turns() {
        let rr = std::sync::Arc::new(RoundRobin::new());
        let servers = ['a', 'b', 'c', 'd'];
        let firsts: Vec<char> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let rr = rr.clone();
                    s.spawn(move || *rr.candidates(&servers).next().unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Eight turns over four servers: each server starts exactly twice.
        for s in servers {
            assert_eq!(firsts.iter().filter(|&&f| f == s).count(), 2, "{firsts:?}");
        }
    }
}
