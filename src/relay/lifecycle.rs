//! When a session must act on its own: send a keepalive ping, declare a
//! silent peer dead, close an idle session, end one at its maximum lifetime,
//! start draining, or publish its traffic counts. Pure: it is told what
//! happened and what time it is, and answers what is due and when to look
//! again. The session does the I/O.

use std::time::Duration;

use tokio::time::Instant;

use super::DrainBy;
use crate::proto::frame::Side;

/// Keepalive for one leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Ping after this long without hearing anything from the peer.
    pub interval: Duration,
    /// A peer that sends nothing (not even the pong) this long after a ping is dead.
    pub pong_timeout: Duration,
}

/// The timing rules of one session, from its policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    pub client: Option<Keepalive>,
    pub upstream: Option<Keepalive>,
    /// Close after this long without a data frame in either direction.
    pub idle_timeout: Option<Duration>,
    /// Close after this long, whatever happens (already jittered).
    pub max_lifetime: Option<Duration>,
}

/// Something the session must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send a ping with this payload to the leg.
    Ping(Side, u64),
    /// The leg answered no ping in time: treat it as gone.
    Dead(Side),
    /// No data either way for `idle_timeout`.
    Idle,
    /// `max_lifetime` reached.
    Lifetime,
    /// The gateway is shutting down, the session's server drains or a
    /// rebalance moves the session, and this session's turn has come.
    Drain(DrainBy),
    /// Traffic counted since the last publish has waited [`PUBLISH_EVERY`]:
    /// add it to the gateway's totals.
    Publish,
}

/// How long counted traffic waits before it is published: the metrics lag
/// an open session by at most this, and a session publishes at most once
/// per this.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct LegClock {
    keepalive: Option<Keepalive>,
    last_heard: Instant,
    /// When the unanswered ping went out; cleared by anything heard.
    awaiting: Option<Instant>,
    /// The last ping's payload and send time, to measure the round trip.
    probe: Option<(u64, Instant)>,
    rtt: Option<Duration>,
}

impl LegClock {
    fn new(keepalive: Option<Keepalive>, now: Instant) -> Self {
        LegClock {
            keepalive,
            last_heard: now,
            awaiting: None,
            probe: None,
            rtt: None,
        }
    }

    /// When this leg next needs attention.
    fn deadline(&self) -> Option<Instant> {
        let k = self.keepalive?;
        Some(match self.awaiting {
            Some(sent) => sent + k.pong_timeout,
            None => self.last_heard + k.interval,
        })
    }
}

/// The session's timers.
#[derive(Debug)]
pub struct Lifecycle {
    started: Instant,
    client: LegClock,
    upstream: LegClock,
    idle_timeout: Option<Duration>,
    last_data: Instant,
    end_of_life: Option<Instant>,
    drain_at: Option<(Instant, DrainBy)>,
    /// When the traffic counted but not yet published is due to be; `None`
    /// while nothing waits, so an idle session never wakes for it.
    publish_at: Option<Instant>,
}

impl Lifecycle {
    pub fn new(rules: Rules, now: Instant) -> Self {
        Lifecycle {
            started: now,
            client: LegClock::new(rules.client, now),
            upstream: LegClock::new(rules.upstream, now),
            idle_timeout: rules.idle_timeout,
            last_data: now,
            end_of_life: rules.max_lifetime.map(|d| now + d),
            drain_at: None,
            publish_at: None,
        }
    }

    fn leg(&mut self, side: Side) -> &mut LegClock {
        match side {
            Side::Client => &mut self.client,
            Side::Upstream => &mut self.upstream,
        }
    }

    /// Bytes arrived from `side`: it is alive.
    pub fn heard(&mut self, side: Side, now: Instant) {
        let leg = self.leg(side);
        leg.last_heard = now;
        leg.awaiting = None;
    }

    /// A data frame was relayed (either way). Pings and pongs do not count.
    pub fn data(&mut self, now: Instant) {
        self.last_data = now;
    }

    /// The session holds traffic it has not published: due [`PUBLISH_EVERY`]
    /// after the first such call since the last publish. Told on a wake,
    /// not per frame; a session publishes at most once per `PUBLISH_EVERY`
    /// because the wait starts after the previous publish.
    pub fn unpublished(&mut self, now: Instant) {
        self.publish_at.get_or_insert(now + PUBLISH_EVERY);
    }

    /// A pong with `payload` arrived from `side`.
    pub fn pong(&mut self, side: Side, payload: u64, now: Instant) {
        let leg = self.leg(side);
        if let Some((sent_payload, sent_at)) = leg.probe {
            if sent_payload == payload {
                leg.rtt = Some(now - sent_at);
                leg.probe = None;
            }
        }
    }

    /// The gateway or the server is draining, or a rebalance moves the
    /// session: act after `delay` (the session's share of the spread). The
    /// first drain stands, unless the gateway's own shutdown would come
    /// sooner than a move.
    pub fn drain(&mut self, now: Instant, delay: Duration, by: DrainBy) {
        let at = now + delay;
        match self.drain_at {
            Some((t, first)) if first != DrainBy::Gateway && by == DrainBy::Gateway && at < t => {
                self.drain_at = Some((at, by));
            }
            Some(_) => {}
            None => self.drain_at = Some((at, by)),
        }
    }

    /// The last measured ping round trip to `side`.
    pub fn rtt(&self, side: Side) -> Option<Duration> {
        match side {
            Side::Client => self.client.rtt,
            Side::Upstream => self.upstream.rtt,
        }
    }

    /// What is due at `now`, most final first; call again until `None`.
    pub fn due(&mut self, now: Instant) -> Option<Due> {
        if let Some((t, by)) = self.drain_at {
            if now >= t {
                self.drain_at = None;
                return Some(Due::Drain(by));
            }
        }
        if self.end_of_life.is_some_and(|t| now >= t) {
            self.end_of_life = None;
            return Some(Due::Lifetime);
        }
        if self.idle_timeout.is_some_and(|d| now >= self.last_data + d) {
            self.idle_timeout = None;
            return Some(Due::Idle);
        }
        for side in [Side::Client, Side::Upstream] {
            let started = self.started;
            let leg = self.leg(side);
            let Some(k) = leg.keepalive else { continue };
            match leg.awaiting {
                Some(sent) if now >= sent + k.pong_timeout => {
                    leg.keepalive = None;
                    return Some(Due::Dead(side));
                }
                None if now >= leg.last_heard + k.interval => {
                    let payload = (now - started).as_micros() as u64;
                    leg.awaiting = Some(now);
                    leg.probe = Some((payload, now));
                    return Some(Due::Ping(side, payload));
                }
                _ => {}
            }
        }
        if self.publish_at.is_some_and(|t| now >= t) {
            self.publish_at = None;
            return Some(Due::Publish);
        }
        None
    }

    /// When to call [`Lifecycle::due`] next, if ever.
    pub fn next_wake(&self) -> Option<Instant> {
        [
            self.drain_at.map(|(t, _)| t),
            self.end_of_life,
            self.idle_timeout.map(|d| self.last_data + d),
            self.client.deadline(),
            self.upstream.deadline(),
            self.publish_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn keepalive(interval: u64, pong: u64) -> Option<Keepalive> {
        Some(Keepalive {
            interval: S * interval as u32,
            pong_timeout: S * pong as u32,
        })
    }

    fn drain_all(life: &mut Lifecycle, now: Instant) -> Vec<Due> {
        std::iter::from_fn(|| life.due(now)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn pings_a_silent_peer_and_measures_the_round_trip() {
        let t0 = Instant::now();
        let rules = Rules {
            client: keepalive(25, 10),
            ..Rules::default()
        };
        let mut life = Lifecycle::new(rules, t0);
        assert_eq!(life.next_wake(), Some(t0 + 25 * S));
        assert_eq!(drain_all(&mut life, t0 + 24 * S), []);
        let due = drain_all(&mut life, t0 + 25 * S);
        let [Due::Ping(Side::Client, payload)] = due[..] else {
            panic!("expected one ping, got {due:?}")
        };
        assert_eq!(life.next_wake(), Some(t0 + 35 * S), "pong deadline");
        life.heard(Side::Client, t0 + 26 * S);
        life.pong(Side::Client, payload, t0 + 26 * S);
        assert_eq!(life.rtt(Side::Client), Some(S));
        assert_eq!(
            life.next_wake(),
            Some(t0 + 51 * S),
            "next ping after more silence"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_from_the_peer_postpones_pings() {
        let t0 = Instant::now();
        let mut life = Lifecycle::new(
            Rules {
                upstream: keepalive(10, 5),
                ..Rules::default()
            },
            t0,
        );
        for s in 1..=30 {
            life.heard(Side::Upstream, t0 + S * s);
            assert_eq!(drain_all(&mut life, t0 + S * s), []);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_answers_nothing_is_dead_after_interval_plus_timeout() {
        let t0 = Instant::now();
        let mut life = Lifecycle::new(
            Rules {
                client: keepalive(10, 5),
                upstream: keepalive(60, 5),
                ..Rules::default()
            },
            t0,
        );
        assert!(matches!(
            life.due(t0 + 10 * S),
            Some(Due::Ping(Side::Client, _))
        ));
        assert_eq!(life.due(t0 + 14 * S), None);
        assert_eq!(life.due(t0 + 15 * S), Some(Due::Dead(Side::Client)));
        assert_eq!(life.due(t0 + 15 * S), None, "reported once");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_data_only() {
        let t0 = Instant::now();
        let mut life = Lifecycle::new(
            Rules {
                idle_timeout: Some(60 * S),
                client: keepalive(20, 10),
                ..Rules::default()
            },
            t0,
        );
        life.data(t0 + 30 * S);
        // Pongs keep arriving, but they are not data.
        for s in [50, 70, 89] {
            let _ = drain_all(&mut life, t0 + S * s);
            life.heard(Side::Client, t0 + S * s);
        }
        assert_eq!(drain_all(&mut life, t0 + 90 * S), [Due::Idle]);
    }

    #[tokio::test(start_paused = true)]
    async fn lifetime_and_drain() {
        let t0 = Instant::now();
        let mut life = Lifecycle::new(
            Rules {
                max_lifetime: Some(3600 * S),
                ..Rules::default()
            },
            t0,
        );
        assert_eq!(life.next_wake(), Some(t0 + 3600 * S));
        life.drain(t0 + 10 * S, 2 * S, DrainBy::Gateway);
        life.drain(t0 + 11 * S, Duration::ZERO, DrainBy::Gateway);
        assert_eq!(
            life.next_wake(),
            Some(t0 + 12 * S),
            "a second drain does not move the first"
        );
        assert_eq!(
            drain_all(&mut life, t0 + 12 * S),
            [Due::Drain(DrainBy::Gateway)]
        );
        assert_eq!(drain_all(&mut life, t0 + 3600 * S), [Due::Lifetime]);
        assert_eq!(life.next_wake(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn unpublished_traffic_is_due_a_second_after_it_is_first_seen() {
        let t0 = Instant::now();
        let mut life = Lifecycle::new(Rules::default(), t0);
        assert_eq!(life.next_wake(), None, "nothing to publish: no wake");
        life.unpublished(t0 + S / 2);
        life.unpublished(t0 + S);
        assert_eq!(
            life.next_wake(),
            Some(t0 + S / 2 + PUBLISH_EVERY),
            "more traffic does not put the publish off"
        );
        assert_eq!(drain_all(&mut life, t0 + S), []);
        assert_eq!(
            drain_all(&mut life, t0 + S / 2 + PUBLISH_EVERY),
            [Due::Publish]
        );
        assert_eq!(life.next_wake(), None, "published: no wake until more");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sooner_shutdown_overtakes_a_server_drain() {
        let t0 = Instant::now();
        let mut life = Lifecycle::new(Rules::default(), t0);
        life.drain(t0, 20 * S, DrainBy::Server);
        life.drain(t0 + S, 30 * S, DrainBy::Gateway);
        assert_eq!(
            life.next_wake(),
            Some(t0 + 20 * S),
            "the later shutdown waits"
        );
        life.drain(t0 + 2 * S, S, DrainBy::Gateway);
        assert_eq!(life.next_wake(), Some(t0 + 3 * S));
        assert_eq!(
            drain_all(&mut life, t0 + 3 * S),
            [Due::Drain(DrainBy::Gateway)]
        );
        let mut life = Lifecycle::new(Rules::default(), t0);
        life.drain(t0, 5 * S, DrainBy::Gateway);
        life.drain(t0, S, DrainBy::Server);
        assert_eq!(
            drain_all(&mut life, t0 + 5 * S),
            [Due::Drain(DrainBy::Gateway)],
            "a shutdown is never turned into a move"
        );
    }
}
