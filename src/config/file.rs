//! The config file as written by the operator: plain serde structs.
//!
//! Every field has a doc comment (the README's reference is generated from
//! the same words) and every default lives in [`defaults`]. Fields whose
//! *meaning* is checked after parsing (names that must resolve, files that
//! must exist) are `Spanned` so the error can name the line they are on.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::units::{ByteSize, Optional, Timeout};

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
    /// Most request headers accepted.
    #[serde(default = "defaults::max_headers")]
    pub max_headers: usize,
    /// On SIGTERM/SIGINT, how long sessions get to finish their close
    /// handshakes before the rest are cut and the process exits.
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: Timeout,
    /// Spread the drain's 1001 closes evenly over this window, so clients do
    /// not all reconnect in the same second; `"off"` closes all at once.
    #[serde(default = "defaults::drain_spread")]
    pub drain_spread: Optional,
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
        }
    }
}

/// `[[listener]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// `IP:port` to bind, e.g. `"0.0.0.0:8443"` or `"[::]:80"`; port 0 picks a free port.
    pub addr: Spanned<String>,
    /// Terminate TLS (`wss://`) with these certificates; omit for plain `ws://`.
    /// One table, or a list of tables: the certificate is chosen by SNI.
    pub tls: Option<OneOrMany<CertSection>>,
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
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
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
}

/// `[upstream.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Backend WebSocket servers as `ws://host:port` or `wss://host:port`, used
    /// round-robin; a server that refuses the connection is skipped.
    #[serde(default)]
    pub servers: Vec<Spanned<String>>,
    /// Serve this upstream from inside the gateway instead: `"echo"` sends
    /// every message back. Meant for trying framegate out and for tests.
    pub builtin: Option<Spanned<String>>,
    /// PEM file of CA certificates that `wss://` servers are verified against,
    /// instead of the system roots.
    pub ca: Option<Spanned<String>>,
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
    /// Time allowed for the server to answer the WebSocket upgrade; then 504.
    #[serde(default = "defaults::handshake_timeout")]
    pub handshake_timeout: Timeout,
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

    use super::{ByteSize, Optional, Timeout};

    pub fn policy_dir() -> Spanned<String> {
        Spanned::new(0..0, "policies".into())
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
    pub fn max_headers() -> usize {
        64
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
}
