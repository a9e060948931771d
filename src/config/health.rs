//! `[upstream.NAME]`'s health and draining keys: a server entry that may be
//! a table (`{ url = "ws://…", drain = true }`), passive ejection, active
//! probes (`health_check = { … }`) and `drain_window`; checked into
//! [`health::Settings`] with `file:line` errors.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{
    units::{Optional, Timeout},
    Checker,
};
use crate::upstream::health::{self, Passive, Probe, ProbeKind};

/// `health_check = { kind = "http", path = "/healthz", expect = 200, ... }`:
/// active probes of every server of the group, from the gateway (one task
/// per group, not per worker).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// `"tcp"` (the connection, and TLS for `wss://`, completes), `"http"`
    /// (`GET path` answered with `expect`) or `"websocket"` (an upgrade to
    /// `path` answered with 101).
    pub kind: Spanned<String>,
    /// The path probed by `http` and `websocket`; `/` when omitted.
    pub path: Option<Spanned<String>>,
    /// The status an `http` probe expects; 200 when omitted.
    pub expect: Option<Spanned<u16>>,
    /// Time between two rounds of probes.
    #[serde(default = "interval")]
    pub interval: Timeout,
    /// Bound on one probe, connect to answer; at most `interval`.
    #[serde(default = "timeout")]
    pub timeout: Timeout,
    /// Good probes in a row that bring a down server up.
    #[serde(default = "rise")]
    pub rise: Spanned<u32>,
    /// Failed probes in a row that take an up server down.
    #[serde(default = "fall")]
    pub fall: Spanned<u32>,
}

fn interval() -> Timeout {
    Timeout(Duration::from_secs(5))
}
fn timeout() -> Timeout {
    Timeout(Duration::from_secs(2))
}
fn rise() -> Spanned<u32> {
    Spanned::new(0..0, 2)
}
fn fall() -> Spanned<u32> {
    Spanned::new(0..0, 3)
}
pub fn drain_window() -> Optional {
    Optional(Some(Duration::from_secs(30)))
}
pub fn eject_after() -> u32 {
    Passive::default().eject_after
}
pub fn eject_backoff() -> Timeout {
    Timeout(Passive::default().backoff)
}
pub fn eject_backoff_max() -> Timeout {
    Timeout(Passive::default().backoff_max)
}

impl Checker<'_> {
    /// The group's health settings, or errors for what does not hold.
    pub(super) fn health(
        &mut self,
        name: &str,
        u: &super::file::UpstreamSection,
    ) -> health::Settings {
        let passive = Passive {
            eject_after: u.eject_after,
            backoff: u.eject_backoff.0,
            backoff_max: u.eject_backoff_max.0.max(u.eject_backoff.0),
        };
        let probe = u.health_check.as_ref().and_then(|h| self.probe(name, h));
        health::Settings {
            passive,
            probe,
            window: u.drain_window.0,
        }
    }

    fn probe(&mut self, name: &str, h: &Spanned<HealthCheckSection>) -> Option<Probe> {
        let c = h.get_ref();
        let path = c.path.as_ref().map(|p| p.get_ref().clone());
        if let Some(p) = &c.path {
            if !p.get_ref().starts_with('/') {
                self.err(
                    p,
                    format!("upstream `{name}`: health_check path must start with `/`"),
                );
                return None;
            }
        }
        let path = path.unwrap_or_else(|| "/".into());
        let kind = match c.kind.get_ref().as_str() {
            "tcp" => ProbeKind::Tcp,
            "http" => {
                let expect = c.expect.as_ref().map_or(200, |e| *e.get_ref());
                if !(100..=599).contains(&expect) {
                    self.err(
                        c.expect.as_ref().unwrap(),
                        "expect must be a status (100 to 599)",
                    );
                    return None;
                }
                ProbeKind::Http { path, expect }
            }
            "websocket" => ProbeKind::WebSocket { path },
            other => {
                self.err(
                    &c.kind,
                    format!("unknown health_check kind `{other}` (use \"tcp\", \"http\" or \"websocket\")"),
                );
                return None;
            }
        };
        if let (Some(e), false) = (&c.expect, matches!(kind, ProbeKind::Http { .. })) {
            self.err(e, "expect is for kind = \"http\" only");
            return None;
        }
        if let (Some(p), ProbeKind::Tcp) = (&c.path, &kind) {
            self.err(p, "a tcp health_check has no path");
            return None;
        }
        // A default is never 0, so a 0 was written and has a position.
        for (n, what) in [(&c.rise, "rise"), (&c.fall, "fall")] {
            if *n.get_ref() == 0 {
                self.err(n, format!("{what} must be at least 1"));
                return None;
            }
        }
        if c.timeout.0 > c.interval.0 {
            self.err(
                h,
                format!("upstream `{name}`: health_check timeout is longer than its interval"),
            );
            return None;
        }
        Some(Probe {
            kind,
            interval: c.interval.0,
            timeout: c.timeout.0,
            rise: *c.rise.get_ref(),
            fall: *c.fall.get_ref(),
        })
    }
}
