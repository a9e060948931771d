//! The answer to a request the gateway refuses: a status, a one-line
//! `text/plain` body that says what to fix, and the headers that tell the
//! client what to do next.

use http::{header, HeaderMap, HeaderValue, StatusCode};

use super::head;

/// Why a request was refused, chosen where the refusal is decided: the
/// metrics label (`framegate_refusals_total{reason}`), which the status
/// alone cannot give (a 403 for the Origin and one for a claim, a 429 per
/// address and one per user). A small fixed set, so a bounded label; the
/// answer's `message` says the same to a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A malformed request head or body framing, or an upgrade request
    /// missing what RFC 6455 asks for (400).
    BadRequest,
    /// A missing, repeated or malformed `Host` or absolute-form authority (400).
    BadHost,
    /// A request target the path normaliser refuses: `..` above the root,
    /// encoded separators, control characters (400).
    BadTarget,
    /// A head, its header count or a request body over its limit (431, 413).
    TooLarge,
    /// No complete request head, or body, within its time (408).
    Timeout,
    /// No route for the host and path (404).
    NoRoute,
    /// A plain request, or a WebSocket version other than 13, where only
    /// WebSocket is served (426).
    UpgradeRequired,
    /// An upgrade by another method than GET (405).
    MethodNotAllowed,
    /// A transfer coding or `Expect` the proxy does not implement (501, 417).
    Unsupported,
    /// The route wants a token and none was sent (401).
    TokenMissing,
    /// The token's signature, algorithm, issuer, audience or claims are
    /// not valid for the route (401).
    TokenInvalid,
    /// The token's `exp` (plus leeway) has passed (401).
    TokenExpired,
    /// The keys to check tokens could not be fetched (503).
    TokenUnverifiable,
    /// The `Origin` is missing, repeated or not allowed (403).
    ForbiddenOrigin,
    /// A valid token without a required claim or scope (403).
    ForbiddenClaims,
    /// Over the route's handshake or request rate per client (429).
    RateLimited,
    /// Over `max_connections_per_ip` (429).
    LimitIp,
    /// Over `max_connections_per_subject` (429).
    LimitSubject,
    /// Over the route's `max_connections` (503).
    LimitRoute,
    /// Over the gateway's `[server] max_connections` (503).
    LimitGlobal,
    /// The gateway is shutting down (503).
    Draining,
    /// Every server of the upstream is down or draining: none was tried (503).
    NoServer,
    /// No server could be reached, or its connection broke (502).
    UpstreamUnreachable,
    /// A server did not connect or answer in time (504).
    UpstreamTimeout,
    /// TLS with a `wss://` server failed (502).
    UpstreamTls,
    /// A server's answer was no valid handshake or HTTP response (502).
    UpstreamInvalid,
    /// The backend refused the upgrade itself; its answer is passed on,
    /// whatever its status.
    UpstreamRefused,
}

impl Reason {
    /// The label value, snake_case.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadRequest => "bad_request",
            Reason::BadHost => "bad_host",
            Reason::BadTarget => "bad_target",
            Reason::TooLarge => "too_large",
            Reason::Timeout => "timeout",
            Reason::NoRoute => "no_route",
            Reason::UpgradeRequired => "upgrade_required",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::Unsupported => "unsupported",
            Reason::TokenMissing => "token_missing",
            Reason::TokenInvalid => "token_invalid",
            Reason::TokenExpired => "token_expired",
            Reason::TokenUnverifiable => "token_unverifiable",
            Reason::ForbiddenOrigin => "forbidden_origin",
            Reason::ForbiddenClaims => "forbidden_claims",
            Reason::RateLimited => "rate_limited",
            Reason::LimitIp => "limit_ip",
            Reason::LimitSubject => "limit_subject",
            Reason::LimitRoute => "limit_route",
            Reason::LimitGlobal => "limit_global",
            Reason::Draining => "draining",
            Reason::NoServer => "no_server",
            Reason::UpstreamUnreachable => "upstream_unreachable",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamTls => "upstream_tls",
            Reason::UpstreamInvalid => "upstream_invalid",
            Reason::UpstreamRefused => "upstream_refused",
        }
    }
}

/// A request the gateway will not upgrade, and what it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: StatusCode,
    /// Why, as the metrics label it.
    pub reason: Reason,
    pub message: String,
    /// Extra answer headers that tell the client what to do next
    /// (`Retry-After`, `WWW-Authenticate`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    /// A backend's own answer, passed on as it is (its end-to-end headers
    /// are `headers`); `message` then only describes it for the log.
    pub body: Option<Vec<u8>>,
}

impl Reject {
    pub fn new(status: StatusCode, reason: Reason, message: impl Into<String>) -> Self {
        Reject {
            status,
            reason,
            message: message.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// A backend's refusal, passed on: its status, its end-to-end headers
    /// and its body.
    pub fn passed_on(status: StatusCode, headers: &HeaderMap, body: Vec<u8>) -> Self {
        Reject {
            status,
            reason: Reason::UpstreamRefused,
            message: "the upstream's own answer".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            body: Some(body),
        }
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The answer's headers: what the status calls for, plus any added.
    pub fn answer_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 4);
        for (n, v) in &self.headers {
            headers.append(n.clone(), v.clone());
        }
        if self.body.is_some() {
            return headers;
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self.status {
            StatusCode::UPGRADE_REQUIRED => {
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            _ => {}
        }
        headers
    }

    /// The answer on the wire, the message as a one-line body; unless
    /// `keep_alive`, it says the connection closes after it.
    pub fn encode(&self, keep_alive: bool) -> Vec<u8> {
        let line = format!("{}\n", self.message);
        let body = self.body.as_deref().unwrap_or(line.as_bytes());
        let mut headers = self.answer_headers();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        if !keep_alive {
            let close = match self.status {
                StatusCode::UPGRADE_REQUIRED if self.body.is_none() => "upgrade, close",
                _ => "close",
            };
            headers.insert(header::CONNECTION, HeaderValue::from_static(close));
        }
        head::encode_response(self.status, &headers, body)
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    impl Reason {
        /// Every reason, in declaration order (`UpstreamRefused` is the last).
        pub const ALL: [Reason; 27] = [
            Reason::BadRequest,
            Reason::BadHost,
            Reason::BadTarget,
            Reason::TooLarge,
            Reason::Timeout,
            Reason::NoRoute,
            Reason::UpgradeRequired,
            Reason::MethodNotAllowed,
            Reason::Unsupported,
            Reason::TokenMissing,
            Reason::TokenInvalid,
            Reason::TokenExpired,
            Reason::TokenUnverifiable,
            Reason::ForbiddenOrigin,
            Reason::ForbiddenClaims,
            Reason::RateLimited,
            Reason::LimitIp,
            Reason::LimitSubject,
            Reason::LimitRoute,
            Reason::LimitGlobal,
            Reason::Draining,
            Reason::NoServer,
            Reason::UpstreamUnreachable,
            Reason::UpstreamTimeout,
            Reason::UpstreamTls,
            Reason::UpstreamInvalid,
            Reason::UpstreamRefused,
        ];
    }

    #[test]
    fn every_reason_has_its_own_snake_case_label_and_the_readme_lists_it() {
        // The enum's variants, counted in this file's source: a variant
        // added anywhere (after the last one too) and not to `ALL` fails.
        let source = include_str!("reject.rs");
        let body = &source[source.find("pub enum Reason {").unwrap()..];
        let body = &body[..body.find("\n}").unwrap()];
        let variants = body
            .lines()
            .map(str::trim)
            .filter(|l| l.ends_with(',') && l.starts_with(|c: char| c.is_ascii_uppercase()))
            .count();
        assert_eq!(variants, Reason::ALL.len(), "a variant is missing from ALL");
        let readme = include_str!("../../README.md");
        let mut labels = Vec::new();
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "{reason:?} out of order");
            let label = reason.as_str();
            assert!(
                label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
            assert!(
                readme.contains(&format!("`{label}`")),
                "README.md does not list `{label}`"
            );
            labels.push(label);
        }
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len(), "a label used twice");
    }
}
