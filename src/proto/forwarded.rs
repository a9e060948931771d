//! The request the gateway sends upstream: the client's end-to-end headers,
//! the rewritten path, and the forwarding headers a backend expects behind
//! a proxy (`X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto`,
//! `X-Forwarded-Host`), like nginx's usual WebSocket snippet.
//!
//! Two kinds of client header never reach the backend, since a backend
//! could take them for the gateway's word:
//! - names with `_` (unless `underscores_in_headers`): CGI, WSGI and Rack
//!   fold `_` and `-` together, so `X_Auth_Subject` would arrive as the
//!   `X-Auth-Subject` the gateway sets (nginx drops them by default too);
//! - from a peer that is not a trusted proxy, every header that names the
//!   client or the original request ([`CLIENT_CLAIMS`]): only the
//!   gateway's own `X-Forwarded-*` and `X-Real-IP` describe the client then.

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use http::{header, HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

use super::{
    head::{Lines, RawResponse},
    upgrade,
};

/// The client of one request, as far as the gateway can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp {
    /// Who connected to the gateway (the PROXY protocol source on such a
    /// listener): the hop appended to `X-Forwarded-For`.
    pub peer: IpAddr,
    /// The client that limits count and `X-Real-IP` names.
    pub ip: IpAddr,
    /// The peer is a trusted proxy, so the `X-Forwarded-For` it sent is kept.
    pub peer_trusted: bool,
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus
/// the per-hop WebSocket handshake headers the gateway sets itself. As
/// text: a name is compared with each, and `HeaderName::as_str` for a
/// standard name is a lookup of its own.
const PER_HOP: &[&str] = &[
    "connection",
    "upgrade",
    "te",
    "trailer",
    "transfer-encoding",
    "proxy-authenticate",
    "proxy-authorization",
    "content-length",
    "keep-alive",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-accept",
    "sec-websocket-protocol",
];

/// Headers in which a proxy tells its backend who the client is or what
/// it asked for. Believed from trusted proxies only; from anyone else they
/// are dropped (the `X-Forwarded-*` and `X-Real-IP` the gateway sets are
/// added afresh after).
pub const CLIENT_CLAIMS: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-url-scheme",
];

// Names as constants: inserting by `&str` would build (and allocate) a
// `HeaderName` on every request.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The headers to send upstream for a request from `client` (over TLS if
/// `tls`) for `host`: the end-to-end ones the client sent, less those a
/// backend could mistake for the gateway's (see the module doc), plus the
/// forwarding headers. Filters `from` in place: no header is copied.
pub fn upstream_headers(
    from: HeaderMap,
    client: &ClientIp,
    tls: bool,
    host: Option<&HeaderValue>,
    underscores: bool,
) -> HeaderMap {
    // What a backend could mistake for the gateway's never goes on.
    let mut headers = keep_end_to_end(from, |name| {
        name == header::HOST
            || (!underscores && name.as_str().contains('_'))
            || (!client.peer_trusted && CLIENT_CLAIMS.contains(&name.as_str()))
    });
    add_forwarding(&mut headers, client, tls, host);
    headers
}

/// The end-to-end headers of `from`: hop-by-hop ones, and any header the
/// `Connection` header names, removed.
pub fn end_to_end(from: HeaderMap) -> HeaderMap {
    keep_end_to_end(from, |_| false)
}

/// The end-to-end headers of an upstream's answer, in the order it sent
/// them, as lines for the client's head: [`end_to_end`] without a map.
pub fn end_to_end_lines(answer: &RawResponse) -> Lines {
    let named: SmallVec<[&[u8]; 4]> = upgrade::tokens(answer, &header::CONNECTION).collect();
    // Room for every line as it came, and a few the gateway adds (a cookie,
    // the framing): the lines are never grown piece by piece.
    let mut lines = Lines::with_capacity(answer.head_len() + 128);
    for (name, value) in answer.headers() {
        if !per_hop(name, &named) {
            lines.push(name, value);
        }
    }
    lines
}

/// Whether a header is per hop: one of [`PER_HOP`], or one the
/// `Connection` header names (`named`, its items).
fn per_hop(name: &[u8], named: &[&[u8]]) -> bool {
    PER_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
        || named.iter().any(|t| t.eq_ignore_ascii_case(name))
}

/// [`end_to_end`], removing also every header `dropped` names.
fn keep_end_to_end(mut headers: HeaderMap, dropped: impl Fn(&HeaderName) -> bool) -> HeaderMap {
    // Listed before any is removed, while `Connection` still names its
    // headers (read once, not once per header); a handshake's few per-hop
    // names fit on the stack.
    let doomed: SmallVec<[HeaderName; 8]> = {
        let named: SmallVec<[&[u8]; 4]> = upgrade::tokens(&headers, &header::CONNECTION).collect();
        headers
            .keys()
            .filter(|name| per_hop(name.as_str().as_bytes(), &named) || dropped(name))
            .cloned()
            .collect()
    };
    for name in doomed {
        headers.remove(name);
    }
    headers
}

/// Adds the forwarding headers for `client`, which came in over TLS
/// (`tls`) asking for `host`. The `X-Forwarded-For` chain the client sent
/// is kept (and the peer appended) only when the peer is a trusted proxy;
/// from anyone else it is replaced, since it says whatever the client wants.
fn add_forwarding(
    headers: &mut HeaderMap,
    client: &ClientIp,
    tls: bool,
    host: Option<&HeaderValue>,
) {
    let peer = IpText::new(client.peer);
    // Several X-Forwarded-For lines are one list (RFC 9110 §5.3): keep them all.
    let mut chain = Vec::new();
    if client.peer_trusted {
        let prev = headers.get_all(&X_FORWARDED_FOR).iter();
        for hop in prev.filter_map(|v| v.to_str().ok()).map(str::trim) {
            if !hop.is_empty() {
                chain.extend_from_slice(hop.as_bytes());
                chain.extend_from_slice(b", ");
            }
        }
    }
    let chain = match chain.is_empty() {
        true => peer.as_bytes(),
        false => {
            chain.extend_from_slice(peer.as_bytes());
            &chain
        }
    };
    let value = |s: &[u8]| HeaderValue::from_bytes(s).expect("IP text is a valid header value");
    headers.insert(X_FORWARDED_FOR, value(chain));
    headers.insert(X_REAL_IP, value(IpText::new(client.ip).as_bytes()));
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match host {
        Some(h) => headers.insert(X_FORWARDED_HOST, h.clone()),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

/// An IP address (or a socket address) as text, written on the stack: a
/// header value or a log field is then the only copy made. IPv4 is written
/// digit by digit, IPv6 by its `Display`; `Display` for IPv4 costs more than
/// the rest of building an upgrade's forwarding headers.
pub(crate) struct IpText {
    buf: [u8; IpText::MAX],
    len: usize,
}

impl IpText {
    /// The longest a socket address prints:
    /// `[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%4294967295]:65535` is 64 bytes.
    const MAX: usize = 64;

    pub fn new(ip: IpAddr) -> Self {
        let mut text = IpText {
            buf: [0; Self::MAX],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => text.push_v4(v4),
            IpAddr::V6(v6) => text.push_display(v6),
        }
        text
    }

    /// `ip:port`, `[ip]:port` for IPv6: what `SocketAddr` prints.
    pub fn socket(addr: SocketAddr) -> Self {
        let mut text = IpText {
            buf: [0; Self::MAX],
            len: 0,
        };
        match addr {
            SocketAddr::V4(v4) => {
                text.push_v4(*v4.ip());
                text.push(b':');
                text.push_number(v4.port().into());
            }
            SocketAddr::V6(v6) => text.push_display(v6),
        }
        text
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn push_v4(&mut self, ip: Ipv4Addr) {
        for (n, octet) in ip.octets().into_iter().enumerate() {
            if n > 0 {
                self.push(b'.');
            }
            self.push_number(octet.into());
        }
    }

    fn push_number(&mut self, n: u32) {
        let mut digits = itoa::Buffer::new();
        for &b in digits.format(n).as_bytes() {
            self.push(b);
        }
    }

    fn push_display(&mut self, v: impl std::fmt::Display) {
        let mut w = &mut self.buf[self.len..];
        let room = w.len();
        write!(w, "{v}").expect("an address fits in 64 bytes");
        self.len += room - w.len();
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("an address prints as ASCII")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::host::Authority;

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
        let out = end_to_end(h);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[header::COOKIE], "a=b");
        assert_eq!(out[header::ORIGIN], "https://app.example");
    }

    #[test]
    fn an_answers_end_to_end_lines_keep_its_order_and_lowercase_names() {
        let wire = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Set-Cookie: a=1\r\nConnection: Upgrade, X-Hop\r\nX-Hop: 1\r\n\
            Keep-Alive: timeout=5\r\nX-App: kept\r\nSec-WebSocket-Accept: k\r\n\
            Set-Cookie: b=2\r\n\r\n";
        let answer = RawResponse::parse(wire.to_vec(), 16).unwrap().unwrap();
        assert_eq!(
            end_to_end_lines(&answer).as_bytes(),
            b"set-cookie: a=1\r\nx-app: kept\r\nset-cookie: b=2\r\n"
        );
    }

    #[test]
    fn spoofable_headers_stay_behind() {
        let mut h = HeaderMap::new();
        for name in [
            "x_auth_subject",
            "x-auth_subject",
            "x_forwarded_for",
            "forwarded",
            "true-client-ip",
            "x-original-url",
        ] {
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static("spoof"),
            );
        }
        h.insert(header::HOST, HeaderValue::from_static("evil.test"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        let direct = ClientIp {
            peer: "198.51.100.4".parse().unwrap(),
            ip: "198.51.100.4".parse().unwrap(),
            peer_trusted: false,
        };
        let host = Authority::parse(b"ws.example.com").unwrap().header_value();
        let out = upstream_headers(h.clone(), &direct, false, Some(&host), false);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "x-app",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-real-ip"
            ]
        );
        assert_eq!(out[X_FORWARDED_HOST], "ws.example.com");

        let out = upstream_headers(h.clone(), &direct, false, None, true);
        assert!(out.contains_key("x_auth_subject"));
        assert!(!out.contains_key("forwarded"));
        let trusted = ClientIp {
            peer_trusted: true,
            ..direct
        };
        let out = upstream_headers(h, &trusted, false, None, false);
        assert_eq!(out["forwarded"], "spoof");
        assert_eq!(out["true-client-ip"], "spoof");
        assert!(!out.contains_key("x_forwarded_for"));
    }

    #[test]
    fn addresses_print_as_display_prints_them() {
        for ip in [
            "0.0.0.0",
            "192.168.100.255",
            "10.0.0.1",
            "::1",
            "2001:db8::7",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
        for addr in [
            "127.0.0.1:0",
            "255.255.255.255:65535",
            "[::1]:8080",
            "[fe80::1%4294967295]:65535",
            "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%4294967295]:65535",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(IpText::socket(addr).as_str(), addr.to_string());
        }
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
