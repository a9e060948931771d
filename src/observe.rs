//! Metrics: one [`Metrics`] per gateway, kept across reloads, served by the
//! admin listener as Prometheus text (`prometheus-client`).
//!
//! Every label set is bounded by the config or by an enum: route labels,
//! upstream groups and server labels as configured, status classes, refusal
//! reasons, sides, close-code buckets. Nothing is labelled by client IP or
//! by path.
//!
//! Cost on the data path: nothing per frame. A session's frames and bytes
//! are counted in the relay's own `Counts` and published to the relay's
//! [`Traffic`] about once a second while it runs and when it ends; the
//! `frames` and `bytes` families read that at scrape time. The rest of a
//! session's record (the one the access log gets) is added once, when it
//! ends. A route's handles are resolved when its config generation is built
//! ([`Metrics::route`]), so an upgrade touches a few atomics and hashes no
//! label set; a session end hashes one, its close code's (side and code
//! bucket, under the family's read lock: once per session, never per
//! frame). A refusal looks its counter up by its status and reason, a plain
//! request by its status class (an array index).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::Histogram,
        MetricType, TypedMetric,
    },
    registry::Registry,
};

use crate::proto::{frame::Side, reject::Reason};
use crate::relay::{gate, Ending, Summary, Traffic};

/// The gateway's metrics. Families are registered once, at start.
pub struct Metrics {
    registry: Registry,
    sessions_open: Family<RouteLabels, Gauge>,
    sessions_total: Family<OutcomeLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    /// The refusal handles by status and reason, for the status page's
    /// table (a family cannot be walked). Bounded by the statuses a refusal
    /// can have times the reasons.
    refused: Mutex<BTreeMap<(u16, Reason), Counter>>,
    close_codes: Family<CloseLabels, Counter>,
    upgrade_seconds: Histogram,
    connect_seconds: Histogram,
    upstream_handshake_seconds: Histogram,
    http_seconds: Histogram,
    /// Set from the health registry at each scrape.
    pub(crate) server_up: Family<ServerLabels, Gauge>,
    pub(crate) server_draining: Family<ServerLabels, Gauge>,
    pub(crate) server_sessions: Family<ServerLabels, Gauge>,
    pub(crate) server_opened: Family<ServerLabels, Counter>,
    /// Set from the session tracker at each scrape.
    pub(crate) draining: Gauge,
    pub(crate) drain_remaining: Gauge,
    /// Brought up at each scrape to admission's event counts (admin.rs).
    pub(crate) throttles: Counter,
    pub(crate) expiry_closes: Counter,
    /// Handles by route label, for the status page; filled on the cold
    /// path (a config generation being built), never pruned below the
    /// routes ever configured, which the config bounds.
    routes: Mutex<BTreeMap<String, RouteMetrics>>,
    /// The pre-resolved handles of the ping RTT, pong timeout and
    /// rate-limit families (registered, held only here).
    hot: Hot,
    /// Frames and bytes each way, which sessions publish to while they run
    /// (the `frames` and `bytes` families read it).
    traffic: Arc<Traffic>,
}

/// Handles resolved once so that a session end hashes nothing.
struct Hot {
    /// Indexed by [`side`].
    ping_rtt: [Histogram; 2],
    pong_timeouts: [Counter; 2],
    rate_closes: [Counter; 2],
    /// Indexed by [`class`]: a request's count hashes no label set.
    http: [Counter; 5],
    /// The RTTs again, for the status page's percentiles:
    /// prometheus-client does not let its histograms' buckets be read.
    rtt_buckets: [Buckets; 2],
}

/// One route's handles, held by the route: the session path increments
/// these directly.
#[derive(Debug, Clone, Default)]
pub struct RouteMetrics {
    open: Gauge,
    /// Indexed by [`Outcome`].
    outcomes: [Counter; Outcome::ALL.len()],
}

impl RouteMetrics {
    /// Sessions of this route open now.
    pub fn open(&self) -> i64 {
        self.open.get()
    }

    /// Sessions of this route started since start (ended and open).
    pub fn started(&self) -> u64 {
        self.outcomes.iter().map(Counter::get).sum::<u64>() + self.open.get().max(0) as u64
    }

    /// Counts a session as open until the guard drops.
    pub fn opened(&self) -> OpenSession {
        self.open.inc();
        OpenSession(self.open.clone())
    }
}

/// Counts one open session on its route; every way out releases it.
pub struct OpenSession(Gauge);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How a session ended, as a bounded label (the access log's `closed_by`
/// and ending, folded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    closed_by_client,
    closed_by_upstream,
    violation,
    vanished,
    unresponsive,
    gateway,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::closed_by_client,
        Outcome::closed_by_upstream,
        Outcome::violation,
        Outcome::vanished,
        Outcome::unresponsive,
        Outcome::gateway,
    ];

    fn of(ending: Option<Ending>) -> Outcome {
        match ending {
            Some(Ending::Closed {
                by: Side::Client, ..
            }) => Outcome::closed_by_client,
            Some(Ending::Closed {
                by: Side::Upstream, ..
            }) => Outcome::closed_by_upstream,
            Some(Ending::Violation { .. }) => Outcome::violation,
            Some(Ending::Vanished { .. }) => Outcome::vanished,
            Some(Ending::Unresponsive { .. }) => Outcome::unresponsive,
            Some(Ending::Gateway { .. }) | None => Outcome::gateway,
        }
    }
}

/// The refusal reason as a label value: the reason names itself
/// ([`Reason::as_str`]).
impl EncodeLabelValue for Reason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// The status classes, as labelled; [`class`] indexes them.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// `status`'s index in [`CLASSES`] (anything else counts as `5xx`).
fn class(status: u16) -> usize {
    match status / 100 {
        c @ 1..=4 => usize::from(c) - 1,
        _ => 4,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    /// Client to upstream.
    up,
    /// Upstream to client.
    down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SideLabel {
    client,
    upstream,
    gateway,
}

fn side(s: Side) -> SideLabel {
    match s {
        Side::Client => SideLabel::client,
        Side::Upstream => SideLabel::upstream,
    }
}

fn index(s: Side) -> usize {
    match s {
        Side::Client => 0,
        Side::Upstream => 1,
    }
}

/// A close code as a bounded label: the codes RFC 6455 and the IANA
/// registry define (1000-1015) as themselves, the rest by range.
pub fn code_bucket(code: Option<u16>) -> &'static str {
    const NAMED: [&str; 16] = [
        "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010",
        "1011", "1012", "1013", "1014", "1015",
    ];
    match code {
        None => "none",
        Some(c @ 1000..=1015) => NAMED[usize::from(c - 1000)],
        Some(3000..=3999) => "3xxx",
        Some(4000..=4999) => "4xxx",
        Some(_) => "other",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    route: String,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    status: u16,
    reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CloseLabels {
    side: SideLabel,
    code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SideLabels {
    side: SideLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ServerLabels {
    pub upstream: String,
    pub server: String,
}

/// Seconds, 1 ms to ~33 s: upgrades, requests, round trips.
fn latency() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 16,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("framegate");
        let sessions_open = Family::<RouteLabels, Gauge>::default();
        r.register(
            "sessions_open",
            "WebSocket sessions open, by route",
            sessions_open.clone(),
        );
        let sessions_total = Family::<OutcomeLabels, Counter>::default();
        r.register(
            "sessions",
            "WebSocket sessions ended, by route and outcome",
            sessions_total.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        r.register(
            "refusals",
            "Requests and upgrades refused by the gateway, by status and reason",
            refusals.clone(),
        );
        let traffic = Arc::new(Traffic::default());
        r.register(
            "frames",
            "WebSocket data frames relayed, by direction (open sessions within about a second)",
            Relayed(traffic.clone(), Traffic::frames),
        );
        r.register(
            "bytes",
            "WebSocket payload bytes relayed, by direction (open sessions within about a second)",
            Relayed(traffic.clone(), Traffic::bytes),
        );
        let close_codes = Family::<CloseLabels, Counter>::default();
        r.register(
            "close_codes",
            "Sessions ended, by who closed first and the close code",
            close_codes.clone(),
        );
        let ping_rtt =
            Family::<SideLabels, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        r.register(
            "ping_rtt_seconds",
            "Last keepalive ping round trip of each session, by leg",
            ping_rtt.clone(),
        );
        let pong_timeouts = Family::<SideLabels, Counter>::default();
        r.register(
            "pong_timeouts",
            "Sessions closed because a leg answered no ping in time",
            pong_timeouts.clone(),
        );
        let rate_closes = Family::<SideLabels, Counter>::default();
        r.register(
            "rate_limit_closes",
            "Sessions closed for exceeding a message or byte rate, by leg",
            rate_closes.clone(),
        );
        let throttles = Counter::default();
        r.register(
            "rate_limit_throttles",
            "Times a leg was paused for sending faster than its message or byte rate",
            throttles.clone(),
        );
        let expiry_closes = Counter::default();
        r.register(
            "token_expiry_closes",
            "Sessions closed because the client's token expired (close_on_expiry)",
            expiry_closes.clone(),
        );
        let upgrade_seconds = latency();
        r.register("upgrade_seconds", "From a complete upgrade request to the upstream's 101 (admission, connect, upstream handshake)", upgrade_seconds.clone());
        let connect_seconds = latency();
        r.register(
            "upstream_connect_seconds",
            "TCP connect (and TLS for wss://) to the server that took a session",
            connect_seconds.clone(),
        );
        let upstream_handshake_seconds = latency();
        r.register(
            "upstream_handshake_seconds",
            "From connected to the upstream's 101, at the server that took a session",
            upstream_handshake_seconds.clone(),
        );
        let http_requests = Family::<ClassLabels, Counter>::default();
        r.register(
            "http_requests",
            "Plain HTTP requests proxied, by status class",
            http_requests.clone(),
        );
        let http_seconds = latency();
        r.register(
            "http_request_seconds",
            "Plain HTTP requests proxied, from request to the end of the answer",
            http_seconds.clone(),
        );
        let server_up = Family::<ServerLabels, Gauge>::default();
        r.register(
            "upstream_server_up",
            "1 when a server may take sessions by health (probes and passive checks)",
            server_up.clone(),
        );
        let server_draining = Family::<ServerLabels, Gauge>::default();
        r.register(
            "upstream_server_draining",
            "1 while a server drains (config, admin, or removed by a reload)",
            server_draining.clone(),
        );
        let server_sessions = Family::<ServerLabels, Gauge>::default();
        r.register(
            "upstream_server_sessions",
            "Live sessions and in-flight requests on a server",
            server_sessions.clone(),
        );
        let server_opened = Family::<ServerLabels, Counter>::default();
        r.register(
            "upstream_server_sessions_opened",
            "WebSocket sessions opened on a server since it was first listed",
            server_opened.clone(),
        );
        let draining = Gauge::default();
        r.register(
            "draining",
            "1 once the gateway drains (SIGTERM/SIGINT)",
            draining.clone(),
        );
        let drain_remaining = Gauge::default();
        r.register(
            "drain_sessions_remaining",
            "Sessions still open during the gateway's drain",
            drain_remaining.clone(),
        );
        let sides = |s: SideLabel| SideLabels { side: s };
        let hot = Hot {
            ping_rtt: [
                ping_rtt.get_or_create_owned(&sides(SideLabel::client)),
                ping_rtt.get_or_create_owned(&sides(SideLabel::upstream)),
            ],
            pong_timeouts: [
                pong_timeouts.get_or_create_owned(&sides(SideLabel::client)),
                pong_timeouts.get_or_create_owned(&sides(SideLabel::upstream)),
            ],
            rate_closes: [
                rate_closes.get_or_create_owned(&sides(SideLabel::client)),
                rate_closes.get_or_create_owned(&sides(SideLabel::upstream)),
            ],
            http: CLASSES.map(|class| http_requests.get_or_create_owned(&ClassLabels { class })),
            rtt_buckets: Default::default(),
        };
        Metrics {
            registry: r,
            sessions_open,
            sessions_total,
            refusals,
            refused: Mutex::default(),
            close_codes,
            upgrade_seconds,
            connect_seconds,
            upstream_handshake_seconds,
            http_seconds,
            server_up,
            server_draining,
            server_sessions,
            server_opened,
            draining,
            drain_remaining,
            throttles,
            expiry_closes,
            routes: Mutex::default(),
            hot,
            traffic,
        }
    }

    /// Where sessions publish their frames and bytes
    /// ([`Session::counted_in`](crate::relay::Session::counted_in)).
    pub fn traffic(&self) -> Arc<Traffic> {
        self.traffic.clone()
    }

    /// The handles of route `label` (cold path: a generation being built).
    /// A route kept by a reload keeps its handles, so its counts go on.
    pub fn route(&self, label: &str) -> RouteMetrics {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .entry(label.to_owned())
            .or_insert_with(|| RouteMetrics {
                open: self.sessions_open.get_or_create_owned(&RouteLabels {
                    route: label.to_owned(),
                }),
                outcomes: Outcome::ALL.map(|outcome| {
                    self.sessions_total.get_or_create_owned(&OutcomeLabels {
                        route: label.to_owned(),
                        outcome,
                    })
                }),
            })
            .clone()
    }

    /// Every route's handles seen since start, by label.
    pub fn routes(&self) -> Vec<(String, RouteMetrics)> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// A session's end: the record the access log also gets (its frames
    /// and bytes the session published itself).
    pub fn session_ended(&self, route: &RouteMetrics, s: &Summary) {
        let outcome = Outcome::of(s.ending);
        route.outcomes[outcome as usize].inc();
        let h = &self.hot;
        for (i, rtt) in [s.client_rtt, s.upstream_rtt].into_iter().enumerate() {
            if let Some(rtt) = rtt {
                h.ping_rtt[i].observe(rtt.as_secs_f64());
                h.rtt_buckets[i].observe(rtt);
            }
        }
        let (who, code) = match s.ending {
            Some(Ending::Closed { by, code }) => (side(by), code),
            Some(Ending::Violation { by, code, reason }) => {
                if [gate::MESSAGE_RATE_EXCEEDED, gate::BYTE_RATE_EXCEEDED].contains(&reason) {
                    h.rate_closes[index(by)].inc();
                }
                (side(by), Some(code))
            }
            Some(Ending::Vanished { by }) => (side(by), None),
            Some(Ending::Unresponsive { by }) => {
                h.pong_timeouts[index(by)].inc();
                (side(by), None)
            }
            // What the client was told: 1001 when the gateway goes away,
            // 1012 when its server drains or sheds it.
            Some(Ending::Gateway { .. }) => (
                SideLabel::gateway,
                s.client_close.received.as_ref().map(|c| c.code),
            ),
            None => (SideLabel::gateway, None),
        };
        // A session ends once: this label lookup is per session, not per frame.
        self.close_codes
            .get_or_create(&CloseLabels {
                side: who,
                code: code_bucket(code),
            })
            .inc();
    }

    /// A refusal: the gateway's own, or a backend's passed on
    /// ([`Reason::UpstreamRefused`], whatever its status).
    pub fn refused(&self, status: u16, reason: Reason) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused
            .entry((status, reason))
            .or_insert_with(|| {
                self.refusals
                    .get_or_create_owned(&RefusalLabels { status, reason })
            })
            .inc();
    }

    /// An upgrade that reached its upstream's 101, `took` after its request.
    pub fn upgraded(&self, took: Duration) {
        self.upgrade_seconds.observe(took.as_secs_f64());
    }

    /// The two steps at the server that took a session.
    pub fn upstream_took(&self, connect: Duration, handshake: Duration) {
        self.connect_seconds.observe(connect.as_secs_f64());
        self.upstream_handshake_seconds
            .observe(handshake.as_secs_f64());
    }

    /// A plain request proxied.
    pub fn http_request(&self, status: u16, took: Duration) {
        self.hot.http[class(status)].inc();
        self.http_seconds.observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Totals for the status page's rates and tables.
    pub fn totals(&self) -> Totals {
        let h = &self.hot;
        let mut close_codes = Vec::new();
        let mut refusals = Vec::new();
        let mut http = Vec::new();
        // prometheus-client has no iteration over a family; the bounded
        // label sets are walked instead.
        for who in [SideLabel::client, SideLabel::upstream, SideLabel::gateway] {
            for code in (1000..=1015)
                .map(Some)
                .chain([Some(3000), Some(4000), Some(0), None])
            {
                let key = CloseLabels {
                    side: who,
                    code: code_bucket(code),
                };
                if let Some(c) = self.close_codes.get(&key) {
                    close_codes.push((format!("{who:?}"), key.code, c.get()));
                }
            }
        }
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        for (&(status, reason), c) in refused.iter() {
            refusals.push((status, reason.as_str(), c.get()));
        }
        drop(refused);
        for (class, c) in CLASSES.iter().zip(&h.http) {
            if c.get() > 0 {
                http.push((class.to_string(), c.get()));
            }
        }
        let routes = self.routes();
        Totals {
            sessions_started: routes.iter().map(|(_, r)| r.started()).sum(),
            frames: self.traffic.frames(),
            bytes: self.traffic.bytes(),
            close_codes,
            refusals,
            http,
            pong_timeouts: [h.pong_timeouts[0].get(), h.pong_timeouts[1].get()],
            ping_rtt: [
                h.rtt_buckets[0].percentiles(),
                h.rtt_buckets[1].percentiles(),
            ],
        }
    }
}

/// The `frames` or `bytes` family: one [`Traffic`] reading, `[up, down]`,
/// taken at scrape time, by direction.
struct Relayed(Arc<Traffic>, fn(&Traffic) -> [u64; 2]);

impl std::fmt::Debug for Relayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Relayed").field(&(self.1)(&self.0)).finish()
    }
}

impl TypedMetric for Relayed {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Relayed {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let [up, down] = (self.1)(&self.0);
        for (direction, n) in [(Direction::up, up), (Direction::down, down)] {
            ConstCounter::new(n).encode(encoder.encode_family(&DirectionLabels { direction })?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Cumulative counts at one instant; the admin task keeps a ring of these
/// to compute rates.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub sessions_started: u64,
    /// `[up, down]`.
    pub frames: [u64; 2],
    pub bytes: [u64; 2],
    /// `(side, code bucket, count)`.
    pub close_codes: Vec<(String, &'static str, u64)>,
    /// `(status, reason, count)`.
    pub refusals: Vec<(u16, &'static str, u64)>,
    /// `(class, count)`.
    pub http: Vec<(String, u64)>,
    /// `[client, upstream]`.
    pub pong_timeouts: [u64; 2],
    /// `[client, upstream]`: p50, p90, p99 in seconds, from the histogram's
    /// buckets (each an upper bound); `None` before any sample.
    pub ping_rtt: [Option<[f64; 3]>; 2],
}

/// Counts by power-of-two millisecond bucket (1 ms up to ~33 s, and
/// above): enough for the status page's percentiles.
#[derive(Default)]
struct Buckets([AtomicU64; 17]);

impl Buckets {
    fn observe(&self, d: Duration) {
        let ms = d.as_millis().max(1) as u64;
        let i = (63 - ms.leading_zeros() as usize).min(16);
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// p50/p90/p99 in seconds, each the upper bound of the bucket it falls in.
    fn percentiles(&self) -> Option<[f64; 3]> {
        let counts: Vec<u64> = self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let at = |q: f64| {
            let want = (q * total as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= want {
                    return (2u64 << i) as f64 / 1000.0;
                }
            }
            f64::INFINITY
        };
        Some([at(0.5), at(0.9), at(0.99)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::{Counts, LegClose};

    fn ended(ending: Ending) -> Summary {
        Summary {
            ending: Some(ending),
            client_to_upstream: Counts::default(),
            upstream_to_client: Counts::default(),
            client_close: LegClose::default(),
            upstream_close: LegClose::default(),
            clean: false,
            client_rtt: None,
            upstream_rtt: None,
        }
    }

    #[test]
    fn rate_limit_closes_are_counted_by_the_gates_own_reasons() {
        let metrics = Metrics::new();
        let route = metrics.route("/");
        for reason in [gate::MESSAGE_RATE_EXCEEDED, gate::BYTE_RATE_EXCEEDED] {
            metrics.session_ended(
                &route,
                &ended(Ending::Violation {
                    by: Side::Client,
                    code: 1008,
                    reason,
                }),
            );
        }
        let other = Ending::Violation {
            by: Side::Client,
            code: 1009,
            reason: "message too big",
        };
        metrics.session_ended(&route, &ended(other));
        assert_eq!(metrics.hot.rate_closes[index(Side::Client)].get(), 2);
        assert_eq!(metrics.hot.rate_closes[index(Side::Upstream)].get(), 0);
    }
}
