//! What one backend server *is*: its identity, its address and its TLS
//! settings, resolved once when the config is loaded so that reaching it
//! costs no parsing per handshake.

use std::{fmt, sync::Arc};

use super::{resolve::Addrs, tcp::Sources};

use http::HeaderValue;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// One backend server as the config names it.
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
    /// Its share relative to the group's other servers (at least 1).
    pub weight: u32,
}

/// One backend server, ready to dial.
///
/// Its identity is its [`label`](Endpoint::label), the URL as the config
/// wrote it (scheme, host and port): it names the server in every log line
/// and error. A group may list the same URL twice (and so send it twice the
/// share); the two are then separate endpoints with the same label.
///
/// Per-endpoint live state (the in-flight count whose RAII guard a session
/// holds, for least-connections) sits beside the endpoint, in the group's
/// balancer; the endpoint itself stays immutable and is rebuilt with each
/// config.
pub struct Endpoint {
    label: String,
    host: String,
    port: u16,
    /// `host:port` (IPv6 bracketed): the `Host` sent when the route does not
    /// preserve the client's.
    authority: HeaderValue,
    tls: Option<Tls>,
    /// Where it is dialed: the IP, or the name's addresses as last
    /// resolved in the background (upstream/resolve.rs).
    addrs: Addrs,
    /// The group's source addresses (upstream/tcp.rs); none by default.
    sources: Arc<Sources>,
}

/// A `wss://` server's TLS client settings.
pub(super) struct Tls {
    pub(super) connector: TlsConnector,
    /// Sent as SNI and checked against the certificate.
    pub(super) name: ServerName<'static>,
}

#[cfg(test)]
impl ServerSpec {
    /// A plain `ws://` server at `addr`, for tests.
    pub(crate) fn plain(addr: std::net::SocketAddr) -> ServerSpec {
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
    /// Resolves a checked spec. Panics if the host is not a valid server
    /// name or header value, which the config check already rules out.
    pub fn new(spec: ServerSpec) -> Self {
        let authority = match (spec.host.contains(':'), spec.port) {
            (true, port) => format!("[{}]:{port}", spec.host),
            (false, port) => format!("{}:{port}", spec.host),
        };
        let tls = spec.tls.map(|cfg| Tls {
            connector: TlsConnector::from(cfg),
            name: spec.server_name.unwrap_or_else(|| {
                ServerName::try_from(spec.host.clone())
                    .expect("host was validated as a URI authority")
            }),
        });
        Endpoint {
            addrs: Addrs::new(&spec.host, spec.port),
            sources: Arc::default(),
            label: spec.url,
            host: spec.host,
            port: spec.port,
            authority: HeaderValue::from_str(&authority).expect("authority is header-safe"),
            tls,
        }
    }

    /// The URL as written in the config: the server's name in logs and errors.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The host as configured: a name (resolved in the background, never
    /// at a dial) or an IP.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, the upstream request's default `Host`.
    pub fn authority(&self) -> &HeaderValue {
        &self.authority
    }

    pub(super) fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    pub(super) fn addrs(&self) -> &Addrs {
        &self.addrs
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

    #[test]
    fn the_label_is_the_url_as_written() {
        let e = Endpoint::new(spec(
            "ws://backend.internal:8080",
            "backend.internal",
            8080,
            false,
        ));
        assert_eq!(e.label(), "ws://backend.internal:8080");
        assert_eq!(format!("{e:?}"), "ws://backend.internal:8080");
        assert_eq!((e.host(), e.port()), ("backend.internal", 8080));
        assert!(e.tls().is_none());
    }

    #[test]
    fn the_authority_brackets_ipv6() {
        let v4 = Endpoint::new(spec("ws://10.0.0.5:81", "10.0.0.5", 81, false));
        assert_eq!(v4.authority(), "10.0.0.5:81");
        let v6 = Endpoint::new(spec("ws://[::1]:82", "::1", 82, false));
        assert_eq!(v6.authority(), "[::1]:82");
        let name = Endpoint::new(spec("wss://example.com", "example.com", 443, true));
        assert_eq!(name.authority(), "example.com:443");
    }

    #[test]
    fn a_wss_server_carries_its_sni_name() {
        let e = Endpoint::new(spec("wss://example.com:8443", "example.com", 8443, true));
        let tls = e.tls().unwrap();
        assert_eq!(tls.name.to_str(), "example.com");
        let ip = Endpoint::new(spec("wss://127.0.0.1:8443", "127.0.0.1", 8443, true));
        assert!(matches!(ip.tls().unwrap().name, ServerName::IpAddress(_)));
    }

    #[test]
    fn server_name_replaces_the_host_for_tls_only() {
        let mut s = spec("wss://127.0.0.1:8443", "127.0.0.1", 8443, true);
        s.server_name = Some(ServerName::try_from("api.internal.test").unwrap());
        let e = Endpoint::new(s);
        assert_eq!(e.tls().unwrap().name.to_str(), "api.internal.test");
        assert_eq!(
            (e.host(), e.authority().to_str().unwrap()),
            ("127.0.0.1", "127.0.0.1:8443")
        );
    }
}
