//! The caps on connections not yet upgraded (`max_pending_connections`,
//! `max_pending_per_ip`): a connection over them is closed at accept, before
//! its TLS handshake or request head; one that has its 101 no longer counts;
//! the counts return to zero.
//!
//! No test waits on the clock: every connection held here is idle under a
//! 60 s `request_timeout`, so which connections the gateway closes is decided
//! by counting alone, and each wait is for an event (a close, a 101, an
//! echo) except the final return of the counts to zero, polled.

use std::{io::ErrorKind, net::SocketAddr};

use crate::support::*;
use futures_util::{stream::FuturesUnordered, SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

/// Starts a gateway in front of an echo backend with `server` lines added
/// to `[server]` (long `request_timeout`: idle connections stay pending for
/// the whole test) and one listener, speaking TLS with `tls` if given. Two
/// workers: connections from one client land on both, so the counts are
/// shared across threads.
async fn gateway_with(server: &str, tls: Option<&Leaf>) -> Gateway {
    let url = Backend::echo().await.url();
    let mut gw = Gateway::builder()
        .server("request_timeout = \"60s\"\ntls_handshake_timeout = \"60s\"")
        .server(server)
        .route(route("/", "b"))
        .upstream("b", &[url]);
    if let Some(leaf) = tls {
        gw = gw
            .listener("tls = { cert = \"server.pem\", key = \"server.key\" }")
            .leaf("server", leaf);
    }
    gw.start().await
}

async fn gateway(server: &str) -> Gateway {
    gateway_with(server, None).await
}

/// A connection attempt: `None` when the gateway had already reset the
/// connection by the time the client's connect returned.
type Attempt = Option<TcpStream>;

/// A connection attempt from the loopback address `from`.
async fn attempt_from(from: &str, to: SocketAddr) -> Attempt {
    match try_tcp_from(from, to).await {
        Ok(s) => Some(s),
        // Accepted and reset by the gateway before the connect returned.
        Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
        Err(e) => panic!("connect from {from}: {e}"),
    }
}

/// `n` idle connections (nothing sent) from `from`.
async fn idle_from(from: &str, to: SocketAddr, n: usize) -> Vec<Attempt> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(attempt_from(from, to).await);
    }
    conns
}

/// Waits until `n` of `conns` are closed by the gateway and returns the
/// others. The gateway sends nothing on a connection before its 101, so a
/// connection that becomes readable has ended (EOF or reset).
async fn expect_closed(conns: Vec<Attempt>, n: usize) -> Vec<TcpStream> {
    let closed_at_connect = conns.iter().filter(|c| c.is_none()).count();
    assert!(
        closed_at_connect <= n,
        "{closed_at_connect} connections closed, expected {n}"
    );
    let conns: Vec<TcpStream> = conns.into_iter().flatten().collect();
    let closed: Vec<usize> = {
        let mut ends: FuturesUnordered<_> = conns
            .iter()
            .enumerate()
            .map(|(i, c)| async move {
                let mut byte = [0u8; 1];
                loop {
                    c.readable().await.unwrap();
                    match c.try_read(&mut byte) {
                        Ok(0) => return i,
                        Ok(_) => panic!("the gateway sent bytes on a pending connection"),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                        Err(_) => return i,
                    }
                }
            })
            .collect();
        let mut closed = Vec::new();
        while closed.len() + closed_at_connect < n {
            let i = guard(
                "the gateway to close a connection over the cap",
                ends.next(),
            )
            .await
            .unwrap();
            closed.push(i);
        }
        closed
    };
    conns
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !closed.contains(i))
        .map(|(_, c)| c)
        .collect()
}

/// Upgrades `stream` (which the gateway must still be holding) and checks
/// that the session echoes. The echo means the session runs, so the
/// connection no longer counts as pending.
async fn upgrade_and_echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S, text: &str) -> RawWs<S> {
    let mut ws = raw_upgrade_on(stream, &upgrade_request("/", &[])).await;
    ws.send(&client_frame(true, OP_TEXT, text.as_bytes())).await;
    assert_eq!(ws.read_message().await, (OP_TEXT, text.as_bytes().to_vec()));
    ws
}

/// A client from 127.0.0.1 (tungstenite) upgrades and echoes.
async fn legitimate_client_works(addr: SocketAddr) -> Client {
    let mut c = connect(addr, "/").await;
    c.send(Message::text("legitimate")).await.unwrap();
    assert_eq!(next_msg(&mut c).await, Message::text("legitimate"));
    c
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_are_closed_at_accept_and_others_are_served() {
    let gw = gateway("max_pending_per_ip = 4").await;
    let flood = idle_from("127.0.0.2", gw.addr, 10).await;
    let held = expect_closed(flood, 6).await;
    assert_eq!(held.len(), 4);
    let stats = gw.handle().pending_stats();
    assert_eq!(
        (stats.open, stats.tracked_ips),
        (4, 1),
        "four held, one IP: {stats:?}"
    );
    assert_eq!(
        (stats.refused_per_ip, stats.refused_global),
        (6, 0),
        "{stats:?}"
    );

    // Another address is not affected...
    let _legit = legitimate_client_works(gw.addr).await;
    // ... while the flooding one still is.
    let more = idle_from("127.0.0.2", gw.addr, 1).await;
    expect_closed(more, 1).await;
    assert_eq!(gw.handle().pending_stats().refused_per_ip, 7);

    // The four held were kept, not dropped: each can still upgrade.
    for (i, conn) in held.into_iter().enumerate() {
        upgrade_and_echo(conn, &format!("held {i}")).await;
    }
    assert_eq!(gw.handle().pending_connections(), 0);
}

#[tokio::test]
async fn connections_over_the_global_cap_are_closed_at_accept_whoever_sends_them() {
    let gw = gateway("max_pending_connections = 4").await;
    let mut flood = Vec::new();
    for n in 2..12 {
        flood.push(attempt_from(&format!("127.0.0.{n}"), gw.addr).await);
    }
    let held = expect_closed(flood, 6).await;
    let stats = gw.handle().pending_stats();
    assert_eq!((stats.open, stats.tracked_ips), (4, 4), "{stats:?}");
    assert_eq!(
        (stats.refused_global, stats.refused_per_ip),
        (6, 0),
        "{stats:?}"
    );

    // At the global cap, every client is turned away, 127.0.0.1 included.
    let legit = idle_from("127.0.0.1", gw.addr, 1).await;
    expect_closed(legit, 1).await;
    assert_eq!(gw.handle().pending_stats().refused_global, 7);

    // Once the held connections upgrade, they leave room.
    let mut sessions = Vec::new();
    for (i, conn) in held.into_iter().enumerate() {
        sessions.push(upgrade_and_echo(conn, &format!("held {i}")).await);
    }
    assert_eq!(gw.handle().pending_connections(), 0);
    legitimate_client_works(gw.addr).await;
}

#[tokio::test]
async fn an_upgraded_connection_no_longer_counts_as_pending() {
    let gw = gateway("max_pending_per_ip = 4").await;
    // Ten sessions from one address, more than its pending cap, all open at once.
    let mut sessions = Vec::new();
    for i in 0..10 {
        let tcp = tcp_from("127.0.0.2", gw.addr).await;
        sessions.push(upgrade_and_echo(tcp, &format!("session {i}")).await);
    }
    assert_eq!(gw.handle().pending_connections(), 0);
    // The cap still applies to that address's connections not yet upgraded.
    let idle = idle_from("127.0.0.2", gw.addr, 6).await;
    let held = expect_closed(idle, 2).await;
    assert_eq!(held.len(), 4);
    assert_eq!(gw.handle().pending_connections(), 4);
    // And the sessions are untouched.
    for (i, ws) in sessions.iter_mut().enumerate() {
        let text = format!("again {i}");
        ws.send(&client_frame(true, OP_TEXT, text.as_bytes())).await;
        assert_eq!(ws.read_message().await, (OP_TEXT, text.into_bytes()));
    }
}

#[tokio::test]
async fn counts_return_to_zero_however_connections_end() {
    let gw = gateway("max_pending_per_ip = 4").await;
    // Idle connections, two of them over the cap.
    let idle = expect_closed(idle_from("127.0.0.2", gw.addr, 6).await, 2).await;
    assert_eq!(gw.handle().pending_connections(), 4);
    // Half a request head, then the client leaves.
    let mut half = tcp_from("127.0.0.3", gw.addr).await;
    half.write_all(b"GET / HT").await.unwrap();
    // A refused request (an unknown WebSocket version: 426), on a connection kept alive.
    let mut refused = tcp_from("127.0.0.4", gw.addr).await;
    refused
        .write_all(b"GET / HTTP/1.1\r\nHost: gateway.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n")
        .await
        .unwrap();
    let (resp, _) = read_response(&mut refused).await;
    assert_eq!(resp.status, 426);
    // A whole session, closed by the client.
    let session = upgrade_and_echo(tcp_from("127.0.0.5", gw.addr).await, "bye").await;
    assert!(gw.handle().pending_connections() >= 4);

    drop((idle, half, refused, session));
    eventually("the pending counts to return to zero", || {
        let s = gw.handle().pending_stats();
        s.open == 0 && s.tracked_ips == 0
    })
    .await;
    let stats = gw.handle().pending_stats();
    assert_eq!(
        (stats.refused_per_ip, stats.refused_global),
        (2, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn half_open_tls_handshakes_count_and_a_tls_client_is_still_served() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost"]);
    let gw = gateway_with("max_pending_per_ip = 3", Some(&leaf)).await;
    // Each sends the start of a ClientHello record and stops there.
    let mut flood = idle_from("127.0.0.2", gw.addr, 8).await;
    for conn in flood.iter_mut().flatten() {
        // One over the cap may be reset already.
        let _ = conn.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
    }
    let held = expect_closed(flood, 5).await;
    assert_eq!(held.len(), 3);
    assert_eq!(gw.handle().pending_stats().refused_per_ip, 5);
    // A TLS client from 127.0.0.1 completes its handshake and its upgrade.
    let tls = tls_connect(gw.addr, "localhost", ca.client_config()).await;
    upgrade_and_echo(tls, "over tls").await;
    assert_eq!(gw.handle().pending_connections(), 3);
}

#[tokio::test]
async fn trusted_proxies_are_exempt_from_the_per_ip_cap_but_count_globally() {
    let gw = gateway(
        "max_pending_per_ip = 2\nmax_pending_connections = 5\ntrusted_proxies = [\"127.0.0.3\"]",
    )
    .await;
    let held = expect_closed(idle_from("127.0.0.3", gw.addr, 7).await, 2).await;
    assert_eq!(
        held.len(),
        5,
        "five from one balancer, over the per-IP cap of 2"
    );
    let stats = gw.handle().pending_stats();
    assert_eq!(
        (stats.open, stats.tracked_ips),
        (5, 0),
        "a balancer is counted globally only: {stats:?}"
    );
    assert_eq!(
        (stats.refused_global, stats.refused_per_ip),
        (2, 0),
        "{stats:?}"
    );
    for (i, conn) in held.into_iter().enumerate() {
        upgrade_and_echo(conn, &format!("via balancer {i}")).await;
    }
}
