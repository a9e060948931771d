//! TLS on both legs: wss listeners (certificates chosen by SNI) and wss
//! upstreams verified against a configured CA.

use crate::support::*;
use futures_util::SinkExt;
use rustls_pki_types::pem::PemObject;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

/// A listener presenting `server.pem`.
const TLS_SERVER: &str = r#"tls = { cert = "server.pem", key = "server.key" }"#;

/// A gateway with a plain listener (`addrs[0]`) and a TLS one (`addrs[1]`)
/// presenting `leaf` as `server.pem`, in front of `url`.
fn two_listeners(leaf: &Leaf, url: &str) -> GatewayBuilder {
    Gateway::builder()
        .listener("")
        .listener(TLS_SERVER)
        .route(Route::any("b"))
        .upstream("b", &[url])
        .leaf("server", leaf)
}

#[tokio::test]
async fn tls_listener_config_loads_as_a_table_or_a_list() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost"]);
    let url = Backend::echo().await.url();
    for tls in [
        r#"tls = { cert = "server.pem", key = "server.key" }"#,
        r#"tls = [{ cert = "server.pem", key = "server.key" }]"#,
    ] {
        let gw = Gateway::builder()
            .listener(tls)
            .route(Route::any("b"))
            .upstream("b", &[&url])
            .leaf("server", &leaf)
            .start()
            .await;
        let stream = tls_connect(gw.addr, "localhost", ca.client_config()).await;
        let mut ws = raw_upgrade_on(stream, &upgrade_request("/", &[])).await;
        ws.send(&client_frame(true, OP_TEXT, b"configured")).await;
        assert_eq!(ws.read_message().await.1, b"configured", "{tls}");
    }
}

#[tokio::test]
async fn wss_listener_relays_and_says_https_upstream() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost"]);
    let mut b = Backend::scripted().await;
    let gw = two_listeners(&leaf, &b.url()).start().await;
    assert_eq!(gw.addrs.len(), 2);

    let tls = tls_connect(gw.addrs[1], "localhost", ca.client_config()).await;
    let (mut client, _) = guard(
        "the handshake over TLS",
        tokio_tungstenite::client_async("wss://localhost/secure?x=1", tls),
    )
    .await
    .expect("wss handshake");
    let mut up = b.accept().await;
    assert_eq!(up.header("x-forwarded-proto"), Some("https"));
    assert_eq!(up.path(), "/secure?x=1");

    client.send(Message::text("over tls")).await.unwrap();
    assert_eq!(up.next().await, Message::text("over tls"));
    let big = vec![0x5au8; 300_000];
    up.ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_msg(&mut client).await, Message::binary(big));
    client
        .close(Some(close_frame(1000, "tls bye")))
        .await
        .unwrap();
    assert_eq!(
        code_reason(up.expect_close().await),
        (1000, "tls bye".into())
    );

    // The plain listener of the same gateway says http.
    let _plain = raw_upgrade(gw.addrs[0], "/", &[]).await;
    let up = b.accept().await;
    assert_eq!(up.header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn wss_listener_offers_only_http11_over_alpn() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost"]);
    let url = Backend::echo().await.url();
    let gw = two_listeners(&leaf, &url).start().await;
    let mut cfg = (*ca.client_config()).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tls = tls_connect(gw.addrs[1], "localhost", cfg.into()).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut ws = raw_upgrade_on(tls, &upgrade_request("/", &[])).await;
    ws.send(&client_frame(true, OP_TEXT, b"alpn")).await;
    assert_eq!(ws.read_message().await, (OP_TEXT, b"alpn".to_vec()));
}

#[tokio::test]
async fn wss_listener_speaks_tls_1_2_and_1_3() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost"]);
    let url = Backend::echo().await.url();
    let gw = two_listeners(&leaf, &url).start().await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_protocol_versions(&[version])
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = tls_connect(gw.addrs[1], "localhost", cfg.into()).await;
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
        let mut ws = raw_upgrade_on(tls, &upgrade_request("/", &[])).await;
        ws.send(&client_frame(true, OP_TEXT, b"versioned")).await;
        assert_eq!(ws.read_message().await.1, b"versioned");
    }
}

#[tokio::test]
async fn request_timeout_applies_after_the_tls_handshake() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost"]);
    let url = Backend::echo().await.url();
    let gw = two_listeners(&leaf, &url)
        .server("request_timeout = \"300ms\"")
        .start()
        .await;
    let mut tls = tls_connect(gw.addrs[1], "localhost", ca.client_config()).await;
    // TLS done, then not a byte of HTTP.
    let got = read_to_close(&mut tls).await;
    assert!(!String::from_utf8_lossy(&got).contains(" 101 "), "{got:?}");
}

#[tokio::test]
async fn tls_handshake_timeout_closes_silent_connections() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost"]);
    let url = Backend::echo().await.url();
    let gw = two_listeners(&leaf, &url)
        .server("tls_handshake_timeout = \"300ms\"")
        .start()
        .await;
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(gw.addrs[1]).await.unwrap();
    let mut buf = [0u8; 16];
    let n = guard(
        "the gateway to drop the silent TLS client",
        silent.read(&mut buf),
    )
    .await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    // A client that does complete the handshake is served.
    let tls = tls_connect(gw.addrs[1], "localhost", ca.client_config()).await;
    raw_upgrade_on(tls, &upgrade_request("/", &[])).await;
}

#[tokio::test]
async fn certificate_is_chosen_by_sni() {
    let ca = TestCa::new();
    // The first certificate is also the default (no SNI, e.g. an IP address).
    let a = ca.leaf(&["a.test", "127.0.0.1"]);
    let b = ca.leaf(&["b.test"]);
    let w = ca.leaf(&["*.w.test"]);
    let url = Backend::echo().await.url();
    let gw = Gateway::builder()
        .listener(
            r#"tls = [
  { cert = "a.pem", key = "a.key" },
  { cert = "b.pem", key = "b.key" },
  { cert = "w.pem", key = "w.key" },
]"#,
        )
        .route(Route::any("echo"))
        .upstream("echo", &[url])
        .leaf("a", &a)
        .leaf("b", &b)
        .leaf("w", &w)
        .start()
        .await;
    for (name, leaf) in [
        ("a.test", &a),
        ("b.test", &b),
        ("B.TEST", &b),
        ("x.w.test", &w),
        ("127.0.0.1", &a),
    ] {
        let tls = tls_connect(gw.addr, name, ca.client_config()).await;
        let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert!(presented == leaf.der, "{name} got the wrong certificate");
        let mut ws = raw_upgrade_on(tls, &upgrade_request("/", &[])).await;
        ws.send(&client_frame(true, OP_TEXT, name.as_bytes())).await;
        assert_eq!(ws.read_message().await.1, name.as_bytes());
    }
}

/// A gateway whose upstream is `wss://localhost:PORT`, checked against `ca.pem`.
fn wss_upstream(ca: &TestCa, url: &str, route: Route) -> GatewayBuilder {
    Gateway::builder()
        .route(route)
        .upstream_with("secure", &[url], "ca = \"ca.pem\"")
        .file("ca.pem", &ca.pem)
}

#[tokio::test]
async fn wss_upstream_is_verified_and_relays() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost"]);
    let mut b = Backend::builder()
        .tls(leaf.server_config())
        .scripted()
        .await;
    assert!(b.url().starts_with("wss://localhost:"));
    let gw = wss_upstream(&ca, &b.url(), Route::any("secure"))
        .start()
        .await;

    let mut client = connect(gw.addr, "/up").await;
    let mut up = b.accept().await;
    assert_eq!(up.path(), "/up");
    client
        .send(Message::text("to a wss backend"))
        .await
        .unwrap();
    assert_eq!(up.next().await, Message::text("to a wss backend"));
    let big = vec![7u8; 200_000];
    client.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(up.next().await, Message::binary(big.clone()));
    up.ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_msg(&mut client).await, Message::binary(big));
    up.ws
        .close(Some(close_frame(4002, "tls up bye")))
        .await
        .unwrap();
    assert_eq!(
        code_reason(expect_close(&mut client).await),
        (4002, "tls up bye".into())
    );
}

#[tokio::test]
async fn wss_upstream_with_an_untrusted_certificate_is_502() {
    let ca = TestCa::new();
    let other_ca = TestCa::new();
    let leaf = other_ca.leaf(&["localhost"]);
    let b = Backend::builder()
        .tls(leaf.server_config())
        .scripted()
        .await;
    let gw = wss_upstream(&ca, &b.url(), Route::any("secure"))
        .start()
        .await;
    let resp = http(gw.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    resp.assert_one_line_body();
}

#[tokio::test]
async fn wss_upstream_with_a_certificate_for_another_name_is_502() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["not-localhost.test"]);
    let b = Backend::builder()
        .tls(leaf.server_config())
        .scripted()
        .await;
    let gw = wss_upstream(&ca, &b.url(), Route::any("secure"))
        .start()
        .await;
    let resp = http(gw.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 502, "{resp:?}");
}

#[tokio::test]
async fn wss_upstream_that_never_does_tls_is_504_after_connect_timeout() {
    let ca = TestCa::new();
    let (addr, mut accepted) = silent_server().await;
    let started = std::time::Instant::now();
    let url = format!("wss://localhost:{}", addr.port());
    let gw = wss_upstream(&ca, &url, Route::any("secure").policy("quick"))
        .policy("quick", "[upstream]\nconnect_timeout = \"300ms\"\n")
        .start()
        .await;
    let resp = http(gw.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 504, "{resp:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    guard("the TCP connection", accepted.recv()).await.unwrap();
}
