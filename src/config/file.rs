//! The config file as written by the operator: plain serde structs.
//!
//! Every field has a doc comment (the README's reference is generated from
//! the same words) and every default lives in [`defaults`]. Fields whose
//! *meaning* is checked after parsing (names that must resolve, files that
//! must exist) are `Spanned` so the error can name the line they are on.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::units::{ByteSize, Leeway, Optional, Timeout};
use crate::relay::gate::RateAction;

/// `framegate.toml`: listeners, routes and upstreams.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Directory holding the policy files that routes name; relative to this file.
    #[serde(default = "defaults::policy_dir")]
    pub policy_dir: Spanned<String>,
    /// Settings that apply before a route is known (reading the request, TLS).
    #[serde(default)]
    pub server: ServerSection,
    /// Addresses to accept connections on.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerSection>,
    /// Which requests go where; the longest matching `path` wins.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSection>,
    /// Named groups of backend servers.
    #[serde(default, rename = "upstream")]
    pub upstreams: BTreeMap<String, Spanned<UpstreamSection>>,
    /// DNS servers that server names are resolved with (nginx's
    /// `resolver`); without it, the system's resolver.
    pub resolver: Option<Spanned<ResolverSection>>,
    /// What is logged, how, and where access lines go.
    #[serde(default)]
    pub log: LogSection,
    /// The admin listener: metrics, health, readiness, the status page and
    /// runtime drain. Off without this section.
    pub admin: Option<Spanned<AdminSection>>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// Which lines are logged: a level (`error`, `warn`, `info`, `debug`,
    /// `trace`) or a tracing filter (`info,framegate::access=off`); default
    /// `info`. `FRAMEGATE_LOG` (or `RUST_LOG`) overrides it. Changes on reload.
    pub level: Option<Spanned<String>>,
    /// `text` (`key="value"`, the default) or `json` (one object per line).
    /// `FRAMEGATE_LOG_FORMAT` overrides it.
    #[serde(default)]
    pub format: crate::log::Format,
    /// Where access lines (sessions, requests, refusals) go: `stdout` (the
    /// default), `stderr`, `off`, or a file path (relative to this file),
    /// appended to and reopened on reload. Other lines go to standard error.
    pub access: Option<String>,
}

/// `[admin]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// `"IP:PORT"` of the admin listener; never one of the `[[listener]]`s.
    #[serde(default = "defaults::admin_addr")]
    pub addr: Spanned<String>,
    /// Name of an environment variable holding a bearer token; when set,
    /// every admin endpoint but `/healthz`, `/readyz` and the page itself
    /// wants `Authorization: Bearer <token>`.
    pub token_env: Option<Spanned<String>>,
}

/// `[resolver]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverSection {
    /// DNS servers as `"IP"` or `"IP:port"` (port 53 by default), asked
    /// over UDP (TCP for a truncated answer), two at a time. Replaces the
    /// system's resolver for every server name: `/etc/hosts` and search
    /// domains no longer apply, so write names in full.
    pub servers: Vec<Spanned<String>>,
    /// How long one resolution of one name may take, retries included;
    /// past it the name keeps its last addresses.
    #[serde(default = "super::net::resolver_timeout")]
    pub timeout: Spanned<Timeout>,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Time a client has to send the complete upgrade request (slowloris guard).
    #[serde(default = "defaults::request_timeout")]
    pub request_timeout: Timeout,
    /// Time a client has to complete the TLS handshake on a `wss` listener.
    #[serde(default = "defaults::tls_handshake_timeout")]
    pub tls_handshake_timeout: Timeout,
    /// Largest request head (request line + headers) accepted; at least 8KiB.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: Spanned<ByteSize>,
    /// Most request headers accepted (8 to 1024).
    #[serde(default = "defaults::max_headers")]
    pub max_headers: Spanned<usize>,
    /// On SIGTERM/SIGINT, how long sessions get to finish their close
    /// handshakes before the rest are cut and the process exits.
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: Timeout,
    /// Spread the drain's 1001 closes evenly over this window, so clients do
    /// not all reconnect in the same second; `"off"` closes all at once.
    #[serde(default = "defaults::drain_spread")]
    pub drain_spread: Optional,
    /// Most WebSocket sessions open at once on the whole gateway, counting
    /// upgrades still in progress; over it: 503 with `Retry-After`. No limit when omitted.
    pub max_connections: Option<u32>,
    /// Peers (CIDRs such as `"10.0.0.0/8"` or single IPs) whose `X-Forwarded-For`
    /// and PROXY protocol header are believed. Anyone else could write any
    /// address there, so from other peers the socket address is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// IPv6 clients are counted per network of this prefix length (per-IP
    /// limits, handshake rate): one host usually holds a whole /64.
    #[serde(default = "defaults::client_ipv6_prefix")]
    pub client_ipv6_prefix: Spanned<u8>,
    /// Most clients one route's handshake rate limiter remembers. Clients idle
    /// long enough to be back at a full burst are forgotten first; when it is
    /// full of active clients, new ones are not rate-limited (connection
    /// limits still apply) rather than refused.
    #[serde(default = "defaults::max_tracked_clients")]
    pub max_tracked_clients: usize,
    /// Connections accepted and not yet upgraded (TLS handshake, request head,
    /// admission, upstream handshake: until the client has its 101), on the
    /// whole gateway; past it new connections are closed (reset) at accept.
    /// Bounds what a flood of half-open connections can hold before any
    /// limit sees a request. Keep it below the open-file limit.
    #[serde(default = "defaults::max_pending_connections")]
    pub max_pending_connections: Spanned<u32>,
    /// The same, from one client IP: the socket peer (IPv6 grouped by
    /// `client_ipv6_prefix`); `trusted_proxies` are exempt, as balancers carry
    /// many clients, but count in `max_pending_connections`. Past it that
    /// IP's new connections are closed (reset) at accept.
    #[serde(default = "defaults::max_pending_per_ip")]
    pub max_pending_per_ip: Spanned<u32>,
    /// Forward request headers whose names contain `_` (nginx's
    /// `underscores_in_headers`). Off by default: CGI-style backends read
    /// `X_Auth_Subject` as `X-Auth-Subject`, which would let a client spoof
    /// the headers the gateway sets.
    #[serde(default)]
    pub underscores_in_headers: bool,
    /// How long a client connection may sit idle between plain HTTP
    /// requests (keep-alive) before the gateway closes it.
    #[serde(default = "defaults::keepalive_timeout")]
    pub keepalive_timeout: Timeout,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            request_timeout: defaults::request_timeout(),
            tls_handshake_timeout: defaults::tls_handshake_timeout(),
            max_header_bytes: defaults::max_header_bytes(),
            max_headers: defaults::max_headers(),
            drain_timeout: defaults::drain_timeout(),
            drain_spread: defaults::drain_spread(),
            max_connections: None,
            trusted_proxies: Vec::new(),
            client_ipv6_prefix: defaults::client_ipv6_prefix(),
            max_tracked_clients: defaults::max_tracked_clients(),
            max_pending_connections: defaults::max_pending_connections(),
            max_pending_per_ip: defaults::max_pending_per_ip(),
            underscores_in_headers: false,
            keepalive_timeout: defaults::keepalive_timeout(),
        }
    }
}

/// `[[listener]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// A name routes can be bound to (`listeners = ["public"]`): lower-case
    /// letters, digits, `-` and `_`, unique among listeners. Every listener
    /// serves the routes bound to none; a named one also those bound to it.
    pub name: Option<Spanned<String>>,
    /// `IP:port` to bind, e.g. `"0.0.0.0:8443"` or `"[::]:80"`; port 0 picks a free port.
    pub addr: Spanned<String>,
    /// Terminate TLS (`wss://`) with these certificates; omit for plain `ws://`.
    /// One table, or a list of tables: the certificate is chosen by SNI.
    pub tls: Option<OneOrMany<CertSection>>,
    /// Every connection starts with a PROXY protocol header (v1 or v2, as
    /// HAProxy or a cloud TCP load balancer sends), which names the real
    /// client. Believed only from `trusted_proxies`; other peers are refused.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// A certificate chain and its private key, both PEM.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertSection {
    /// PEM file with the certificate chain, leaf first.
    pub cert: Spanned<String>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<String>,
}

/// A table that may also be written as a list of tables.
#[derive(Debug)]
pub enum OneOrMany<T> {
    /// `tls = { ... }`
    One(T),
    /// `tls = [{ ... }, { ... }]`
    Many(Vec<T>),
}

/// Written by hand rather than `#[serde(untagged)]`: untagged enums buffer
/// the value and lose the `Spanned` positions that error messages need.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table or a list of tables")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(OneOrMany::One)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(OneOrMany::Many)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// `[[route]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Match only this `Host` (port ignored, case-insensitive); `"*.example.com"`
    /// matches any subdomain. Omit to match every host.
    pub host: Option<Spanned<String>>,
    /// Path prefix to match, starting with `/`; the longest matching prefix wins.
    #[serde(default = "defaults::path")]
    pub path: Spanned<String>,
    /// Serve this route only on the listeners of these names, so one process
    /// can serve different routes on different ports. Omit to serve it on
    /// every listener.
    pub listeners: Option<Spanned<Vec<Spanned<String>>>>,
    /// Remove the matched prefix before forwarding: `/svc/chat` -> `/chat`.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the matched prefix with this path before forwarding.
    pub rewrite: Option<Spanned<String>>,
    /// Name of the `[upstream.NAME]` to forward to.
    pub upstream: Spanned<String>,
    /// Name of the policy file (`<policy_dir>/<name>.toml`) applied to sessions on this route.
    #[serde(default = "defaults::policy")]
    pub policy: Spanned<String>,
    /// Send the client's `Host` header upstream (true) or the upstream server's
    /// `host:port` (false, needed by backends that check their own authority).
    #[serde(default = "defaults::preserve_host")]
    pub preserve_host: bool,
    /// Proxy plain HTTP requests (pages, long-polling, SSE, health URLs) to
    /// the upstream, as nginx's `location` does. `false`: WebSocket only,
    /// a plain request gets 426.
    #[serde(default = "defaults::http")]
    pub http: bool,
}

/// `[upstream.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Backend WebSocket servers as `ws://host:port` or `wss://host:port`, or
    /// a table `{ url = "ws://host:port", weight = 2, drain = true }`: a
    /// larger share (weights 1 to 100, default 1), or no new sessions and the
    /// live ones moved off. A server that cannot be reached is skipped, and
    /// one that fails `eject_after` times in a row is ejected for a while.
    #[serde(default)]
    pub servers: Vec<Spanned<ServerEntry>>,
    /// How connections are spread over the servers: `"round_robin"` (the
    /// default; weighted), `"least_conn"`, `"random_two"`, or a consistent
    /// hash of a key: `"client_ip"` (nginx's `ip_hash`), `"header:NAME"`,
    /// `"cookie:NAME"`, `"query:NAME"`, `"claim:NAME"` (a token claim; the
    /// route needs `[auth]`). A request without the key goes round robin.
    pub balance: Option<Spanned<String>>,
    /// Servers tried for one connection before the client gets its 502 or
    /// 504, the first included; 1 turns failing over off.
    pub max_attempts: Option<Spanned<usize>>,
    /// A cookie the gateway sets to name the server that took a client, and
    /// follows on the client's next requests (HAProxy's `cookie NAME insert
    /// indirect nocache`, nginx Plus's `sticky cookie`): a name, or a table
    /// (config/sticky.rs). `balance` places clients without a valid one.
    pub sticky_cookie: Option<Spanned<super::sticky::StickyCookieSection>>,
    /// Move sessions off servers above their fair share (after a scale-out),
    /// at most this many per second for the group: each client gets 1012 and
    /// reconnects, as from a draining server. Off when omitted.
    pub rebalance_per_second: Option<Spanned<u32>>,
    /// Serve this upstream from inside the gateway instead: `"echo"` sends
    /// every message back. Meant for trying framegate out and for tests.
    pub builtin: Option<Spanned<String>>,
    /// PEM file of CA certificates that `wss://` servers are verified against,
    /// instead of the system roots.
    pub ca: Option<Spanned<String>>,
    /// The name `wss://` servers are asked for (SNI) and their certificates
    /// are verified against, instead of each server's host: for servers
    /// dialled by IP that present a certificate for a name. The connection
    /// still goes to the server's host; `Host` is unchanged.
    pub server_name: Option<Spanned<String>>,
    /// PEM file of the certificates the `wss://` servers may present,
    /// trusted as they are (pinned): how to reach a backend with a
    /// self-signed certificate. Replaces `ca`; the names and dates in a
    /// pinned certificate are not checked, its key is.
    pub trust: Option<Spanned<String>>,
    /// PEM certificate chain the gateway presents to `wss://` servers that
    /// ask for one (mutual TLS); needs `client_key`.
    pub client_cert: Option<Spanned<String>>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<Spanned<String>>,
    /// Idle keep-alive connections kept per server for plain HTTP requests
    /// (nginx's upstream `keepalive`); 0 opens one per request.
    #[serde(default = "defaults::max_idle_per_server")]
    pub max_idle_per_server: usize,
    /// How long an idle pooled connection is kept.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Timeout,
    // --- health and draining (config/health.rs) ---
    /// Consecutive failures to reach a server (refused, reset, timed out)
    /// that eject it: no new sessions go to it until a back-off ends; 0 never ejects.
    #[serde(default = "super::health::eject_after")]
    pub eject_after: u32,
    /// The first ejection's length; each further one doubles it (jittered
    /// shorter by up to 20%), up to `eject_backoff_max`.
    #[serde(default = "super::health::eject_backoff")]
    pub eject_backoff: Timeout,
    /// The longest an ejection lasts, however many came before it.
    #[serde(default = "super::health::eject_backoff_max")]
    pub eject_backoff_max: Timeout,
    /// Active probes of every server (see `HealthCheckSection`).
    pub health_check: Option<Spanned<super::health::HealthCheckSection>>,
    /// A draining (or removed) server's live sessions are closed spread over
    /// this window, each at a message boundary; `"off"` closes them all at once.
    #[serde(default = "super::health::drain_window")]
    pub drain_window: Optional,
    // --- addresses (config/net.rs) ---
    /// Local IPs that connections to the servers are made from, taken in
    /// turn: each adds one source IP's worth of ephemeral ports per backend
    /// address. A server is reached from those of its own family only.
    #[serde(default)]
    pub source_addresses: Vec<Spanned<String>>,
    /// How often a server's host name is resolved again, in the background
    /// (never per connection); at least 1s.
    #[serde(default = "super::net::resolve_interval")]
    pub resolve_interval: Spanned<Timeout>,
}

/// One entry of an upstream's `servers`: a URL, or a table with the URL and
/// per-server settings.
#[derive(Debug)]
pub struct ServerEntry {
    pub url: String,
    pub weight: Option<u32>,
    /// No new sessions go to this server, and its live sessions are moved
    /// off (closed at message boundaries over `drain_window`; the client gets
    /// 1012 and reconnects elsewhere). Undrain by setting it back and reloading.
    pub drain: bool,
}

/// Written by hand, for the same reason as [`OneOrMany`].
impl<'de> Deserialize<'de> for ServerEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            url: String,
            weight: Option<u32>,
            #[serde(default)]
            drain: bool,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ServerEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a server URL or a table { url = \"ws://host:port\", weight = N, drain = true }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ServerEntry {
                    url: v.to_owned(),
                    weight: None,
                    drain: false,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ServerEntry {
                    url: t.url,
                    weight: t.weight,
                    drain: t.drain,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `policies/NAME.toml`: limits and timeouts applied to a session.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// What the client may send.
    #[serde(default)]
    pub client: ClientPolicy,
    /// What the upstream may send, and how long reaching it may take.
    #[serde(default)]
    pub upstream: UpstreamPolicy,
    /// The session as a whole.
    #[serde(default)]
    pub session: SessionPolicy,
    /// Require a JWT at upgrade. No authentication when omitted.
    pub auth: Option<AuthPolicy>,
    /// Allow only these browser origins. No check when omitted.
    pub origin: Option<OriginPolicy>,
    /// Connection and handshake limits.
    #[serde(default)]
    pub limits: LimitsPolicy,
    /// Per-session message and byte rates, per direction.
    #[serde(default)]
    pub rate: RatePolicy,
    /// Plain HTTP requests on the routes with this policy.
    #[serde(default)]
    pub http: HttpPolicy,
}

/// `[http]` in a policy: plain (non-upgrade) requests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpPolicy {
    /// Largest request body accepted; over it: 413. Bodies are streamed, never
    /// held whole, so this protects the backend, not the gateway.
    #[serde(default = "defaults::max_request_body")]
    pub max_request_body: ByteSize,
    /// Time the upstream has, once the request is sent, to begin its
    /// response; then 504.
    #[serde(default = "defaults::response_timeout")]
    pub response_timeout: Timeout,
    /// While a body is moving (either way), the longest wait for the next
    /// read or write; then the exchange is abandoned. Long-polls and event
    /// streams must send something within it.
    #[serde(default = "defaults::body_timeout")]
    pub body_timeout: Timeout,
    /// Whether `[auth]` applies to plain requests too (Engine.IO polling
    /// carries the same token as its upgrade). `false` exempts them.
    #[serde(default = "defaults::http_auth")]
    pub auth: bool,
    /// Whether `[origin]` applies to plain requests too; by default it is a
    /// WebSocket (CSWSH) control only.
    #[serde(default)]
    pub origin: bool,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        HttpPolicy {
            max_request_body: defaults::max_request_body(),
            response_timeout: defaults::response_timeout(),
            body_timeout: defaults::body_timeout(),
            auth: defaults::http_auth(),
            origin: false,
        }
    }
}

/// `[auth]` in a policy: a JWT checked before the upstream is contacted.
/// Exactly one key source: `secret_file` or `secret_env` (HS*), `public_key`,
/// `jwks_file` or `jwks_url`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthPolicy {
    /// Accepted `alg` values, all of one family: HS256/HS384/HS512, RS*/PS*,
    /// ES256/ES384, or EdDSA. A token with any other `alg` (including `none`) is refused.
    pub algorithms: Spanned<Vec<String>>,
    /// File holding the HMAC secret (HS*); trailing newlines are ignored.
    pub secret_file: Option<Spanned<String>>,
    /// Environment variable holding the HMAC secret (HS*). Secrets are never written inline.
    pub secret_env: Option<Spanned<String>>,
    /// PEM public key (RSA, EC or Ed25519) that signs every token.
    pub public_key: Option<Spanned<String>>,
    /// JWKS file (`{"keys": [...]}`); the token's `kid` picks the key.
    pub jwks_file: Option<Spanned<String>>,
    /// `https://` URL of a JWKS, fetched when first needed and cached.
    pub jwks_url: Option<Spanned<String>>,
    /// PEM CA bundle the `jwks_url` server is verified against, instead of the system roots.
    pub jwks_ca: Option<Spanned<String>>,
    /// How long a fetched JWKS is used before it is fetched again.
    #[serde(default = "defaults::jwks_refresh")]
    pub jwks_refresh: Timeout,
    /// Least time between two fetches caused by an unknown `kid`, so clients
    /// sending made-up `kid`s cannot make the gateway hammer the key server.
    #[serde(default = "defaults::jwks_min_refetch")]
    pub jwks_min_refetch: Timeout,
    /// Where the token may be, tried in this order: `"header"`
    /// (`Authorization: Bearer`), `"query"`, `"cookie"`, `"subprotocol"`.
    #[serde(default = "defaults::token_from")]
    pub token_from: Spanned<Vec<String>>,
    /// Query parameter that carries the token (`"query"`).
    #[serde(default = "defaults::token_name")]
    pub query_param: String,
    /// Cookie that carries the token (`"cookie"`).
    #[serde(default = "defaults::token_name")]
    pub cookie: String,
    /// Prefix of the `Sec-WebSocket-Protocol` entry that carries the token
    /// (`"subprotocol"`): browsers cannot set headers on a WebSocket.
    #[serde(default = "defaults::subprotocol_prefix")]
    pub subprotocol_prefix: String,
    /// Accepted `iss` values; when set, a token must carry one of them.
    #[serde(default)]
    pub issuer: Vec<String>,
    /// Accepted `aud` values; when set, a token must carry one of them.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Clock skew allowed when checking `exp` and `nbf`.
    #[serde(default = "defaults::leeway")]
    pub leeway: Leeway,
    /// Claims a valid token must also carry; missing: 403.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Scopes a valid token must grant (in `scope`, space-separated, or `scp`); missing: 403.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Claims sent upstream as headers, e.g. `{ sub = "X-Auth-Subject" }`.
    /// Headers of these names sent by the client are always removed first.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, Spanned<String>>,
    /// Send the token upstream as `Authorization: Bearer`. Off by default: the
    /// token is removed from wherever it came (header, query, cookie, subprotocol).
    #[serde(default)]
    pub forward_token: bool,
    /// Close the session with 4001 "token expired" when the token's `exp` passes.
    #[serde(default)]
    pub close_on_expiry: bool,
}

/// `[origin]` in a policy: the cross-site WebSocket hijacking defence.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginPolicy {
    /// Allowed `Origin` values: `"https://app.example.com"` exactly, or
    /// `"https://*.example.com"` for any subdomain (not the bare domain). Others: 403.
    pub allow: Vec<Spanned<String>>,
    /// Whether a request without `Origin` (not a browser) is let through.
    #[serde(default = "defaults::allow_missing_origin")]
    pub allow_missing: bool,
}

/// `[limits]` in a policy. Each limit is off when omitted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPolicy {
    /// Sessions open at once on one route with this policy; over it: 503.
    pub max_connections: Option<u32>,
    /// Sessions one client IP (or IPv6 network) may hold on the route; over it: 429.
    pub max_connections_per_ip: Option<u32>,
    /// Sessions one token subject (`sub`) may hold on the route, from any IP; over it: 429.
    pub max_connections_per_subject: Option<Spanned<u32>>,
    /// Upgrade requests per second a client IP may make on the route; over it: 429.
    pub handshakes_per_second: Option<Spanned<u32>>,
    /// Upgrade requests a client IP may make at once before the rate applies.
    pub handshake_burst: Option<Spanned<u32>>,
    /// `Retry-After` sent when a connection limit refuses (the handshake rate
    /// limiter computes its own).
    #[serde(default = "defaults::retry_after")]
    pub retry_after: Timeout,
}

impl Default for LimitsPolicy {
    fn default() -> Self {
        LimitsPolicy {
            max_connections: None,
            max_connections_per_ip: None,
            max_connections_per_subject: None,
            handshakes_per_second: None,
            handshake_burst: None,
            retry_after: defaults::retry_after(),
        }
    }
}

/// `[rate]` in a policy: one table per direction.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatePolicy {
    /// What the client sends.
    pub client: Option<RateSection>,
    /// What the upstream sends.
    pub upstream: Option<RateSection>,
}

/// `[rate.client]` / `[rate.upstream]`: token buckets over what one leg sends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSection {
    /// Data frames per second (a message sent in one frame, as browsers do, is one).
    pub frames_per_second: Option<Spanned<u32>>,
    /// Frames that may arrive at once before the rate applies; default: one second's worth.
    pub frame_burst: Option<Spanned<u32>>,
    /// Payload bytes per second.
    pub bytes_per_second: Option<Spanned<ByteSize>>,
    /// Bytes that may arrive at once before the rate applies; default: one second's worth.
    pub byte_burst: Option<Spanned<ByteSize>>,
    /// Over the rate: `"throttle"` stops reading that leg until it is back
    /// under (TCP backpressure slows the sender, nothing is lost) or `"close"`
    /// closes it with 1008.
    #[serde(default)]
    pub action: RateAction,
}

/// `[client]` in a policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientPolicy {
    /// Largest single frame the client may send; larger closes with 1009.
    #[serde(default = "defaults::client_max_size")]
    pub max_frame_size: ByteSize,
    /// Largest message (all fragments) the client may send; larger closes with 1009.
    #[serde(default = "defaults::client_max_size")]
    pub max_message_size: ByteSize,
    /// Ping the client after this long without hearing from it; `"off"` never pings.
    #[serde(default = "defaults::client_ping_interval")]
    pub ping_interval: Optional,
    /// After a ping, a client that sends nothing for this long is dead: the
    /// gateway closes it and tells the upstream 1001.
    #[serde(default = "defaults::client_pong_timeout")]
    pub pong_timeout: Timeout,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        ClientPolicy {
            max_frame_size: defaults::client_max_size(),
            max_message_size: defaults::client_max_size(),
            ping_interval: defaults::client_ping_interval(),
            pong_timeout: defaults::client_pong_timeout(),
        }
    }
}

/// `[upstream]` in a policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamPolicy {
    /// Largest single frame the upstream may send; larger closes with 1009.
    #[serde(default = "defaults::upstream_max_size")]
    pub max_frame_size: ByteSize,
    /// Largest message (all fragments) the upstream may send; larger closes with 1009.
    #[serde(default = "defaults::upstream_max_size")]
    pub max_message_size: ByteSize,
    /// Time allowed to open the TCP connection (and TLS) to a server; then 504.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Timeout,
    /// Time allowed from the first attempt to the upstream's 101, across every
    /// server tried; then 504.
    #[serde(default = "defaults::handshake_timeout")]
    pub handshake_timeout: Timeout,
    /// Time one server has to answer the upgrade while another is left to
    /// try; then the next server is tried. The last one tried has what is
    /// left of `handshake_timeout`.
    #[serde(default = "defaults::attempt_timeout")]
    pub attempt_timeout: Timeout,
    /// Ping the upstream after this long without hearing from it; `"off"` never pings.
    #[serde(default = "defaults::upstream_ping_interval")]
    pub ping_interval: Optional,
    /// After a ping, an upstream that sends nothing for this long is dead: the
    /// gateway closes it and tells the client 1011.
    #[serde(default = "defaults::upstream_pong_timeout")]
    pub pong_timeout: Timeout,
}

impl Default for UpstreamPolicy {
    fn default() -> Self {
        UpstreamPolicy {
            max_frame_size: defaults::upstream_max_size(),
            max_message_size: defaults::upstream_max_size(),
            connect_timeout: defaults::connect_timeout(),
            handshake_timeout: defaults::handshake_timeout(),
            attempt_timeout: defaults::attempt_timeout(),
            ping_interval: defaults::upstream_ping_interval(),
            pong_timeout: defaults::upstream_pong_timeout(),
        }
    }
}

/// `[session]` in a policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionPolicy {
    /// After a close frame is sent, how long to wait for the peer's close
    /// before giving up on a clean handshake and closing TCP.
    #[serde(default = "defaults::close_timeout")]
    pub close_timeout: Timeout,
    /// Close both legs with 1001 after this long without a data frame in
    /// either direction (pings do not count); `"off"` (the default) never does.
    #[serde(default = "defaults::off")]
    pub idle_timeout: Optional,
    /// Close both legs with 1001 after this long, whatever happens; each
    /// session picks a point in the last 10% of it so reconnects spread out.
    #[serde(default = "defaults::off")]
    pub max_lifetime: Optional,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            close_timeout: defaults::close_timeout(),
            idle_timeout: defaults::off(),
            max_lifetime: defaults::off(),
        }
    }
}

/// Every default in one place.
pub mod defaults {
    use std::time::Duration;

    use toml::Spanned;

    use super::{ByteSize, Leeway, Optional, Timeout};

    pub fn policy_dir() -> Spanned<String> {
        Spanned::new(0..0, "policies".into())
    }
    /// Loopback: the admin interface is for the host's operator and its
    /// scraper, not for the network, unless the config says so.
    pub fn admin_addr() -> Spanned<String> {
        Spanned::new(0..0, "127.0.0.1:9090".into())
    }
    pub fn request_timeout() -> Timeout {
        Timeout(Duration::from_secs(10))
    }
    pub fn tls_handshake_timeout() -> Timeout {
        Timeout(Duration::from_secs(10))
    }
    pub fn max_header_bytes() -> Spanned<ByteSize> {
        Spanned::new(0..0, ByteSize(16 << 10))
    }
    pub fn max_headers() -> Spanned<usize> {
        Spanned::new(0..0, 64)
    }
    pub fn path() -> Spanned<String> {
        Spanned::new(0..0, "/".into())
    }
    pub fn policy() -> Spanned<String> {
        Spanned::new(0..0, "default".into())
    }
    pub fn preserve_host() -> bool {
        true
    }
    pub fn client_max_size() -> ByteSize {
        ByteSize(1 << 20)
    }
    pub fn upstream_max_size() -> ByteSize {
        ByteSize(16 << 20)
    }
    pub fn connect_timeout() -> Timeout {
        Timeout(Duration::from_secs(5))
    }
    pub fn handshake_timeout() -> Timeout {
        Timeout(Duration::from_secs(10))
    }
    /// A third of `handshake_timeout`: a silent server costs that, and the
    /// next one still has the rest.
    pub fn attempt_timeout() -> Timeout {
        Timeout(Duration::from_secs(3))
    }
    pub fn close_timeout() -> Timeout {
        Timeout(Duration::from_secs(5))
    }
    pub fn off() -> Optional {
        Optional(None)
    }
    pub fn drain_timeout() -> Timeout {
        Timeout(Duration::from_secs(30))
    }
    pub fn drain_spread() -> Optional {
        Optional(None)
    }
    /// Below the 60 s idle timers of nginx and AWS ALB and Cloudflare's 100 s.
    pub fn client_ping_interval() -> Optional {
        Optional(Some(Duration::from_secs(25)))
    }
    pub fn client_pong_timeout() -> Timeout {
        Timeout(Duration::from_secs(50))
    }
    pub fn upstream_ping_interval() -> Optional {
        Optional(Some(Duration::from_secs(30)))
    }
    pub fn upstream_pong_timeout() -> Timeout {
        Timeout(Duration::from_secs(60))
    }
    pub fn client_ipv6_prefix() -> Spanned<u8> {
        Spanned::new(0..0, 64)
    }
    pub fn max_tracked_clients() -> usize {
        100_000
    }
    pub fn max_pending_connections() -> Spanned<u32> {
        Spanned::new(0..0, 4096)
    }
    pub fn max_pending_per_ip() -> Spanned<u32> {
        Spanned::new(0..0, 64)
    }
    pub fn jwks_refresh() -> Timeout {
        Timeout(Duration::from_secs(600))
    }
    pub fn jwks_min_refetch() -> Timeout {
        Timeout(Duration::from_secs(30))
    }
    pub fn token_from() -> Spanned<Vec<String>> {
        Spanned::new(0..0, vec!["header".into()])
    }
    pub fn token_name() -> String {
        "access_token".into()
    }
    pub fn subprotocol_prefix() -> String {
        "bearer.".into()
    }
    pub fn leeway() -> Leeway {
        Leeway(Duration::from_secs(30))
    }
    pub fn allow_missing_origin() -> bool {
        false
    }
    pub fn retry_after() -> Timeout {
        Timeout(Duration::from_secs(5))
    }
    pub fn http() -> bool {
        true
    }
    pub fn http_auth() -> bool {
        true
    }
    /// nginx's 1 MiB default is its most asked-about error; bodies stream here.
    pub fn max_request_body() -> ByteSize {
        ByteSize(64 << 20)
    }
    /// nginx's `proxy_read_timeout`: room for a 25 s Engine.IO long-poll.
    pub fn response_timeout() -> Timeout {
        Timeout(Duration::from_secs(60))
    }
    pub fn body_timeout() -> Timeout {
        Timeout(Duration::from_secs(60))
    }
    pub fn keepalive_timeout() -> Timeout {
        Timeout(Duration::from_secs(60))
    }
    pub fn max_idle_per_server() -> usize {
        64
    }
    /// nginx's upstream `keepalive_timeout`.
    pub fn idle_timeout() -> Timeout {
        Timeout(Duration::from_secs(60))
    }
}
