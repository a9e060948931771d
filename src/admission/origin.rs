//! The `Origin` allow-list: a browser sends the page's origin on every
//! WebSocket upgrade and, unlike XHR, enforces no same-origin rule on the
//! answer. Without this check any site a logged-in user visits can open a
//! WebSocket with the user's cookies (cross-site WebSocket hijacking).

use http::{header, HeaderMap, StatusCode};

use crate::proto::reject::{Reason, Reject};

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `https://app.example.com`
    Exact(String),
    /// `https://*.example.com`: `scheme://` and `.example.com[:port]`.
    Subdomains { scheme: String, suffix: String },
}

/// A route's `[origin]` rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origins {
    allow: Vec<Pattern>,
    allow_missing: bool,
}

impl Origins {
    /// Checks each pattern; `Err` says what is wrong with the first bad one.
    pub fn new<'a>(
        allow: impl IntoIterator<Item = &'a str>,
        allow_missing: bool,
    ) -> Result<Self, (usize, String)> {
        let allow = allow
            .into_iter()
            .enumerate()
            .map(|(i, p)| parse(p).map_err(|e| (i, e)))
            .collect::<Result<_, _>>()?;
        Ok(Origins {
            allow,
            allow_missing,
        })
    }

    /// `Ok` when the request's `Origin` is allowed (or absent and that is allowed).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Reject> {
        let forbidden =
            |why: &str| Reject::new(StatusCode::FORBIDDEN, Reason::ForbiddenOrigin, why);
        let mut values = headers.get_all(header::ORIGIN).iter();
        let origin = match (values.next(), values.next()) {
            (None, _) if self.allow_missing => return Ok(()),
            (None, _) => return Err(forbidden("an Origin header is required")),
            (Some(_), Some(_)) => return Err(forbidden("more than one Origin header")),
            (Some(v), None) => v
                .to_str()
                .map_err(|_| forbidden("origin not allowed"))?
                .to_ascii_lowercase(),
        };
        if self.allow.iter().any(|p| p.matches(&origin)) {
            Ok(())
        } else {
            Err(forbidden("origin not allowed"))
        }
    }
}

impl Pattern {
    fn matches(&self, origin: &str) -> bool {
        match self {
            Pattern::Exact(o) => o == origin,
            Pattern::Subdomains { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                .is_some_and(is_host_labels),
        }
    }
}

/// One or more DNS labels: `a`, `a.b`, not empty, no port, path or userinfo.
fn is_host_labels(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn parse(pattern: &str) -> Result<Pattern, String> {
    let p = pattern.to_ascii_lowercase();
    let Some((scheme, host)) = p.split_once("://") else {
        return Err(format!(
            "origin `{pattern}` must be scheme://host[:port], e.g. \"https://app.example.com\""
        ));
    };
    if scheme.is_empty() || host.is_empty() || host.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "origin `{pattern}` must be scheme://host[:port] with no path or trailing slash"
        ));
    }
    match host.strip_prefix("*.") {
        Some(rest) if !rest.contains('*') && !rest.is_empty() => Ok(Pattern::Subdomains {
            scheme: format!("{scheme}://"),
            suffix: format!(".{rest}"),
        }),
        _ if host.contains('*') => Err(format!(
            "origin `{pattern}`: a wildcard may only be the first label, as in https://*.example.com"
        )),
        _ => Ok(Pattern::Exact(p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(origin: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static(origin));
        h
    }

    #[test]
    fn exact_and_subdomain_patterns() {
        let o = Origins::new(["https://App.example.com", "https://*.example.org"], false).unwrap();
        assert!(o.check(&with("https://app.example.com")).is_ok());
        assert!(o.check(&with("HTTPS://APP.EXAMPLE.COM")).is_ok());
        assert!(o.check(&with("http://app.example.com")).is_err());
        assert!(o.check(&with("https://app.example.com:8443")).is_err());
        assert!(o.check(&with("https://a.example.org")).is_ok());
        assert!(o.check(&with("https://a.b.example.org")).is_ok());
        assert!(o.check(&with("https://example.org")).is_err());
        assert!(o.check(&with("https://evil.com/.example.org")).is_err());
        assert!(o.check(&with("https://evilexample.org")).is_err());
        assert!(o.check(&with("null")).is_err());
        let err = o.check(&HeaderMap::new()).unwrap_err();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
        let lenient = Origins::new(["https://a.example"], true).unwrap();
        assert!(lenient.check(&HeaderMap::new()).is_ok());
        assert!(lenient.check(&with("https://b.example")).is_err());
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(Origins::new(["app.example.com"], false).is_err());
        assert!(Origins::new(["https://app.example.com/"], false).is_err());
        assert!(Origins::new(["https://a.*.example.com"], false).is_err());
        assert_eq!(
            Origins::new(["https://ok", "https://*"], false)
                .unwrap_err()
                .0,
            1
        );
    }
}
