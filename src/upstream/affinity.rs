//! The key a hashing group balances on, read from a request.
//!
//! One function, [`KeySource::key`], reads it for the WebSocket upgrade and for
//! plain HTTP requests alike, so an Engine.IO session's long-polling
//! requests and the upgrade that follows hash the same and reach the same
//! server. The key is hashed at once ([`Key`] is 8 bytes); nothing of the
//! request is kept.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, Uri};
use serde_json::{Map, Value};

use super::balance::hash;
use crate::proto::cookie;

/// Where a group's key comes from (`balance = "…"` on `[upstream.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The client's address as admission resolved it (through trusted
    /// proxies), IPv6 by its `client_ipv6_prefix` network: nginx's `ip_hash`.
    ClientIp,
    /// A request header's value (the first, if repeated).
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// A query parameter's value, as sent (not percent-decoded).
    Query(String),
    /// A claim of the token admission checked (the route needs `[auth]`).
    Claim(String),
}

/// A request's key, hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(pub u64);

/// What a key may be read from.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The client, already grouped as admission counts it.
    pub client: IpAddr,
    pub headers: &'a HeaderMap,
    pub uri: &'a Uri,
    /// The checked token's claims, when the route has `[auth]`.
    pub claims: Option<&'a Map<String, Value>>,
}

impl KeySource {
    /// The request's key; `None` when it has none (the group then uses
    /// round robin for it).
    pub fn key(&self, facts: &Facts<'_>) -> Option<Key> {
        let h = match self {
            KeySource::ClientIp => match facts.client.to_canonical() {
                IpAddr::V4(v4) => hash(&v4.octets()),
                IpAddr::V6(v6) => hash(&v6.octets()),
            },
            KeySource::Header(name) => hash(facts.headers.get(name)?.as_bytes()),
            KeySource::Cookie(name) => hash(cookie::get(facts.headers, name)?),
            KeySource::Query(name) => hash(query(facts.uri, name)?),
            KeySource::Claim(name) => match facts.claims?.get(name)? {
                Value::Null => return None,
                Value::String(s) => hash(s.as_bytes()),
                // A number, a boolean, a list: its JSON text.
                other => hash(other.to_string().as_bytes()),
            },
        };
        Some(Key(h))
    }
}

/// The value of query parameter `name` (the first, if repeated).
fn query<'u>(uri: &'u Uri, name: &str) -> Option<&'u [u8]> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Facts<'a> {
        Facts {
            client: "192.0.2.1".parse().unwrap(),
            headers,
            uri,
            claims: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn client_ip_keys_by_address() {
        let (h, u) = (HeaderMap::new(), Uri::from_static("/"));
        let a = facts(&h, &u);
        let b = Facts {
            client: "192.0.2.2".parse().unwrap(),
            ..a
        };
        let mapped = Facts {
            client: "::ffff:192.0.2.1".parse().unwrap(),
            ..a
        };
        let k = |f| KeySource::ClientIp.key(&f).unwrap();
        assert_ne!(k(a), k(b));
        assert_eq!(k(a), k(mapped));
        assert_eq!(k(a), Key(hash(&[192, 0, 2, 1])));
    }

    #[test]
    fn header_cookie_and_query_keys() {
        let h = headers(&[
            ("x-tenant", "acme"),
            ("cookie", "a=1; io=abc123"),
            ("cookie", "other=2"),
        ]);
        let u = Uri::from_static("/socket.io/?EIO=4&transport=polling&sid=XYZ");
        let f = facts(&h, &u);
        let key = |s: KeySource| s.key(&f);
        assert_eq!(
            key(KeySource::Header("x-tenant".parse().unwrap())),
            Some(Key(hash(b"acme")))
        );
        assert_eq!(
            key(KeySource::Cookie("io".into())),
            Some(Key(hash(b"abc123")))
        );
        assert_eq!(
            key(KeySource::Cookie("other".into())),
            Some(Key(hash(b"2")))
        );
        assert_eq!(key(KeySource::Cookie("a".into())), Some(Key(hash(b"1"))));
        assert_eq!(key(KeySource::Query("sid".into())), Some(Key(hash(b"XYZ"))));
        assert_eq!(key(KeySource::Query("EIO".into())), Some(Key(hash(b"4"))));
        // Absent: no key.
        assert_eq!(key(KeySource::Header("x-none".parse().unwrap())), None);
        assert_eq!(key(KeySource::Cookie("i".into())), None);
        assert_eq!(key(KeySource::Query("si".into())), None);
        assert_eq!(key(KeySource::Claim("sub".into())), None);
    }

    #[test]
    fn claim_keys() {
        let (h, u) = (HeaderMap::new(), Uri::from_static("/"));
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"sub":"alice","org":7,"gone":null}"#).unwrap();
        let f = Facts {
            claims: Some(&claims),
            ..facts(&h, &u)
        };
        let key = |n: &str| KeySource::Claim(n.into()).key(&f);
        assert_eq!(key("sub"), Some(Key(hash(b"alice"))));
        assert_eq!(key("org"), Some(Key(hash(b"7"))));
        assert_eq!(key("gone"), None);
        assert_eq!(key("missing"), None);
    }
}
