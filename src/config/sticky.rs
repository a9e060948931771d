//! `[upstream.NAME]`'s `sticky_cookie`: a cookie name, or a table with the
//! cookie's attributes; checked into a [`StickyCookie`] with `file:line`
//! errors (upstream/sticky.rs has what the gateway does with it).

use std::{sync::Arc, time::Duration};

use serde::Deserialize;

use super::{file::UpstreamSection, units::Leeway, Checker};
use crate::upstream::{CookieKey, KeySource, SameSite, StickyCookie};

/// `sticky_cookie = "fg_srv"`, or `sticky_cookie = { name = "fg_srv",
/// path = "/", domain = "example.com", max_age = "1h", secure = true,
/// http_only = true, same_site = "lax", key_env = "FRAMEGATE_STICKY_KEY" }`
/// (or `key_env = ["NEW_KEY", "OLD_KEY"]` while a key is rotated).
#[derive(Debug, Default)]
pub struct StickyCookieSection {
    /// The cookie's name (letters, digits and `!#$%&'*+-.^_`|~`).
    pub name: String,
    /// `Path`; `/` when omitted.
    pub path: Option<String>,
    /// `Domain`; when omitted the cookie goes back to this host only.
    pub domain: Option<String>,
    /// `Max-Age`, at least 1s; a session cookie when omitted.
    pub max_age: Option<Leeway>,
    /// `Secure` always (`true`) or never (`false`); when omitted, on TLS
    /// listeners (and always with `same_site = "none"`).
    pub secure: Option<bool>,
    /// `HttpOnly`; `true` when omitted.
    pub http_only: Option<bool>,
    /// `"lax"` (when omitted), `"strict"` or `"none"`.
    pub same_site: Option<String>,
    /// The environment variables holding the keys of the cookie's values
    /// (at least 16 bytes each): the first signs, every one is accepted;
    /// unkeyed when omitted.
    pub key_env: Option<Vec<String>>,
}

/// Written by hand, for the same reason as [`super::file::OneOrMany`].
impl<'de> Deserialize<'de> for StickyCookieSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            name: String,
            path: Option<String>,
            domain: Option<String>,
            max_age: Option<Leeway>,
            secure: Option<bool>,
            http_only: Option<bool>,
            same_site: Option<String>,
            key_env: Option<Names>,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StickyCookieSection;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a cookie name or a table { name = \"fg_srv\", path = \"/\", ... }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StickyCookieSection {
                    name: v.to_owned(),
                    ..StickyCookieSection::default()
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(StickyCookieSection {
                    name: t.name,
                    path: t.path,
                    domain: t.domain,
                    max_age: t.max_age,
                    secure: t.secure,
                    http_only: t.http_only,
                    same_site: t.same_site,
                    key_env: t.key_env.map(|n| n.0),
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `"VAR"` or `["VAR", ...]`.
struct Names(Vec<String>);

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Names;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a variable name or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Names, E> {
                Ok(Names(vec![v.to_owned()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Names, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(Names)
            }
        }
        d.deserialize_any(V)
    }
}

impl Checker<'_> {
    /// The group's sticky cookie, if it sets one; errors for what does not
    /// hold, alone or with the group's `balance` and rebalance.
    pub(super) fn sticky_cookie(
        &mut self,
        name: &str,
        u: &UpstreamSection,
        source: Option<&KeySource>,
    ) -> Option<Arc<StickyCookie>> {
        let at = u.sticky_cookie.as_ref()?;
        let cookie = match check(at.get_ref(), |var| std::env::var_os(var)) {
            Ok(c) => c,
            Err(msg) => {
                self.err(at, format!("upstream `{name}`: sticky_cookie {msg}"));
                return None;
            }
        };
        if let (Some(KeySource::Cookie(hashed)), Some(b)) = (source, &u.balance) {
            if *hashed == cookie.name {
                self.err(
                    b,
                    format!(
                        "upstream `{name}` hashes the cookie `{hashed}` that its sticky_cookie \
                         sets; balance on something else (it places clients without the cookie)"
                    ),
                );
            }
        }
        if let Some(r) = &u.rebalance_per_second {
            // A moved session's cookie would bring it straight back.
            self.err(
                r,
                format!(
                    "upstream `{name}`: rebalance_per_second cannot move sessions that \
                     sticky_cookie pins to their server (they would reconnect to it); use one"
                ),
            );
        }
        Some(Arc::new(cookie))
    }
}

/// The smallest key a `key_env` variable may hold: 128 bits.
const MIN_KEY: usize = 16;

/// The cookie as written, or what is wrong with it (after
/// `sticky_cookie `). `env` reads the key's variable.
fn check(
    s: &StickyCookieSection,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<StickyCookie, String> {
    let mut c = StickyCookie::named(&s.name);
    let vars = s.key_env.as_deref().unwrap_or_default();
    if s.key_env.is_some() && vars.is_empty() {
        return Err("key_env: name at least one variable (omit it for no key)".into());
    }
    for var in vars {
        let key = env(var).map(std::ffi::OsString::into_encoded_bytes);
        match key {
            Some(key) if key.len() >= MIN_KEY => c.keys.push(CookieKey::new(&key)),
            // The value is never printed, only its variable's name.
            _ => {
                return Err(format!(
                    "key_env: environment variable {var} is unset or shorter than {MIN_KEY} bytes"
                ))
            }
        }
    }
    if s.name.is_empty() || !s.name.bytes().all(is_token) {
        return Err(format!(
            "name `{}` is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
            s.name
        ));
    }
    if let Some(path) = &s.path {
        if !path.starts_with('/') || !path.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b';') {
            return Err(format!(
                "path `{path}` must start with `/` and hold printable ASCII other than `;`"
            ));
        }
        c.path.clone_from(path);
    }
    if let Some(domain) = &s.domain {
        let label = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
        if domain.trim_start_matches('.').is_empty() || !domain.bytes().all(label) {
            return Err(format!("domain `{domain}` is not a host name"));
        }
        c.domain = Some(domain.clone());
    }
    if let Some(Leeway(age)) = s.max_age {
        if age < Duration::from_secs(1) {
            return Err("max_age must be at least 1s (omit it for a session cookie)".into());
        }
        c.max_age = Some(age);
    }
    c.secure = s.secure;
    c.http_only = s.http_only.unwrap_or(true);
    if let Some(same_site) = &s.same_site {
        c.same_site = match same_site.to_ascii_lowercase().as_str() {
            "lax" => SameSite::Lax,
            "strict" => SameSite::Strict,
            "none" => SameSite::None,
            _ => {
                return Err(format!(
                    "same_site `{same_site}` is not one of \"lax\", \"strict\", \"none\""
                ))
            }
        };
    }
    if c.same_site == SameSite::None && c.secure == Some(false) {
        return Err("same_site = \"none\" needs Secure: browsers drop it otherwise".into());
    }
    // Browsers keep such cookies only with these attributes (RFC 6265bis
    // §4.1.3): say so at load, not by a cookie that never comes back.
    let host = c.name.starts_with("__Host-");
    if (host || c.name.starts_with("__Secure-")) && c.secure != Some(true) {
        return Err(format!("`{}` needs secure = true", c.name));
    }
    if host && (c.path != "/" || c.domain.is_some()) {
        return Err(format!("`{}` needs path = \"/\" and no domain", c.name));
    }
    Ok(c)
}

/// An RFC 6265 cookie-name byte (an RFC 9110 token character).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<std::ffi::OsString> {
        None
    }

    /// A key is read from its variable; one unset or too short is refused
    /// by the variable's name, never its value.
    #[test]
    fn a_key_comes_from_its_variable() {
        let keyed = StickyCookieSection {
            key_env: Some(vec!["STICKY_KEY".into()]),
            ..named("fg_srv")
        };
        let env =
            |value: &'static str| move |var: &str| (var == "STICKY_KEY").then(|| value.into());
        let c = check(&keyed, env("sixteen bytes ok")).unwrap();
        assert_eq!(c.keys, [CookieKey::new(b"sixteen bytes ok")]);
        for short in ["", "fifteen bytes!!"] {
            let e = check(&keyed, env(short)).unwrap_err();
            assert_eq!(
                e,
                "key_env: environment variable STICKY_KEY is unset or shorter than 16 bytes"
            );
        }
        assert!(check(&keyed, no_env).is_err());
    }

    /// While a key is rotated, several: the first signs, each is read, in
    /// order; an empty list is refused, not taken for no key.
    #[test]
    fn keys_in_rotation_are_read_in_order() {
        let t: toml::Table = toml::from_str(
            r#"a = { name = "s", key_env = "NEW" }
               b = { name = "s", key_env = ["NEW", "OLD"] }
               c = { name = "s", key_env = [] }"#,
        )
        .unwrap();
        let section = |k: &str| StickyCookieSection::deserialize(t[k].clone()).unwrap();
        let env = |var: &str| match var {
            "NEW" => Some("the new key, 16+ bytes".into()),
            "OLD" => Some("the old key, 16+ bytes".into()),
            _ => None,
        };
        let new = CookieKey::new(b"the new key, 16+ bytes");
        let old = CookieKey::new(b"the old key, 16+ bytes");
        assert_eq!(
            check(&section("a"), env).unwrap().keys,
            std::slice::from_ref(&new)
        );
        assert_eq!(check(&section("b"), env).unwrap().keys, [new, old]);
        assert_eq!(
            check(&section("c"), env).unwrap_err(),
            "key_env: name at least one variable (omit it for no key)"
        );
    }

    fn named(name: &str) -> StickyCookieSection {
        StickyCookieSection {
            name: name.into(),
            ..StickyCookieSection::default()
        }
    }

    #[test]
    fn a_name_alone_takes_the_defaults() {
        assert_eq!(
            check(&named("fg_srv"), no_env),
            Ok(StickyCookie::named("fg_srv"))
        );
    }

    #[test]
    fn every_attribute() {
        let s = StickyCookieSection {
            name: "SRV".into(),
            path: Some("/chat".into()),
            domain: Some(".example.com".into()),
            max_age: Some(Leeway(Duration::from_secs(3600))),
            secure: Some(true),
            http_only: Some(false),
            same_site: Some("None".into()),
            key_env: None,
        };
        assert_eq!(
            check(&s, no_env),
            Ok(StickyCookie {
                name: "SRV".into(),
                path: "/chat".into(),
                domain: Some(".example.com".into()),
                max_age: Some(Duration::from_secs(3600)),
                secure: Some(true),
                http_only: false,
                same_site: SameSite::None,
                keys: Vec::new(),
            })
        );
    }

    #[test]
    fn what_a_browser_would_not_take_is_refused() {
        let bad = |s: StickyCookieSection| check(&s, no_env).unwrap_err();
        for name in ["", "a b", "a;b", "a=b", "srv\u{e9}", "(x)"] {
            assert!(
                bad(named(name)).contains("is not a cookie name"),
                "{name:?}"
            );
        }
        let with = |f: fn(&mut StickyCookieSection)| {
            let mut s = named("srv");
            f(&mut s);
            bad(s)
        };
        assert!(with(|s| s.path = Some("chat".into())).contains("must start with `/`"));
        assert!(with(|s| s.path = Some("/a;b".into())).contains("must start with `/`"));
        assert!(with(|s| s.domain = Some("a b".into())).contains("not a host name"));
        assert!(with(|s| s.domain = Some(".".into())).contains("not a host name"));
        assert!(
            with(|s| s.max_age = Some(Leeway(Duration::from_millis(500)))).contains("at least 1s")
        );
        assert!(with(|s| s.same_site = Some("loose".into())).contains("is not one of"));
        assert!(with(|s| {
            s.same_site = Some("none".into());
            s.secure = Some(false);
        })
        .contains("needs Secure"));
        assert!(bad(named("__Secure-srv")).contains("needs secure = true"));
        assert!(bad(named("__Host-srv")).contains("needs secure = true"));
        let host = |path: &str| StickyCookieSection {
            secure: Some(true),
            path: Some(path.into()),
            ..named("__Host-srv")
        };
        assert!(bad(host("/chat")).contains("path = \"/\""));
        assert!(check(&host("/"), no_env).is_ok());
    }
}
