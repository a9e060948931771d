//! The request the gateway sends upstream: the client's end-to-end headers,
//! the rewritten path, and the forwarding headers a backend expects behind
//! a proxy (`X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto`,
//! `X-Forwarded-Host`), like nginx's usual WebSocket snippet.

use http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::admission::client_ip::ClientIp;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus
/// the per-hop WebSocket handshake headers the gateway sets itself.
const PER_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::CONTENT_LENGTH,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::SEC_WEBSOCKET_ACCEPT,
    header::SEC_WEBSOCKET_PROTOCOL,
];

const KEEP_ALIVE: &str = "keep-alive";
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_REAL_IP: &str = "x-real-ip";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// Copies the end-to-end headers of `from`, dropping hop-by-hop ones and
/// any header the `Connection` header names.
pub fn end_to_end(from: &HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let mut out = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        if PER_HOP.contains(name) || named.contains(name) || name.as_str() == KEEP_ALIVE {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Adds the forwarding headers for `client`, which came in over TLS
/// (`tls`) asking for `host`. The `X-Forwarded-For` chain the client sent
/// is kept (and the peer appended) only when the peer is a trusted proxy;
/// from anyone else it is replaced, since it says whatever the client wants.
pub fn add_forwarding(
    headers: &mut HeaderMap,
    client: &ClientIp,
    tls: bool,
    host: Option<&HeaderValue>,
) {
    let peer = client.peer.to_string();
    // Several X-Forwarded-For lines are one list (RFC 9110 §5.3): keep them all.
    let prev: Vec<&str> = match client.peer_trusted {
        true => headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect(),
        false => Vec::new(),
    };
    let chain = match prev.is_empty() {
        true => peer,
        false => format!("{}, {peer}", prev.join(", ")),
    };
    let value = |s: &str| HeaderValue::from_str(s).expect("IP text is a valid header value");
    headers.insert(X_FORWARDED_FOR, value(&chain));
    headers.insert(X_REAL_IP, value(&client.ip.to_string()));
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match host {
        Some(h) => headers.insert(X_FORWARDED_HOST, h.clone()),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate"),
        );
        h.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://app.example"),
        );
        let out = end_to_end(&h);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[header::COOKIE], "a=b");
        assert_eq!(out[header::ORIGIN], "https://app.example");
    }

    #[test]
    fn forwarded_for_is_appended_only_behind_a_trusted_proxy() {
        let spoofed = || {
            let mut h = HeaderMap::new();
            h.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.1"));
            h.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
            h.insert(X_REAL_IP, HeaderValue::from_static("6.6.6.6"));
            h
        };
        let host = HeaderValue::from_static("ws.example.com");
        let trusted = ClientIp {
            peer: "10.1.2.3".parse().unwrap(),
            ip: "203.0.113.9".parse().unwrap(),
            peer_trusted: true,
        };
        let mut h = spoofed();
        add_forwarding(&mut h, &trusted, true, Some(&host));
        assert_eq!(h[X_FORWARDED_FOR], "198.51.100.1, 203.0.113.9, 10.1.2.3");
        assert_eq!(h[X_REAL_IP], "203.0.113.9");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "ws.example.com");

        let direct = ClientIp {
            peer: "198.51.100.4".parse().unwrap(),
            ip: "198.51.100.4".parse().unwrap(),
            peer_trusted: false,
        };
        let mut h = spoofed();
        add_forwarding(&mut h, &direct, false, None);
        assert_eq!(h[X_FORWARDED_FOR], "198.51.100.4");
        assert_eq!(h[X_REAL_IP], "198.51.100.4");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
    }
}
