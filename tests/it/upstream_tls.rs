//! TLS to the upstream beyond a CA bundle: a client certificate (mTLS), a
//! server name other than the host dialled, pinned self-signed
//! certificates; every failure a 502 whose log line says TLS failed; and
//! the config errors for these keys, at their lines.
//!
//! Backends are real rustls servers on loopback. The log lines are read
//! from the binary, which logs as in production.

use futures_util::SinkExt;
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// A gateway whose one route goes to the `wss://` server `url` with the
/// upstream `lines` (`ca = ...`, `trust = ...`).
fn to_wss(url: &str, lines: &str) -> GatewayBuilder {
    Gateway::builder()
        .route(Route::any("secure"))
        .upstream_with("secure", &[url], lines)
}

/// Sends one message through a WebSocket session on `addr` and expects it
/// back from the echoing backend.
async fn echoes(addr: std::net::SocketAddr, text: &str) {
    let mut ws = connect(addr, "/").await;
    ws.send(Message::text(text)).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::text(text));
}

/// An upgrade through the binary `gw` gets a 502 saying TLS failed, and
/// the log line names TLS and the server (`url` and its address); returns
/// that line.
async fn tls_fails(gw: &mut Binary, url: &str) -> String {
    let resp = http(gw.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    resp.assert_one_line_body();
    assert_eq!(
        resp.body_text().trim(),
        "bad gateway: TLS to the upstream failed"
    );
    let line = gw.wait_for("upstream handshake failed").await;
    // The server's label: `url`, and the address when it names `localhost`.
    assert!(line.contains(&format!("TLS with {url}")), "{line}");
    assert!(line.contains(" failed: "), "{line}");
    line
}

#[tokio::test]
async fn mtls_presents_the_client_certificate_for_upgrades_and_plain_requests() {
    let ca = TestCa::new();
    let server = ca.leaf(&["localhost"]);
    let gateway_id = ca.leaf(&["framegate.gateway.test"]);
    let b = HttpBackend::serve_tls(ca.server_config_requiring_clients(&server), |_| async {
        text(StatusCode::OK, "hello, authenticated gateway")
    })
    .await;
    let url = format!("wss://localhost:{}", b.addr.port());
    let gw = to_wss(
        &url,
        "ca = \"ca.pem\"\nclient_cert = \"gw.pem\"\nclient_key = \"gw.key\"",
    )
    .file("ca.pem", &ca.pem)
    .leaf("gw", &gateway_id)
    .start()
    .await;
    echoes(gw.addr, "over mutual TLS").await;
    let resp = http(
        gw.addr,
        "GET /page HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body_text(), "hello, authenticated gateway");
    assert_eq!(b.paths(), ["/", "/page"]);
}

#[tokio::test]
async fn mtls_without_a_client_certificate_is_a_tls_failure() {
    let ca = TestCa::new();
    let server = ca.leaf(&["localhost"]);
    let b = HttpBackend::serve_tls(ca.server_config_requiring_clients(&server), |_| async {
        text(StatusCode::OK, "never")
    })
    .await;
    let url = format!("wss://localhost:{}", b.addr.port());
    let mut gw = to_wss(&url, "ca = \"ca.pem\"")
        .file("ca.pem", &ca.pem)
        .binary(&["--workers", "1"])
        .await;
    // TLS 1.3: the server refuses after the client's side of the handshake
    // is done, so the refusal arrives as an alert on the first read.
    let line = tls_fails(&mut gw, &url).await;
    assert!(line.contains("CertificateRequired"), "{line}");
    assert!(b.requests().is_empty());
}

#[tokio::test]
async fn server_name_is_sent_as_sni_and_verified_while_the_ip_is_dialled() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["api.internal.test"]);
    let b = Backend::builder().tls(leaf.server_config()).echo().await;
    let url = format!("wss://127.0.0.1:{}", b.addr.port());
    let gw = to_wss(&url, "ca = \"ca.pem\"\nserver_name = \"api.internal.test\"")
        .file("ca.pem", &ca.pem)
        .start()
        .await;
    echoes(gw.addr, "by IP, verified by name").await;
    assert_eq!(b.server_names(), [Some("api.internal.test".to_owned())]);
}

#[tokio::test]
async fn without_server_name_the_ip_does_not_match_the_certificate() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["api.internal.test"]);
    let b = Backend::builder().tls(leaf.server_config()).echo().await;
    let url = format!("wss://127.0.0.1:{}", b.addr.port());
    let mut gw = to_wss(&url, "ca = \"ca.pem\"")
        .file("ca.pem", &ca.pem)
        .binary(&["--workers", "1"])
        .await;
    let line = tls_fails(&mut gw, &url).await;
    assert!(line.contains("not valid for name"), "{line}");
    assert!(line.contains("api.internal.test"), "{line}");
    assert_eq!(b.count(), 0);
}

#[tokio::test]
async fn a_pinned_self_signed_certificate_is_trusted() {
    let own = Leaf::self_signed(&["backend.test"]);
    let b = Backend::builder().tls(own.server_config()).echo().await;
    let gw = to_wss(&b.url(), "trust = \"backend.pem\"")
        .file("backend.pem", &own.cert_pem)
        .start()
        .await;
    // Pinned: trusted as it is, though it names backend.test and not localhost.
    echoes(gw.addr, "to a self-signed backend").await;
}

#[tokio::test]
async fn another_self_signed_certificate_is_refused() {
    let own = Leaf::self_signed(&["localhost"]);
    let other = Leaf::self_signed(&["localhost"]);
    let b = Backend::builder().tls(own.server_config()).echo().await;
    let mut gw = to_wss(&b.url(), "trust = \"other.pem\"")
        .file("other.pem", &other.cert_pem)
        .binary(&["--workers", "1"])
        .await;
    let line = tls_fails(&mut gw, &b.url()).await;
    assert!(line.contains("ApplicationVerificationFailure"), "{line}");
    assert_eq!(b.count(), 0);
}

#[test]
fn tls_keys_are_checked_at_their_lines() {
    let ca = TestCa::new();
    let gw = ca.leaf(&["gw.test"]);
    let own = Leaf::self_signed(&["backend.test"]);
    let config = r#"[[listener]]
addr = "127.0.0.1:0"

[[route]]
upstream = "a"

[upstream.a]
servers = ["wss://127.0.0.1:9443"]
client_cert = "gw.pem"

[upstream.b]
servers = ["ws://127.0.0.1:9000"]
server_name = "api.internal.test"
trust = "self.pem"

[upstream.c]
servers = ["wss://127.0.0.1:9443"]
trust = "missing.pem"
client_cert = "gw.pem"
client_key = "missing.key"
server_name = "not a name"

[upstream.d]
servers = ["wss://127.0.0.1:9443"]
ca = "ca.pem"
trust = "self.pem"

[upstream.e]
servers = ["wss://127.0.0.1:9443"]
client_key = "gw.key"
ca = "gw.key"
"#;
    let dir = tempfile::tempdir().unwrap();
    Gateway::from_toml(config)
        .leaf("gw", &gw)
        .file("self.pem", &own.cert_pem)
        .file("ca.pem", &ca.pem)
        .write(dir.path());
    let errors = framegate::config::Config::load(&dir.path().join("framegate.toml"))
        .unwrap_err()
        .to_string();
    let at = |line: usize, needle: &str| {
        let prefix = format!("framegate.toml:{line}: ");
        assert!(
            errors
                .lines()
                .any(|l| l.contains(&prefix) && l.contains(needle)),
            "no `{prefix}...{needle}...` in:\n{errors}"
        );
    };
    at(9, "client_cert needs client_key");
    at(13, "`server_name` applies to wss:// servers only");
    at(14, "`trust` applies to wss:// servers only");
    at(18, "missing.pem");
    at(20, "missing.key");
    at(
        21,
        "server_name `not a name` is not a DNS name or IP address",
    );
    at(26, "set either ca or trust, not both");
    at(30, "client_key needs client_cert");
    at(31, "no usable CA certificate");
    assert_eq!(errors.lines().count(), 9, "{errors}");
}
