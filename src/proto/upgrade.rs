//! RFC 6455 §4.2.1 checks on the client's upgrade request, and the answers.
//!
//! Pure functions over request parts: every refusal is a status and one
//! line of text that says what to fix.

use data_encoding::BASE64;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use sha1::{Digest, Sha1};

use super::{
    body::Fields,
    head::{self, Lines},
    reject::{Reason, Reject},
};

/// The parts of a valid upgrade request the gateway needs later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Key`, for the client's `Sec-WebSocket-Accept`.
    pub key: HeaderValue,
    /// The subprotocols the client offered, in its order.
    pub protocols: Vec<String>,
}

/// Whether a comma-separated header contains `token` (case-insensitive),
/// in a head read as a map or in place.
pub fn has_token(headers: &impl Fields, name: header::HeaderName, token: &str) -> bool {
    tokens(headers, &name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The items of every `name` header (a comma-separated list): [`list_items`].
pub fn tokens<'a>(
    headers: &'a impl Fields,
    name: &'a header::HeaderName,
) -> impl Iterator<Item = &'a [u8]> {
    list_items(headers.values(name))
}

/// The items of a list header's values, trimmed, as bytes: a value that is
/// not visible ASCII (what `HeaderValue::to_str` refuses) has none.
/// Trimming spaces and tabs is all `str::trim` does in such a value, for a
/// fifth of the cost.
pub fn list_items<'a>(values: impl Iterator<Item = &'a [u8]>) -> impl Iterator<Item = &'a [u8]> {
    let visible = |v: &&[u8]| v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
    values
        .filter(visible)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Whether the connection can carry another request after this one is
/// refused: HTTP/1.1, no body to skip, and the client did not ask to close.
pub fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && !has_token(headers, header::CONNECTION, "close")
        && !has_body(headers)
}

/// Whether a request says a body follows its head.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Checks an upgrade request; `Err` says what to answer instead.
pub fn validate(method: &Method, version: Version, headers: &HeaderMap) -> Result<Upgrade, Reject> {
    use StatusCode as S;
    if !headers.contains_key(header::UPGRADE) {
        return Err(Reject::new(
            S::UPGRADE_REQUIRED,
            Reason::UpgradeRequired,
            "this endpoint only serves WebSocket; send an Upgrade: websocket request",
        ));
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(Reject::new(
            S::BAD_REQUEST,
            Reason::BadRequest,
            "Upgrade header must be \"websocket\"",
        ));
    }
    if method != Method::GET {
        return Err(Reject::new(
            S::METHOD_NOT_ALLOWED,
            Reason::MethodNotAllowed,
            format!("a WebSocket upgrade must use GET, not {method}"),
        ));
    }
    if version < Version::HTTP_11 {
        return Err(Reject::new(
            S::BAD_REQUEST,
            Reason::BadRequest,
            "a WebSocket upgrade needs HTTP/1.1",
        ));
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(Reject::new(
            S::BAD_REQUEST,
            Reason::BadRequest,
            "Connection header must include \"Upgrade\"",
        ));
    }
    // One of each: which of two a backend would read is anybody's guess.
    for (name, what) in [
        (
            header::SEC_WEBSOCKET_KEY,
            "more than one Sec-WebSocket-Key header",
        ),
        (
            header::SEC_WEBSOCKET_VERSION,
            "more than one Sec-WebSocket-Version header",
        ),
    ] {
        if headers.get_all(name).iter().nth(1).is_some() {
            return Err(Reject::new(S::BAD_REQUEST, Reason::BadRequest, what));
        }
    }
    let key = match headers.get(header::SEC_WEBSOCKET_KEY) {
        None => {
            return Err(Reject::new(
                S::BAD_REQUEST,
                Reason::BadRequest,
                "missing Sec-WebSocket-Key",
            ))
        }
        Some(k) if !is_valid_key(k.as_bytes()) => {
            return Err(Reject::new(
                S::BAD_REQUEST,
                Reason::BadRequest,
                "Sec-WebSocket-Key must be 16 random bytes in base64",
            ))
        }
        Some(k) => k.clone(),
    };
    match headers.get(header::SEC_WEBSOCKET_VERSION) {
        None => {
            return Err(Reject::new(
                S::UPGRADE_REQUIRED,
                Reason::UpgradeRequired,
                "missing Sec-WebSocket-Version; this gateway speaks version 13",
            ))
        }
        Some(v) if v.as_bytes() != b"13" => {
            return Err(Reject::new(
                S::UPGRADE_REQUIRED,
                Reason::UpgradeRequired,
                "unsupported Sec-WebSocket-Version; this gateway speaks version 13",
            ))
        }
        Some(_) => {}
    }
    // What would follow a body is WebSocket data; a body has no place here.
    if has_body(headers) {
        return Err(Reject::new(
            S::BAD_REQUEST,
            Reason::BadRequest,
            "a WebSocket upgrade request has no body",
        ));
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

/// The `101 Switching Protocols` answer to a validated request, ready to
/// write: the upstream's end-to-end headers (`extra`), then the
/// handshake's own.
pub fn accept(up: &Upgrade, protocol: Option<&HeaderValue>, extra: &Lines) -> Vec<u8> {
    let mut out = head::response_line(
        StatusCode::SWITCHING_PROTOCOLS,
        256 + extra.as_bytes().len(),
    );
    out.extend_from_slice(extra.as_bytes());
    head::header_line(&mut out, &header::UPGRADE, b"websocket");
    head::header_line(&mut out, &header::CONNECTION, b"upgrade");
    head::header_line(
        &mut out,
        &header::SEC_WEBSOCKET_ACCEPT,
        &accept_key(up.key.as_bytes()),
    );
    if let Some(p) = protocol {
        head::header_line(&mut out, &header::SEC_WEBSOCKET_PROTOCOL, p.as_bytes());
    }
    head::end_head(&mut out);
    out
}

/// The GUID a handshake's accept value is derived with (RFC 6455 §1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2): the base64 of
/// the SHA-1 of the key and the GUID. On the stack: checking an answer
/// allocates nothing.
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let digest = Sha1::new().chain_update(key).chain_update(GUID).finalize();
    let mut out = [0; 28];
    BASE64.encode_mut(&digest, &mut out);
    out
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64, on the stack.
pub fn new_key() -> [u8; 24] {
    let mut out = [0; 24];
    BASE64.encode_mut(&rand::random::<[u8; 16]>(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_rfc_6455_keys() {
        // The RFC's own example (§1.3).
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let (a, b) = (new_key(), new_key());
        assert!(is_valid_key(&a), "{a:?}");
        assert_ne!(a, b);
    }

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
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(status(&h), StatusCode::BAD_REQUEST);

        for name in [header::SEC_WEBSOCKET_KEY, header::SEC_WEBSOCKET_VERSION] {
            let mut h = good();
            let again = h[&name].clone();
            h.append(name, again);
            assert_eq!(status(&h), StatusCode::BAD_REQUEST);
        }

        let mut h = good();
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(status(&h), StatusCode::UPGRADE_REQUIRED);
        let answer = validate(&Method::GET, Version::HTTP_11, &h)
            .unwrap_err()
            .answer_headers();
        assert_eq!(answer[header::SEC_WEBSOCKET_VERSION], "13");
    }

    #[test]
    fn a_refused_request_keeps_the_connection_only_without_a_body_or_a_close() {
        assert!(keeps_alive(Version::HTTP_11, &good()));
        assert!(!keeps_alive(Version::HTTP_10, &good()));
        let mut h = good();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, close"),
        );
        assert!(!keeps_alive(Version::HTTP_11, &h));
        let mut h = good();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(!keeps_alive(Version::HTTP_11, &h));
        let mut h = good();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(keeps_alive(Version::HTTP_11, &h));
    }

    #[test]
    fn tokens_are_trimmed_items_of_every_line() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(" keep-alive,\tUpgrade ,"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("X-Hop"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"caf\xe9, close").unwrap(),
        );
        let got: Vec<&[u8]> = tokens(&h, &header::CONNECTION).collect();
        assert_eq!(got, [&b"keep-alive"[..], b"Upgrade", b"", b"X-Hop"]);
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, header::CONNECTION, "close"));
    }

    #[test]
    fn accept_key_is_rfc_example() {
        let up = validate(&Method::GET, Version::HTTP_11, &good()).unwrap();
        let mut extra = Lines::default();
        extra.push(b"Set-Cookie", b"a=1");
        let protocol = HeaderValue::from_static("chat");
        let answer = accept(&up, Some(&protocol), &extra);
        assert_eq!(
            String::from_utf8(answer).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\n\
             set-cookie: a=1\r\n\
             upgrade: websocket\r\n\
             connection: upgrade\r\n\
             sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
             sec-websocket-protocol: chat\r\n\
             \r\n"
        );
    }
}
