//! Choosing which servers to try for one connection, in order.
//!
//! A balancer does not connect; it yields *candidates*, best first, each
//! server at most once, and the group ([`super::Upstream`]) tries them in
//! that order for as long as its failover rule allows. That is pingora's
//! `select_with(key, max_iter, accept)` shape: every policy takes what it
//! needs here (a key's hash, the live counts) and still yields candidates,
//! so the group's loop is the same for all of them.
//!
//! The policies ([`Pick`]):
//!
//! - **Round robin**, weighted the way nginx does it ("smooth" weighted
//!   round robin: weights 5,1,1 give `a a b a c a a`, never `a a a a a b c`).
//!   The order of one period is computed once, so a connection costs one
//!   atomic increment and no lock.
//! - **Least connections**: the server with the fewest live sessions and
//!   in-flight requests per unit of weight; ties are broken in turn, so
//!   an idle group is still used evenly.
//! - **Power of two random choices**: two servers drawn at random (by
//!   weight), the less loaded one first. Nearly as even as least
//!   connections without every connection agreeing on the same minimum.
//! - **Hashing** a per-request key with rendezvous (highest random weight)
//!   hashing: every server gets a score for the key and the highest wins.
//!   When a server joins, only the keys it now wins move (about 1/N); when
//!   one leaves, only its own keys do. Failing over is deterministic: the
//!   next candidate is the server with the next highest score, the one the
//!   key would move to if the first were gone.
//!
//! The live counts the loaded policies compare are not kept here: they are
//! the servers' own ([`InFlight`](super::health::InFlight), kept across
//! reloads), passed in as a [`Loads`] view, so a balancer is rebuilt on
//! every reload without forgetting the sessions already open.

use std::{
    cmp::Reverse,
    sync::atomic::{AtomicUsize, Ordering},
};

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::affinity::Key;

/// How a group orders its servers for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Fewest live connections per unit of weight.
    LeastConn,
    /// The less loaded of two random servers.
    RandomTwo,
    /// Rendezvous hashing of the request's key; round robin for a request
    /// without one.
    Hash,
}

/// The largest period of the weighted round robin: weights are checked at
/// load to be at most [`MAX_WEIGHT`], so this bounds the server count too.
pub const MAX_WEIGHT: u32 = 100;

/// One group's balancer: its policy, and its servers' weights and hash
/// seeds.
#[derive(Debug)]
pub struct Balancer {
    pick: Pick,
    weights: Vec<u32>,
    /// Each server's weight with that of its twins (the same URL again):
    /// twins share one live count, so their load is per this weight.
    pooled: Vec<u32>,
    /// Each server's rendezvous seed, from its URL as written (and how many
    /// servers before it have the same URL). Nothing per process: every
    /// gateway with the same server list sends a key to the same server.
    seeds: Vec<u64>,
    /// Every weight is the same: round robin is a plain rotation and a
    /// hash score is the raw hash (no floating point at all).
    uniform: bool,
    /// The servers of one smooth weighted round-robin period, in order
    /// (empty when `uniform`).
    wheel: Vec<usize>,
    /// Running sums of the weights, for weighted random draws.
    cumulative: Vec<u64>,
    /// Connections started so far (wrapping): the round-robin turn.
    turn: AtomicUsize,
}

/// A draw in `0..bound`; the real one is `rand`'s thread-local generator,
/// tests pass a seeded one.
pub type Draw<'r> = &'r mut dyn FnMut(u64) -> u64;

/// Server `i`'s live sessions and in-flight requests.
pub type Loads<'l> = &'l dyn Fn(usize) -> usize;

impl Balancer {
    /// A balancer for servers with these labels (URLs as written) and
    /// weights (each at least 1).
    pub fn new<'a>(pick: Pick, servers: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let mut labels: Vec<&str> = Vec::new();
        let mut weights = Vec::new();
        let mut seeds = Vec::new();
        for (label, weight) in servers {
            // The same URL twice is two servers (twice the share): the
            // second gets its own seed, still the same on every instance.
            let twins = labels.iter().filter(|l| **l == label).count() as u64;
            seeds.push(xxh3_64_with_seed(label.as_bytes(), twins));
            labels.push(label);
            weights.push(weight.max(1));
        }
        let pooled = labels
            .iter()
            .map(|l| {
                let twins = labels.iter().zip(&weights).filter(|(t, _)| *t == l);
                twins.map(|(_, w)| w).sum()
            })
            .collect();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let wheel = if uniform {
            Vec::new()
        } else {
            smooth_wheel(&weights)
        };
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, w| {
                *sum += u64::from(*w);
                Some(*sum)
            })
            .collect();
        Balancer {
            pick,
            weights,
            pooled,
            seeds,
            uniform,
            wheel,
            cumulative,
            turn: AtomicUsize::new(0),
        }
    }

    /// Server `i`'s weight with its twins' (see `pooled`).
    pub fn pooled_weight(&self, i: usize) -> u32 {
        self.pooled[i]
    }

    /// The order to try the servers in for one connection with this key
    /// (used only by [`Pick::Hash`]), the loaded policies reading `loads`:
    /// every server once, best first.
    pub fn candidates(&self, key: Option<Key>, loads: Loads<'_>) -> Candidates<'_> {
        // The thread's generator, reached only by `random_two`.
        self.candidates_with(key, loads, &mut |bound| {
            rand::Rng::random_range(&mut rand::rng(), 0..bound)
        })
    }

    /// [`Balancer::candidates`] with the random draws of [`Pick::RandomTwo`]
    /// from `draw`.
    pub fn candidates_with(
        &self,
        key: Option<Key>,
        loads: Loads<'_>,
        draw: Draw<'_>,
    ) -> Candidates<'_> {
        let n = self.weights.len();
        let plan = if n == 0 {
            Plan::Rotate { first: 0, start: 0 }
        } else {
            match (self.pick, key) {
                (Pick::Hash, Some(key)) => Plan::Ranked {
                    key: key.0,
                    last: None,
                },
                (Pick::RoundRobin | Pick::Hash, _) => self.next_turn(),
                (Pick::LeastConn, _) => self.least_loaded(loads),
                (Pick::RandomTwo, _) => self.two_choices(loads, draw),
            }
        };
        Candidates {
            balancer: self,
            plan,
            taken: 0,
            cursor: 0,
        }
    }

    fn next_turn(&self) -> Plan {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let first = match self.uniform {
            true => turn % self.weights.len(),
            false => self.wheel[turn % self.wheel.len()],
        };
        Plan::Rotate {
            first,
            start: first,
        }
    }

    /// Whether server `a` is less loaded than `b`, per unit of weight.
    fn lighter(&self, loads: Loads<'_>, a: usize, b: usize) -> bool {
        // load_a / w_a < load_b / w_b, without division.
        let (la, lb) = (loads(a) as u64, loads(b) as u64);
        la * u64::from(self.pooled[b]) < lb * u64::from(self.pooled[a])
    }

    fn least_loaded(&self, loads: Loads<'_>) -> Plan {
        let n = self.weights.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = start;
        for k in 1..n {
            let i = (start + k) % n;
            if self.lighter(loads, i, best) {
                best = i;
            }
        }
        Plan::Rotate { first: best, start }
    }

    fn two_choices(&self, loads: Loads<'_>, draw: Draw<'_>) -> Plan {
        let n = self.weights.len();
        let a = self.weighted(draw(self.total()));
        let mut b = self.weighted(draw(self.total()));
        if b == a && n > 1 {
            // Another server, uniformly among the rest.
            b = (a + 1 + draw(n as u64 - 1) as usize) % n;
        }
        let first = if self.lighter(loads, b, a) { b } else { a };
        Plan::Rotate {
            first,
            start: (first + 1) % n,
        }
    }

    fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The server a draw in `0..total` falls on, by weight.
    fn weighted(&self, r: u64) -> usize {
        self.cumulative.partition_point(|&c| c <= r)
    }

    /// Server `i`'s rendezvous score for `key` (higher wins).
    fn score(&self, key: u64, i: usize) -> u64 {
        let h = xxh3_64_with_seed(&key.to_le_bytes(), self.seeds[i]);
        if self.uniform {
            return h;
        }
        // Weighted rendezvous hashing: w / -ln(u) for u uniform in (0, 1)
        // wins in proportion to w. A positive f64's bits order as the value.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        (f64::from(self.weights[i]) / -u.ln()).to_bits()
    }
}

/// The hash of a key's bytes: xxh3 with its default (constant) secret, the
/// same in every process and on every platform.
pub fn hash(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// One period of nginx's smooth weighted round robin: at each step every
/// server gains its weight, the highest (first on a tie) is taken and
/// loses the total.
fn smooth_wheel(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += i64::from(*w);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            best
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Plan {
    /// `first`, then every other server in list order from `start`
    /// (wrapping).
    Rotate { first: usize, start: usize },
    /// By rendezvous score, highest first (ties: lower index first).
    Ranked {
        key: u64,
        last: Option<(u64, Reverse<usize>)>,
    },
}

/// The servers one connection may try, as indexes into the server list,
/// best first, each once (see [`Balancer::candidates`]).
#[derive(Debug, Clone)]
pub struct Candidates<'b> {
    balancer: &'b Balancer,
    plan: Plan,
    taken: usize,
    /// How far along the rotation (after `first`) we are.
    cursor: usize,
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let b = self.balancer;
        let n = b.weights.len();
        if self.taken == n {
            return None;
        }
        self.taken += 1;
        match &mut self.plan {
            Plan::Rotate { first, start } => {
                if self.taken == 1 {
                    return Some(*first);
                }
                loop {
                    let i = (*start + self.cursor) % n;
                    self.cursor += 1;
                    if i != *first {
                        return Some(i);
                    }
                }
            }
            Plan::Ranked { key, last } => {
                // The best score below the last one taken: no allocation,
                // and usually only the first is ever asked for.
                let next = (0..n)
                    .map(|i| (b.score(*key, i), Reverse(i)))
                    .filter(|s| last.is_none_or(|l| *s < l))
                    .max()?;
                *last = Some(next);
                Some(next.1 .0)
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.balancer.weights.len() - self.taken;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Candidates<'_> {}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn servers(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("ws://10.0.0.{i}:8080")).collect()
    }

    fn balancer(pick: Pick, labels: &[String], weights: &[u32]) -> Balancer {
        Balancer::new(
            pick,
            labels
                .iter()
                .map(String::as_str)
                .zip(weights.iter().copied()),
        )
    }

    fn even(pick: Pick, n: usize) -> Balancer {
        balancer(pick, &servers(n), &vec![1; n])
    }

    /// A small deterministic generator (splitmix64) for the random draws.
    fn seeded(mut state: u64) -> impl FnMut(u64) -> u64 {
        move |bound| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % bound
        }
    }

    /// No server has a live session.
    const IDLE: Loads<'static> = &|_| 0;

    fn order(b: &Balancer, key: Option<Key>) -> Vec<usize> {
        loaded(b, key, &[])
    }

    /// [`order`] with these live counts (missing ones are 0).
    fn loaded(b: &Balancer, key: Option<Key>, loads: &[usize]) -> Vec<usize> {
        let loads = |i: usize| loads.get(i).copied().unwrap_or(0);
        b.candidates_with(key, &loads, &mut seeded(1)).collect()
    }

    fn key(s: &str) -> Option<Key> {
        Some(Key(hash(s.as_bytes())))
    }

    #[test]
    fn round_robin_starts_one_further_and_wraps() {
        let b = even(Pick::RoundRobin, 3);
        assert_eq!(order(&b, None), [0, 1, 2]);
        assert_eq!(order(&b, None), [1, 2, 0]);
        assert_eq!(order(&b, None), [2, 0, 1]);
        assert_eq!(order(&b, None), [0, 1, 2]);
    }

    #[test]
    fn a_connection_takes_one_turn_however_many_it_tries() {
        let b = even(Pick::RoundRobin, 3);
        assert_eq!(b.candidates(None, IDLE).take(2).count(), 2);
        assert_eq!(order(&b, None), [1, 2, 0]);
        b.candidates(None, IDLE);
        assert_eq!(order(&b, None), [0, 1, 2]);
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves_as_nginx_does() {
        let b = balancer(Pick::RoundRobin, &servers(3), &[5, 1, 1]);
        let firsts: Vec<usize> = (0..14).map(|_| order(&b, None)[0]).collect();
        // nginx's documented sequence for 5,1,1: a a b a c a a, twice.
        assert_eq!(firsts, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
        // Every server is still a candidate, each once.
        let mut all = order(&b, None);
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2]);
    }

    #[test]
    fn the_turn_counter_wraps_without_overflow() {
        let b = even(Pick::RoundRobin, 3);
        b.turn.store(usize::MAX, Ordering::Relaxed);
        // usize::MAX % 3 == 0; the counter then wraps to 0.
        assert_eq!(order(&b, None), [0, 1, 2]);
        assert_eq!(order(&b, None), [0, 1, 2]);
        assert_eq!(order(&b, None), [1, 2, 0]);
    }

    #[test]
    fn no_servers_no_candidates() {
        for pick in [
            Pick::RoundRobin,
            Pick::LeastConn,
            Pick::RandomTwo,
            Pick::Hash,
        ] {
            let b = even(pick, 0);
            assert_eq!(order(&b, key("k")), Vec::<usize>::new());
            assert_eq!(b.candidates(None, IDLE).len(), 0);
        }
    }

    #[test]
    fn every_policy_yields_every_server_once() {
        for pick in [
            Pick::RoundRobin,
            Pick::LeastConn,
            Pick::RandomTwo,
            Pick::Hash,
        ] {
            let b = balancer(pick, &servers(5), &[1, 3, 1, 2, 1]);
            for k in ["a", "b", "c"] {
                let mut c = b.candidates(key(k), IDLE);
                assert_eq!(c.len(), 5);
                c.next();
                assert_eq!(c.size_hint(), (4, Some(4)));
                let mut all: Vec<usize> = b.candidates(key(k), IDLE).collect();
                all.sort_unstable();
                assert_eq!(all, [0, 1, 2, 3, 4], "{pick:?}");
            }
        }
    }

    #[test]
    fn least_conn_prefers_the_least_loaded_and_rotates_ties() {
        let b = even(Pick::LeastConn, 3);
        // Idle: in turn.
        assert_eq!(order(&b, None)[0], 0);
        assert_eq!(order(&b, None)[0], 1);
        for _ in 0..5 {
            assert_eq!(loaded(&b, None, &[3, 1, 0])[0], 2);
        }
        // 0 and 2 are idle again, 1 is not.
        for _ in 0..4 {
            assert_ne!(loaded(&b, None, &[0, 1, 0])[0], 1);
        }
    }

    #[test]
    fn least_conn_follows_live_sessions() {
        // Sessions that stay open: each new one goes where there are fewest.
        let b = balancer(Pick::LeastConn, &servers(3), &[1, 1, 2]);
        let mut loads = vec![0; 3];
        for _ in 0..400 {
            let first = loaded(&b, None, &loads)[0];
            loads[first] += 1;
        }
        // Weighted 1:1:2 exactly (give or take one).
        assert!(loads[0].abs_diff(100) <= 1, "{loads:?}");
        assert!(loads[1].abs_diff(100) <= 1, "{loads:?}");
        assert!(loads[2].abs_diff(200) <= 2, "{loads:?}");
    }

    #[test]
    fn twins_share_one_count_and_their_weights() {
        // The same URL twice: one live count, compared per weight 2.
        let labels = vec![
            "ws://a:1".to_owned(),
            "ws://a:1".to_owned(),
            "ws://b:1".to_owned(),
        ];
        let b = balancer(Pick::LeastConn, &labels, &[1, 1, 1]);
        assert_eq!(b.pooled_weight(0), 2);
        let (mut a, mut other) = (0, 0);
        for _ in 0..300 {
            match loaded(&b, None, &[a, a, other])[0] {
                2 => other += 1,
                _ => a += 1,
            }
        }
        assert!(a.abs_diff(200) <= 2, "{a} vs {other}");
    }

    #[test]
    fn random_two_spreads_live_sessions_evenly() {
        let b = even(Pick::RandomTwo, 3);
        let mut draw = seeded(7);
        let mut loads = vec![0usize; 3];
        for _ in 0..300 {
            let counts = loads.clone();
            let first = b
                .candidates_with(None, &|i| counts[i], &mut draw)
                .next()
                .unwrap();
            loads[first] += 1;
        }
        for n in &loads {
            assert!(n.abs_diff(100) <= 20, "{loads:?}");
        }
    }

    #[test]
    fn random_two_takes_the_less_loaded_of_its_two() {
        let b = even(Pick::RandomTwo, 2);
        let busy: Loads<'_> = &|i| usize::from(i == 0);
        // With two servers the two draws are always both of them.
        for s in 0..20 {
            assert_eq!(
                b.candidates_with(None, busy, &mut seeded(s)).next(),
                Some(1)
            );
        }
    }

    fn firsts(b: &Balancer, keys: usize) -> Vec<usize> {
        (0..keys)
            .map(|k| order(b, key(&format!("client-{k}")))[0])
            .collect()
    }

    fn counts(firsts: &[usize], n: usize) -> Vec<usize> {
        (0..n)
            .map(|i| firsts.iter().filter(|&&f| f == i).count())
            .collect()
    }

    #[test]
    fn hashing_spreads_keys_within_bounds() {
        let b = even(Pick::Hash, 3);
        let c = counts(&firsts(&b, 3000), 3);
        for n in &c {
            assert!(n.abs_diff(1000) <= 100, "{c:?}");
        }
    }

    #[test]
    fn hashing_respects_weights() {
        let b = balancer(Pick::Hash, &servers(3), &[1, 1, 2]);
        let c = counts(&firsts(&b, 4000), 3);
        assert!(c[0].abs_diff(1000) <= 120, "{c:?}");
        assert!(c[1].abs_diff(1000) <= 120, "{c:?}");
        assert!(c[2].abs_diff(2000) <= 160, "{c:?}");
    }

    #[test]
    fn a_key_goes_to_the_same_server_from_a_fresh_balancer() {
        let one = even(Pick::Hash, 3);
        let two = even(Pick::Hash, 3);
        for k in 0..200 {
            let k = key(&format!("198.51.100.{k}"));
            assert_eq!(order(&one, k), order(&two, k));
            // And every time on the same one.
            assert_eq!(order(&one, k), order(&one, k));
        }
    }

    /// Pinned: a change here moves every client of every deployed fleet.
    #[test]
    fn the_hash_is_stable_across_builds() {
        assert_eq!(hash(b"203.0.113.7"), xxh3_64(b"203.0.113.7"));
        let b = even(Pick::Hash, 3);
        let got: Vec<Vec<usize>> = ["alice", "bob", "carol", "dave", "erin", "frank"]
            .iter()
            .map(|k| order(&b, key(k)))
            .collect();
        assert_eq!(got, PINNED_ORDERS);
    }
    const PINNED_ORDERS: [[usize; 3]; 6] = [
        [0, 2, 1],
        [0, 1, 2],
        [0, 2, 1],
        [2, 1, 0],
        [0, 1, 2],
        [0, 1, 2],
    ];

    #[test]
    fn adding_a_fourth_server_moves_only_its_share() {
        let three = even(Pick::Hash, 3);
        let four = even(Pick::Hash, 4);
        let (before, after) = (firsts(&three, 3000), firsts(&four, 3000));
        let stayed = before.iter().zip(&after).filter(|(a, b)| a == b).count();
        assert!(stayed * 3 >= 3000 * 2, "{stayed} of 3000 stayed");
        // And the ones that moved all went to the new server.
        assert!(before.iter().zip(&after).all(|(a, b)| a == b || *b == 3));
    }

    #[test]
    fn removing_a_server_moves_only_its_keys() {
        let three = even(Pick::Hash, 3);
        let labels = servers(3);
        // Server 1 gone: its keys go to their second choice, the rest stay.
        let two = balancer(Pick::Hash, &[labels[0].clone(), labels[2].clone()], &[1, 1]);
        for k in 0..500 {
            let k = key(&format!("k{k}"));
            let full = order(&three, k);
            let fewer = order(&two, k);
            let expected: Vec<usize> = full
                .iter()
                .filter(|&&i| i != 1)
                .map(|&i| if i == 2 { 1 } else { 0 })
                .collect();
            assert_eq!(fewer, expected);
        }
    }

    #[test]
    fn failing_over_takes_the_next_server_in_hash_order() {
        let b = even(Pick::Hash, 4);
        let mut seen = HashMap::new();
        for k in 0..100 {
            let o = order(&b, key(&format!("u{k}")));
            // Deterministic, and every server once.
            assert_eq!(o, order(&b, key(&format!("u{k}"))));
            *seen.entry(o[1]).or_insert(0) += 1;
        }
        // Second choices are spread too, not all on one neighbour.
        assert_eq!(seen.len(), 4, "{seen:?}");
    }

    #[test]
    fn a_hash_without_a_key_falls_back_to_round_robin() {
        let b = even(Pick::Hash, 3);
        let f: Vec<usize> = (0..6).map(|_| order(&b, None)[0]).collect();
        assert_eq!(f, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn twin_urls_are_two_servers() {
        let labels = vec!["ws://a:1".to_owned(), "ws://a:1".to_owned()];
        let b = balancer(Pick::Hash, &labels, &[1, 1]);
        let c = counts(&firsts(&b, 1000), 2);
        assert!(c[0].abs_diff(500) <= 80, "{c:?}");
    }
}
