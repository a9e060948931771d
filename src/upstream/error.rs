//! Why reaching an upstream failed: what the log is told (the error's
//! text), what the client is told ([`UpstreamError::status`] and
//! [`UpstreamError::public_message`]), and whether another server may be
//! tried ([`UpstreamError::retry`]).

use std::{io, time::Duration};

use http::StatusCode;

use crate::proto::reject::Reason;

/// How far an attempt at one server had got when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Resolving the name and opening the TCP connection.
    Connect,
    /// The TLS handshake with a `wss://` server.
    Tls,
    /// Writing the upgrade request and reading the answer's head.
    Upgrade,
}

impl Phase {
    /// What the server failed to do in time, as the timeout's text says it.
    fn awaited(self) -> &'static str {
        match self {
            Phase::Connect => "accept the connection",
            Phase::Tls => "complete TLS",
            Phase::Upgrade => "answer the upgrade",
        }
    }
}

/// Whether the request may be tried again on another server, judged by
/// what the failed server may have seen (pingora's `RetryType`, decided by
/// where the error came from as its `ErrorSource` is).
///
/// The rule:
/// - Until the TCP connection and, for `wss://`, the TLS handshake are
///   complete, not one byte of the request has been written: whatever went
///   wrong (refused, unreachable, reset, timed out, a certificate the
///   server's name does not match), the server's application saw nothing,
///   and the request may go to another server whatever it is: [`Retry::Safe`].
/// - From the first byte of the upgrade request on, the application may
///   have seen it, whole or in part, and may have acted on it, whether it
///   then answered, broke the connection or went quiet: trying another
///   server repeats the request, which is harmless only for an idempotent
///   one: [`Retry::IfIdempotent`]. A WebSocket upgrade is a `GET`; whether
///   its side effects (a backend that registers a session on the upgrade)
///   make it idempotent enough is for the group's failover rule to decide
///   (see `Upstream::connect`), not for the error.
///
/// This says when a retry is *safe*, not when it is *worth it*: a timeout is
/// [`Retry::Safe`] at connect, yet whether to spend another connect
/// timeout on another server is the failover rule's call too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Nothing reached the server's application: any request may be tried
    /// on another server.
    Safe,
    /// The request was written, or partly written: only an idempotent
    /// request may be tried on another server.
    IfIdempotent,
}

impl Retry {
    /// Whether a request that is (or is not) idempotent may be tried again.
    pub fn allows(self, idempotent: bool) -> bool {
        match self {
            Retry::Safe => true,
            Retry::IfIdempotent => idempotent,
        }
    }
}

/// Why the upstream handshake failed; decides the client's status code.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// An I/O error or a closed connection: in TCP connect (the server
    /// could not be reached), or while the upgrade was under way (it was
    /// reached, then broke off before a complete answer).
    #[error("cannot reach {server}: {source}")]
    Unreachable {
        server: String,
        phase: Phase,
        source: io::Error,
    },
    /// TLS with a `wss://` server failed: its certificate was refused
    /// (unknown issuer, wrong name, not the pinned one), it refused ours, or
    /// it broke off the handshake. Kept apart from
    /// [`Unreachable`](Self::Unreachable) because the fix is in the
    /// certificates, not the network, and the log must say so. Like a
    /// failed connect it fails over and counts against the server's health.
    ///
    /// Mostly in [`Phase::Tls`]; but with TLS 1.3 a server checks the
    /// client's certificate only after the client has finished its side of
    /// the handshake, so a refused client certificate arrives as an alert
    /// on the first read, in [`Phase::Upgrade`] (see [`UpstreamError::broken`]).
    #[error("TLS with {server} failed: {source}")]
    Tls {
        server: String,
        phase: Phase,
        source: io::Error,
    },
    /// A phase did not finish within its limit.
    #[error("{server} did not {} within {limit:?}", .phase.awaited())]
    Timeout {
        server: String,
        phase: Phase,
        limit: Duration,
    },
    /// The server answered the upgrade with something other than 101.
    /// `answer` is what the client is given instead of a 502 of the
    /// gateway's own, so that "log in again on 401" and "back off on 429"
    /// work through it.
    #[error("{server} answered {status} to the upgrade")]
    Refused {
        server: String,
        status: StatusCode,
        answer: Box<Refusal>,
    },
    /// The server's answer was not a valid WebSocket handshake.
    #[error("{server} broke the handshake: {why}")]
    Invalid { server: String, why: String },
    /// Every server of the group is ejected, down by its probes, or
    /// draining: nothing was tried (see `health.rs`).
    #[error("no server of {upstream} is up")]
    AllDown { upstream: String, retry_after: u64 },
}

/// A server's refusal of an upgrade, as the client gets it.
#[derive(Debug, Default)]
pub struct Refusal {
    /// End-to-end headers (`WWW-Authenticate`, `Retry-After`, `Content-Type`...).
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl UpstreamError {
    pub(super) fn unreachable(server: &str, phase: Phase, source: io::Error) -> Self {
        UpstreamError::Unreachable {
            server: server.to_owned(),
            phase,
            source,
        }
    }

    /// The TLS handshake failed.
    pub(super) fn tls(server: &str, source: io::Error) -> Self {
        UpstreamError::Tls {
            server: server.to_owned(),
            phase: Phase::Tls,
            source,
        }
    }

    /// The connection broke after the handshake: a TLS error (an alert from
    /// the server, such as `CertificateRequired` for a missing client
    /// certificate under TLS 1.3) is reported as TLS failing, anything else
    /// as the server being unreachable.
    pub(super) fn broken(server: &str, phase: Phase, source: io::Error) -> Self {
        let tls = source
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>());
        match tls {
            true => UpstreamError::Tls {
                server: server.to_owned(),
                phase,
                source,
            },
            false => UpstreamError::unreachable(server, phase, source),
        }
    }

    pub(super) fn timeout(server: &str, phase: Phase, limit: Duration) -> Self {
        UpstreamError::Timeout {
            server: server.to_owned(),
            phase,
            limit,
        }
    }

    pub(super) fn invalid(server: &str, why: impl Into<String>) -> Self {
        UpstreamError::Invalid {
            server: server.to_owned(),
            why: why.into(),
        }
    }

    /// 504 for timeouts, 503 when no server is up, 502 for everything else.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::AllDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The one line the client is told; the details stay in the log.
    pub fn public_message(&self) -> &'static str {
        match self {
            UpstreamError::Unreachable { .. } => "bad gateway: upstream unreachable",
            UpstreamError::Tls { .. } => "bad gateway: TLS to the upstream failed",
            UpstreamError::Timeout { .. } => "gateway timeout: upstream did not answer in time",
            UpstreamError::Refused { .. } => "bad gateway: upstream refused the WebSocket upgrade",
            UpstreamError::Invalid { .. } => "bad gateway: upstream sent an invalid handshake",
            UpstreamError::AllDown { .. } => "service unavailable: no upstream server is up; retry",
        }
    }

    /// What the metrics call the refusal the client gets for this.
    pub fn reason(&self) -> Reason {
        match self {
            UpstreamError::Unreachable { .. } => Reason::UpstreamUnreachable,
            UpstreamError::Tls { .. } => Reason::UpstreamTls,
            UpstreamError::Timeout { .. } => Reason::UpstreamTimeout,
            UpstreamError::Refused { .. } => Reason::UpstreamRefused,
            UpstreamError::Invalid { .. } => Reason::UpstreamInvalid,
            UpstreamError::AllDown { .. } => Reason::NoServer,
        }
    }

    /// Seconds the client should wait before retrying (`Retry-After`), when
    /// the gateway knows: when no server is up.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            UpstreamError::AllDown { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// How far the attempt had got; an answer, valid or not, comes in
    /// [`Phase::Upgrade`].
    pub fn phase(&self) -> Phase {
        match self {
            UpstreamError::Unreachable { phase, .. }
            | UpstreamError::Tls { phase, .. }
            | UpstreamError::Timeout { phase, .. } => *phase,
            UpstreamError::Refused { .. } | UpstreamError::Invalid { .. } => Phase::Upgrade,
            // Nothing was tried.
            UpstreamError::AllDown { .. } => Phase::Connect,
        }
    }

    /// Whether the request may be tried on another server (see [`Retry`]
    /// for the rule): [`Retry::Safe`] before the upgrade request is
    /// written, [`Retry::IfIdempotent`] from then on.
    pub fn retry(&self) -> Retry {
        match self.phase() {
            Phase::Connect | Phase::Tls => Retry::Safe,
            Phase::Upgrade => Retry::IfIdempotent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "ws://10.0.0.5:8080";

    /// One error of each kind and phase, as the dialer and the handshake
    /// make them.
    fn every_error() -> Vec<UpstreamError> {
        let refused = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let limit = Duration::from_millis(1500);
        vec![
            UpstreamError::unreachable(S, Phase::Connect, refused()),
            UpstreamError::tls(S, io::Error::other("bad certificate")),
            UpstreamError::unreachable(S, Phase::Upgrade, io::ErrorKind::UnexpectedEof.into()),
            UpstreamError::timeout(S, Phase::Connect, limit),
            UpstreamError::timeout(S, Phase::Tls, limit),
            UpstreamError::timeout(S, Phase::Upgrade, limit),
            UpstreamError::Refused {
                server: S.into(),
                status: StatusCode::SERVICE_UNAVAILABLE,
                answer: Box::default(),
            },
            UpstreamError::invalid(S, "wrong or missing Sec-WebSocket-Accept"),
        ]
    }

    #[test]
    fn nothing_written_is_safe_anything_written_only_if_idempotent() {
        let retry: Vec<(String, Retry)> = every_error()
            .iter()
            .map(|e| (e.to_string(), e.retry()))
            .collect();
        use Retry::*;
        let expected = [
            Safe,
            Safe,
            IfIdempotent,
            Safe,
            Safe,
            IfIdempotent,
            IfIdempotent,
            IfIdempotent,
        ];
        for ((text, got), want) in retry.iter().zip(expected) {
            assert_eq!(*got, want, "{text}");
        }
    }

    #[test]
    fn an_answer_is_in_the_upgrade_phase() {
        let phases: Vec<Phase> = every_error().iter().map(UpstreamError::phase).collect();
        use Phase::*;
        assert_eq!(
            phases,
            [Connect, Tls, Upgrade, Connect, Tls, Upgrade, Upgrade, Upgrade]
        );
    }

    #[test]
    fn a_tls_error_after_the_handshake_is_tls_anything_else_unreachable() {
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        );
        let e = UpstreamError::broken(S, Phase::Upgrade, alert);
        assert!(matches!(e, UpstreamError::Tls { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("TLS with {S} failed: received fatal alert: CertificateRequired")
        );
        assert_eq!(
            e.public_message(),
            "bad gateway: TLS to the upstream failed"
        );
        assert_eq!(
            (e.phase(), e.retry()),
            (Phase::Upgrade, Retry::IfIdempotent)
        );
        let reset = UpstreamError::broken(S, Phase::Upgrade, io::ErrorKind::ConnectionReset.into());
        assert!(
            matches!(reset, UpstreamError::Unreachable { .. }),
            "{reset:?}"
        );
    }

    #[test]
    fn retry_allows() {
        assert!(Retry::Safe.allows(false));
        assert!(Retry::Safe.allows(true));
        assert!(!Retry::IfIdempotent.allows(false));
        assert!(Retry::IfIdempotent.allows(true));
    }

    #[test]
    fn statuses_and_public_messages() {
        let told: Vec<(u16, &str)> = every_error()
            .iter()
            .map(|e| (e.status().as_u16(), e.public_message()))
            .collect();
        let unreachable = (502, "bad gateway: upstream unreachable");
        let timeout = (504, "gateway timeout: upstream did not answer in time");
        assert_eq!(
            told,
            [
                unreachable,
                (502, "bad gateway: TLS to the upstream failed"),
                unreachable,
                timeout,
                timeout,
                timeout,
                (502, "bad gateway: upstream refused the WebSocket upgrade"),
                (502, "bad gateway: upstream sent an invalid handshake"),
            ]
        );
    }

    /// The log lines' text, which operators grep for.
    #[test]
    fn log_texts() {
        let texts: Vec<String> = every_error().iter().map(ToString::to_string).collect();
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused).to_string();
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof).to_string();
        assert_eq!(
            texts,
            [
                format!("cannot reach {S}: {refused}"),
                format!("TLS with {S} failed: bad certificate"),
                format!("cannot reach {S}: {eof}"),
                format!("{S} did not accept the connection within 1.5s"),
                format!("{S} did not complete TLS within 1.5s"),
                format!("{S} did not answer the upgrade within 1.5s"),
                format!("{S} answered 503 Service Unavailable to the upgrade"),
                format!("{S} broke the handshake: wrong or missing Sec-WebSocket-Accept"),
            ]
        );
    }
}
