//! Dialing a server: TCP, then TLS with SNI for `wss://`, each within the
//! connect timeout. What comes out is a [`Transport`], plain or TLS, that
//! nothing has been written to yet: every error here is
//! [`Retry::Safe`](super::error::Retry::Safe).

use std::time::Duration;

use tokio::time::timeout;
use tokio_rustls::TlsStream;

use super::{tcp, Endpoint, Phase, UpstreamError};
use crate::stream::Transport;

/// Opens a connection to `endpoint`: to its address (for a name, resolved
/// in the background, never here), from the group's source addresses
/// ([`tcp::connect`]), within `limit`; the TLS handshake then has a
/// `limit` of its own.
///
/// `upgrade`: the caller writes an upgrade request at once
/// ([`super::ws::handshake`], which then makes ACKs prompt again), so on
/// plain TCP the ACK of the server's SYN-ACK may ride on it. Not over TLS,
/// whose handshake is an exchange of several flights, nor for plain HTTP,
/// whose connections live on in the pool.
pub async fn dial(
    endpoint: &Endpoint,
    limit: Duration,
    upgrade: bool,
) -> Result<Transport, UpstreamError> {
    let server = endpoint.label();
    let hold_ack = upgrade && may_hold_ack(endpoint);
    let tcp = timeout(limit, tcp::connect(endpoint, hold_ack))
        .await
        .map_err(|_| UpstreamError::timeout(server, Phase::Connect, limit))?
        .map_err(|e| UpstreamError::unreachable(server, Phase::Connect, e))?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = endpoint.tls() else {
        return Ok(Transport::Left(tcp));
    };
    // Boxed: TLS state is kilobytes, and every plain upgrade's future would
    // otherwise carry (and move) room for it.
    let tls = Box::pin(timeout(limit, tls.connector.connect(tls.name.clone(), tcp)))
        .await
        .map_err(|_| UpstreamError::timeout(server, Phase::Tls, limit))?
        .map_err(|e| UpstreamError::tls(server, e))?;
    Ok(Transport::Right(Box::new(TlsStream::Client(tls))))
}

/// Whether a dial for an upgrade to `endpoint` holds back the ACK of its
/// SYN-ACK: on plain TCP only. [`super::ws`] makes ACKs prompt again after
/// its request only then (over TLS there is nothing to undo), so every
/// caller of its handshake dials with `upgrade`: the gateway's upgrades and
/// the WebSocket probes.
pub fn may_hold_ack(endpoint: &Endpoint) -> bool {
    endpoint.tls().is_none()
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::upstream::{error::Retry, ServerSpec};

    const LIMIT: Duration = Duration::from_secs(5);

    fn endpoint(addr: std::net::SocketAddr, tls: bool) -> Endpoint {
        crate::tls::install_provider();
        Endpoint::fixed(&ServerSpec {
            url: format!("{}://{addr}", if tls { "wss" } else { "ws" }),
            host: addr.ip().to_string(),
            port: addr.port(),
            tls: tls.then(|| crate::tls::client_config(None)),
            server_name: None,
            weight: 1,
        })
    }

    /// A loopback port nothing listens on, kept bound (never listening) while the
    /// socket is held, so no other test's listener can take it.
    async fn closed_port() -> (std::net::SocketAddr, tokio::net::TcpSocket) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        (socket.local_addr().unwrap(), socket)
    }

    #[tokio::test]
    async fn a_plain_server_gives_a_tcp_transport() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = endpoint(listener.local_addr().unwrap(), false);
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            buf
        });
        let mut io = dial(&e, LIMIT, false).await.unwrap();
        let Transport::Left(tcp) = &io else {
            panic!("a ws:// server must be plain TCP")
        };
        assert!(tcp.nodelay().unwrap());
        io.write_all(b"ping").await.unwrap();
        assert_eq!(&server.await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn a_wss_server_gets_sni_and_gives_a_tls_transport() {
        crate::tls::install_provider();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let server_cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server_cfg));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let spec = ServerSpec {
            url: format!("wss://localhost:{port}"),
            host: "localhost".into(),
            port,
            tls: Some(crate::tls::client_config(Some(roots))),
            server_name: None,
            weight: 1,
        };
        // One address of the name, as the background resolution gives it
        // (group.rs).
        let e = Endpoint::new(&spec, listener.local_addr().unwrap().ip());
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let sni = tls.get_ref().1.server_name().map(str::to_owned);
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            (sni, buf)
        });
        let mut io = dial(&e, LIMIT, false).await.unwrap();
        assert!(
            matches!(io, Transport::Right(_)),
            "a wss:// server must be TLS"
        );
        io.write_all(b"ping").await.unwrap();
        io.flush().await.unwrap();
        let (sni, got) = server.await.unwrap();
        assert_eq!(sni.as_deref(), Some("localhost"));
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreachable_and_safe_to_retry() {
        let (closed, _held) = closed_port().await;
        let e = endpoint(closed, false);
        let err = dial(&e, LIMIT, false).await.unwrap_err();
        assert!(
            matches!(&err, UpstreamError::Unreachable { source, .. }
                if source.kind() == std::io::ErrorKind::ConnectionRefused),
            "{err:?}"
        );
        assert_eq!(err.phase(), Phase::Connect);
        assert_eq!(err.retry(), Retry::Safe);
        assert!(err
            .to_string()
            .starts_with(&format!("cannot reach {}: ", e.label())));
    }

    #[tokio::test]
    async fn a_server_that_never_accepts_is_a_connect_timeout() {
        // A backlog of 0 with one connection already queued: further SYNs
        // are dropped, so connecting hangs.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let _queued = TcpStream::connect(addr).await.unwrap();
        let e = endpoint(addr, false);
        let limit = Duration::from_millis(200);
        let err = dial(&e, limit, false).await.unwrap_err();
        assert!(
            matches!(
                err,
                UpstreamError::Timeout {
                    phase: Phase::Connect,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.retry(), Retry::Safe);
        drop(listener);
    }

    #[tokio::test]
    async fn a_tls_failure_is_a_tls_error_and_safe_to_retry() {
        // A plain server that answers the ClientHello with HTTP.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = endpoint(listener.local_addr().unwrap(), true);
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        });
        let err = dial(&e, LIMIT, false).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Tls { .. }), "{err:?}");
        assert_eq!(err.phase(), Phase::Tls);
        assert_eq!(err.retry(), Retry::Safe);
        assert!(
            err.to_string()
                .starts_with(&format!("TLS with {} failed: ", e.label())),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_silent_tls_server_is_a_tls_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = endpoint(listener.local_addr().unwrap(), true);
        let held = tokio::spawn(async move { listener.accept().await.unwrap() });
        let limit = Duration::from_millis(200);
        let err = dial(&e, limit, false).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{} did not complete TLS within 200ms", e.label())
        );
        assert_eq!(err.phase(), Phase::Tls);
        assert_eq!(err.retry(), Retry::Safe);
        drop(held);
    }
}
