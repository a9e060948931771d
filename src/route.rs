//! Choosing a route: host first (exact, then wildcard, then any), then the
//! longest matching path prefix — the order nginx picks `server` then
//! `location` in. Also the path rewrite.

use std::sync::Arc;

use http::Uri;

use crate::{config::Policy, upstream::Upstream};

/// How a route matches the `Host`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
    Exact(String),
}

impl HostMatch {
    fn parse(host: Option<&str>) -> Self {
        match host {
            None => HostMatch::Any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_owned()),
                None => HostMatch::Exact(h.to_owned()),
            },
        }
    }

    fn matches(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (HostMatch::Any, _) => true,
            (HostMatch::Exact(h), Some(got)) => h == got,
            (HostMatch::Suffix(s), Some(got)) => got.len() > s.len() && got.ends_with(s.as_str()),
            (_, None) => false,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            HostMatch::Any => 0,
            HostMatch::Suffix(_) => 1,
            HostMatch::Exact(_) => 2,
        }
    }
}

/// A route ready to serve.
#[derive(Debug)]
pub struct Route {
    /// `host/path` as written, for logs.
    pub label: String,
    host: HostMatch,
    prefix: String,
    rewrite: Option<String>,
    pub upstream: Arc<Upstream>,
    pub policy: Arc<Policy>,
    pub preserve_host: bool,
}

impl Route {
    pub fn new(
        host: Option<&str>,
        prefix: &str,
        rewrite: Option<&str>,
        upstream: Arc<Upstream>,
        policy: Arc<Policy>,
        preserve_host: bool,
    ) -> Self {
        Route {
            label: format!("{}{prefix}", host.unwrap_or("")),
            host: HostMatch::parse(host),
            prefix: prefix.to_owned(),
            rewrite: rewrite.map(str::to_owned),
            upstream,
            policy,
            preserve_host,
        }
    }

    /// The path and query to request upstream.
    pub fn upstream_path(&self, uri: &Uri) -> String {
        let path = uri.path();
        let mut out = match &self.rewrite {
            None => path.to_owned(),
            Some(replacement) => {
                let rest = &path[self.prefix.len().min(path.len())..];
                let joined = format!("{replacement}{rest}");
                if joined.starts_with('/') {
                    joined
                } else {
                    format!("/{joined}")
                }
            }
        };
        if let Some(q) = uri.query() {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// All routes, most specific first.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse((r.host.rank(), r.prefix.len())));
        RouteTable {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    /// The route for a request to `host` (lower-case, no port) and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| r.host.matches(host) && path.starts_with(r.prefix.as_str()))
    }
}

/// The request's host, lower-cased and without a port.
pub fn host_of(authority: &str) -> String {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FrameLimits, Policy};
    use std::time::Duration;

    fn route(host: Option<&str>, prefix: &str, rewrite: Option<&str>) -> Route {
        let limits = FrameLimits {
            max_frame: 1,
            max_message: 1,
        };
        let policy = Arc::new(Policy {
            name: "t".into(),
            client: limits,
            upstream: limits,
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            close_timeout: Duration::from_secs(1),
            timers: Default::default(),
            admission: Arc::default(),
        });
        let upstream = Arc::new(Upstream::new(prefix.to_owned(), Vec::new()));
        Route::new(host, prefix, rewrite, upstream, policy, true)
    }

    #[test]
    fn host_then_longest_prefix() {
        let table = RouteTable::new(vec![
            route(None, "/", None),
            route(None, "/api/", None),
            route(Some("ws.example.com"), "/", None),
            route(Some("*.example.com"), "/api/", None),
        ]);
        let pick = |h: Option<&str>, p: &str| table.find(h, p).map(|r| r.label.clone());
        assert_eq!(pick(Some("other.org"), "/api/x").as_deref(), Some("/api/"));
        assert_eq!(
            pick(Some("ws.example.com"), "/api/x").as_deref(),
            Some("ws.example.com/")
        );
        assert_eq!(
            pick(Some("a.example.com"), "/api/x").as_deref(),
            Some("*.example.com/api/")
        );
        assert_eq!(
            pick(Some("example.com"), "/api/x").as_deref(),
            Some("/api/")
        );
        assert_eq!(pick(None, "/chat").as_deref(), Some("/"));
    }

    #[test]
    fn rewrites() {
        let uri: Uri = "/services/myservice/chat?room=1".parse().unwrap();
        let strip = route(None, "/services/myservice/", Some(""));
        assert_eq!(strip.upstream_path(&uri), "/chat?room=1");
        let v2 = route(None, "/services/myservice/", Some("/v2/"));
        assert_eq!(v2.upstream_path(&uri), "/v2/chat?room=1");
        let exact = route(None, "/services/myservice/chat", Some(""));
        assert_eq!(exact.upstream_path(&uri), "/?room=1");
        let keep = route(None, "/services/", None);
        assert_eq!(keep.upstream_path(&uri), "/services/myservice/chat?room=1");
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_of("WS.Example.com:8443"), "ws.example.com");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
