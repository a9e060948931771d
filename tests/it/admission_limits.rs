//! Connection limits and the handshake rate: who gets 429 or 503, that the
//! counts are released on every exit path, and that they all return to zero.

use std::{sync::Arc, time::Duration};

use crate::support::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn gateway(up: &Backend, server: &str) -> Gateway {
    Gateway::builder()
        .server(server)
        .route(route("/ip", "up").policy("ip"))
        .route(route("/sub", "up").policy("sub"))
        .route(route("/route", "up").policy("route"))
        .route(route("/rate", "up").policy("rate"))
        .upstream("up", &[up.url()])
        .policy(
            "ip",
            "[limits]\nmax_connections_per_ip = 5\nretry_after = \"7s\"\n",
        )
        .policy(
            "sub",
            "[auth]\nalgorithms = [\"HS256\"]\nsecret_file = \"hs.key\"\n[limits]\nmax_connections_per_subject = 2\n",
        )
        .policy("route", "[limits]\nmax_connections = 2\n")
        .policy(
            "rate",
            "[limits]\nhandshakes_per_second = 1\nhandshake_burst = 3\n",
        )
        .file("hs.key", SECRET)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_refuses_the_sixth_from_one_address_only() {
    let up = Backend::echo().await;
    let gw = gateway(&up, "").await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(accepted(gw.addr, "127.0.0.1", "/ip", &[]).await);
    }
    let r = refused(gw.addr, "127.0.0.1", "/ip", &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["retry-after"], "7");
    assert_eq!(
        up.count(),
        5,
        "the refused client never reached the upstream"
    );
    // Another address is another client.
    let mut other = accepted(gw.addr, "127.0.0.2", "/ip", &[]).await;
    round_trip(&mut other, "hi").await;
    // A spoofed X-Forwarded-For from an untrusted peer changes nothing.
    let r = refused(
        gw.addr,
        "127.0.0.1",
        "/ip",
        &[("x-forwarded-for", "198.51.100.7")],
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Closing one frees one.
    held.pop().unwrap().close(None).await.unwrap();
    drop(held.pop());
    eventually("a slot to be released", || gw.stats().open <= 5).await;
    accepted(gw.addr, "127.0.0.1", "/ip", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_subject_limit_counts_across_addresses() {
    let up = Backend::echo().await;
    let gw = gateway(&up, "").await;
    let alice = format!("Bearer {}", hs256("alice"));
    let bob = format!("Bearer {}", hs256("bob"));
    let _a1 = accepted(gw.addr, "127.0.0.1", "/sub", &[("authorization", &alice)]).await;
    let _a2 = accepted(gw.addr, "127.0.0.2", "/sub", &[("authorization", &alice)]).await;
    let r = refused(gw.addr, "127.0.0.3", "/sub", &[("authorization", &alice)]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.contains_key("retry-after"));
    assert!(r.body.contains("this user"), "{}", r.body);
    let _b = accepted(gw.addr, "127.0.0.3", "/sub", &[("authorization", &bob)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_global_limits_answer_503() {
    let up = Backend::echo().await;
    let gw = gateway(&up, "max_connections = 3").await;
    let _r1 = accepted(gw.addr, "127.0.0.1", "/route", &[]).await;
    let _r2 = accepted(gw.addr, "127.0.0.2", "/route", &[]).await;
    let r = refused(gw.addr, "127.0.0.3", "/route", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["retry-after"], "5");
    let _g = accepted(gw.addr, "127.0.0.3", "/ip", &[]).await;
    let r = refused(gw.addr, "127.0.0.4", "/ip", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("gateway"), "{}", r.body);
    assert_eq!(gw.stats().open, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_rate_is_per_client() {
    let up = Backend::echo().await;
    let gw = gateway(&up, "").await;
    for _ in 0..3 {
        accepted(gw.addr, "127.0.0.1", "/rate", &[]).await;
    }
    let r = refused(gw.addr, "127.0.0.1", "/rate", &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["retry-after"], "1");
    accepted(gw.addr, "127.0.0.2", "/rate", &[]).await;
    assert_eq!(gw.stats().rate_limited_clients, 2);
}

/// 10,000 connect/disconnect cycles, run concurrently, each ending a
/// different way: a clean session, a session the client abandons, a client
/// that vanishes before the 101, an upstream that is down, a bad token.
/// Afterwards every count is back to zero and no key is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_return_to_zero_after_many_cycles_with_failures() {
    const CYCLES: usize = 10_000;
    const PARALLEL: usize = 32;
    let up = Backend::echo().await;
    let down = closed_port().await;
    let policy = "[auth]\nalgorithms = [\"HS256\"]\nsecret_file = \"hs.key\"\n\
        [limits]\nmax_connections = 100000\nmax_connections_per_ip = 100000\nmax_connections_per_subject = 100000\n";
    let gw = Gateway::builder()
        .server("max_connections = 100000")
        .route(route("/ok", "up").policy("p"))
        .route(route("/down", "down").policy("p"))
        .upstream("up", &[up.url()])
        .upstream("down", &[format!("ws://{down}")])
        .policy("p", policy)
        .file("hs.key", SECRET)
        .start()
        .await;
    let good = Arc::new(format!("Bearer {}", hs256("cycler")));
    let addr = gw.addr;
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let handle = gw.handle().clone();
    let mut workers = Vec::new();
    for w in 0..PARALLEL {
        let good = good.clone();
        let peak = peak.clone();
        let handle = handle.clone();
        workers.push(tokio::spawn(async move {
            let from = format!("127.0.0.{}", 1 + w % 8);
            for i in (w..CYCLES).step_by(PARALLEL) {
                let open = handle.admission_stats().open;
                peak.fetch_max(open, std::sync::atomic::Ordering::Relaxed);
                cycle(addr, &from, i % 5, &good).await;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    eventually("every session to end", || gw.stats().open == 0).await;
    let stats = gw.stats();
    assert_eq!(stats.open, 0, "{stats:?}");
    assert_eq!(stats.counted_keys, 0, "{stats:?}");
    assert!(
        peak.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "sessions overlapped"
    );
}

/// An upgrade to `path` from `from` carrying `auth` as `Authorization`,
/// over hand-written HTTP (cheap enough for thousands): the answer, whatever
/// it is, and the connection.
async fn raw_upgrade_from(gw: std::net::SocketAddr, from: &str, path: &str, auth: &str) -> RawWs {
    let request = upgrade_request_to(&gw.to_string(), path, &[&format!("Authorization: {auth}")]);
    send_request(tcp_from(from, gw).await, &request).await
}

/// One cycle of kind `kind`.
async fn cycle(gw: std::net::SocketAddr, from: &str, kind: usize, good: &str) {
    let bad = "Bearer not.a.token";
    match kind {
        // A whole session: 101, one masked text frame echoed, then a close.
        0 => {
            let mut ws = raw_upgrade_from(gw, from, "/ok", good).await;
            assert_eq!(ws.response.status, 101);
            ws.stream
                .write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i'])
                .await
                .unwrap();
            let mut back = [0u8; 4];
            let mut after_head = (&ws.buf[..]).chain(&mut ws.stream);
            after_head.read_exact(&mut back).await.unwrap();
            assert_eq!(back, [0x81, 2, b'h', b'i']);
            ws.stream
                .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
                .await
                .unwrap();
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), ws.stream.read_to_end(&mut rest))
                .await;
        }
        // The client drops the connection mid-session.
        1 => {
            let ws = raw_upgrade_from(gw, from, "/ok", good).await;
            assert_eq!(ws.response.status, 101);
            drop(ws);
        }
        // The client vanishes right after asking, before the 101.
        2 => {
            let mut tcp = tcp_from(from, gw).await;
            let req = upgrade_request_to("x", "/ok", &[&format!("Authorization: {good}")]);
            tcp.write_all(req.as_bytes()).await.unwrap();
            drop(tcp);
        }
        // The upstream is down: 502, then (once passive health has ejected
        // it) 503 without an attempt.
        3 => {
            let ws = raw_upgrade_from(gw, from, "/down", good).await;
            assert!(
                matches!(ws.response.status, 502 | 503),
                "{}",
                ws.response.status
            );
        }
        // A bad token: 401.
        _ => {
            let ws = raw_upgrade_from(gw, from, "/ok", bad).await;
            assert_eq!(ws.response.status, 401);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_counts_of_open_sessions() {
    let up = Backend::echo().await;
    let gw = gateway(&up, "").await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(accepted(gw.addr, "127.0.0.1", "/ip", &[]).await);
    }
    gw.reload().await;
    assert_eq!(gw.stats().open, 5);
    let r = refused(gw.addr, "127.0.0.1", "/ip", &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    drop(held);
    eventually("the counts to drain", || gw.stats().open == 0).await;
    assert_eq!(gw.stats().counted_keys, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_what_clients_used_of_an_unchanged_handshake_rate() {
    let up = Backend::echo().await;
    let gw = gateway(&up, "").await;
    for _ in 0..3 {
        accepted(gw.addr, "127.0.0.1", "/rate", &[]).await;
    }
    gw.reload().await;
    let r = refused(gw.addr, "127.0.0.1", "/rate", &[]).await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the reload handed the client a fresh burst"
    );
    assert_eq!(gw.stats().rate_limited_clients, 1);

    // A different rate is a new limiter, which starts afresh.
    write_file(
        gw.dir.path(),
        "policies/rate.toml",
        "[limits]\nhandshakes_per_second = 1\nhandshake_burst = 5\n",
    );
    gw.reload().await;
    assert_eq!(gw.stats().rate_limited_clients, 0);
    accepted(gw.addr, "127.0.0.1", "/rate", &[]).await;
}
