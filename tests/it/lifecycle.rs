//! Connection lifecycle: the gateway's own keepalive pings, dead-peer and
//! idle detection, handshake and close timeouts, and the drain.

use std::{net::SocketAddr, time::Duration};

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tokio_tungstenite::tungstenite::Message;

/// A byte-splicing proxy like nginx's WebSocket proxy: it forwards bytes
/// both ways and cuts both sides with a bare TCP close after `idle` without
/// a byte in either direction.
async fn idle_cutting_proxy(target: SocketAddr, idle: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut a, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut b = TcpStream::connect(target).await.unwrap();
                let (mut ab, mut bb) = (vec![0u8; 16384], vec![0u8; 16384]);
                loop {
                    let moved = tokio::time::timeout(idle, async {
                        tokio::select! {
                            r = a.read(&mut ab) => match r { Ok(n) if n > 0 => b.write_all(&ab[..n]).await.is_ok(), _ => false },
                            r = b.read(&mut bb) => match r { Ok(n) if n > 0 => a.write_all(&bb[..n]).await.is_ok(), _ => false },
                        }
                    })
                    .await;
                    if moved != Ok(true) {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Reads until a close frame; returns it with how many pings came first.
async fn close_after_pings<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
) -> ((u16, String), usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut pings = 0;
    loop {
        match next_msg(ws).await {
            Message::Ping(_) => pings += 1,
            Message::Close(f) => return (code_reason(f), pings),
            other => panic!("expected pings then a close, got {other:?}"),
        }
    }
}

const FAST_PINGS: &str = r#"
[client]
ping_interval = "100ms"
pong_timeout = "300ms"
[upstream]
ping_interval = "100ms"
pong_timeout = "300ms"
"#;

#[tokio::test]
async fn pings_keep_a_silent_client_alive_through_idle_cutting_proxies() {
    let idle = Duration::from_millis(600);
    let backend = Backend::echo().await;
    let behind = idle_cutting_proxy(backend.addr, idle).await;
    let gw = Gateway::builder()
        .with_policy_to(FAST_PINGS, &format!("ws://{behind}"))
        .start()
        .await;
    let front = idle_cutting_proxy(gw.addr, idle).await;
    let mut client = connect(front, "/").await;

    // Silent for three of the proxies' idle periods; only read, so
    // tungstenite answers the gateway's pings.
    let quiet_until = Instant::now() + idle * 3;
    let mut pings = 0;
    while let Ok(msg) = tokio::time::timeout_at(quiet_until, client.next()).await {
        match msg.expect("connection cut while idle").expect("read error") {
            Message::Ping(p) => {
                assert_eq!(p.len(), 8, "the gateway's pings carry its RTT probe");
                pings += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 3, "the gateway pinged the client ({pings} pings)");
    client.send(Message::text("still here")).await.unwrap();
    loop {
        match next_msg(&mut client).await {
            Message::Ping(_) => continue,
            m => break assert_eq!(m, Message::text("still here")),
        }
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_found_dead_and_its_backend_told() {
    let mut backend = Backend::scripted().await;
    let policy =
        "[client]\nping_interval = \"100ms\"\npong_timeout = \"200ms\"\n[upstream]\nping_interval = \"off\"\n";
    let gw = Gateway::builder()
        .with_policy_to(policy, &backend.url())
        .start()
        .await;
    // Completes the upgrade, then never reads and never answers.
    let _silent = raw_upgrade(gw.addr, "/", &[]).await;
    let mut conn = backend.accept().await;
    let (code, reason) = code_reason(conn.expect_close().await);
    assert_eq!((code, reason.as_str()), (1001, "client went away"));
}

#[tokio::test]
async fn a_dead_upstream_is_found_and_the_client_told() {
    let mut backend = Backend::scripted().await;
    let policy =
        "[client]\nping_interval = \"off\"\n[upstream]\nping_interval = \"100ms\"\npong_timeout = \"200ms\"\n";
    let gw = Gateway::builder()
        .with_policy_to(policy, &backend.url())
        .start()
        .await;
    let mut client = connect(gw.addr, "/").await;
    // Accepted, then never polled: it answers no ping.
    let _frozen = backend.accept().await;
    let (code, reason) = code_reason(expect_close(&mut client).await);
    assert_eq!((code, reason.as_str()), (1011, "upstream went away"));
}

#[tokio::test]
async fn idle_timeout_closes_both_legs_and_pings_do_not_count() {
    let mut backend = Backend::scripted().await;
    let gw = Gateway::builder()
        .with_policy_to(
            "[session]\nidle_timeout = \"400ms\"\n[client]\nping_interval = \"50ms\"\n",
            &backend.url(),
        )
        .start()
        .await;
    let mut client = connect(gw.addr, "/").await;
    let mut conn = backend.accept().await;
    client.send(Message::text("one message")).await.unwrap();
    assert_eq!(conn.next().await, Message::text("one message"));
    let ((code, reason), pings) = close_after_pings(&mut client).await;
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
    assert!(
        pings > 0,
        "keepalive pings flowed but did not count as activity"
    );
    assert_eq!(
        code_reason(conn.expect_close().await),
        (1001, "idle timeout".into())
    );
}

#[tokio::test]
async fn an_unanswered_close_is_echoed_after_the_close_timeout() {
    let mut backend = Backend::scripted().await;
    let gw = Gateway::builder()
        .with_policy_to("[session]\nclose_timeout = \"200ms\"\n", &backend.url())
        .start()
        .await;
    let mut client = connect(gw.addr, "/").await;
    // The backend gets the close but never answers it.
    let _mute = backend.accept().await;
    client.close(Some(close_frame(4002, "bye"))).await.unwrap();
    let (code, _) = code_reason(expect_close(&mut client).await);
    assert_eq!(
        code, 4002,
        "the client's handshake completes with its own code"
    );
    assert!(guard("the gateway to hang up", client.next())
        .await
        .is_none());
}

/// An in-process gateway, one worker, whose drain the test starts
/// ([`Gateway::stop`]) and whose report it reads.
async fn draining_gateway(upstream: &str, server: &str) -> Gateway {
    Gateway::builder()
        .server(server)
        .to(upstream)
        .workers(1)
        .start()
        .await
}

#[tokio::test]
async fn drain_sends_1001_to_every_client_and_backend_then_stops() {
    let mut backend = Backend::scripted().await;
    let mut gw = draining_gateway(&backend.url(), "drain_timeout = \"5s\"").await;
    let mut sessions = open_sessions(gw.addr, &mut backend, 100).await;
    let done = gw.stop();
    sessions.expect_going_away().await;
    let report = guard("the drain to finish", done).await.unwrap();
    assert_eq!(
        (report.sessions, report.clean, report.cut),
        (100, 100, 0),
        "{report:?}"
    );
    assert!(
        TcpStream::connect(gw.addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn drain_never_cuts_a_message_in_flight() {
    let mut backend = Backend::scripted().await;
    let mut gw = draining_gateway(&backend.url(), "").await;
    let mut client = raw_upgrade(gw.addr, "/", &[]).await;
    let mut conn = backend.accept().await;
    conn.send_raw(&server_frame(false, OP_TEXT, b"first half, "))
        .await;
    let first = client.expect_frame().await;
    assert_eq!(
        (first.fin, first.payload.as_slice()),
        (false, &b"first half, "[..])
    );

    let done = gw.stop();
    // The backend's own direction is idle, so it hears 1001 at once...
    let raw = conn.ws.get_mut();
    let mut buf = Vec::new();
    let close = loop {
        if let Some((frame, _)) = parse_frame(&buf) {
            break frame;
        }
        let mut chunk = [0u8; 256];
        let n = guard("the backend's close", raw.read(&mut chunk))
            .await
            .unwrap();
        assert!(n > 0, "the gateway hung up on the backend");
        buf.extend_from_slice(&chunk[..n]);
    };
    assert_eq!(close.close_code(), (1001, "going away".into()));
    // ...while the client's close waits for the message to finish.
    conn.send_raw(&server_frame(true, OP_CONT, b"second half"))
        .await;
    let rest = client.expect_frame().await;
    assert_eq!(
        (rest.fin, rest.opcode, rest.payload.as_slice()),
        (true, OP_CONT, &b"second half"[..])
    );
    assert_eq!(client.expect_close().await, (1001, "going away".into()));
    conn.send_raw(&server_frame(true, OP_CLOSE, &close_payload(1001, "")))
        .await;
    client
        .send(&client_frame(true, OP_CLOSE, &close_payload(1001, "")))
        .await;
    let report = guard("the drain to finish", done).await.unwrap();
    assert_eq!((report.clean, report.cut), (1, 0), "{report:?}");
}

#[tokio::test]
async fn reload_serves_new_certificates_to_new_handshakes_only() {
    let ca = TestCa::new();
    let (old, new) = (ca.leaf(&["gw.test"]), ca.leaf(&["gw.test"]));
    let url = Backend::echo().await.url();
    let gw = Gateway::builder()
        .listener("tls = { cert = \"gw.pem\", key = \"gw.key\" }")
        .route(Route::any("b"))
        .upstream("b", &[url])
        .leaf("gw", &old)
        .workers(1)
        .start()
        .await;
    let addr = gw.addr;

    let presented = |tls: &tokio_rustls::client::TlsStream<TcpStream>| {
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    let tls = tls_connect(addr, "gw.test", ca.client_config()).await;
    assert!(presented(&tls) == old.der);
    let mut live = raw_upgrade_on(tls, &upgrade_request("/", &[])).await;

    new.write_to(gw.dir.path(), "gw");
    gw.reload().await;
    let tls = tls_connect(addr, "gw.test", ca.client_config()).await;
    assert!(
        presented(&tls) == new.der,
        "a new handshake gets the new certificate"
    );
    live.send(&client_frame(true, OP_TEXT, b"same session"))
        .await;
    assert_eq!(
        live.read_message().await.1,
        b"same session",
        "the old session relays on"
    );
}
