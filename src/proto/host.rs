//! The `Host` a request is for, validated: the one value that host routing,
//! the forwarded `Host` and `X-Forwarded-Host` are taken from.
//!
//! Only RFC 3986 host syntax is accepted, and of `reg-name` only what DNS
//! names use (letters, digits, `-`, `_`, dots between labels): anything
//! else that could reach a backend inside a `Host` (`/`, `?`, `#`, `@`,
//! spaces, commas, escapes) is refused before routing, so a suffix match
//! such as `*.example.com` can never be satisfied by `evil.test/.example.com`.
//! Names are lower-cased and lose a trailing dot; a port equal to the
//! scheme's default is dropped, so `Secure.Example.com.:443` on a TLS
//! listener is `secure.example.com`, the same host routing knows.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Version};

/// A validated `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// Lower-case name without a trailing dot, dotted IPv4, or `[IPv6]`.
    host: String,
    port: Option<u16>,
}

/// Why a `Host` (or an absolute-form target's authority) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    Empty,
    /// A character no host name has (`/`, `@`, `,`, space, …).
    Syntax,
    /// An empty label (`a..b`, `.a`) or one over 63 bytes, or a name over 253.
    Label,
    /// `[…]` that is not an IPv6 address.
    Ipv6,
    /// Not a number from 1 to 65535 after the `:`.
    Port,
    /// HTTP/1.1 without `Host` (RFC 9112 §3.2).
    Missing,
    /// More than one `Host` line.
    Duplicate,
    /// An absolute-form target names another host than `Host` does.
    Disagrees,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostError::Empty => "the host is empty",
            HostError::Syntax => "the host has a character no host name has",
            HostError::Label => "the host has an empty or over-long label",
            HostError::Ipv6 => "the host's [...] is not an IPv6 address",
            HostError::Port => "the port is not a number from 1 to 65535",
            HostError::Missing => "an HTTP/1.1 request needs a Host header",
            HostError::Duplicate => "the request has more than one Host header",
            HostError::Disagrees => "the request target's host and the Host header disagree",
        })
    }
}

impl std::error::Error for HostError {}

impl Authority {
    /// Parses `host[:port]` as sent.
    pub fn parse(raw: &[u8]) -> Result<Authority, HostError> {
        if raw.is_empty() {
            return Err(HostError::Empty);
        }
        let (host, port) = if raw[0] == b'[' {
            let close = raw.iter().position(|&b| b == b']').ok_or(HostError::Ipv6)?;
            let inside = std::str::from_utf8(&raw[1..close]).map_err(|_| HostError::Ipv6)?;
            let ip: Ipv6Addr = inside.parse().map_err(|_| HostError::Ipv6)?;
            let port = match &raw[close + 1..] {
                [] => None,
                [b':', digits @ ..] => Some(port(digits)?),
                _ => return Err(HostError::Syntax),
            };
            (format!("[{ip}]"), port)
        } else {
            let (name, port) = match raw.iter().position(|&b| b == b':') {
                Some(at) => (&raw[..at], Some(port(&raw[at + 1..])?)),
                None => (raw, None),
            };
            (reg_name(name)?, port)
        };
        Ok(Authority { host, port })
    }

    /// Drops the port when it is the default for the scheme (443 with TLS, 80 without).
    pub fn without_default_port(mut self, tls: bool) -> Authority {
        if self.port == Some(if tls { 443 } else { 80 }) {
            self.port = None;
        }
        self
    }

    /// The host alone, as routes match it.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The host is an address (`[IPv6]` or dotted IPv4), not a name.
    pub fn is_address(&self) -> bool {
        self.host.starts_with('[') || self.host.parse::<Ipv4Addr>().is_ok()
    }

    /// As a header value, for the forwarded `Host` and `X-Forwarded-Host`.
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_maybe_shared(Bytes::from(self.text().into_bytes()))
            .expect("a validated host is a valid header value")
    }

    /// As boxed text (what `Display` writes), for the access log.
    pub fn to_boxed_str(&self) -> Box<str> {
        self.text().into_boxed_str()
    }

    /// `host[:port]`, written once at its exact length, so that the bytes
    /// become a header value or a box as they are: no second copy, no
    /// shrinking reallocation, no formatting machinery.
    fn text(&self) -> String {
        let mut digits = itoa::Buffer::new();
        let port = self.port.map_or("", |p| digits.format(p));
        let colon = if port.is_empty() { "" } else { ":" };
        let mut text = String::with_capacity(self.host.len() + colon.len() + port.len());
        text.push_str(&self.host);
        text.push_str(colon);
        text.push_str(port);
        text
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            None => f.write_str(&self.host),
            Some(p) => write!(f, "{}:{p}", self.host),
        }
    }
}

fn port(digits: &[u8]) -> Result<u16, HostError> {
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HostError::Port);
    }
    match std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
    {
        Some(0) | None => Err(HostError::Port),
        Some(p) => Ok(p),
    }
}

/// A DNS-style name or dotted IPv4, lower-cased, without its trailing dot.
fn reg_name(raw: &[u8]) -> Result<String, HostError> {
    let name = raw.strip_suffix(b".").unwrap_or(raw);
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > 253 {
        return Err(HostError::Label);
    }
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() || label.len() > 63 {
            return Err(HostError::Label);
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(HostError::Syntax);
        }
    }
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

/// The host a request is for (RFC 9112 §3.2): exactly one valid `Host` on
/// HTTP/1.1; an absolute-form target's authority wins, and must agree with
/// `Host`. `None` only for an HTTP/1.0 request that names no host.
pub fn of_request(
    version: Version,
    headers: &HeaderMap,
    target: Option<&Authority>,
    tls: bool,
) -> Result<Option<Authority>, HostError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(HostError::Duplicate),
        (Some(h), None) => Some(Authority::parse(h.as_bytes())?.without_default_port(tls)),
        (None, _) if version == Version::HTTP_11 => return Err(HostError::Missing),
        (None, _) => None,
    };
    match (target, host) {
        (Some(t), Some(h)) if *t != h => Err(HostError::Disagrees),
        (Some(t), _) => Ok(Some(t.clone())),
        (None, h) => Ok(h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn an_address_is_told_from_a_name() {
        for (raw, address) in [
            ("127.0.0.1:9090", true),
            ("[::1]:9090", true),
            ("[2001:db8::1]", true),
            ("localhost:9090", false),
            ("admin", false),
            ("127.0.0.1.example", false),
        ] {
            let a = Authority::parse(raw.as_bytes()).unwrap();
            assert_eq!(a.is_address(), address, "{raw}");
        }
    }

    fn parse(raw: &str) -> Result<String, HostError> {
        Authority::parse(raw.as_bytes()).map(|a| a.to_string())
    }

    #[test]
    fn names_are_folded() {
        assert_eq!(parse("Secure.Example.COM.").unwrap(), "secure.example.com");
        assert_eq!(parse("a.test:8080").unwrap(), "a.test:8080");
        assert_eq!(parse("127.0.0.1:1").unwrap(), "127.0.0.1:1");
        assert_eq!(
            parse("[::FFFF:1.2.3.4]:443").unwrap(),
            "[::ffff:1.2.3.4]:443"
        );
        assert_eq!(parse("[2001:DB8::1]").unwrap(), "[2001:db8::1]");
        let tls = Authority::parse(b"secure.example.com.:443").unwrap();
        assert_eq!(
            tls.without_default_port(true).to_string(),
            "secure.example.com"
        );
        let plain = Authority::parse(b"a.test:443").unwrap();
        assert_eq!(plain.clone().without_default_port(false).host(), "a.test");
        assert_eq!(plain.without_default_port(false).to_string(), "a.test:443");
    }

    #[test]
    fn the_header_value_and_the_log_text_are_what_display_writes() {
        for raw in [
            "a.test",
            "a.test:8080",
            "127.0.0.1:1",
            "[2001:db8::1]:65535",
            "b.test:443",
        ] {
            let a = Authority::parse(raw.as_bytes()).unwrap();
            assert_eq!(a.header_value(), HeaderValue::from_str(raw).unwrap());
            assert_eq!(&*a.to_boxed_str(), raw);
            assert_eq!(a.to_string(), raw);
        }
    }

    #[test]
    fn anything_but_a_host_is_refused() {
        use HostError as E;
        for (raw, want) in [
            ("", E::Empty),
            (".", E::Empty),
            ("evil.test/.example.com", E::Syntax),
            ("evil.test?.example.com", E::Syntax),
            ("evil.test#.example.com", E::Syntax),
            ("evil.test .example.com", E::Syntax),
            ("evil@a.example.com", E::Syntax),
            ("a.example.com, b.example.com", E::Syntax),
            ("a%2eexample.com", E::Syntax),
            ("a..b", E::Label),
            (".a", E::Label),
            ("a.test:", E::Port),
            ("a.test:0", E::Port),
            ("a.test:65536", E::Port),
            ("a.test:80:80", E::Port),
            ("a.test:+80", E::Port),
            ("[::1", E::Ipv6),
            ("[v1.x]", E::Ipv6),
            ("[fe80::1%25eth0]", E::Ipv6),
            ("[::1]x", E::Syntax),
        ] {
            assert_eq!(parse(raw), Err(want), "{raw:?}");
        }
        assert_eq!(parse(&"a".repeat(64)), Err(E::Label));
    }

    #[test]
    fn one_host_per_request() {
        let v11 = Version::HTTP_11;
        let with = |hosts: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in hosts {
                h.append(header::HOST, HeaderValue::from_static(v));
            }
            h
        };
        let got = of_request(v11, &with(&["A.test:80"]), None, false).unwrap();
        assert_eq!(got.unwrap().to_string(), "a.test");
        assert_eq!(
            of_request(v11, &with(&[]), None, false),
            Err(HostError::Missing)
        );
        assert_eq!(
            of_request(Version::HTTP_10, &with(&[]), None, false),
            Ok(None)
        );
        assert_eq!(
            of_request(v11, &with(&["a.test", "b.test"]), None, false),
            Err(HostError::Duplicate)
        );
        assert_eq!(
            of_request(v11, &with(&[""]), None, false),
            Err(HostError::Empty)
        );
        let target = Authority::parse(b"b.test").unwrap();
        assert_eq!(
            of_request(v11, &with(&["a.test"]), Some(&target), false),
            Err(HostError::Disagrees)
        );
        let got = of_request(v11, &with(&["B.test:80"]), Some(&target), false).unwrap();
        assert_eq!(got, Some(target));
    }
}
