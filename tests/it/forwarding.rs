//! The request the backend sees: forwarding headers, end-to-end headers
//! kept, hop-by-hop headers dropped, Host preserved or replaced.

use crate::support::*;

/// One route, `/`, to the backend at `url`.
fn gateway(url: &str, preserve_host: bool) -> GatewayBuilder {
    Gateway::builder()
        .route(route("/", "b").preserve_host(preserve_host))
        .upstream("b", &[url])
}

#[tokio::test]
async fn backend_sees_forwarding_and_end_to_end_headers() {
    let mut b = Backend::scripted().await;
    let gw = gateway(&b.url(), true).start().await;
    let _ws = raw_upgrade_to(
        gw.addr,
        "app.example:8080",
        "/chat?room=1&token=abc",
        &[
            "X-Forwarded-For: 203.0.113.7",
            "X-Real-IP: 6.6.6.6",
            "X-Forwarded-Proto: https",
            "X-Forwarded-Host: spoofed.example",
            "Origin: https://app.example",
            "Cookie: session=s3cr3t",
            "User-Agent: framegate-tests/1.0",
            "Authorization: Bearer t0ken",
        ],
    )
    .await;
    let conn = b.accept().await;

    assert_eq!(conn.path(), "/chat?room=1&token=abc");
    // 127.0.0.1 is not a trusted proxy here: what it claims in
    // X-Forwarded-For is replaced, not extended.
    assert_eq!(conn.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(conn.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(conn.header("x-forwarded-proto"), Some("http"));
    assert_eq!(conn.header("x-forwarded-host"), Some("app.example:8080"));
    assert_eq!(conn.header("host"), Some("app.example:8080"));
    assert_eq!(conn.header("origin"), Some("https://app.example"));
    assert_eq!(conn.header("cookie"), Some("session=s3cr3t"));
    assert_eq!(conn.header("user-agent"), Some("framegate-tests/1.0"));
    assert_eq!(conn.header("authorization"), Some("Bearer t0ken"));
}

#[tokio::test]
async fn backend_gets_its_own_handshake_headers() {
    let mut b = Backend::scripted().await;
    let gw = gateway(&b.url(), true).start().await;
    let _ws = raw_upgrade(gw.addr, "/", &[]).await;
    let conn = b.accept().await;
    // The gateway is the client on this leg: a key of its own, version 13.
    let key = conn.header("sec-websocket-key").expect("a key");
    assert_ne!(
        key, "dGhlIHNhbXBsZSBub25jZQ==",
        "the client's key is per hop"
    );
    assert_eq!(key.len(), 24);
    assert_eq!(conn.header("sec-websocket-version"), Some("13"));
    assert!(conn
        .header("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    assert!(conn
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let mut b = Backend::scripted().await;
    let gw = gateway(&b.url(), true).start().await;
    let request = "GET /hop HTTP/1.1\r\nHost: gateway.test\r\nUpgrade: websocket\r\n\
        Connection: Upgrade, X-Hop, keep-alive\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
        TE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nX-End: 2\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let _ws = raw_upgrade_on(tcp, request).await;
    let conn = b.accept().await;
    for gone in ["x-hop", "keep-alive", "te", "proxy-authorization"] {
        assert_eq!(conn.header(gone), None, "{gone} must not be forwarded");
    }
    assert_eq!(conn.header("x-end"), Some("2"));
    // Only the gateway's own Connection header goes upstream.
    assert!(conn
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
}

#[tokio::test]
async fn forwarded_for_starts_a_chain_when_absent() {
    let mut b = Backend::scripted().await;
    let gw = gateway(&b.url(), true).start().await;
    let _ws = raw_upgrade(gw.addr, "/", &[]).await;
    let conn = b.accept().await;
    assert_eq!(conn.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(conn.header("x-forwarded-host"), Some("gateway.test"));
}

#[tokio::test]
async fn forwarded_for_sent_on_several_lines_is_kept_whole() {
    let mut b = Backend::scripted().await;
    // Only a trusted proxy's chain is kept at all.
    let gw = gateway(&b.url(), true)
        .server("trusted_proxies = [\"127.0.0.1\"]")
        .start()
        .await;
    let _ws = raw_upgrade(
        gw.addr,
        "/",
        &[
            "X-Forwarded-For: 203.0.113.7",
            "X-Forwarded-For: 198.51.100.2",
        ],
    )
    .await;
    let conn = b.accept().await;
    // Several field lines are one comma-separated list (RFC 9110 §5.3):
    // every earlier hop stays in the chain.
    assert_eq!(
        conn.header("x-forwarded-for"),
        Some("203.0.113.7, 198.51.100.2, 127.0.0.1")
    );
}

#[tokio::test]
async fn repeated_end_to_end_headers_keep_every_value_in_order() {
    let mut b = Backend::scripted().await;
    let gw = gateway(&b.url(), true).start().await;
    let _ws = raw_upgrade(gw.addr, "/", &["X-Multi: one", "X-Multi: two"]).await;
    let conn = b.accept().await;
    let values: Vec<&str> = conn
        .request
        .headers
        .get_all("x-multi")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(values, ["one", "two"]);
}

#[tokio::test]
async fn host_is_the_upstream_address_without_preserve_host() {
    let mut b = Backend::scripted().await;
    let gw = gateway(&b.url(), false).start().await;
    let _ws = raw_upgrade_to(gw.addr, "app.example", "/", &[]).await;
    let conn = b.accept().await;
    assert_eq!(
        conn.header("host"),
        Some(format!("127.0.0.1:{}", b.addr.port()).as_str())
    );
    assert_eq!(conn.header("x-forwarded-host"), Some("app.example"));
}
