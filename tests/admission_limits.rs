//! Connection limits and the handshake rate: who gets 429 or 503, that the
//! counts are released on every exit path, and that they all return to zero.

mod admission_support;

use std::{sync::Arc, time::Duration};

use admission_support::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn gateway(up: &Upstream, server: &str) -> Gw {
    let config = format!(
        "[server]\n{server}\n[[listener]]\naddr = \"127.0.0.1:0\"\n\
         [[route]]\npath = \"/ip\"\nupstream = \"up\"\npolicy = \"ip\"\n\
         [[route]]\npath = \"/sub\"\nupstream = \"up\"\npolicy = \"sub\"\n\
         [[route]]\npath = \"/route\"\nupstream = \"up\"\npolicy = \"route\"\n\
         [[route]]\npath = \"/rate\"\nupstream = \"up\"\npolicy = \"rate\"\n\
         [upstream.up]\nservers = [\"ws://{}\"]\n",
        up.addr
    );
    start(&[
        ("framegate.toml", config.as_bytes()),
        ("policies/ip.toml", b"[limits]\nmax_connections_per_ip = 5\nretry_after = \"7s\"\n"),
        (
            "policies/sub.toml",
            b"[auth]\nalgorithms = [\"HS256\"]\nsecret_file = \"hs.key\"\n[limits]\nmax_connections_per_subject = 2\n",
        ),
        ("policies/route.toml", b"[limits]\nmax_connections = 2\n"),
        ("policies/rate.toml", b"[limits]\nhandshakes_per_second = 1\nhandshake_burst = 3\n"),
        ("hs.key", SECRET),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_refuses_the_sixth_from_one_address_only() {
    let up = upstream().await;
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
    echo(&mut other, "hi").await;
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
    let up = upstream().await;
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
    let up = upstream().await;
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
    let up = upstream().await;
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
    let up = upstream().await;
    let down = closed_port().await;
    let config = format!(
        "[server]\nmax_connections = 100000\n[[listener]]\naddr = \"127.0.0.1:0\"\n\
         [[route]]\npath = \"/ok\"\nupstream = \"up\"\npolicy = \"p\"\n\
         [[route]]\npath = \"/down\"\nupstream = \"down\"\npolicy = \"p\"\n\
         [upstream.up]\nservers = [\"ws://{}\"]\n[upstream.down]\nservers = [\"ws://{down}\"]\n",
        up.addr
    );
    let policy = b"[auth]\nalgorithms = [\"HS256\"]\nsecret_file = \"hs.key\"\n\
        [limits]\nmax_connections = 100000\nmax_connections_per_ip = 100000\nmax_connections_per_subject = 100000\n";
    let gw = start(&[
        ("framegate.toml", config.as_bytes()),
        ("policies/p.toml", policy),
        ("hs.key", SECRET),
    ])
    .await;
    let good = Arc::new(format!("Bearer {}", hs256("cycler")));
    let addr = gw.addr;
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let handle = gw.handle.clone();
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

/// One cycle of kind `kind`, over hand-written HTTP (cheap enough for thousands).
async fn cycle(gw: std::net::SocketAddr, from: &str, kind: usize, good: &str) {
    let bad = "Bearer not.a.token";
    match kind {
        // A whole session: 101, one masked text frame echoed, then a close.
        0 => {
            let (status, _, mut tcp) =
                raw_upgrade(gw, from, "/ok", &[("Authorization", good)]).await;
            assert_eq!(status, 101);
            tcp.write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i'])
                .await
                .unwrap();
            let mut back = [0u8; 4];
            tcp.read_exact(&mut back).await.unwrap();
            assert_eq!(back, [0x81, 2, b'h', b'i']);
            tcp.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
                .await
                .unwrap();
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
        }
        // The client drops the connection mid-session.
        1 => {
            let (status, _, tcp) = raw_upgrade(gw, from, "/ok", &[("Authorization", good)]).await;
            assert_eq!(status, 101);
            drop(tcp);
        }
        // The client vanishes right after asking, before the 101.
        2 => {
            let mut tcp = tcp_from(from, gw).await;
            let req = format!(
                "GET /ok HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                 Authorization: {good}\r\n\r\n"
            );
            tcp.write_all(req.as_bytes()).await.unwrap();
            drop(tcp);
        }
        // The upstream is down: 502.
        3 => {
            let (status, _, _) = raw_upgrade(gw, from, "/down", &[("Authorization", good)]).await;
            assert_eq!(status, 502);
        }
        // A bad token: 401.
        _ => {
            let (status, _, _) = raw_upgrade(gw, from, "/ok", &[("Authorization", bad)]).await;
            assert_eq!(status, 401);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_counts_of_open_sessions() {
    let up = upstream().await;
    let gw = gateway(&up, "").await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(accepted(gw.addr, "127.0.0.1", "/ip", &[]).await);
    }
    let config = framegate::config::Config::load(&gw.dir.path().join("framegate.toml")).unwrap();
    gw.handle.reload(config).await.unwrap();
    assert_eq!(gw.stats().open, 5);
    let r = refused(gw.addr, "127.0.0.1", "/ip", &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    drop(held);
    eventually("the counts to drain", || gw.stats().open == 0).await;
    assert_eq!(gw.stats().counted_keys, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_what_clients_used_of_an_unchanged_handshake_rate() {
    let up = upstream().await;
    let gw = gateway(&up, "").await;
    let reload = || async {
        let config =
            framegate::config::Config::load(&gw.dir.path().join("framegate.toml")).unwrap();
        gw.handle.reload(config).await.unwrap();
    };
    for _ in 0..3 {
        accepted(gw.addr, "127.0.0.1", "/rate", &[]).await;
    }
    reload().await;
    let r = refused(gw.addr, "127.0.0.1", "/rate", &[]).await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the reload handed the client a fresh burst"
    );
    assert_eq!(gw.stats().rate_limited_clients, 1);

    // A different rate is a new limiter, which starts afresh.
    std::fs::write(
        gw.dir.path().join("policies/rate.toml"),
        "[limits]\nhandshakes_per_second = 1\nhandshake_burst = 5\n",
    )
    .unwrap();
    reload().await;
    assert_eq!(gw.stats().rate_limited_clients, 0);
    accepted(gw.addr, "127.0.0.1", "/rate", &[]).await;
}
