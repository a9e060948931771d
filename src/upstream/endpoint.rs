//! What one backend server *is*: its identity, its address and its TLS
//! settings, built once per config (and per answer of a name, see
//! [`super::group`]) so that reaching it costs no parsing per handshake.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::tcp::Sources;

use http::HeaderValue;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// One backend server as the config names it: an IP, or a host name whose
/// every address becomes a server of its own ([`super::group`]).
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// As written, for logs: `ws://10.0.0.5:8080`.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Present for `wss://` servers.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The group's `server_name`: sent as SNI and verified against the
    /// certificate in place of `host`, which is still what is dialled.
    pub server_name: Option<ServerName<'static>>,
    /// Its share relative to the group's other servers (at least 1); each
    /// address of a name has the name's.
    pub weight: u32,
}

impl ServerSpec {
    /// The host when it is an IP literal; `None` for a name.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// One backend server, ready to dial: one address.
///
/// Its identity is its [`label`](Endpoint::label): it names the server in
/// every log line and error, and keys its health, draining and
/// least-connections state across reloads ([`super::health::Registry`]) and
/// its place on the hash ring. For a server written as an IP it is the URL
/// as the config wrote it (`ws://10.0.0.5:8080`); for each address of a name
/// it is that URL and the address (`ws://chat.internal:8080 (10.0.0.5)`),
/// the same on every gateway that got the same answer. A group may list
/// the same URL twice (and so send it twice the share); the two are then
/// separate endpoints with the same label.
///
/// Per-endpoint live state (the in-flight count whose RAII guard a session
/// holds, for least-connections) sits beside the endpoint, in the group's
/// balancer; the endpoint itself stays immutable and is rebuilt with each
/// config and each changed answer.
pub struct Endpoint {
    /// Shared, so an access line can hold it past the connection.
    label: Arc<str>,
    /// Where it is dialed: the IP as written, or one address of the name.
    addr: SocketAddr,
    weight: u32,
    /// `host:port` (IPv6 bracketed), with the host as written (the name for
    /// an address of a name): the `Host` sent when the route does not
    /// preserve the client's.
    authority: HeaderValue,
    tls: Option<Tls>,
    /// The group's source addresses (upstream/tcp.rs); none by default.
    sources: Arc<Sources>,
}

/// A `wss://` server's TLS client settings.
pub(super) struct Tls {
    pub(super) connector: TlsConnector,
    /// Sent as SNI and checked against the certificate: the group's
    /// `server_name`, else the host as written (the name, for an address
    /// of a name).
    pub(super) name: ServerName<'static>,
}

#[cfg(test)]
impl ServerSpec {
    /// A plain `ws://` server at `addr`, for tests.
    pub(crate) fn plain(addr: SocketAddr) -> ServerSpec {
        ServerSpec {
            url: format!("ws://{addr}"),
            host: addr.ip().to_string(),
            port: addr.port(),
            tls: None,
            server_name: None,
            weight: 1,
        }
    }
}

impl Endpoint {
    /// The server `spec` at `ip`: the IP it is written with, or one of its
    /// name's addresses. Panics if the host is not a valid server name or
    /// header value, which the config check already rules out.
    pub fn new(spec: &ServerSpec, ip: IpAddr) -> Self {
        let authority = match (spec.host.contains(':'), spec.port) {
            (true, port) => format!("[{}]:{port}", spec.host),
            (false, port) => format!("{}:{port}", spec.host),
        };
        let tls = spec.tls.clone().map(|cfg| Tls {
            connector: TlsConnector::from(cfg),
            name: spec.server_name.clone().unwrap_or_else(|| {
                ServerName::try_from(spec.host.clone())
                    .expect("host was validated as a URI authority")
            }),
        });
        let label = match spec.ip() {
            Some(_) => spec.url.as_str().into(),
            None => format!("{} ({ip})", spec.url).into(),
        };
        Endpoint {
            label,
            addr: SocketAddr::new(ip, spec.port),
            weight: spec.weight,
            authority: HeaderValue::from_str(&authority).expect("authority is header-safe"),
            tls,
            sources: Arc::default(),
        }
    }

    /// A server written as an IP, for tests.
    #[cfg(test)]
    pub(crate) fn fixed(spec: &ServerSpec) -> Self {
        Endpoint::new(spec, spec.ip().expect("a server written as an IP"))
    }

    /// The server's name in logs and errors, and the key of its state.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// [`label`](Endpoint::label), to keep.
    pub fn shared_label(&self) -> Arc<str> {
        self.label.clone()
    }

    /// The address it is dialed at (never resolved at a dial).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// `host:port`, the upstream request's default `Host`.
    pub fn authority(&self) -> &HeaderValue {
        &self.authority
    }

    pub(super) fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    pub(super) fn sources(&self) -> &Sources {
        &self.sources
    }

    pub(super) fn set_sources(&mut self, sources: Arc<Sources>) {
        self.sources = sources;
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str, host: &str, port: u16, tls: bool) -> ServerSpec {
        crate::tls::install_provider();
        ServerSpec {
            url: url.into(),
            host: host.into(),
            port,
            tls: tls.then(|| crate::tls::client_config(None)),
            server_name: None,
            weight: 1,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_ip_server_is_labelled_by_its_url_as_written() {
        let s = spec("ws://10.0.0.5:8080", "10.0.0.5", 8080, false);
        let e = Endpoint::fixed(&s);
        assert_eq!(e.label(), "ws://10.0.0.5:8080");
        assert_eq!(format!("{e:?}"), "ws://10.0.0.5:8080");
        assert_eq!(e.addr(), "10.0.0.5:8080".parse().unwrap());
        assert!(e.tls().is_none());
    }

    /// Each address of a name is a server: labelled by the URL and the
    /// address, dialed at the address, and still asking for the name.
    #[test]
    fn an_address_of_a_name_is_labelled_by_url_and_address() {
        let s = spec("wss://chat.internal:8443", "chat.internal", 8443, true);
        assert_eq!(s.ip(), None);
        let v4 = Endpoint::new(&s, ip("10.0.0.5"));
        assert_eq!(v4.label(), "wss://chat.internal:8443 (10.0.0.5)");
        assert_eq!(v4.addr(), "10.0.0.5:8443".parse().unwrap());
        assert_eq!(v4.authority(), "chat.internal:8443");
        assert_eq!(v4.tls().unwrap().name.to_str(), "chat.internal");
        let v6 = Endpoint::new(&s, ip("fd00::5"));
        assert_eq!(v6.label(), "wss://chat.internal:8443 (fd00::5)");
        assert_eq!(v6.addr(), "[fd00::5]:8443".parse().unwrap());
    }

    #[test]
    fn the_authority_brackets_ipv6() {
        let v4 = Endpoint::fixed(&spec("ws://10.0.0.5:81", "10.0.0.5", 81, false));
        assert_eq!(v4.authority(), "10.0.0.5:81");
        let v6 = Endpoint::fixed(&spec("ws://[::1]:82", "::1", 82, false));
        assert_eq!(v6.authority(), "[::1]:82");
    }

    #[test]
    fn a_wss_server_carries_its_sni_name() {
        let ip_server = Endpoint::fixed(&spec("wss://127.0.0.1:8443", "127.0.0.1", 8443, true));
        assert!(matches!(
            ip_server.tls().unwrap().name,
            ServerName::IpAddress(_)
        ));
    }

    #[test]
    fn server_name_replaces_the_host_for_tls_only() {
        let mut s = spec("wss://127.0.0.1:8443", "127.0.0.1", 8443, true);
        s.server_name = Some(ServerName::try_from("api.internal.test").unwrap());
        let e = Endpoint::fixed(&s);
        assert_eq!(e.tls().unwrap().name.to_str(), "api.internal.test");
        assert_eq!(e.authority().to_str().unwrap(), "127.0.0.1:8443");
    }
}
