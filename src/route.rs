//! Choosing a route: the listener's routes, then host, then the longest
//! matching path prefix — the order nginx picks `listen`, `server` then
//! `location` in. Also the path rewrite.
//!
//! Host and path work on the normalised path ([`crate::proto::target`]) and
//! the validated host ([`crate::proto::host`]), never on what the client wrote.
//!
//! - **Listener**: a route bound to listeners by name serves only those;
//!   one bound to none serves every listener. Each listener gets its own
//!   table when the config is loaded, so `/` on one port and `/` on
//!   another are different routes, and matching never looks at the rest.
//! - **Host**: like nginx's `server_name`, the host picks one group of routes
//!   (an exact name, else the longest matching `*.suffix`, else the routes
//!   without a host), and only that group is searched: a request for a
//!   host with routes of its own never falls through to host-agnostic ones.
//! - **Path**: a prefix matches on segment boundaries. `/chat` matches
//!   `/chat` and `/chat/…`, not `/chatroom`; `/admin/` matches `/admin/…`
//!   and also `/admin` itself, so the bare name gets the protected route's
//!   policy instead of falling through to a shorter prefix (where nginx
//!   would answer a redirect, which WebSocket clients do not follow).

use std::{sync::Arc, time::Duration};

use http::Uri;

use crate::{
    admission,
    relay::SessionRules,
    upstream::{Group, Timeouts},
};

/// A policy file after checking: what sessions on a route are held to.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// Frame limits, timers and the close timeout of each session.
    pub session: SessionRules,
    /// Reaching the upstream.
    pub upstream: Timeouts,
    /// Authentication, origins, limits and rates.
    pub admission: Arc<admission::Rules>,
    /// Plain HTTP requests.
    pub http: HttpRules,
}

/// What plain (non-upgrade) HTTP requests on a route are held to; see
/// `config::file::HttpPolicy`, where each is documented.
#[derive(Debug, Clone, Copy)]
pub struct HttpRules {
    pub max_request_body: u64,
    pub response_timeout: Duration,
    pub body_timeout: Duration,
    /// The policy's token check applies to plain requests.
    pub auth: bool,
    /// The policy's Origin check applies to plain requests.
    pub origin: bool,
}

/// How a route matches the `Host`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
    Exact(String),
}

impl HostMatch {
    /// Parses a route's `host` as written: lower-cased already; a trailing
    /// dot is folded like a request's.
    fn parse(host: Option<&str>) -> Self {
        let host = host.map(|h| h.strip_suffix('.').unwrap_or(h));
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

    /// How specific a match is: exact names, then longer suffixes, then any.
    fn rank(&self) -> (u8, usize) {
        match self {
            HostMatch::Any => (0, 0),
            HostMatch::Suffix(s) => (1, s.len()),
            HostMatch::Exact(_) => (2, 0),
        }
    }
}

/// How much of `path` the route prefix `prefix` matches, on segment
/// boundaries; `None` if it does not (see the module doc).
fn matched(prefix: &str, path: &str) -> Option<usize> {
    if prefix == "/" {
        return Some(1);
    }
    match prefix.strip_suffix('/') {
        // `/admin/` matches `/admin/…` and `/admin`.
        Some(bare) if path == bare => Some(bare.len()),
        Some(_) => path.starts_with(prefix).then_some(prefix.len()),
        // `/chat` matches `/chat` and `/chat/…`.
        None => {
            let rest = path.strip_prefix(prefix)?;
            (rest.is_empty() || rest.starts_with('/')).then_some(prefix.len())
        }
    }
}

/// A route ready to serve.
#[derive(Debug)]
pub struct Route {
    /// `host/path` as written (`/chat`, `ws.example.com/`), for logs and as
    /// the key of the route's admission state (counts, handshake rate).
    /// A route bound to listeners has their names in front, sorted and
    /// joined with `,`: `public:/`, `admin,public:ws.example.com/`.
    ///
    /// Unique: config refuses two routes with one host and path unless
    /// their listener sets are apart, and then the names differ. The names
    /// hold no `,` or `:` and a host no `:`, so no label can be read two
    /// ways (an unbound label's first `:`, if any, comes after its `/`).
    pub label: String,
    /// The names of the listeners served; `None`: every listener.
    listeners: Option<Vec<String>>,
    host: HostMatch,
    prefix: String,
    rewrite: Option<String>,
    /// Its upstream group, whose servers follow its names' answers.
    pub upstream: Arc<Group>,
    pub policy: Arc<Policy>,
    pub preserve_host: bool,
    /// Plain HTTP requests are proxied (else they get 426).
    pub http: bool,
    /// Its metric handles, resolved when its generation is built.
    pub metrics: crate::observe::RouteMetrics,
}

impl Route {
    /// `listeners`: the names of the listeners it serves (as the config
    /// holds them: sorted, each once), or `None` for every listener.
    pub fn new(
        listeners: Option<Vec<String>>,
        host: Option<&str>,
        prefix: &str,
        rewrite: Option<&str>,
        upstream: Arc<Group>,
        policy: Arc<Policy>,
        preserve_host: bool,
    ) -> Self {
        let place = format!("{}{prefix}", host.unwrap_or(""));
        Route {
            label: match &listeners {
                None => place,
                Some(names) => format!("{}:{place}", names.join(",")),
            },
            listeners,
            host: HostMatch::parse(host),
            prefix: prefix.to_owned(),
            rewrite: rewrite.map(str::to_owned),
            upstream,
            policy,
            preserve_host,
            http: true,
            metrics: Default::default(),
        }
    }

    /// Sets the handles its sessions count on.
    pub fn with_metrics(mut self, metrics: crate::observe::RouteMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Sets whether plain HTTP requests are proxied.
    pub fn with_http(mut self, on: bool) -> Self {
        self.http = on;
        self
    }

    /// Whether the route serves the listener named `listener` (`None`: an
    /// unnamed listener, which serves only routes bound to none).
    fn serves(&self, listener: Option<&str>) -> bool {
        match (&self.listeners, listener) {
            (None, _) => true,
            (Some(names), Some(name)) => names.iter().any(|n| n == name),
            (Some(_), None) => false,
        }
    }

    /// The path and query to request upstream. `uri` is normalised and
    /// matched this route, so what follows the prefix has no dot-segments
    /// and starts at a segment boundary: a rewrite cannot leave its target.
    pub fn upstream_path(&self, uri: &Uri) -> String {
        let path = uri.path();
        let mut out = match &self.rewrite {
            None => path.to_owned(),
            Some(replacement) => {
                let rest = path.get(self.prefix.len()..).unwrap_or("");
                let mut joined = String::with_capacity(replacement.len() + rest.len() + 1);
                if !replacement.starts_with('/') {
                    joined.push('/');
                }
                joined.push_str(replacement);
                // One `/` between them: `/v2/` + `/x` is `/v2/x`.
                match (joined.ends_with('/'), rest.strip_prefix('/')) {
                    (true, Some(r)) => joined.push_str(r),
                    _ => joined.push_str(rest),
                }
                joined
            }
        };
        if let Some(q) = uri.query() {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// Every listener's routes, by listener number (config order).
#[derive(Debug)]
pub struct Routes {
    by_listener: Vec<RouteTable>,
}

impl Routes {
    /// Splits `routes` by the listeners they serve; `listeners` holds each
    /// listener's name, in config order. A route that serves several
    /// listeners is one `Route` in each of their tables.
    pub fn new<'a>(
        routes: &[Arc<Route>],
        listeners: impl IntoIterator<Item = Option<&'a str>>,
    ) -> Self {
        let by_listener = listeners
            .into_iter()
            .map(|name| {
                let served = routes.iter().filter(|r| r.serves(name)).cloned();
                RouteTable::new(served.collect())
            })
            .collect();
        Routes { by_listener }
    }

    /// The route for a request on listener number `listener` to `host` (a
    /// validated host, no port) and `path` (normalised): among that
    /// listener's routes, the host's group, then its longest prefix.
    pub fn find(&self, listener: usize, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.by_listener.get(listener)?.find(host, path)
    }
}

/// One listener's routes, most specific host first.
#[derive(Debug)]
struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    fn new(mut routes: Vec<Arc<Route>>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.host.rank()));
        RouteTable { routes }
    }

    /// The host's group, then its longest prefix (see [`Routes::find`]).
    fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        let group = &self.routes.iter().find(|r| r.host.matches(host))?.host;
        self.routes
            .iter()
            .filter(|r| r.host == *group)
            .filter_map(|r| Some((matched(&r.prefix, path)?, r)))
            // The longest match; of equal ones, the prefix that is the path.
            .max_by_key(|(len, r)| (*len, r.prefix.len() == *len))
            .map(|(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{proto::frame::FrameLimits, relay::SessionRules, upstream::GroupSpec};

    fn route(host: Option<&str>, prefix: &str, rewrite: Option<&str>) -> Route {
        bound(None, host, prefix, rewrite)
    }

    /// [`route`] serving only the listeners named in `listeners`.
    fn bound(
        listeners: Option<&[&str]>,
        host: Option<&str>,
        prefix: &str,
        rewrite: Option<&str>,
    ) -> Route {
        let limits = FrameLimits {
            max_frame: 1,
            max_message: 1,
        };
        let policy = Arc::new(Policy {
            name: "t".into(),
            session: SessionRules {
                client: limits,
                upstream: limits,
                close_timeout: Duration::from_secs(1),
                timers: Default::default(),
            },
            upstream: Timeouts {
                connect: Duration::from_secs(1),
                handshake: Duration::from_secs(1),
                attempt: Duration::from_secs(1),
            },
            admission: Arc::default(),
            http: HttpRules {
                max_request_body: 1,
                response_timeout: Duration::from_secs(1),
                body_timeout: Duration::from_secs(1),
                auth: true,
                origin: false,
            },
        });
        let upstream = Arc::new(Group::standalone(GroupSpec {
            name: prefix.to_owned(),
            ..GroupSpec::default()
        }));
        let listeners = listeners.map(|l| l.iter().map(|n| n.to_string()).collect());
        Route::new(listeners, host, prefix, rewrite, upstream, policy, true)
    }

    fn one_table(routes: Vec<Route>) -> RouteTable {
        RouteTable::new(routes.into_iter().map(Arc::new).collect())
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let table = one_table(vec![
            route(None, "/", None),
            route(None, "/admin/", None),
            route(None, "/chat", None),
        ]);
        let pick = |p: &str| table.find(None, p).map(|r| r.label.clone()).unwrap();
        assert_eq!(pick("/admin/"), "/admin/");
        assert_eq!(pick("/admin/x"), "/admin/");
        assert_eq!(pick("/admin"), "/admin/");
        assert_eq!(pick("/administrator"), "/");
        assert_eq!(pick("/chat"), "/chat");
        assert_eq!(pick("/chat/room"), "/chat");
        assert_eq!(pick("/chatroom"), "/");
        assert_eq!(pick("/chat../x"), "/");
        let both = one_table(vec![route(None, "/a", None), route(None, "/a/", None)]);
        assert_eq!(both.find(None, "/a").unwrap().label, "/a");
        assert_eq!(both.find(None, "/a/b").unwrap().label, "/a/");
    }

    #[test]
    fn a_host_with_routes_never_falls_through() {
        let table = one_table(vec![
            route(None, "/", None),
            route(Some("secure.example.com"), "/admin/", None),
            route(Some("*.example.com"), "/api/", None),
            route(Some("*.b.example.com"), "/b/", None),
        ]);
        let pick = |h: &str, p: &str| table.find(Some(h), p).map(|r| r.label.clone());
        assert_eq!(pick("secure.example.com", "/other"), None);
        assert_eq!(pick("x.example.com", "/other"), None);
        assert_eq!(pick("x.b.example.com", "/api/"), None);
        assert_eq!(
            pick("x.b.example.com", "/b/").as_deref(),
            Some("*.b.example.com/b/")
        );
        assert_eq!(pick("other.test", "/other").as_deref(), Some("/"));
        let dotted = one_table(vec![route(Some("a.test."), "/", None)]);
        assert!(dotted.find(Some("a.test"), "/").is_some());
    }

    #[test]
    fn host_then_longest_prefix() {
        let table = one_table(vec![
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
        assert_eq!(pick(Some("a.example.com"), "/chat"), None);
        assert_eq!(
            pick(Some("example.com"), "/api/x").as_deref(),
            Some("/api/")
        );
        assert_eq!(pick(None, "/chat").as_deref(), Some("/"));
    }

    #[test]
    fn each_listener_sees_only_its_routes() {
        let routes: Vec<_> = [
            bound(Some(&["a"]), None, "/", None),
            bound(Some(&["b"]), None, "/", None),
            bound(Some(&["a", "b"]), None, "/both/", None),
            route(None, "/all/", None),
            bound(Some(&["b"]), Some("only-b.test"), "/", None),
        ]
        .into_iter()
        .map(Arc::new)
        .collect();
        // Listeners a, b, an unnamed one, and c (no route names it).
        let routes = Routes::new(&routes, [Some("a"), Some("b"), None, Some("c")]);
        let pick = |listener: usize, host: Option<&str>, path: &str| {
            routes.find(listener, host, path).map(|r| r.label.clone())
        };
        assert_eq!(pick(0, None, "/x").as_deref(), Some("a:/"));
        assert_eq!(pick(1, None, "/x").as_deref(), Some("b:/"));
        assert_eq!(pick(0, None, "/both/x").as_deref(), Some("a,b:/both/"));
        assert_eq!(pick(1, None, "/both/x").as_deref(), Some("a,b:/both/"));
        assert_eq!(pick(0, None, "/all/x").as_deref(), Some("/all/"));
        assert_eq!(pick(2, None, "/all/x").as_deref(), Some("/all/"));
        assert_eq!(pick(2, None, "/x"), None);
        assert_eq!(pick(3, None, "/all/x").as_deref(), Some("/all/"));
        assert_eq!(pick(3, None, "/both/x"), None);
        // Host groups form within the listener's routes: only-b.test has a
        // route on b alone, so on a it takes a's host-agnostic routes, and
        // on b it never falls through to them.
        assert_eq!(pick(0, Some("only-b.test"), "/x").as_deref(), Some("a:/"));
        assert_eq!(
            pick(1, Some("only-b.test"), "/x").as_deref(),
            Some("b:only-b.test/")
        );
        assert_eq!(
            pick(1, Some("only-b.test"), "/all/x").as_deref(),
            Some("b:only-b.test/")
        );
        // A listener past the last is no one's.
        assert_eq!(pick(4, None, "/all/x"), None);
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
        let bare: Uri = "/services/myservice".parse().unwrap();
        assert_eq!(v2.upstream_path(&bare), "/v2/");
        let noslash = route(None, "/rwnoslash", Some("/v3"));
        let uri: Uri = "/rwnoslash/secret".parse().unwrap();
        assert_eq!(noslash.upstream_path(&uri), "/v3/secret");
        let uri: Uri = "/rwnoslash".parse().unwrap();
        assert_eq!(noslash.upstream_path(&uri), "/v3");
        let strip = route(None, "/noslash", Some(""));
        let uri: Uri = "/noslash/chat".parse().unwrap();
        assert_eq!(strip.upstream_path(&uri), "/chat");
        let uri: Uri = "/noslash".parse().unwrap();
        assert_eq!(strip.upstream_path(&uri), "/");
        let into_dir = route(None, "/p", Some("/v2/"));
        let uri: Uri = "/p/x".parse().unwrap();
        assert_eq!(into_dir.upstream_path(&uri), "/v2/x");
    }
}
