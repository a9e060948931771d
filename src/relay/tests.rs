//! Whole sessions in memory: each leg is a `tokio::io::duplex` pipe whose
//! far end the test speaks raw frames on, and the clock is paused, so every
//! timer path (keepalive, dead peer, idle, lifetime, close deadlines, drain)
//! runs in no real time and to the exact instant. With a paused clock tokio
//! jumps time to the next timer whenever every task is waiting, so a test
//! that awaits a frame the gateway sends at a deadline sees it at exactly
//! that deadline.

use std::{
    io::Cursor,
    num::NonZeroU32,
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime},
};

use governor::Quota;
use rand::{rngs::StdRng, SeedableRng};
use tokio::{
    io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream},
    task::JoinHandle,
    time::Instant,
};
use tungstenite::protocol::frame::{
    coding::{Control, Data, OpCode},
    FrameHeader,
};

use super::{
    beacon::Beacon,
    gate::{Events, Gate, RateAction, RateSpec},
    leg::{Leg, LegState},
    lifecycle::{Due, Keepalive, Rules, PUBLISH_EVERY},
    phase::{Event, Phase, State},
    CloseFrame, DrainBy, DrainSignal, Ending, Jitter, LegClose, Session, SessionRules, Summary,
    Traffic,
};
use crate::proto::{
    close,
    frame::{FrameLimits, Side},
};

const MS: Duration = Duration::from_millis(1);
const TEXT: OpCode = OpCode::Data(Data::Text);
const CONT: OpCode = OpCode::Data(Data::Continue);
const PING: OpCode = OpCode::Control(Control::Ping);
const PONG: OpCode = OpCode::Control(Control::Pong);
const CLOSE: OpCode = OpCode::Control(Control::Close);

/// No jitter: lifetimes end at `max_lifetime`, drains start at once.
const NO_JITTER: Jitter = Jitter {
    lifetime: 0.0,
    drain: 0.0,
};

fn rules(close_timeout: Duration, timers: Rules) -> SessionRules {
    let limits = FrameLimits {
        max_frame: 1 << 20,
        max_message: 1 << 20,
    };
    SessionRules {
        client: limits,
        upstream: limits,
        close_timeout,
        timers,
    }
}

fn keepalive(interval: Duration, pong_timeout: Duration) -> Option<Keepalive> {
    Some(Keepalive {
        interval,
        pong_timeout,
    })
}

/// A frame as a peer read it off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    fin: bool,
    opcode: OpCode,
    payload: Vec<u8>,
}

impl Seen {
    fn close_code(&self) -> (u16, String) {
        assert_eq!(self.opcode, CLOSE, "expected a close, got {self:?}");
        let [hi, lo, reason @ ..] = &self.payload[..] else {
            panic!("a close without a code: {self:?}")
        };
        (
            u16::from_be_bytes([*hi, *lo]),
            String::from_utf8(reason.to_vec()).unwrap(),
        )
    }
}

/// The test's end of one leg: the client, or the upstream server.
struct Peer {
    io: DuplexStream,
    /// Which leg this peer is: a client masks what it sends, and the
    /// gateway masks what it sends to an upstream.
    side: Side,
    buf: Vec<u8>,
}

impl Peer {
    async fn send(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) {
        let bytes = crate::proto::frame::tests::frame(self.side, opcode, fin, payload);
        self.io.write_all(&bytes).await.unwrap();
    }

    async fn text(&mut self, text: &str) {
        self.send(true, TEXT, text.as_bytes()).await;
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.send(true, CLOSE, &payload).await;
    }

    /// The next frame the gateway sent this peer, or `None` at end of stream.
    async fn next(&mut self) -> Option<Seen> {
        loop {
            let mut cursor = Cursor::new(&self.buf[..]);
            if let Some((header, len)) = FrameHeader::parse(&mut cursor).unwrap() {
                let at = cursor.position() as usize;
                if self.buf.len() >= at + len as usize {
                    assert_eq!(
                        header.mask.is_some(),
                        self.side == Side::Upstream,
                        "the gateway masks what it sends upstream, and only that"
                    );
                    let mut payload = self.buf[at..at + len as usize].to_vec();
                    if let Some(key) = header.mask {
                        crate::proto::mask::apply(&mut payload, key);
                    }
                    self.buf.drain(..at + len as usize);
                    return Some(Seen {
                        fin: header.is_final,
                        opcode: header.opcode,
                        payload,
                    });
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.io.read(&mut chunk).await.unwrap();
            if n == 0 {
                assert!(self.buf.is_empty(), "the stream ended mid-frame");
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn frame(&mut self) -> Seen {
        self.next()
            .await
            .expect("a frame, not the end of the stream")
    }

    async fn expect_close(&mut self) -> (u16, String) {
        self.frame().await.close_code()
    }

    async fn expect_end(&mut self) {
        assert_eq!(self.next().await, None, "expected the end of the stream");
    }
}

/// A running session and the two peers at its far ends.
struct Running {
    client: Peer,
    upstream: Peer,
    session: JoinHandle<Summary>,
    /// When the session started: deadlines are measured from here.
    t0: Instant,
}

impl Running {
    fn elapsed(&self) -> Duration {
        Instant::now() - self.t0
    }

    async fn summary(self) -> Summary {
        self.session.await.unwrap()
    }
}

/// Starts a session over in-memory pipes. `upstream_buffer` is how much the
/// upstream's pipe holds unread (a peer that never reads fills it).
fn start_with(
    rules: SessionRules,
    drain: Option<DrainSignal>,
    jitter: Jitter,
    upstream_buffer: usize,
) -> Running {
    launch(rules, drain, jitter, upstream_buffer, None, None)
}

/// Starts a session whose client leg goes through `gate`.
fn start_gated(rules: SessionRules, gate: Gate) -> Running {
    launch(rules, None, NO_JITTER, 64 * 1024, Some(gate), None)
}

/// Starts a session that publishes its traffic to `traffic`.
fn start_counted(rules: SessionRules, traffic: Arc<Traffic>) -> Running {
    launch(rules, None, NO_JITTER, 64 * 1024, None, Some(traffic))
}

fn launch(
    rules: SessionRules,
    drain: Option<DrainSignal>,
    jitter: Jitter,
    upstream_buffer: usize,
    client_gate: Option<Gate>,
    traffic: Option<Arc<Traffic>>,
) -> Running {
    let (client_gw, client) = duplex(64 * 1024);
    let (upstream_gw, upstream) = duplex(upstream_buffer);
    let t0 = Instant::now();
    let mut session =
        Session::new(client_gw, upstream_gw, &rules, drain, jitter).gated(client_gate, None);
    if let Some(traffic) = traffic {
        session = session.counted_in(traffic);
    }
    Running {
        client: Peer {
            io: client,
            side: Side::Client,
            buf: Vec::new(),
        },
        upstream: Peer {
            io: upstream,
            side: Side::Upstream,
            buf: Vec::new(),
        },
        session: tokio::spawn(async move { session.run().await }),
        t0,
    }
}

fn start(rules: SessionRules) -> Running {
    start_with(rules, None, NO_JITTER, 64 * 1024)
}

/// Both peers answer the closes they were sent; the session then ends cleanly.
async fn answer_closes(s: &mut Running, client: (u16, &str), upstream: (u16, &str)) {
    s.client.close(client.0, client.1).await;
    s.upstream.close(upstream.0, upstream.1).await;
    s.client.expect_end().await;
    s.upstream.expect_end().await;
}

// --- Keepalive --------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn keepalive_pings_a_silent_client_every_interval_and_measures_the_round_trip() {
    let mut s = start(rules(
        Duration::from_secs(1),
        Rules {
            client: keepalive(100 * MS, 300 * MS),
            ..Rules::default()
        },
    ));
    // The client answers each ping 5 ms later; the next one comes an
    // interval after the pong (the last thing heard), and each carries the
    // microseconds since the session started.
    for expected in [100, 205, 310, 415] {
        let ping = s.client.frame().await;
        assert_eq!(s.elapsed(), expected * MS, "ping at {expected} ms");
        assert_eq!(ping.opcode, PING);
        assert_eq!(ping.payload, (expected as u64 * 1000).to_be_bytes());
        tokio::time::advance(5 * MS).await;
        s.client.send(true, PONG, &ping.payload).await;
    }
    // Pinged, never closed: the session still relays.
    s.client.text("still here").await;
    assert_eq!(s.upstream.frame().await.payload, b"still here");
    s.upstream.text("welcome back").await;
    assert_eq!(s.client.frame().await.payload, b"welcome back");

    s.client.close(1000, "done").await;
    assert_eq!(s.upstream.expect_close().await, (1000, "done".into()));
    s.upstream.close(1000, "done").await;
    assert_eq!(s.client.expect_close().await, (1000, "done".into()));
    s.client.expect_end().await;
    s.upstream.expect_end().await;
    let summary = s.summary().await;
    assert_eq!(summary.client_rtt, Some(5 * MS));
    assert_eq!(summary.upstream_rtt, None, "the upstream was never pinged");
    assert_eq!(
        summary.ending,
        Some(Ending::Closed {
            by: Side::Client,
            code: Some(1000)
        })
    );
    assert!(summary.clean);
    // Each leg sent its close and was sent the other's, reason and all.
    assert_eq!(
        summary.client_close,
        legs(Some((1000, "done")), Some((1000, "done")))
    );
    assert_eq!(summary.upstream_close, summary.client_close);
    // Pings and pongs are not counted as traffic.
    assert_eq!(
        (
            summary.client_to_upstream.frames,
            summary.upstream_to_client.frames
        ),
        (1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn traffic_from_a_peer_postpones_its_pings() {
    let mut s = start(rules(
        Duration::from_secs(1),
        Rules {
            client: keepalive(100 * MS, 300 * MS),
            ..Rules::default()
        },
    ));
    for _ in 0..10 {
        tokio::time::sleep(60 * MS).await;
        s.client.text("tick").await;
        assert_eq!(s.upstream.frame().await.payload, b"tick");
    }
    // 600 ms of a talking client: not one ping; the first comes 100 ms
    // after it falls silent.
    let ping = s.client.frame().await;
    assert_eq!((ping.opcode, s.elapsed()), (PING, 700 * MS));
}

// --- Dead peers -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_client_that_answers_no_ping_is_closed_and_its_upstream_told() {
    let mut s = start(rules(
        Duration::from_secs(1),
        Rules {
            client: keepalive(100 * MS, 200 * MS),
            ..Rules::default()
        },
    ));
    // The client reads nothing and answers nothing; the upstream is told
    // ping interval + pong timeout after the client was last heard.
    assert_eq!(
        s.upstream.expect_close().await,
        (1001, "client went away".into())
    );
    assert_eq!(s.elapsed(), 300 * MS);
    // What the client was sent, had it read: the ping, then a close.
    assert_eq!(s.client.frame().await.opcode, PING);
    assert_eq!(s.client.expect_close().await, (1001, "ping timeout".into()));
    // The client is not waited for; the upstream's answer ends the session.
    s.upstream.close(1001, "").await;
    s.upstream.expect_end().await;
    let summary = s.summary().await;
    assert_eq!(
        summary.ending,
        Some(Ending::Unresponsive { by: Side::Client })
    );
    // The client never sent its close: not clean.
    assert!(!summary.clean);
    assert_eq!(
        summary.client_close,
        legs(None, Some((1001, "ping timeout")))
    );
    assert_eq!(
        summary.upstream_close,
        legs(Some((1001, "")), Some((1001, "client went away")))
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_upstream_is_found_and_the_client_told() {
    let mut s = start(rules(
        Duration::from_secs(1),
        Rules {
            upstream: keepalive(100 * MS, 200 * MS),
            ..Rules::default()
        },
    ));
    assert_eq!(
        s.client.expect_close().await,
        (1011, "upstream went away".into())
    );
    assert_eq!(s.elapsed(), 300 * MS);
    assert_eq!(s.upstream.frame().await.opcode, PING);
    assert_eq!(
        s.upstream.expect_close().await,
        (1001, "ping timeout".into())
    );
    s.client.close(1011, "").await;
    s.client.expect_end().await;
    let summary = s.summary().await;
    assert_eq!(
        summary.ending,
        Some(Ending::Unresponsive { by: Side::Upstream })
    );
    assert!(!summary.clean);
    assert_eq!(
        summary.upstream_close,
        legs(None, Some((1001, "ping timeout")))
    );
    assert_eq!(
        summary.client_close,
        legs(Some((1011, "")), Some((1011, "upstream went away")))
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_answers_pings_late_but_within_the_timeout_lives() {
    let mut s = start(rules(
        Duration::from_secs(1),
        Rules {
            client: keepalive(100 * MS, 200 * MS),
            ..Rules::default()
        },
    ));
    let ping = s.client.frame().await;
    tokio::time::advance(199 * MS).await;
    s.client.send(true, PONG, &ping.payload).await;
    // The next ping, not a close: 100 ms after the pong.
    assert_eq!(s.client.frame().await.opcode, PING);
    assert_eq!(s.elapsed(), 399 * MS);
}

// --- Idle and lifetime ------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_both_legs_and_pings_do_not_count() {
    let mut s = start(rules(
        Duration::from_secs(1),
        Rules {
            client: keepalive(50 * MS, Duration::from_secs(1)),
            idle_timeout: Some(400 * MS),
            ..Rules::default()
        },
    ));
    tokio::time::advance(20 * MS).await;
    s.client.text("one message").await;
    assert_eq!(s.upstream.frame().await.payload, b"one message");
    // Pings and pongs flow every 50 ms after it, and do not keep the
    // session alive: 400 ms after the last data frame, both legs get 1001.
    let mut pings = 0;
    let close = loop {
        let f = s.client.frame().await;
        if f.opcode != PING {
            break f.close_code();
        }
        pings += 1;
        s.client.send(true, PONG, &f.payload).await;
    };
    assert_eq!(close, (1001, "idle timeout".into()));
    assert_eq!(s.elapsed(), 420 * MS);
    assert_eq!(pings, 7, "pinged at 70, 120, ... 370 ms");
    assert_eq!(
        s.upstream.expect_close().await,
        (1001, "idle timeout".into())
    );
    answer_closes(&mut s, (1001, ""), (1001, "")).await;
    let summary = s.summary().await;
    assert_eq!(
        summary.ending,
        Some(Ending::Gateway {
            reason: "idle timeout"
        })
    );
    assert!(summary.clean);
}

#[tokio::test(start_paused = true)]
async fn max_lifetime_ends_the_session_at_its_jittered_moment() {
    // Jitter 0.5: halfway into the last 10% of a 100 s lifetime.
    let mut s = start_with(
        rules(
            Duration::from_secs(1),
            Rules {
                max_lifetime: Some(Duration::from_secs(100)),
                ..Rules::default()
            },
        ),
        None,
        Jitter {
            lifetime: 0.5,
            drain: 0.0,
        },
        64 * 1024,
    );
    // However busy it is.
    s.client.text("busy").await;
    assert_eq!(s.upstream.frame().await.payload, b"busy");
    let reason = (1001, "session lifetime reached".to_string());
    assert_eq!(s.client.expect_close().await, reason);
    assert_eq!(s.elapsed(), Duration::from_secs(95));
    assert_eq!(s.upstream.expect_close().await, reason);
    answer_closes(&mut s, (1001, ""), (1001, "")).await;
    let summary = s.summary().await;
    assert_eq!(
        summary.ending,
        Some(Ending::Gateway {
            reason: "session lifetime reached"
        })
    );
    assert!(summary.clean);
}

#[tokio::test(start_paused = true)]
async fn seeded_jitter_gives_the_same_lifetime_every_run() {
    let max = Duration::from_secs(1000);
    let mut ended = Vec::new();
    for _ in 0..2 {
        let jitter = Jitter::from_rng(&mut StdRng::seed_from_u64(11));
        let mut s = start_with(
            rules(
                Duration::from_secs(1),
                Rules {
                    max_lifetime: Some(max),
                    ..Rules::default()
                },
            ),
            None,
            jitter,
            64 * 1024,
        );
        assert_eq!(
            s.client.expect_close().await,
            (1001, "session lifetime reached".into())
        );
        // The timer wheel counts whole milliseconds, rounding up.
        let expected = max.mul_f64(1.0 - jitter.lifetime * 0.1);
        let took = s.elapsed();
        assert!(took >= expected && took < expected + MS, "{took:?}");
        assert!(took >= max.mul_f64(0.9) && took <= max);
        ended.push(took);
    }
    assert_eq!(ended[0], ended[1]);
    // A different seed, a different moment.
    let other = Jitter::from_rng(&mut StdRng::seed_from_u64(12));
    assert_ne!(other, Jitter::from_rng(&mut StdRng::seed_from_u64(11)));
}

// --- Close deadlines --------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_unanswered_close_is_echoed_after_the_close_timeout() {
    let mut s = start(rules(200 * MS, Rules::default()));
    s.client.close(4002, "bye").await;
    // The upstream gets it at once and never answers.
    assert_eq!(s.upstream.expect_close().await, (4002, "bye".into()));
    assert_eq!(s.elapsed(), Duration::ZERO);
    // At the deadline the client's handshake completes with its own code,
    // and its connection is closed.
    assert_eq!(s.client.expect_close().await, (4002, String::new()));
    assert_eq!(s.elapsed(), 200 * MS);
    s.client.expect_end().await;
    s.upstream.expect_end().await;
    let summary = s.summary().await;
    assert_eq!(
        summary.ending,
        Some(Ending::Closed {
            by: Side::Client,
            code: Some(4002)
        })
    );
    assert!(!summary.clean, "the upstream never answered");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_answers_a_close_is_given_up_on() {
    let mut s = start(rules(300 * MS, Rules::default()));
    s.upstream.close(4001, "bye").await;
    assert_eq!(s.client.expect_close().await, (4001, "bye".into()));
    // The client does not reply; at the deadline the upstream's handshake
    // completes with its own code, and both connections are closed.
    assert_eq!(s.upstream.expect_close().await, (4001, String::new()));
    assert_eq!(s.elapsed(), 300 * MS);
    s.upstream.expect_end().await;
    s.client.expect_end().await;
    let summary = s.summary().await;
    assert_eq!(
        summary.ending,
        Some(Ending::Closed {
            by: Side::Upstream,
            code: Some(4001)
        })
    );
    assert!(!summary.clean);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_takes_nothing_is_dropped_at_the_second_deadline() {
    // The upstream's pipe holds one byte and it never reads: the client's
    // close cannot be written to it in full, nor anything after.
    let mut s = start_with(rules(200 * MS, Rules::default()), None, NO_JITTER, 1);
    s.client.close(1000, "").await;
    // First deadline: the client gets its own code back...
    assert_eq!(s.client.expect_close().await, (1000, String::new()));
    assert_eq!(s.elapsed(), 200 * MS);
    // ...second: the sockets are dropped with the upstream's close unsent.
    s.client.expect_end().await;
    assert_eq!(s.elapsed(), 400 * MS);
    let summary = s.summary().await;
    assert!(!summary.clean);
    assert_eq!(
        summary.ending,
        Some(Ending::Closed {
            by: Side::Client,
            code: Some(1000)
        })
    );
}

// --- Drain ------------------------------------------------------------------

/// The gateway's beacon, and one server's under it (as in a gateway).
fn beacons() -> (Arc<Beacon>, Arc<Beacon>) {
    let gateway = Beacon::new();
    let server = Beacon::under(&gateway);
    (gateway, server)
}

/// What a session on `beacon` watches: the gateway's drain spread over
/// `spread`, its server's over `window`.
fn drain_signal(
    beacon: &Arc<Beacon>,
    spread: Option<Duration>,
    window: Option<Duration>,
    key: Option<u64>,
) -> Option<DrainSignal> {
    Some(DrainSignal {
        beacon: beacon.clone(),
        spread,
        window,
        key,
    })
}

#[tokio::test(start_paused = true)]
async fn drain_sends_1001_to_both_legs_after_the_sessions_share_of_the_spread() {
    // The session watches its server's beacon; the gateway's drain reaches it.
    let (gateway, server) = beacons();
    let mut s = start_with(
        rules(Duration::from_secs(5), Rules::default()),
        drain_signal(
            &server,
            Some(Duration::from_secs(10)),
            Some(Duration::from_secs(100)),
            None,
        ),
        Jitter {
            lifetime: 0.0,
            drain: 0.25,
        },
        64 * 1024,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    gateway.set_draining(true);
    // A quarter of the gateway's 10 s spread after the signal.
    let going_away = (1001, "going away".to_string());
    assert_eq!(s.client.expect_close().await, going_away);
    assert_eq!(s.elapsed(), Duration::from_millis(3500));
    assert_eq!(s.upstream.expect_close().await, going_away);
    answer_closes(&mut s, (1001, ""), (1001, "")).await;
    let summary = s.summary().await;
    assert_eq!(
        summary.ending,
        Some(Ending::Gateway {
            reason: "going away"
        })
    );
    assert!(summary.clean, "drained sessions that answer count as clean");
}

// --- A server drain: the session moves off its server --------------------------

#[tokio::test(start_paused = true)]
async fn a_server_drain_sends_1012_to_the_client_and_1001_upstream_after_its_share() {
    let (_gateway, server) = beacons();
    let mut s = launch(
        rules(Duration::from_secs(5), Rules::default()),
        drain_signal(
            &server,
            Some(Duration::from_secs(100)),
            Some(Duration::from_secs(20)),
            None,
        ),
        Jitter {
            lifetime: 0.0,
            drain: 0.5,
        },
        64 * 1024,
        None,
        None,
    );
    server.set_draining(true);
    // Half of the server's 20 s window.
    assert_eq!(
        s.client.expect_close().await,
        (1012, "service restart".into())
    );
    assert_eq!(s.elapsed(), Duration::from_secs(10));
    assert_eq!(s.upstream.expect_close().await, (1001, "going away".into()));
    answer_closes(&mut s, (1012, ""), (1001, "")).await;
    let summary = s.summary().await;
    assert!(summary.clean);
    assert_eq!(
        summary.ending,
        Some(Ending::Gateway {
            reason: "server draining"
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_overtakes_a_later_server_drain_on_the_same_watch() {
    let (gateway, server) = beacons();
    let mut s = start_with(
        rules(Duration::from_secs(5), Rules::default()),
        drain_signal(
            &server,
            Some(Duration::from_secs(10)),
            Some(Duration::from_secs(100)),
            None,
        ),
        Jitter {
            lifetime: 0.0,
            drain: 0.5,
        },
        64 * 1024,
    );
    // The move would come at 50 s; the shutdown at 1 s + 5 s.
    server.set_draining(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    gateway.set_draining(true);
    assert_eq!(s.client.expect_close().await, (1001, "going away".into()));
    assert_eq!(s.elapsed(), Duration::from_secs(6));
    assert_eq!(s.upstream.expect_close().await, (1001, "going away".into()));
}

#[tokio::test(start_paused = true)]
async fn a_server_drain_never_cuts_a_message_in_flight() {
    let (_gateway, server) = beacons();
    let mut s = launch(
        rules(Duration::from_secs(5), Rules::default()),
        drain_signal(&server, None, None, None),
        NO_JITTER,
        64 * 1024,
        None,
        None,
    );
    s.upstream.send(false, TEXT, b"first half, ").await;
    assert!(!s.client.frame().await.fin);
    server.set_draining(true);
    assert_eq!(s.upstream.expect_close().await, (1001, "going away".into()));
    tokio::time::advance(Duration::from_secs(1)).await;
    s.upstream.send(true, CONT, b"second half").await;
    let last = s.client.frame().await;
    assert_eq!((last.fin, &last.payload[..]), (true, &b"second half"[..]));
    assert_eq!(
        s.client.expect_close().await,
        (1012, "service restart".into())
    );
    answer_closes(&mut s, (1012, ""), (1001, "")).await;
    assert!(s.summary().await.clean);
}

#[tokio::test(start_paused = true)]
async fn a_message_that_never_ends_holds_a_server_drain_only_until_the_close_deadline() {
    let (_gateway, server) = beacons();
    let mut s = launch(
        rules(Duration::from_secs(5), Rules::default()),
        drain_signal(&server, None, None, None),
        NO_JITTER,
        64 * 1024,
        None,
        None,
    );
    s.upstream.send(false, TEXT, b"never finished").await;
    assert!(!s.client.frame().await.fin);
    server.set_draining(true);
    assert_eq!(s.upstream.expect_close().await, (1001, "going away".into()));
    // At the close deadline the client still gets the move's code.
    assert_eq!(
        s.client.expect_close().await,
        (1012, "service restart".into())
    );
    assert_eq!(s.elapsed(), Duration::from_secs(5));
}

// --- A shed: rebalance moves the session --------------------------------------

#[tokio::test(start_paused = true)]
async fn a_shed_moves_the_session_at_once_without_cutting_a_message() {
    let (_gateway, server) = beacons();
    // A window and a share that a drain would wait out; a shed does not.
    let mut s = launch(
        rules(Duration::from_secs(5), Rules::default()),
        drain_signal(&server, None, Some(Duration::from_secs(60)), None),
        Jitter {
            lifetime: 0.0,
            drain: 0.9,
        },
        64 * 1024,
        None,
        None,
    );
    s.upstream.send(false, TEXT, b"first half, ").await;
    assert!(!s.client.frame().await.fin);
    assert_eq!(server.shed(1, |_| true), 1);
    assert_eq!(s.upstream.expect_close().await, (1001, "going away".into()));
    assert_eq!(s.elapsed(), Duration::ZERO);
    tokio::time::advance(Duration::from_secs(1)).await;
    s.upstream.send(true, CONT, b"second half").await;
    let last = s.client.frame().await;
    assert_eq!((last.fin, &last.payload[..]), (true, &b"second half"[..]));
    assert_eq!(
        s.client.expect_close().await,
        (1012, "service restart".into())
    );
    answer_closes(&mut s, (1012, ""), (1001, "")).await;
    let summary = s.summary().await;
    assert!(summary.clean);
    assert_eq!(
        summary.ending,
        Some(Ending::Gateway {
            reason: "rebalanced"
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_shed_reaches_only_the_sessions_it_takes() {
    let (_gateway, server) = beacons();
    let start = |key| {
        launch(
            rules(Duration::from_secs(5), Rules::default()),
            drain_signal(&server, None, None, Some(key)),
            NO_JITTER,
            64 * 1024,
            None,
            None,
        )
    };
    let (mut stays, mut moves) = (start(1), start(2));
    // Both are registered once they relay.
    for s in [&mut stays, &mut moves] {
        s.upstream.text("hello").await;
        assert_eq!(s.client.frame().await.payload, b"hello");
    }
    assert_eq!(server.watching(), 2);
    assert_eq!(server.shed(5, |key| key == Some(2)), 1);
    assert_eq!(
        moves.client.expect_close().await,
        (1012, "service restart".into())
    );
    // The other goes on relaying, and is still counted as staying.
    stays.upstream.text("still here").await;
    assert_eq!(stays.client.frame().await.payload, b"still here");
    assert_eq!(server.watching(), 1);
}

#[tokio::test(start_paused = true)]
async fn drain_never_cuts_a_message_in_flight() {
    let gateway = Beacon::new();
    let mut s = start_with(
        rules(Duration::from_secs(5), Rules::default()),
        drain_signal(&gateway, None, None, None),
        NO_JITTER,
        64 * 1024,
    );
    s.upstream.send(false, TEXT, b"first half, ").await;
    let first = s.client.frame().await;
    assert_eq!(
        (first.fin, &first.payload[..]),
        (false, &b"first half, "[..])
    );

    gateway.set_draining(true);
    // The upstream's own direction is idle, so it hears 1001 at once...
    assert_eq!(s.upstream.expect_close().await, (1001, "going away".into()));
    // ...while the client's close waits for the message to finish.
    tokio::time::advance(Duration::from_secs(1)).await;
    s.upstream.send(true, CONT, b"second half").await;
    assert_eq!(
        s.client.frame().await,
        Seen {
            fin: true,
            opcode: CONT,
            payload: b"second half".to_vec()
        }
    );
    assert_eq!(s.client.expect_close().await, (1001, "going away".into()));
    assert_eq!(s.elapsed(), Duration::from_secs(1));
    answer_closes(&mut s, (1001, ""), (1001, "")).await;
    let summary = s.summary().await;
    assert!(summary.clean);
    assert_eq!(
        summary.ending,
        Some(Ending::Gateway {
            reason: "going away"
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_message_that_never_ends_holds_the_drain_only_until_the_close_deadline() {
    let gateway = Beacon::new();
    let mut s = start_with(
        rules(Duration::from_secs(5), Rules::default()),
        drain_signal(&gateway, None, None, None),
        NO_JITTER,
        64 * 1024,
    );
    s.upstream.send(false, TEXT, b"never finished").await;
    assert!(!s.client.frame().await.fin);
    gateway.set_draining(true);
    assert_eq!(s.upstream.expect_close().await, (1001, "going away".into()));
    // The upstream neither finishes the message nor answers the close.
    assert_eq!(s.client.expect_close().await, (1001, "going away".into()));
    assert_eq!(s.elapsed(), Duration::from_secs(5));
    s.client.expect_end().await;
    s.upstream.expect_end().await;
    let summary = s.summary().await;
    assert!(!summary.clean);
    assert_eq!(
        summary.ending,
        Some(Ending::Gateway {
            reason: "going away"
        })
    );
}

// --- Closes and vanishing peers (no timers) ---------------------------------

#[tokio::test(start_paused = true)]
async fn closes_are_relayed_both_ways_and_data_flows_until_answered() {
    let mut s = start(rules(Duration::from_secs(1), Rules::default()));
    s.client.close(1000, "done").await;
    assert_eq!(s.upstream.expect_close().await, (1000, "done".into()));
    // Data the upstream sends before answering still reaches the client.
    s.upstream.text("last words").await;
    s.upstream.close(1000, "done").await;
    assert_eq!(s.client.frame().await.payload, b"last words");
    assert_eq!(s.client.expect_close().await, (1000, "done".into()));
    s.client.expect_end().await;
    s.upstream.expect_end().await;
    let summary = s.summary().await;
    assert!(summary.clean);
    assert_eq!(summary.upstream_to_client.frames, 1);
}

#[tokio::test(start_paused = true)]
async fn a_vanished_upstream_gets_the_client_1011_and_a_vanished_client_the_upstream_1001() {
    let mut s = start(rules(Duration::from_secs(1), Rules::default()));
    drop(s.upstream.io);
    assert_eq!(
        s.client.expect_close().await,
        (1011, "upstream went away".into())
    );
    s.client.close(1011, "").await;
    s.client.expect_end().await;
    let summary = s.session.await.unwrap();
    assert_eq!(
        summary.ending,
        Some(Ending::Vanished { by: Side::Upstream })
    );
    // "Connection lost without a close frame" is never clean.
    assert!(!summary.clean);
    assert_eq!(summary.upstream_close, LegClose::default());
    assert_eq!(
        summary.client_close,
        legs(Some((1011, "")), Some((1011, "upstream went away")))
    );

    let mut s = start(rules(Duration::from_secs(1), Rules::default()));
    drop(s.client.io);
    assert_eq!(
        s.upstream.expect_close().await,
        (1001, "client went away".into())
    );
    s.upstream.close(1001, "").await;
    s.upstream.expect_end().await;
    let summary = s.session.await.unwrap();
    assert_eq!(summary.ending, Some(Ending::Vanished { by: Side::Client }));
}

#[tokio::test(start_paused = true)]
async fn a_peer_vanishing_after_the_other_closed_gets_that_one_its_own_code() {
    let mut s = start(rules(Duration::from_secs(1), Rules::default()));
    s.client.close(4000, "leaving").await;
    assert_eq!(s.upstream.expect_close().await, (4000, "leaving".into()));
    let Running {
        mut client,
        upstream,
        t0,
        ..
    } = s;
    drop(upstream);
    assert_eq!(client.expect_close().await, (4000, String::new()));
    assert_eq!(t0.elapsed(), Duration::ZERO, "no deadline waited for");
    client.expect_end().await;
}

#[tokio::test(start_paused = true)]
async fn a_protocol_violation_closes_the_offender_with_1002_and_its_peer_with_1001() {
    let mut s = start(rules(Duration::from_secs(1), Rules::default()));
    // A client frame without a mask.
    s.client
        .io
        .write_all(&[0x81, 0x02, b'h', b'i'])
        .await
        .unwrap();
    assert_eq!(s.client.expect_close().await.0, close::PROTOCOL_ERROR);
    assert_eq!(
        s.upstream.expect_close().await,
        (1001, "client closed: protocol violation".into())
    );
    // The offender is not waited for.
    s.upstream.close(1001, "").await;
    s.upstream.expect_end().await;
    let summary = s.summary().await;
    assert!(matches!(
        summary.ending,
        Some(Ending::Violation {
            by: Side::Client,
            code: 1002,
            ..
        })
    ));
    assert!(!summary.clean, "the offender is not waited for");
    assert_eq!(
        summary.client_close,
        legs(None, Some((1002, "client frame not masked")))
    );
    assert_eq!(
        summary.upstream_close,
        legs(
            Some((1001, "")),
            Some((1001, "client closed: protocol violation"))
        )
    );
}

// --- Admission's gate (src/relay/gate.rs) --------------------------------

fn client_rate(per_second: u32, burst: u32, action: RateAction) -> Option<RateSpec> {
    Some(RateSpec {
        frames: Some(
            Quota::per_second(NonZeroU32::new(per_second).unwrap())
                .allow_burst(NonZeroU32::new(burst).unwrap()),
        ),
        bytes: None,
        action,
    })
}

#[tokio::test(start_paused = true)]
async fn a_throttled_client_is_not_taken_for_dead() {
    // Pong timeout 200 ms, while paying off six frames at 4 a second takes
    // over a second: the client is not read meanwhile, so its pongs are not
    // either, and it must not be declared dead.
    let events = Arc::new(Events::default());
    let gate = Gate::new(
        client_rate(4, 1, RateAction::Throttle),
        None,
        events.clone(),
    )
    .unwrap();
    let mut s = start_gated(
        rules(
            Duration::from_secs(1),
            Rules {
                client: keepalive(100 * MS, 200 * MS),
                ..Rules::default()
            },
        ),
        gate,
    );
    for i in 0..6 {
        s.client.text(&format!("slow {i}")).await;
    }
    for i in 0..6 {
        assert_eq!(
            s.upstream.frame().await.payload,
            format!("slow {i}").as_bytes()
        );
    }
    assert!(events.throttled.load(Ordering::Relaxed) > 0);
    s.client.text("still here").await;
    // Relayed once the debt is paid (five frames over a burst of one, at
    // 250 ms each), the session never closed on the way.
    assert_eq!(s.upstream.frame().await.payload, b"still here");
    assert!(s.elapsed() >= 1250 * MS, "{:?}", s.elapsed());
    assert!(!s.session.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_client_over_a_close_rate_gets_1008_and_the_upstream_1001() {
    let events = Arc::new(Events::default());
    let gate = Gate::new(client_rate(5, 5, RateAction::Close), None, events.clone()).unwrap();
    let mut s = start_gated(rules(Duration::from_secs(1), Rules::default()), gate);
    for i in 0..6 {
        s.client.text(&format!("m{i}")).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(
        s.client.expect_close().await,
        (1008, "message rate exceeded".into())
    );
    // The five within the rate went through; the sixth did not.
    for i in 0..5 {
        assert_eq!(s.upstream.frame().await.payload, format!("m{i}").as_bytes());
    }
    assert_eq!(
        s.upstream.expect_close().await,
        (1001, "client closed by policy".into())
    );
    assert_eq!(events.rate_closed.load(Ordering::Relaxed), 1);
    s.upstream.close(1001, "").await;
    s.upstream.expect_end().await;
    let summary = s.summary().await;
    assert_eq!(
        summary.ending,
        Some(Ending::Violation {
            by: Side::Client,
            code: 1008,
            reason: "message rate exceeded"
        })
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_closes_the_client_with_4001() {
    let events = Arc::new(Events::default());
    let expires = SystemTime::now() + Duration::from_secs(2);
    let gate = Gate::new(None, Some(expires), events.clone()).unwrap();
    let mut s = start_gated(rules(Duration::from_secs(1), Rules::default()), gate);
    s.client.text("still valid").await;
    assert_eq!(s.upstream.frame().await.payload, b"still valid");
    assert_eq!(
        s.client.expect_close().await,
        (4001, "token expired".into())
    );
    // The gate turns the wall-clock expiry into a tokio deadline when it is
    // made, so a few real microseconds may have passed since.
    let at = s.elapsed();
    assert!(at > 1990 * MS && at <= Duration::from_secs(2), "{at:?}");
    assert_eq!(
        s.upstream.expect_close().await,
        (1001, "client closed by policy".into())
    );
    assert_eq!(events.expired.load(Ordering::Relaxed), 1);
}

// --- Traffic ----------------------------------------------------------------

/// Polls `traffic` every 10 ms of the paused clock until `frames` reads
/// `want`; returns how long that took.
async fn published(traffic: &Traffic, want: [u64; 2]) -> Duration {
    let from = Instant::now();
    while traffic.frames() != want {
        assert!(
            Instant::now() - from <= PUBLISH_EVERY + 10 * MS,
            "{want:?} not published within {PUBLISH_EVERY:?}: {:?}",
            traffic.frames()
        );
        tokio::time::sleep(10 * MS).await;
    }
    Instant::now() - from
}

#[tokio::test(start_paused = true)]
async fn an_open_session_publishes_its_traffic_within_a_second_even_once_quiet() {
    let traffic = Arc::new(Traffic::default());
    let mut s = start_counted(
        rules(Duration::from_secs(1), Rules::default()),
        traffic.clone(),
    );
    s.client.text("hello").await;
    assert_eq!(s.upstream.frame().await.payload, b"hello");
    s.upstream.text("hi").await;
    assert_eq!(s.client.frame().await.payload, b"hi");
    // Both legs now quiet: the session's own wake publishes, a second
    // after it first saw the traffic, not before.
    let took = published(&traffic, [1, 1]).await;
    assert!(took >= PUBLISH_EVERY - 10 * MS, "published after {took:?}");
    assert_eq!(traffic.bytes(), [5, 2]);

    // Talking on: every 100 ms for 3 s. Each publish adds what came since
    // the last, at most one a second.
    let mut changes = Vec::new();
    let mut last = traffic.frames();
    for _ in 0..30 {
        s.client.text("tick").await;
        assert_eq!(s.upstream.frame().await.payload, b"tick");
        tokio::time::sleep(100 * MS).await;
        if traffic.frames() != last {
            last = traffic.frames();
            changes.push(Instant::now());
        }
    }
    assert!(changes.len() >= 2, "published while talking: {changes:?}");
    for w in changes.windows(2) {
        assert!(w[1] - w[0] >= PUBLISH_EVERY, "{changes:?}");
    }
    // Quiet again: the rest is published within a second, the session
    // still open.
    published(&traffic, [31, 1]).await;
    assert_eq!(traffic.bytes(), [5 + 30 * 4, 2]);

    // A message just before the end: published with the session's last
    // delta, and the totals are the summary's.
    s.upstream.text("bye").await;
    assert_eq!(s.client.frame().await.payload, b"bye");
    s.client.close(1000, "").await;
    assert_eq!(s.upstream.expect_close().await.0, 1000);
    s.upstream.close(1000, "").await;
    assert_eq!(s.client.expect_close().await.0, 1000);
    s.client.expect_end().await;
    s.upstream.expect_end().await;
    let summary = s.summary().await;
    let (up, down) = (summary.client_to_upstream, summary.upstream_to_client);
    assert_eq!((up.frames, down.frames), (31, 2));
    assert_eq!(traffic.frames(), [up.frames, down.frames]);
    assert_eq!(traffic.bytes(), [up.bytes, down.bytes]);
}

#[tokio::test(start_paused = true)]
async fn the_sessions_of_a_gateway_add_up_in_one_traffic() {
    let traffic = Arc::new(Traffic::default());
    let rules = rules(Duration::from_secs(1), Rules::default());
    let (mut a, mut b) = (
        start_counted(rules, traffic.clone()),
        start_counted(rules, traffic.clone()),
    );
    a.client.text("one").await;
    assert_eq!(a.upstream.frame().await.payload, b"one");
    b.upstream.text("three").await;
    assert_eq!(b.client.frame().await.payload, b"three");
    published(&traffic, [1, 1]).await;
    assert_eq!(traffic.bytes(), [3, 5]);
    for s in [&mut a, &mut b] {
        s.client.close(1000, "").await;
        s.upstream.expect_close().await;
        s.upstream.close(1000, "").await;
        s.client.expect_close().await;
    }
    a.summary().await;
    b.summary().await;
    assert_eq!((traffic.frames(), traffic.bytes()), ([1, 1], [3, 5]));
}

// --- Shape ------------------------------------------------------------------

/// The phase and leg states add nothing to a session's size (the README's
/// per-connection memory): before them it was 888 bytes with the gateway's
/// stream type, each leg 240 (x86_64).
#[test]
#[cfg(target_pointer_width = "64")]
fn the_state_enums_do_not_grow_a_session() {
    use crate::stream::Stream;
    let session = std::mem::size_of::<Session<Stream, Stream>>();
    let leg = std::mem::size_of::<Leg<Stream>>();
    eprintln!(
        "size_of: Session<Stream, Stream> = {session}, Leg<Stream> = {leg}, State = {}, Phase = {}, LegState = {}",
        std::mem::size_of::<State>(),
        std::mem::size_of::<Phase>(),
        std::mem::size_of::<LegState>(),
    );
    // Since then each leg records its closes for the access log: a thin
    // box in the leg and one in its decoder, 8 bytes each. And the session
    // publishes its traffic while open: the `Traffic` pointer, the counts
    // last published (32) and when the next publish is due (16).
    assert!(session <= 888 + 32 + 56, "{session}");
    assert!(leg <= 240 + 16, "{leg}");
}

/// A leg's closes as the summary reports them: (code, reason) it sent and received.
fn legs(sent: Option<(u16, &str)>, received: Option<(u16, &str)>) -> LegClose {
    let frame = |(code, reason): (u16, &str)| CloseFrame {
        code,
        reason: reason.to_owned().into(),
    };
    LegClose {
        sent: sent.map(frame),
        received: received.map(frame),
    }
}

/// `LIFECYCLE.md` names every state and event, so it cannot silently fall
/// behind the code. The `match`es are exhaustive, so a new variant does not
/// compile until it is given a name here (then add a sample to `names`).
#[test]
fn lifecycle_md_names_every_variant() {
    let leg = |s| match s {
        LegState::Open => "LegState::Open",
        LegState::CloseSent => "LegState::CloseSent",
        LegState::CloseReceived(_) => "LegState::CloseReceived",
        LegState::Closed => "LegState::Closed",
        LegState::Gone => "LegState::Gone",
    };
    let phase = |p| match p {
        Phase::Open { .. } => "Phase::Open",
        Phase::Draining(_) => "Phase::Draining",
        Phase::Closing(_) => "Phase::Closing",
        Phase::Lingering(_) => "Phase::Lingering",
    };
    let event = |e| match e {
        Event::CloseReceived(_) => "Event::CloseReceived",
        Event::Violation(_) => "Event::Violation",
        Event::Vanished => "Event::Vanished",
        Event::Unresponsive => "Event::Unresponsive",
    };
    let due = |d| match d {
        Due::Ping(..) => "Due::Ping",
        Due::Dead(_) => "Due::Dead",
        Due::Idle => "Due::Idle",
        Due::Lifetime => "Due::Lifetime",
        Due::Drain(_) => "Due::Drain",
        Due::Publish => "Due::Publish",
    };
    let ending = Ending::Gateway { reason: "" };
    let verdict = close::peer_of_vanished(Side::Client);
    let names = [
        leg(LegState::Open),
        leg(LegState::CloseSent),
        leg(LegState::CloseReceived(None)),
        leg(LegState::Closed),
        leg(LegState::Gone),
        phase(Phase::Open { armed: None }),
        phase(Phase::Draining(DrainBy::Gateway)),
        phase(Phase::Closing(ending)),
        phase(Phase::Lingering(ending)),
        event(Event::CloseReceived(None)),
        event(Event::Violation(verdict)),
        event(Event::Vanished),
        event(Event::Unresponsive),
        due(Due::Ping(Side::Client, 0)),
        due(Due::Dead(Side::Client)),
        due(Due::Idle),
        due(Due::Lifetime),
        due(Due::Drain(DrainBy::Server)),
        due(Due::Publish),
    ];
    let doc = include_str!("LIFECYCLE.md");
    for name in names {
        assert!(
            doc.contains(&format!("`{name}")),
            "LIFECYCLE.md does not name `{name}`"
        );
    }
}
