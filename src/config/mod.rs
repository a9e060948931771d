//! Configuration: parsed once, checked once, then immutable.
//!
//! [`file`](mod@file) holds the serde structs the operator writes; [`Config::load`]
//! turns them into the typed values the data path uses, collecting every
//! problem it can find as `file:line: what is wrong` instead of stopping at
//! the first ([`parse`] does so for keys serde cannot read, too), and
//! [`warn`] the values that are legal but probably not meant.

pub mod admin;
mod admission;
pub mod file;
pub mod health;
mod net;
mod parse;
pub mod sticky;
pub mod units;
mod warn;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::SocketAddr,
    num::NonZeroU32,
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls_pki_types::ServerName;
use toml::Spanned;

use crate::{
    http::ServerSettings,
    proto::frame::FrameLimits,
    relay::{
        lifecycle::{Keepalive, Rules},
        SessionRules,
    },
    route::{HttpRules, Policy},
    tls,
    upstream::{
        resolve::Nameservers, Balance, KeySource, Pick, PoolLimits, ServerSpec, Timeouts,
        MAX_WEIGHT,
    },
};
use file::{ConfigFile, ListenerSection, PolicyFile, RouteSection, UpstreamSection};

/// The checked configuration the gateway runs with.
#[derive(Debug)]
pub struct Config {
    /// Limits that apply before a route is chosen.
    pub server: ServerSettings,
    /// Sockets to accept on.
    pub listeners: Vec<ListenerConfig>,
    /// Routes in the order written; matching picks the most specific.
    pub routes: Vec<RouteConfig>,
    /// Upstream groups by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// The DNS servers of `[resolver]`; `None`: the system's resolver.
    pub resolver: Option<Nameservers>,
    /// Values that are legal but probably not meant (config/warn.rs),
    /// as `file:line: what is surprising`.
    pub warnings: Vec<ConfigError>,
    /// `[log]`, before the environment's overrides ([`crate::log::from_env`]).
    pub log: crate::log::Settings,
    /// `[admin]`, if present.
    pub admin: Option<admin::AdminConfig>,
}

/// One socket to accept on.
#[derive(Debug)]
pub struct ListenerConfig {
    /// What routes bind to; unique among listeners.
    pub name: Option<String>,
    pub addr: SocketAddr,
    /// Present for `wss` listeners.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
}

/// A route after checking: every name resolved, the rewrite normalised.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Lower-cased host, or `*.suffix`.
    pub host: Option<String>,
    pub path: String,
    /// The names of the listeners the route serves, sorted, each once (so
    /// one set is always written one way); `None`: every listener.
    pub listeners: Option<Vec<String>>,
    /// What replaces the matched prefix (`""` for `strip_prefix`), if anything.
    pub rewrite: Option<String>,
    pub upstream: String,
    pub policy: Arc<Policy>,
    pub preserve_host: bool,
    /// Plain HTTP requests are proxied.
    pub http: bool,
}

/// An upstream group: where its connections go, and its idle pool.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub servers: UpstreamServers,
    pub pool: PoolLimits,
    pub balance: Balance,
    /// Passive ejection, active probes, drain window (config/health.rs).
    pub health: crate::upstream::health::Settings,
    /// URLs of the servers marked `drain = true`.
    pub draining: std::collections::BTreeSet<String>,
    /// Source addresses and name resolution (config/net.rs).
    pub network: crate::upstream::Network,
}

/// Where an upstream's connections go.
#[derive(Debug, Clone)]
pub enum UpstreamServers {
    /// Real servers, spread as the group's `balance` says.
    Servers(Vec<ServerSpec>),
    /// The gateway's own echo server.
    BuiltinEcho,
}

/// One problem found in a config or policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Everything wrong with a config, one problem per line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A file being checked: its name and text, so spans become line numbers.
struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    fn read(path: &Path) -> Result<Source, ConfigError> {
        std::fs::read_to_string(path)
            .map(|text| Source {
                path: path.to_owned(),
                text,
            })
            .map_err(|e| ConfigError {
                file: path.to_owned(),
                line: 0,
                message: format!("cannot read: {e}"),
            })
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let line = self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1;
        ConfigError {
            file: self.path.clone(),
            line,
            message: message.into(),
        }
    }

    /// Every key that cannot be taken as written, not only the first.
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Vec<ConfigError>> {
        parse::parse_all(&self.text).map_err(|mut problems| {
            problems.sort_by_key(|(span, _)| span.start);
            problems
                .into_iter()
                .map(|(span, message)| self.error(span, message))
                .collect()
        })
    }

    /// The warnings found at `path`s in this file, at their keys' lines.
    fn warnings(&self, found: Vec<warn::Warning>) -> impl Iterator<Item = ConfigError> + '_ {
        found.into_iter().map(|(path, message)| {
            let span = warn::span_of(&self.text, path).unwrap_or(0..0);
            self.error(span, message)
        })
    }
}

impl Config {
    /// Reads and checks `path` and the policy files its routes name.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let source = Source::read(path).map_err(|e| ConfigErrors(vec![e]))?;
        let file: ConfigFile = source.parse().map_err(ConfigErrors)?;
        Checker::new(&source).check(file)
    }
}

/// Collects problems while turning a [`ConfigFile`] into a [`Config`].
struct Checker<'a> {
    source: &'a Source,
    base: PathBuf,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
    policies: HashMap<String, Option<Arc<Policy>>>,
}

impl<'a> Checker<'a> {
    fn new(source: &'a Source) -> Self {
        let base = source.path.parent().map(Path::to_owned).unwrap_or_default();
        Checker {
            source,
            base,
            errors: Vec::new(),
            warnings: Vec::new(),
            policies: HashMap::new(),
        }
    }

    fn err<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.errors.push(self.source.error(at.span(), message));
    }

    /// `[log]`: the level must parse as a filter; a file is relative to
    /// the config.
    fn log(&mut self, l: &file::LogSection) -> crate::log::Settings {
        let mut settings = crate::log::Settings {
            format: l.format,
            ..Default::default()
        };
        if let Some(level) = &l.level {
            match tracing_subscriber::EnvFilter::try_new(level.get_ref()) {
                Ok(_) => settings.level = level.get_ref().clone(),
                Err(e) => self.err(level, format!("not a log level or filter: {e}")),
            }
        }
        settings.access = match l.access.as_deref().map(crate::log::Destination::parse) {
            Some(crate::log::Destination::File(p)) => {
                crate::log::Destination::File(self.path(&p.to_string_lossy()))
            }
            Some(d) => d,
            None => crate::log::Destination::Stdout,
        };
        settings
    }

    /// A path written in the config, relative to the config file.
    fn path(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }

    fn check(mut self, file: ConfigFile) -> Result<Config, ConfigErrors> {
        let server = self.server(&file.server);
        let surprising = self.source.warnings(warn::server(&file.server));
        self.warnings.extend(surprising);
        if file.listeners.is_empty() {
            self.errors.push(
                self.source
                    .error(0..0, "no [[listener]]: add one with addr = \"IP:port\""),
            );
        }
        let named = self.listener_names(&file.listeners);
        let listeners: Vec<_> = file
            .listeners
            .iter()
            .filter_map(|l| self.listener(l))
            .collect();
        let upstreams: BTreeMap<_, _> = file
            .upstreams
            .iter()
            .filter_map(|(name, u)| Some((name.clone(), self.upstream(name, u)?)))
            .collect();
        let resolver = file.resolver.as_ref().and_then(|r| self.resolver(r));
        let log = self.log(&file.log);
        let admin = file.admin.as_ref().and_then(|a| self.admin(a, &listeners));
        if file.routes.is_empty() {
            self.errors.push(
                self.source
                    .error(0..0, "no [[route]]: nothing would be served"),
            );
        }
        let policy_dir = self.path(file.policy_dir.get_ref());
        // Only a `policy_dir` the config names: without one, no `policies/`
        // is the intended way to run on the built-in default policy.
        if file.policy_dir.span() != (0..0) && !policy_dir.is_dir() {
            let message = format!(
                "policy_dir {} is not a directory: routes on the `default` policy get the built-in one",
                policy_dir.display()
            );
            let warning = self.source.error(file.policy_dir.span(), message);
            self.warnings.push(warning);
        }
        // The listener sets of the routes checked so far, by host and path,
        // with the line of each route's `path` (or its table) for the clash.
        let mut seen: HashMap<_, Vec<(Bound, usize)>> = HashMap::new();
        let mut routes = Vec::new();
        for r in &file.routes {
            let bound = self.bound_listeners(r, &named);
            let key = (
                r.host.as_ref().map(|h| h.get_ref().to_ascii_lowercase()),
                r.path.get_ref().clone(),
            );
            let line = self.source.error(route_span(r), "").line;
            let same_place = seen.entry(key).or_default();
            if let Some(why) = same_place.iter().find_map(|(other, at)| {
                let why = clash(other, &bound)?;
                Some(format!(
                    "{why}: the route at {}:{at}",
                    self.source.path.display()
                ))
            }) {
                self.errors.push(self.source.error(route_span(r), why));
            }
            same_place.push((bound.clone(), line));
            if !file.upstreams.contains_key(r.upstream.get_ref()) {
                let known: Vec<_> = file.upstreams.keys().map(String::as_str).collect();
                self.err(
                    &r.upstream,
                    format!(
                        "route to undefined upstream `{}` (defined: {})",
                        r.upstream.get_ref(),
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            if let Some(route) = self.route(r, bound, &policy_dir) {
                let balance = upstreams.get(&route.upstream).map(|u| &u.balance);
                if let Some(Some(KeySource::Claim(claim))) = balance.map(|b| &b.source) {
                    if route.policy.admission.auth.is_none() {
                        self.err(
                            &r.upstream,
                            format!(
                                "upstream `{}` balances on the claim `{claim}`, but policy `{}` \
                                 has no [auth] to read it from",
                                route.upstream, route.policy.name
                            ),
                        );
                    }
                }
                routes.push(route);
            }
        }
        if self.errors.is_empty() {
            self.warnings
                .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            Ok(Config {
                server,
                listeners,
                routes,
                upstreams,
                resolver,
                warnings: self.warnings,
                log,
                admin,
            })
        } else {
            self.errors
                .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            Err(ConfigErrors(self.errors))
        }
    }

    fn server(&mut self, s: &file::ServerSection) -> ServerSettings {
        let header_bytes = s.max_header_bytes.get_ref().0;
        if header_bytes < 8192 {
            self.err(
                &s.max_header_bytes,
                "max_header_bytes must be at least 8KiB",
            );
        }
        let max_headers = *s.max_headers.get_ref();
        if !(8..=1024).contains(&max_headers) {
            self.err(&s.max_headers, "max_headers must be between 8 and 1024");
        }
        ServerSettings {
            underscores_in_headers: s.underscores_in_headers,
            request_timeout: s.request_timeout.0,
            tls_handshake_timeout: s.tls_handshake_timeout.0,
            max_header_bytes: header_bytes.max(8192) as usize,
            max_headers: max_headers.clamp(8, 1024),
            drain_timeout: s.drain_timeout.0,
            drain_spread: s.drain_spread.0,
            keepalive_timeout: s.keepalive_timeout.0,
            admission: self.server_rules(s),
        }
    }

    /// Checks the listeners' names and returns them, in config order.
    ///
    /// Names are kept to `[a-z0-9_-]` not only for tidiness: route labels
    /// join them with `,` and end them with `:`, and stay unique only
    /// because no name holds either (see [`crate::route::Route::label`]).
    fn listener_names<'f>(&mut self, listeners: &'f [ListenerSection]) -> Vec<&'f str> {
        let mut names: Vec<&str> = Vec::new();
        for n in listeners.iter().filter_map(|l| l.name.as_ref()) {
            let name = n.get_ref().as_str();
            let allowed = |b: u8| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_');
            if name.is_empty() || !name.bytes().all(allowed) {
                self.err(
                    n,
                    format!("listener name {name:?} must be lower-case letters, digits, - and _"),
                );
            }
            if names.contains(&name) {
                self.err(n, format!("another listener is already named {name:?}"));
            } else {
                names.push(name);
            }
        }
        names
    }

    /// The listeners a route is bound to, sorted and each once; `None` when
    /// it is bound to none (it then serves every listener). `named` holds
    /// the listeners' names.
    fn bound_listeners(&mut self, r: &RouteSection, named: &[&str]) -> Option<Vec<String>> {
        let list = r.listeners.as_ref()?;
        if list.get_ref().is_empty() {
            self.err(
                list,
                "listeners = [] would serve the route on no listener; name one, \
                 or leave listeners out to serve it on every listener",
            );
        }
        let route = format!(
            "{}{}",
            r.host.as_ref().map_or("", |h| h.get_ref().as_str()),
            r.path.get_ref()
        );
        let mut names = Vec::new();
        for n in list.get_ref() {
            let name = n.get_ref();
            if !named.contains(&name.as_str()) {
                let known = match named.is_empty() {
                    true => "no listener has a name".to_owned(),
                    false => format!("named: {}", named.join(", ")),
                };
                self.err(
                    n,
                    format!("route {route} names listener {name:?}, but no listener has that name ({known})"),
                );
            }
            names.push(name.clone());
        }
        names.sort();
        names.dedup();
        Some(names)
    }

    fn listener(&mut self, l: &ListenerSection) -> Option<ListenerConfig> {
        let addr = match l.addr.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    &l.addr,
                    format!(
                        "`{}` is not IP:port (e.g. \"0.0.0.0:8080\")",
                        l.addr.get_ref()
                    ),
                );
                None
            }
        };
        let tls = match &l.tls {
            None => None,
            Some(certs) => {
                let mut pairs = Vec::new();
                for c in certs_of(certs) {
                    let cert = self.path(c.cert.get_ref());
                    let key = self.path(c.key.get_ref());
                    match tls::load_certified_key(&cert, &key) {
                        Ok(ck) => pairs.push(ck),
                        Err(tls::CertError::Cert(msg)) => self.err(&c.cert, msg),
                        Err(tls::CertError::Key(msg)) => self.err(&c.key, msg),
                    }
                }
                if pairs.is_empty() {
                    return None;
                }
                Some(tls::server_config(pairs))
            }
        };
        Some(ListenerConfig {
            name: l.name.as_ref().map(|n| n.get_ref().clone()),
            addr: addr?,
            tls,
            proxy_protocol: l.proxy_protocol,
        })
    }

    fn upstream(
        &mut self,
        name: &str,
        section: &Spanned<UpstreamSection>,
    ) -> Option<UpstreamConfig> {
        let u = section.get_ref();
        let servers = self.upstream_servers(name, section)?;
        let mut balance = self.balance(u);
        balance.sticky = self.sticky_cookie(name, u, balance.source.as_ref());
        let health = self.health(name, u);
        let network = self.network(name, u);
        let draining = u
            .servers
            .iter()
            .filter(|s| s.get_ref().drain)
            .map(|s| s.get_ref().url.clone())
            .collect();
        Some(UpstreamConfig {
            servers,
            balance,
            health,
            draining,
            network,
            pool: PoolLimits {
                max_idle: u.max_idle_per_server,
                idle_timeout: u.idle_timeout.0,
            },
        })
    }

    fn upstream_servers(
        &mut self,
        name: &str,
        section: &Spanned<UpstreamSection>,
    ) -> Option<UpstreamServers> {
        let u = section.get_ref();
        let tls = self.upstream_tls(name, u);
        if let Some(b) = &u.builtin {
            if !u.servers.is_empty() {
                self.err(
                    b,
                    format!("upstream `{name}`: set either servers or builtin, not both"),
                );
            }
            if b.get_ref() != "echo" {
                self.err(
                    b,
                    format!(
                        "unknown builtin `{}` (the one builtin is \"echo\")",
                        b.get_ref()
                    ),
                );
                return None;
            }
            return Some(UpstreamServers::BuiltinEcho);
        }
        if u.servers.is_empty() {
            self.err(
                section,
                format!("upstream `{name}` has no servers (add servers = [\"ws://host:port\"])"),
            );
            return None;
        }
        let (client_tls, server_name) = match tls {
            Some((config, name)) => (Some(config), name),
            None => (None, None),
        };
        let mut servers = Vec::new();
        for s in &u.servers {
            let entry = s.get_ref();
            let weight = entry.weight.unwrap_or(1);
            if !(1..=MAX_WEIGHT).contains(&weight) {
                self.err(
                    s,
                    format!("weight {weight} is out of range (1 to {MAX_WEIGHT})"),
                );
            }
            match parse_server(&entry.url) {
                Ok((tls, host, port)) => servers.push(ServerSpec {
                    url: entry.url.clone(),
                    host,
                    port,
                    tls: if tls { client_tls.clone() } else { None },
                    server_name: if tls { server_name.clone() } else { None },
                    weight,
                }),
                Err(msg) => self.err(s, msg),
            }
        }
        Some(UpstreamServers::Servers(servers))
    }

    /// The TLS client settings of a group's `wss://` servers (`ca`,
    /// `trust`, `server_name`, `client_cert` and `client_key`), each file
    /// read once here; `None` when the group has no `wss://` server, and
    /// then each of those keys is an error: it would silently do nothing.
    fn upstream_tls(
        &mut self,
        name: &str,
        u: &UpstreamSection,
    ) -> Option<(Arc<rustls::ClientConfig>, Option<ServerName<'static>>)> {
        let keys = [
            ("ca", &u.ca),
            ("trust", &u.trust),
            ("server_name", &u.server_name),
            ("client_cert", &u.client_cert),
            ("client_key", &u.client_key),
        ];
        let wss = u
            .servers
            .iter()
            .any(|s| s.get_ref().url.starts_with("wss://"));
        if !wss {
            for (key, value) in keys {
                if let Some(v) = value {
                    self.err(
                        v,
                        format!(
                            "`{key}` applies to wss:// servers only, and upstream `{name}` has none"
                        ),
                    );
                }
            }
            return None;
        }
        let server_name =
            u.server_name
                .as_ref()
                .and_then(|n| match ServerName::try_from(n.get_ref().clone()) {
                    Ok(name) => Some(name),
                    Err(_) => {
                        self.err(
                            n,
                            format!(
                                "server_name `{}` is not a DNS name or IP address",
                                n.get_ref()
                            ),
                        );
                        None
                    }
                });
        // Each key is checked even when another failed, so that one run
        // reports every problem.
        let trust = match (&u.ca, &u.trust) {
            (Some(_), Some(t)) => {
                self.err(
                    t,
                    "set either ca or trust, not both: trust pins the servers' certificates, \
                     so ca would never be consulted",
                );
                Err(())
            }
            (None, None) => Ok(tls::ServerTrust::Roots(None)),
            (Some(ca), None) => tls::load_ca(&self.path(ca.get_ref()))
                .map(|roots| tls::ServerTrust::Roots(Some(roots)))
                .map_err(|msg| self.err(ca, msg)),
            (None, Some(t)) => tls::load_pinned(&self.path(t.get_ref()))
                .map(tls::ServerTrust::Pinned)
                .map_err(|msg| self.err(t, msg)),
        };
        let identity = match (&u.client_cert, &u.client_key) {
            (None, None) => Ok(None),
            (Some(cert), None) => {
                self.err(cert, "client_cert needs client_key (its private key)");
                Err(())
            }
            (None, Some(key)) => {
                self.err(
                    key,
                    "client_key needs client_cert (the certificate it signs for)",
                );
                Err(())
            }
            (Some(cert), Some(key)) => {
                tls::load_certified_key(&self.path(cert.get_ref()), &self.path(key.get_ref()))
                    .map(Some)
                    .map_err(|e| match e {
                        tls::CertError::Cert(msg) => self.err(cert, msg),
                        tls::CertError::Key(msg) => self.err(key, msg),
                    })
            }
        };
        let (Ok(trust), Ok(identity)) = (trust, identity) else {
            return None;
        };
        Some((tls::upstream_client_config(trust, identity), server_name))
    }

    /// `balance`, `max_attempts` and `rebalance_per_second`.
    fn balance(&mut self, u: &UpstreamSection) -> Balance {
        let mut balance = Balance::default();
        if let Some(b) = &u.balance {
            match parse_balance(b.get_ref()) {
                Ok((pick, source)) => {
                    balance.pick = pick;
                    balance.source = source;
                }
                Err(msg) => self.err(b, msg),
            }
        }
        if let Some(n) = &u.max_attempts {
            match *n.get_ref() {
                0 => self.err(n, "max_attempts must be at least 1 (1: no failover)"),
                n => balance.max_attempts = n,
            }
        }
        if let Some(r) = &u.rebalance_per_second {
            balance.rebalance = NonZeroU32::new(*r.get_ref());
            if balance.rebalance.is_none() {
                self.err(
                    r,
                    "rebalance_per_second must be at least 1 (omit it to turn rebalancing off)",
                );
            }
        }
        balance
    }

    fn route(
        &mut self,
        r: &RouteSection,
        listeners: Option<Vec<String>>,
        policy_dir: &Path,
    ) -> Option<RouteConfig> {
        let path = r.path.get_ref();
        if !path.starts_with('/') {
            self.err(&r.path, format!("path `{path}` must start with /"));
        } else {
            // Requests are matched in normalised form, so a route written
            // otherwise could never match.
            match crate::proto::target::normalize(path.as_bytes()) {
                Ok(t) if t.query.is_none() && t.path == *path => {}
                Ok(t) => self.err(
                    &r.path,
                    format!("path `{path}` is not normalised; write `{}`", t.path),
                ),
                Err(e) => self.err(&r.path, format!("path `{path}`: {e}")),
            }
        }
        if let Some(h) = &r.host {
            let name = h.get_ref();
            let bare = name.strip_prefix("*.").unwrap_or(name);
            let parsed = crate::proto::host::Authority::parse(bare.as_bytes());
            if !parsed.is_ok_and(|a| a.port().is_none()) {
                self.err(
                    h,
                    format!(
                        "host `{name}` must be a host name, or *. and a host name, without a port"
                    ),
                );
            }
        }
        let rewrite = match (&r.rewrite, r.strip_prefix) {
            (Some(rw), true) => {
                self.err(rw, "set either strip_prefix or rewrite, not both");
                None
            }
            (Some(rw), false) => {
                let to = rw.get_ref();
                if !to.starts_with('/') {
                    self.err(rw, "rewrite must start with /");
                } else if crate::proto::target::normalize(to.as_bytes())
                    .map_or(true, |t| t.query.is_some() || t.path != *to)
                {
                    self.err(rw, format!("rewrite `{to}` must be a normalised path (no //, . or .. segments, no query)"));
                }
                Some(rw.get_ref().clone())
            }
            (None, true) => Some(String::new()),
            (None, false) => None,
        };
        let host = r.host.as_ref().map(|h| h.get_ref().to_ascii_lowercase());
        // A defaulted policy has no span of its own; point at the route instead.
        let policy_at = if r.policy.span().is_empty() {
            r.upstream.span()
        } else {
            r.policy.span()
        };
        let policy = self.policy(r.policy.get_ref(), policy_at, policy_dir)?;
        Some(RouteConfig {
            host,
            path: path.clone(),
            listeners,
            rewrite,
            upstream: r.upstream.get_ref().clone(),
            policy,
            preserve_host: r.preserve_host,
            http: r.http,
        })
    }

    /// Loads `<dir>/<name>.toml` once, however many routes name it.
    fn policy(&mut self, name: &str, at: Range<usize>, dir: &Path) -> Option<Arc<Policy>> {
        if let Some(p) = self.policies.get(name) {
            return p.clone();
        }
        let loaded = self.load_policy(name, at, dir);
        self.policies.insert(name.to_owned(), loaded.clone());
        loaded
    }

    fn load_policy(&mut self, name: &str, at: Range<usize>, dir: &Path) -> Option<Arc<Policy>> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            self.errors.push(
                self.source
                    .error(at, format!("policy `{name}` must be a plain file name")),
            );
            return None;
        }
        let path = dir.join(format!("{name}.toml"));
        let src = if path.is_file() {
            match Source::read(&path) {
                Ok(src) => src,
                Err(e) => {
                    self.errors.push(e);
                    return None;
                }
            }
        } else if name == "default" {
            // The built-in defaults: a config copied out of the README works
            // without a policies directory. A file, when there is one, wins.
            Source {
                path,
                text: String::new(),
            }
        } else {
            self.errors.push(
                self.source
                    .error(at, format!("policy `{name}`: no file {}", path.display())),
            );
            return None;
        };
        let p = match src.parse::<PolicyFile>() {
            Ok(p) => p,
            Err(mut errors) => {
                self.errors.append(&mut errors);
                return None;
            }
        };
        let surprising: Vec<_> = src.warnings(warn::policy(&p)).collect();
        self.warnings.extend(surprising);
        match admission::rules(&src, &p, &self.base) {
            Ok(rules) => Some(Arc::new(policy_from(name, &p, rules))),
            Err(mut errors) => {
                self.errors.append(&mut errors);
                None
            }
        }
    }
}

/// The listeners a route is bound to (`None`: every listener).
type Bound = Option<Vec<String>>;

/// Where a route is written: its `path`, or its `upstream` when the path
/// is the default (and so has no span).
fn route_span(r: &RouteSection) -> Range<usize> {
    match r.path.span().is_empty() {
        true => r.upstream.span(),
        false => r.path.span(),
    }
}

/// Why a route may not have the host and path of one before it: their
/// listener sets (`None`: every listener) overlap. `None` when they do not,
/// as for `/` on one listener and `/` on another.
fn clash(earlier: &Option<Vec<String>>, this: &Option<Vec<String>>) -> Option<String> {
    let shared = match (earlier, this) {
        (None, None) => return Some("another route already has this host and path".into()),
        (Some(names), None) | (None, Some(names)) => names.first(),
        (Some(a), Some(b)) => a.iter().find(|n| b.contains(n)),
    }?;
    let everywhere = match earlier.is_none() || this.is_none() {
        true => " (a route without `listeners` serves every listener)",
        false => "",
    };
    Some(format!(
        "another route already has this host and path on listener {shared:?}{everywhere}"
    ))
}

fn certs_of(tls: &file::OneOrMany<file::CertSection>) -> Vec<&file::CertSection> {
    match tls {
        file::OneOrMany::One(c) => vec![c],
        file::OneOrMany::Many(v) => v.iter().collect(),
    }
}

/// Turns a parsed policy file (and its checked admission rules) into the values sessions use.
pub fn policy_from(name: &str, p: &PolicyFile, admission: crate::admission::Rules) -> Policy {
    let session = SessionRules {
        client: FrameLimits {
            max_frame: p.client.max_frame_size.0,
            max_message: p.client.max_message_size.0,
        },
        upstream: FrameLimits {
            max_frame: p.upstream.max_frame_size.0,
            max_message: p.upstream.max_message_size.0,
        },
        close_timeout: p.session.close_timeout.0,
        timers: Rules {
            client: p.client.ping_interval.0.map(|interval| Keepalive {
                interval,
                pong_timeout: p.client.pong_timeout.0,
            }),
            upstream: p.upstream.ping_interval.0.map(|interval| Keepalive {
                interval,
                pong_timeout: p.upstream.pong_timeout.0,
            }),
            idle_timeout: p.session.idle_timeout.0,
            max_lifetime: p.session.max_lifetime.0,
        },
    };
    Policy {
        name: name.to_owned(),
        session,
        upstream: Timeouts {
            connect: p.upstream.connect_timeout.0,
            handshake: p.upstream.handshake_timeout.0,
            attempt: p.upstream.attempt_timeout.0,
        },
        admission: Arc::new(admission),
        http: HttpRules {
            max_request_body: p.http.max_request_body.0,
            response_timeout: p.http.response_timeout.0,
            body_timeout: p.http.body_timeout.0,
            auth: p.http.auth,
            origin: p.http.origin,
        },
    }
}

/// An upstream's `balance`: the policy, and the key of a hashing one.
fn parse_balance(text: &str) -> Result<(Pick, Option<KeySource>), String> {
    const KNOWN: &str = "round_robin, least_conn, random_two, client_ip, header:NAME, \
                         cookie:NAME, query:NAME, claim:NAME";
    let plain = match text {
        "round_robin" => Some(Pick::RoundRobin),
        "least_conn" => Some(Pick::LeastConn),
        "random_two" => Some(Pick::RandomTwo),
        "client_ip" => return Ok((Pick::Hash, Some(KeySource::ClientIp))),
        _ => None,
    };
    if let Some(pick) = plain {
        return Ok((pick, None));
    }
    let Some((kind, name)) = text.split_once(':') else {
        return Err(format!("unknown balance `{text}` (one of: {KNOWN})"));
    };
    if name.is_empty() {
        return Err(format!("balance `{text}` names no {kind}"));
    }
    let source = match kind {
        "header" => KeySource::Header(
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a header name"))?,
        ),
        "cookie" => KeySource::Cookie(name.to_owned()),
        "query" => KeySource::Query(name.to_owned()),
        "claim" => KeySource::Claim(name.to_owned()),
        _ => return Err(format!("unknown balance `{text}` (one of: {KNOWN})")),
    };
    Ok((Pick::Hash, Some(source)))
}

/// `ws://host:port` → (tls, host, port). Paths are refused: rewriting is the route's job.
fn parse_server(url: &str) -> Result<(bool, String, u16), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else {
        return Err(format!("server `{url}` must start with ws:// or wss://"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "server `{url}` must be scheme://host:port only; put path changes on the route (rewrite)"
        ));
    }
    let uri: http::uri::Authority = authority
        .parse()
        .map_err(|_| format!("server `{url}`: `{authority}` is not host:port"))?;
    let host = uri.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("server `{url}` has no host"));
    }
    let port = match authority.rsplit_once(':') {
        // A colon inside `[...]` belongs to an IPv6 address, not a port.
        Some((_, p)) if !p.contains(']') => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("server `{url}`: the port must be 1-65535"))?,
        _ if tls => 443,
        _ => 80,
    };
    Ok((tls, host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_spellings() {
        let ok = |t: &str| parse_balance(t).unwrap();
        assert_eq!(ok("round_robin"), (Pick::RoundRobin, None));
        assert_eq!(ok("least_conn"), (Pick::LeastConn, None));
        assert_eq!(ok("random_two"), (Pick::RandomTwo, None));
        assert_eq!(ok("client_ip"), (Pick::Hash, Some(KeySource::ClientIp)));
        assert_eq!(
            ok("header:X-Tenant"),
            (
                Pick::Hash,
                Some(KeySource::Header(http::HeaderName::from_static("x-tenant")))
            )
        );
        assert_eq!(
            ok("cookie:io"),
            (Pick::Hash, Some(KeySource::Cookie("io".into())))
        );
        assert_eq!(
            ok("query:sid"),
            (Pick::Hash, Some(KeySource::Query("sid".into())))
        );
        assert_eq!(
            ok("claim:sub"),
            (Pick::Hash, Some(KeySource::Claim("sub".into())))
        );
        for bad in ["ip_hash", "clientip", "header:", "header:a b", "uri:x", ""] {
            assert!(parse_balance(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_balance("ip_hash").unwrap_err(),
            "unknown balance `ip_hash` (one of: round_robin, least_conn, random_two, \
             client_ip, header:NAME, cookie:NAME, query:NAME, claim:NAME)"
        );
    }

    #[test]
    fn server_urls() {
        assert_eq!(
            parse_server("ws://127.0.0.1:9000"),
            Ok((false, "127.0.0.1".into(), 9000))
        );
        assert_eq!(
            parse_server("wss://example.com"),
            Ok((true, "example.com".into(), 443))
        );
        assert_eq!(
            parse_server("ws://[::1]:80/"),
            Ok((false, "::1".into(), 80))
        );
        assert!(parse_server("http://x:1").unwrap_err().contains("ws://"));
        assert!(parse_server("ws://x:1/chat")
            .unwrap_err()
            .contains("rewrite"));
        assert!(parse_server("ws://x:99999").is_err());
        assert!(parse_server("ws://x:").is_err());
        assert_eq!(parse_server("wss://[::1]"), Ok((true, "::1".into(), 443)));
    }

    #[test]
    fn routes_clash_only_where_their_listeners_meet() {
        let on = |names: &[&str]| Some(names.iter().map(|n| n.to_string()).collect());
        let (a, b, ab, everywhere) = (on(&["a"]), on(&["b"]), on(&["a", "b"]), None);
        assert_eq!(clash(&a, &b), None);
        assert_eq!(clash(&ab, &on(&["c"])), None);
        assert!(clash(&everywhere, &everywhere)
            .unwrap()
            .ends_with("this host and path"));
        for (earlier, this) in [(&everywhere, &a), (&a, &everywhere)] {
            let why = clash(earlier, this).unwrap();
            assert!(why.contains(r#"on listener "a""#), "{why}");
            assert!(why.contains("without `listeners`"), "{why}");
        }
        let why = clash(&ab, &b).unwrap();
        assert!(why.ends_with(r#"on listener "b""#), "{why}");
    }

    #[test]
    fn spans_become_lines() {
        let src = Source {
            path: "f.toml".into(),
            text: "a = 1\nb = 2\nc = 3\n".into(),
        };
        assert_eq!(src.error(12..13, "x").to_string(), "f.toml:3: x");
    }
}
