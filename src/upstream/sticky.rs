//! Cookie-insert stickiness (`sticky_cookie` on `[upstream.NAME]`): the
//! gateway sets a cookie naming the server that took a client, and sends
//! the client's next requests there. HAProxy's `cookie SRV insert indirect
//! nocache`, nginx Plus's `sticky cookie`. Unlike a hashed key it needs
//! nothing of the client that stays the same (an address behind a mobile
//! network, an application cookie): the gateway's own cookie is the key.
//!
//! - **The value** is a [`ServerId`]: 16 hex digits of the xxh3 hash of
//!   the server's label (its URL as written; for each address of a name,
//!   the URL and the address). Every gateway with the same `servers` (and
//!   the same answers for their names) writes and reads the same values
//!   without talking; the value names no address. Unkeyed, like nginx
//!   Plus's (an MD5 of the address), it is a hash, not a secret: someone who
//!   guesses an internal URL can check the guess against it. With a key
//!   (`key_env`) it is the first 8 bytes of HMAC-SHA256(key, label) instead,
//!   which only gateways holding the key can compute. While a key is
//!   rotated, several: the first signs, every one is accepted, and a value
//!   under an older key is answered with one under the first
//!   ([`ServerIds`]), as nginx's `ssl_session_ticket_key` takes its keys.
//! - **Reading**: the first cookie of the name (RFC 6265 §5.4: the longest
//!   path first, then the oldest; [`cookie::get`]). A value that is not 16
//!   lower-case hex digits, or names no server of the group now, is no
//!   cookie: the balance places the request. Nothing a client writes can
//!   name anything but one of the group's own servers.
//! - **Choosing**: a valid cookie's server is tried first when it takes new
//!   sessions (up, not ejected, not draining); then the balance's candidates,
//!   so a failover goes where the balance says
//!   ([`Upstream::connect`](super::Upstream)).
//! - **Answering**: when the server that took the request is not the one
//!   the cookie named (no cookie, an unknown one, a failover), the answer
//!   carries a `Set-Cookie` for it ([`CookieToSet`]); otherwise none
//!   (HAProxy's `indirect`). A backend's own `Set-Cookie` passes untouched.
//! - **Forwarding**: the cookie is the gateway's; it is taken out of the
//!   request before the backend sees it, the other cookies kept
//!   ([`StickyCookie::strip`]).

use std::{fmt, fmt::Write as _, sync::Arc, time::Duration};

use http::{header, HeaderMap, HeaderValue};
use xxhash_rust::xxh3::xxh3_64;

use crate::log::Secret;
use crate::proto::{body::Fields, cookie, head::Lines};

/// The cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

/// How a group's sticky cookie is named and written; checked at load
/// (config/sticky.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    /// A cookie name (an RFC 6265 token).
    pub name: String,
    /// `Path`; `/` by default.
    pub path: String,
    /// `Domain`; none by default (the cookie goes back to this host only).
    pub domain: Option<String>,
    /// `Max-Age`, in whole seconds; `None`: a session cookie.
    pub max_age: Option<Duration>,
    /// `Some(true)`: always `Secure`; `Some(false)`: never; `None`: on TLS
    /// listeners, and always with `SameSite=None` (browsers drop such a
    /// cookie without `Secure`).
    pub secure: Option<bool>,
    /// `HttpOnly`; on by default (no script needs to read it).
    pub http_only: bool,
    pub same_site: SameSite,
    /// The keys of the ids (`key_env`): the first signs the cookies set,
    /// each is accepted in a cookie received (a key in rotation); none:
    /// unkeyed.
    pub keys: Vec<CookieKey>,
}

/// A sticky cookie's key, read from the environment at load; never printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieKey(Secret<Arc<[u8]>>);

impl CookieKey {
    pub fn new(key: &[u8]) -> Self {
        CookieKey(Secret::new(key.into()))
    }
}

impl StickyCookie {
    /// A cookie with this name and the defaults: `Path=/`, a session
    /// cookie, `HttpOnly`, `SameSite=Lax`, `Secure` on TLS listeners.
    pub fn named(name: &str) -> Self {
        StickyCookie {
            name: name.to_owned(),
            path: "/".to_owned(),
            domain: None,
            max_age: None,
            secure: None,
            http_only: true,
            same_site: SameSite::Lax,
            keys: Vec::new(),
        }
    }

    /// The server the request's cookie names, if it has one and it is an
    /// id at all (whether it is one of the group's servers is the group's
    /// to say).
    pub fn requested(&self, headers: &HeaderMap) -> Option<ServerId> {
        ServerId::parse(cookie::get(headers, &self.name)?)
    }

    /// Removes the cookie (every one of its name) from a request before it
    /// is forwarded; the other cookies stay.
    pub fn strip(&self, headers: &mut HeaderMap) {
        cookie::remove(headers, &self.name);
    }

    /// The `Set-Cookie` value naming `server`, for a listener with or
    /// without TLS.
    fn header(&self, server: ServerId, tls: bool) -> HeaderValue {
        let mut v = format!("{}={server}; Path={}", self.name, self.path);
        if let Some(domain) = &self.domain {
            let _ = write!(v, "; Domain={domain}");
        }
        if let Some(age) = self.max_age {
            let _ = write!(v, "; Max-Age={}", age.as_secs());
        }
        let none = self.same_site == SameSite::None;
        if self.secure.unwrap_or(tls || none) {
            v.push_str("; Secure");
        }
        if self.http_only {
            v.push_str("; HttpOnly");
        }
        v.push_str(match self.same_site {
            SameSite::Lax => "; SameSite=Lax",
            SameSite::Strict => "; SameSite=Strict",
            SameSite::None => "; SameSite=None",
        });
        // Name, path and domain were checked at load to be header-safe.
        HeaderValue::try_from(v).expect("a checked cookie is a valid header value")
    }
}

/// Each server's id, under every key the cookie accepts.
#[derive(Debug, Clone)]
pub struct ServerIds {
    /// By key, then by server: the signing key's (or the unkeyed ids)
    /// first, then each older key's.
    by_key: Vec<Vec<ServerId>>,
}

impl ServerIds {
    /// The ids of the servers with these labels, in order, under `keys`
    /// (unkeyed when there are none).
    pub fn new<'a>(labels: impl Iterator<Item = &'a str> + Clone, keys: &[CookieKey]) -> Self {
        let under = |key| labels.clone().map(|l| ServerId::of(l, key)).collect();
        let by_key = match keys {
            [] => vec![under(None)],
            keys => keys.iter().map(|k| under(Some(k))).collect(),
        };
        ServerIds { by_key }
    }

    /// The id a cookie set now names `server` by.
    pub fn of(&self, server: usize) -> ServerId {
        self.by_key[0][server]
    }

    /// The server `id` names, under any of the keys.
    pub fn server(&self, id: ServerId) -> Option<usize> {
        self.by_key
            .iter()
            .find_map(|ids| ids.iter().position(|&s| s == id))
    }
}

/// A server as its sticky cookie names it (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerId(u64);

impl ServerId {
    /// The id of the server with this label, keyed or not.
    pub fn of(label: &str, key: Option<&CookieKey>) -> Self {
        match key {
            None => ServerId(xxh3_64(label.as_bytes())),
            Some(CookieKey(key)) => {
                let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key.expose());
                let tag = aws_lc_rs::hmac::sign(&key, label.as_bytes());
                let first: [u8; 8] = tag.as_ref()[..8].try_into().expect("a SHA-256 tag");
                ServerId(u64::from_be_bytes(first))
            }
        }
    }

    /// A cookie value as an id: exactly 16 lower-case hex digits, as
    /// written by [`fmt::Display`]; anything else is none.
    fn parse(value: &[u8]) -> Option<Self> {
        if value.len() != 16 {
            return None;
        }
        value
            .iter()
            .try_fold(0u64, |n, &b| {
                let digit = match b {
                    b'0'..=b'9' => b - b'0',
                    b'a'..=b'f' => b - b'a' + 10,
                    _ => return None,
                };
                Some(n << 4 | u64::from(digit))
            })
            .map(ServerId)
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The `Set-Cookie` an answer carries: the server that took the request,
/// which its cookie did not name.
#[derive(Debug, Clone)]
pub struct CookieToSet {
    pub(super) cookie: Arc<StickyCookie>,
    pub(super) server: ServerId,
}

impl CookieToSet {
    /// Adds the `Set-Cookie` to the end-to-end lines of an upgrade's 101
    /// (browsers keep a cookie set on a 101), after the backend's own.
    pub fn set_on_101(&self, lines: &mut Lines, tls: bool) {
        let value = self.cookie.header(self.server, tls);
        lines.push(header::SET_COOKIE.as_str().as_bytes(), value.as_bytes());
    }

    /// Adds the `Set-Cookie` to a plain response, and `Cache-Control:
    /// private` unless it already says `private` or `no-store` (HAProxy's
    /// `nocache`): a shared cache must not hand one client's cookie to
    /// every client (which would put them all on one server). A backend's
    /// other `Cache-Control` directives stay; `private` wins over `public`
    /// and `max-age` for a shared cache.
    /// `lines` are the end-to-end headers of `answer` on their way to the
    /// client.
    pub fn set_on_response(&self, lines: &mut Lines, answer: &impl Fields, tls: bool) {
        let value = self.cookie.header(self.server, tls);
        lines.push(header::SET_COOKIE.as_str().as_bytes(), value.as_bytes());
        if !kept_from_shared_caches(answer) {
            lines.push(header::CACHE_CONTROL.as_str().as_bytes(), b"private");
        }
    }
}

/// Whether a response's `Cache-Control` already keeps it out of shared
/// caches: a `private` (unqualified: `private="x"` covers only `x`) or
/// `no-store` directive.
fn kept_from_shared_caches(headers: &impl Fields) -> bool {
    headers
        .values(&header::CACHE_CONTROL)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|d| d.eq_ignore_ascii_case(b"private") || d.eq_ignore_ascii_case(b"no-store"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(value).unwrap());
        h
    }

    fn to_set(cookie: StickyCookie, label: &str) -> CookieToSet {
        CookieToSet {
            cookie: Arc::new(cookie),
            server: ServerId::of(label, None),
        }
    }

    fn set_cookie(cookie: StickyCookie, tls: bool) -> String {
        let mut lines = Lines::default();
        to_set(cookie, "ws://10.0.0.5:8080").set_on_101(&mut lines, tls);
        let line = std::str::from_utf8(lines.as_bytes()).unwrap();
        let value = line.strip_prefix("set-cookie: ").unwrap();
        value.strip_suffix("\r\n").unwrap().to_owned()
    }

    /// Pinned: a change here unsticks every client of every deployed fleet.
    #[test]
    fn ids_are_stable_hex_of_the_label() {
        let id = ServerId::of("ws://10.0.0.5:8080", None);
        assert_eq!(id, ServerId(xxh3_64(b"ws://10.0.0.5:8080")));
        assert_eq!(id.to_string().len(), 16);
        assert_eq!(ServerId::parse(id.to_string().as_bytes()), Some(id));
        assert_eq!(ServerId(0xab).to_string(), "00000000000000ab");
        assert_ne!(id, ServerId::of("ws://10.0.0.6:8080", None));
        assert_eq!(ServerId::of("ws://a:1", None).to_string(), PINNED_ID);
    }
    const PINNED_ID: &str = "c89135728bb4dbc2";

    /// Keyed: the first 8 bytes of HMAC-SHA256(key, label), as Python's
    /// `hmac` computes them; another key gives another id, and the key is
    /// never printed.
    #[test]
    fn keyed_ids_are_an_hmac_of_the_label() {
        let key = CookieKey::new(b"a fleet-wide sticky key");
        let id = ServerId::of("ws://a:1", Some(&key));
        assert_eq!(id.to_string(), "9ce85e7bc1fea2ca");
        assert_ne!(id, ServerId::of("ws://a:1", None));
        assert_ne!(
            id,
            ServerId::of("ws://a:1", Some(&CookieKey::new(b"another key, 16+ bytes")))
        );
        let mut cookie = StickyCookie::named("fg_srv");
        cookie.keys.push(key);
        let printed = format!("{cookie:?}");
        assert!(
            printed.contains("<redacted>") && !printed.contains("fleet"),
            "{printed}"
        );
    }

    /// During a key's rotation a cookie under either key names its
    /// server, and the ids set are the first key's.
    #[test]
    fn ids_under_an_older_key_still_name_their_server() {
        let (new, old) = (
            CookieKey::new(b"the new key, 16+ bytes"),
            CookieKey::new(b"the old key, 16+ bytes"),
        );
        let labels = ["ws://a:1", "ws://b:1"];
        let ids = ServerIds::new(labels.iter().copied(), &[new.clone(), old.clone()]);
        for (server, label) in labels.iter().enumerate() {
            assert_eq!(ids.of(server), ServerId::of(label, Some(&new)));
            assert_eq!(ids.server(ServerId::of(label, Some(&new))), Some(server));
            assert_eq!(ids.server(ServerId::of(label, Some(&old))), Some(server));
            assert_eq!(ids.server(ServerId::of(label, None)), None);
        }
        let unkeyed = ServerIds::new(labels.iter().copied(), &[]);
        assert_eq!(unkeyed.of(1), ServerId::of("ws://b:1", None));
        assert_eq!(unkeyed.server(ServerId::of("ws://b:1", Some(&new))), None);
    }

    #[test]
    fn anything_but_16_lower_hex_digits_is_no_id() {
        let bad: [&[u8]; 9] = [
            b"",
            b"0e3ddd06ee4a4c5",
            b"0e3ddd06ee4a4c533",
            b"0E3DDD06EE4A4C53",
            b"+e3ddd06ee4a4c53",
            b"0e3ddd06ee4a4c5g",
            b"\"0e3ddd06ee4a4c53\"",
            b"0e3ddd06 e4a4c53",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        ];
        for v in bad {
            assert_eq!(ServerId::parse(v), None, "{:?}", String::from_utf8_lossy(v));
        }
        assert_eq!(
            ServerId::parse(b"ffffffffffffffff"),
            Some(ServerId(u64::MAX))
        );
    }

    #[test]
    fn the_request_names_a_server_by_its_first_cookie() {
        let c = StickyCookie::named("fg_srv");
        let id = ServerId::of("ws://a:1", None);
        let h = with_cookie(&format!("theme=dark; fg_srv={id}; fg_srv=0000000000000001"));
        assert_eq!(c.requested(&h), Some(id));
        // The first is garbage: no id, even with a valid one after it.
        let h = with_cookie(&format!("fg_srv=<script>; fg_srv={id}"));
        assert_eq!(c.requested(&h), None);
        assert_eq!(c.requested(&with_cookie("other=1")), None);
        assert_eq!(c.requested(&HeaderMap::new()), None);
    }

    #[test]
    fn strip_takes_out_only_the_gateways_cookie() {
        let c = StickyCookie::named("fg_srv");
        let mut h = with_cookie("a=1; fg_srv=0e3ddd06ee4a4c53; io=abc");
        h.append(header::COOKIE, HeaderValue::from_static("fg_srv=junk"));
        c.strip(&mut h);
        assert_eq!(h[header::COOKIE], "a=1; io=abc");
    }

    #[test]
    fn the_default_cookie_is_a_lax_http_only_session_cookie() {
        let c = StickyCookie::named("fg_srv");
        let id = ServerId::of("ws://10.0.0.5:8080", None);
        assert_eq!(
            set_cookie(c.clone(), false),
            format!("fg_srv={id}; Path=/; HttpOnly; SameSite=Lax")
        );
        assert_eq!(
            set_cookie(c, true),
            format!("fg_srv={id}; Path=/; Secure; HttpOnly; SameSite=Lax")
        );
    }

    #[test]
    fn every_attribute_as_configured() {
        let c = StickyCookie {
            name: "__Host-srv".into(),
            path: "/chat".into(),
            domain: Some("example.com".into()),
            max_age: Some(Duration::from_millis(3_600_900)),
            secure: Some(false),
            http_only: false,
            same_site: SameSite::Strict,
            keys: Vec::new(),
        };
        let id = ServerId::of("ws://10.0.0.5:8080", None);
        assert_eq!(
            set_cookie(c.clone(), true),
            format!(
                "__Host-srv={id}; Path=/chat; Domain=example.com; Max-Age=3600; SameSite=Strict"
            )
        );
        // SameSite=None is Secure even on a plain listener, unless told not.
        let none = StickyCookie {
            same_site: SameSite::None,
            secure: None,
            ..c.clone()
        };
        assert!(set_cookie(none, false).ends_with("; Secure; SameSite=None"));
        let always = StickyCookie {
            secure: Some(true),
            ..c
        };
        assert!(set_cookie(always, false).contains("; Secure"));
    }

    #[test]
    fn a_response_gets_private_unless_it_is_already_kept_from_shared_caches() {
        let set = to_set(StickyCookie::named("fg_srv"), "ws://a:1");
        let with = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            h.append(header::SET_COOKIE, HeaderValue::from_static("app=1"));
            for v in values {
                h.append(header::CACHE_CONTROL, HeaderValue::from_static(v));
            }
            let mut lines = Lines::default();
            for (name, value) in &h {
                lines.push(name.as_str().as_bytes(), value.as_bytes());
            }
            set.set_on_response(&mut lines, &h, false);
            let text = std::str::from_utf8(lines.as_bytes()).unwrap();
            let all = |name: &str| -> Vec<String> {
                text.lines()
                    .filter_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                    .map(str::to_owned)
                    .collect()
            };
            (all("set-cookie"), all("cache-control"))
        };
        let (cookies, cc) = with(&[]);
        assert_eq!(cookies.len(), 2, "the backend's cookie stays: {cookies:?}");
        assert_eq!(cookies[0], "app=1");
        assert!(cookies[1].starts_with("fg_srv="));
        assert_eq!(cc, ["private"]);
        assert_eq!(
            with(&["public, max-age=60"]).1,
            ["public, max-age=60", "private"]
        );
        assert_eq!(with(&["private=\"x\""]).1, ["private=\"x\"", "private"]);
        assert_eq!(with(&["no-cache, PRIVATE"]).1, ["no-cache, PRIVATE"]);
        assert_eq!(
            with(&["max-age=0", " no-store"]).1,
            ["max-age=0", " no-store"]
        );
    }
}
