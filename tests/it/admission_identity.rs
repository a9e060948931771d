//! Who the client is and where it comes from: the Origin allow-list, and
//! the client IP from the socket, X-Forwarded-For or a PROXY protocol
//! header — the last two believed only from trusted proxies.

use crate::support::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Listener 0 is plain, listener 1 expects PROXY protocol. 127.0.0.3 is the
/// one trusted proxy.
async fn gateway(up: &Backend) -> Gateway {
    Gateway::builder()
        .server("trusted_proxies = [\"127.0.0.3\"]")
        .listener("")
        .listener("proxy_protocol = true")
        .route(route("/", "up"))
        .route(route("/strict", "up").policy("strict"))
        .route(route("/lenient", "up").policy("lenient"))
        .route(route("/per-ip", "up").policy("per-ip"))
        .upstream("up", &[up.url()])
        .policy(
            "strict",
            "[origin]\nallow = [\"https://app.example.com\", \"https://*.example.org\"]\n",
        )
        .policy(
            "lenient",
            "[origin]\nallow = [\"https://app.example.com\"]\nallow_missing = true\n",
        )
        .policy("per-ip", "[limits]\nmax_connections_per_ip = 1\n")
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_are_checked_per_route() {
    let up = Backend::echo().await;
    let gw = gateway(&up).await;
    let origin = |o| [("origin", o)];
    accepted(
        gw.addr,
        "127.0.0.1",
        "/strict",
        &origin("https://app.example.com"),
    )
    .await;
    accepted(
        gw.addr,
        "127.0.0.1",
        "/strict",
        &origin("https://eu.chat.example.org"),
    )
    .await;
    for bad in [
        "https://evil.example",
        "http://app.example.com",
        "https://example.org",
        "https://app.example.com.evil.example",
    ] {
        let r = refused(gw.addr, "127.0.0.1", "/strict", &origin(bad)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{bad}");
        assert_eq!(r.body.trim(), "origin not allowed");
    }
    // No Origin: a non-browser client. Refused or allowed per route.
    let r = refused(gw.addr, "127.0.0.1", "/strict", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    accepted(gw.addr, "127.0.0.1", "/lenient", &[]).await;
    assert_eq!(
        refused(
            gw.addr,
            "127.0.0.1",
            "/lenient",
            &origin("https://evil.example")
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(up.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let up = Backend::echo().await;
    let gw = gateway(&up).await;
    // Untrusted peer: its X-Forwarded-For and X-Real-IP are replaced.
    let spoof = [("x-forwarded-for", "6.6.6.6"), ("x-real-ip", "6.6.6.6")];
    let _a = accepted(gw.addr, "127.0.0.1", "/per-ip", &spoof).await;
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    // ... and limits still count the socket address.
    let other = [("x-forwarded-for", "7.7.7.7")];
    let r = refused(gw.addr, "127.0.0.1", "/per-ip", &other).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);

    // The trusted proxy: the chain is kept and extended, the client is the
    // rightmost untrusted entry, and limits count that client.
    let via = [("x-forwarded-for", "6.6.6.6, 203.0.113.5")];
    let _b = accepted(gw.addr, "127.0.0.3", "/per-ip", &via).await;
    let seen = up.last();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("6.6.6.6, 203.0.113.5, 127.0.0.3")
    );
    assert_eq!(seen.header("x-real-ip"), Some("203.0.113.5"));
    let r = refused(gw.addr, "127.0.0.3", "/per-ip", &via).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let _c = accepted(
        gw.addr,
        "127.0.0.3",
        "/per-ip",
        &[("x-forwarded-for", "203.0.113.6")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_names_the_client_only_for_trusted_peers() {
    let up = Backend::echo().await;
    let gw = gateway(&up).await;
    let proxied = gw.addrs[1];

    // v1 from the trusted proxy.
    let (status, _tcp) = upgrade_behind_proxy(
        proxied,
        "127.0.0.3",
        b"PROXY TCP4 198.51.100.20 192.0.2.1 40000 443\r\n".to_vec(),
    )
    .await;
    assert_eq!(status, 101);
    let seen = up.last();
    assert_eq!(seen.header("x-real-ip"), Some("198.51.100.20"));
    assert_eq!(seen.header("x-forwarded-for"), Some("198.51.100.20"));

    // v2 from the trusted proxy.
    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "[2001:db8::7]:40000"
                .parse::<std::net::SocketAddr>()
                .unwrap(),
            "[2001:db8::1]:443".parse::<std::net::SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    let (status, _tcp) = upgrade_behind_proxy(proxied, "127.0.0.3", v2).await;
    assert_eq!(status, 101);
    assert_eq!(up.last().header("x-real-ip"), Some("2001:db8::7"));

    // Anyone else on that listener is refused without an answer.
    let mut tcp = tcp_from("127.0.0.1", proxied).await;
    tcp.write_all(b"PROXY TCP4 198.51.100.20 192.0.2.1 40000 443\r\nGET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let n = tcp.read_to_end(&mut rest).await.unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&rest));
    assert_eq!(up.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_that_names_no_client_makes_the_proxy_the_client() {
    let up = Backend::echo().await;
    let gw = gateway(&up).await;
    let proxied = gw.addrs[1];
    let local = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::Protocol::Unspecified,
        ppp::v2::Addresses::Unspecified,
    )
    .build()
    .unwrap();
    for header in [b"PROXY UNKNOWN\r\n".to_vec(), local] {
        // The trusted balancer says "this connection is mine": what the
        // client wrote in X-Forwarded-For must not become the client.
        let (status, _tcp) =
            upgrade_behind_proxy_with(proxied, "127.0.0.3", header, &["X-Forwarded-For: 6.6.6.6"])
                .await;
        assert_eq!(status, 101);
        let seen = up.last();
        assert_eq!(seen.header("x-real-ip"), Some("127.0.0.3"));
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.3"));
    }
}

/// A PROXY header, then an upgrade, on one connection from `from`.
async fn upgrade_behind_proxy(
    gw: std::net::SocketAddr,
    from: &str,
    header: Vec<u8>,
) -> (u16, RawWs) {
    upgrade_behind_proxy_with(gw, from, header, &[]).await
}

/// [`upgrade_behind_proxy`] with `extra` header lines.
async fn upgrade_behind_proxy_with(
    gw: std::net::SocketAddr,
    from: &str,
    header: Vec<u8>,
    extra: &[&str],
) -> (u16, RawWs) {
    let mut tcp = tcp_from(from, gw).await;
    tcp.write_all(&header).await.unwrap();
    let answer = send_request(tcp, &upgrade_request_to("x", "/", extra)).await;
    (answer.response.status, answer)
}
