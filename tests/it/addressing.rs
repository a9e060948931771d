//! Where upstream connections go and come from: a server named by a host
//! name is one server per address its name resolved to in the background,
//! by the system's resolver here (`localhost`, from /etc/hosts: 127.0.0.1
//! and perhaps ::1, where nothing listens), and `source_addresses` are used
//! in turn. Names resolved by a configured `[resolver]`, and answers that
//! change, are in `dns.rs`.

use std::net::IpAddr;

use tokio::net::TcpListener;

use crate::support::*;

#[tokio::test]
async fn a_server_named_localhost_is_reached_at_its_resolved_address() {
    let backend = Backend::named("a").await;
    let port = backend.url().rsplit(':').next().unwrap().to_owned();
    let gw = Gateway::builder()
        .route(route("/", "app"))
        .upstream("app", &[format!("ws://localhost:{port}")])
        .start()
        .await;
    // Every session reaches the backend, whichever of localhost's
    // addresses it is sent to first (one that refuses fails over).
    for _ in 0..4 {
        let mut ws = connect(gw.addr, "/").await;
        let hello = next_msg(&mut ws).await.into_text().unwrap();
        assert!(hello.starts_with("a "), "{hello}");
        round_trip(&mut ws, "hi").await;
        let _ = ws.close(None).await;
    }
    assert_eq!(backend.count(), 4);
}

/// The binary resolves before it listens, logs the addresses it found, and
/// serves through them at once.
#[tokio::test]
async fn the_binary_resolves_before_it_listens() {
    let backend = Backend::named("a").await;
    let port = backend.url().rsplit(':').next().unwrap().to_owned();
    let bin = Gateway::builder()
        .route(route("/", "app"))
        .upstream("app", &[format!("ws://localhost:{port}")])
        .binary(&["--workers", "1"])
        .await;
    let line = bin
        .startup
        .iter()
        .find(|l| l.contains("server addresses changed"))
        .unwrap_or_else(|| panic!("no address line in {:?}", bin.startup));
    assert!(line.contains("127.0.0.1"), "{line}");
    let mut ws = connect(bin.addr, "/").await;
    let hello = next_msg(&mut ws).await.into_text().unwrap();
    assert!(hello.starts_with("a "), "{hello}");
}

/// Sessions to one backend come from 127.0.0.2 and 127.0.0.3 in turn
/// (loopback accepts any 127.x source on Linux).
#[tokio::test]
async fn connections_come_from_the_source_addresses_in_turn() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let gw = Gateway::builder()
        .route(route("/", "app"))
        .upstream_with(
            "app",
            &[format!("ws://{backend}")],
            "source_addresses = [\"127.0.0.2\", \"127.0.0.3\", \"::1\"]",
        )
        .start()
        .await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (client, accepted) = tokio::join!(connect(gw.addr, "/"), async {
            let (tcp, peer) = guard("the gateway's connection", listener.accept())
                .await
                .unwrap();
            let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            (ws, peer)
        });
        let (mut ws, peer) = accepted;
        seen.push(peer.ip());
        let _ = ws.close(None).await;
        drop(client);
    }
    let want: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]
        .map(|s| s.parse().unwrap())
        .into();
    // The IPv6 source is skipped for an IPv4 server.
    assert_eq!(seen, want);
}

#[test]
fn bad_addressing_keys_are_reported_at_their_lines() {
    let bad = r#"[[listener]]
addr = "127.0.0.1:0"

[[route]]
path = "/"
upstream = "app"

[upstream.app]
servers = ["ws://backend.internal:80"]
source_addresses = [
  "10.0.0.2",
  "10.0.0.2:80",
  "0.0.0.0",
]
resolve_interval = "100ms"
"#;
    let stderr = check_refused(bad);
    for (prefix, needle) in [
        ("bad.toml:12:", "is not an IP address"),
        ("bad.toml:13:", "unicast"),
        ("bad.toml:15:", "at least 1s"),
    ] {
        assert_reported(&stderr, prefix, needle);
    }
}
