//! RFC 6455 §4.2.1 checks on the client's upgrade request, and the answers.
//!
//! Pure functions over request parts: every refusal is a status and one
//! line of text that says what to fix.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode, Version};
use http_body_util::Full;

/// A request the gateway will not upgrade, and what it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: StatusCode,
    pub message: String,
    /// Extra answer headers that tell the client what to do next
    /// (`Retry-After`, `WWW-Authenticate`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Reject {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Reject {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The HTTP answer: the status and the message as a one-line body.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from(format!("{}\n", self.message))));
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.extend(self.headers.into_iter().map(|(n, v)| (Some(n), v)));
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
        resp
    }
}

/// The parts of a valid upgrade request the gateway needs later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Key`, for the client's `Sec-WebSocket-Accept`.
    pub key: HeaderValue,
    /// The subprotocols the client offered, in its order.
    pub protocols: Vec<String>,
}

/// Whether a comma-separated header contains `token` (case-insensitive).
pub fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks an upgrade request; `Err` says what to answer instead.
pub fn validate(method: &Method, version: Version, headers: &HeaderMap) -> Result<Upgrade, Reject> {
    use StatusCode as S;
    if !headers.contains_key(header::UPGRADE) {
        return Err(Reject::new(
            S::UPGRADE_REQUIRED,
            "this endpoint only serves WebSocket; send an Upgrade: websocket request",
        ));
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(Reject::new(
            S::BAD_REQUEST,
            "Upgrade header must be \"websocket\"",
        ));
    }
    if method != Method::GET {
        return Err(Reject::new(
            S::METHOD_NOT_ALLOWED,
            format!("a WebSocket upgrade must use GET, not {method}"),
        ));
    }
    if version < Version::HTTP_11 {
        return Err(Reject::new(
            S::BAD_REQUEST,
            "a WebSocket upgrade needs HTTP/1.1",
        ));
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(Reject::new(
            S::BAD_REQUEST,
            "Connection header must include \"Upgrade\"",
        ));
    }
    let key = match headers.get(header::SEC_WEBSOCKET_KEY) {
        None => return Err(Reject::new(S::BAD_REQUEST, "missing Sec-WebSocket-Key")),
        Some(k) if !is_valid_key(k.as_bytes()) => {
            return Err(Reject::new(
                S::BAD_REQUEST,
                "Sec-WebSocket-Key must be 16 random bytes in base64",
            ))
        }
        Some(k) => k.clone(),
    };
    match headers.get(header::SEC_WEBSOCKET_VERSION) {
        None => {
            return Err(Reject::new(
                S::UPGRADE_REQUIRED,
                "missing Sec-WebSocket-Version; this gateway speaks version 13",
            ))
        }
        Some(v) if v.as_bytes() != b"13" => {
            return Err(Reject::new(
                S::UPGRADE_REQUIRED,
                "unsupported Sec-WebSocket-Version; this gateway speaks version 13",
            ))
        }
        Some(_) => {}
    }
    let protocols = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    Ok(Upgrade { key, protocols })
}

/// 24 base64 characters ending in `==` are exactly 16 bytes.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// The `101 Switching Protocols` answer to a validated request.
pub fn accept(
    up: &Upgrade,
    protocol: Option<HeaderValue>,
    mut extra: HeaderMap,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    std::mem::swap(h, &mut extra);
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let accept = tungstenite::handshake::derive_accept_key(up.key.as_bytes());
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h
    }

    fn status(h: &HeaderMap) -> StatusCode {
        validate(&Method::GET, Version::HTTP_11, h)
            .unwrap_err()
            .status
    }

    #[test]
    fn accepts_a_valid_request_and_collects_protocols() {
        let mut h = good();
        h.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat, superchat"),
        );
        h.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("mqtt"),
        );
        let up = validate(&Method::GET, Version::HTTP_11, &h).unwrap();
        assert_eq!(up.protocols, ["chat", "superchat", "mqtt"]);
    }

    #[test]
    fn each_defect_has_its_status() {
        let mut h = good();
        h.remove(header::UPGRADE);
        assert_eq!(status(&h), StatusCode::UPGRADE_REQUIRED);

        let mut h = good();
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert_eq!(status(&h), StatusCode::BAD_REQUEST);

        let err = validate(&Method::POST, Version::HTTP_11, &good()).unwrap_err();
        assert_eq!(err.status, StatusCode::METHOD_NOT_ALLOWED);

        let mut h = good();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert_eq!(status(&h), StatusCode::BAD_REQUEST);

        let mut h = good();
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("short"));
        assert_eq!(status(&h), StatusCode::BAD_REQUEST);

        let mut h = good();
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(status(&h), StatusCode::UPGRADE_REQUIRED);
        let resp = validate(&Method::GET, Version::HTTP_11, &h)
            .unwrap_err()
            .into_response();
        assert_eq!(resp.headers()[header::SEC_WEBSOCKET_VERSION], "13");
    }

    #[test]
    fn accept_key_is_rfc_example() {
        let up = validate(&Method::GET, Version::HTTP_11, &good()).unwrap();
        let resp = accept(&up, None, HeaderMap::new());
        assert_eq!(
            resp.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
