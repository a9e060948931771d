//! What admission does during a session: per-direction rate limits
//! (throttle keeps everything and slows the sender; close sends 1008) and
//! closing when the token expires.

use std::time::Duration;

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey};
use tokio_tungstenite::tungstenite::Message;

async fn gateway(up: &Backend) -> Gateway {
    Gateway::builder()
        .route(route("/throttle", "up").policy("throttle"))
        .route(route("/close", "up").policy("close"))
        .route(route("/expiring", "up").policy("expiring"))
        .route(route("/slow", "up").policy("slow"))
        .upstream("up", &[up.url()])
        .policy(
            "throttle",
            "[rate.client]\nframes_per_second = 200\nframe_burst = 10\nbytes_per_second = \"64KiB\"\naction = \"throttle\"\n",
        )
        .policy(
            "close",
            "[rate.client]\nframes_per_second = 5\nframe_burst = 5\naction = \"close\"\n",
        )
        .policy(
            "expiring",
            "[auth]\nalgorithms = [\"HS256\"]\nsecret_file = \"hs.key\"\nleeway = \"0s\"\nclose_on_expiry = true\n",
        )
        .policy(
            "slow",
            "[client]\nping_interval = \"100ms\"\npong_timeout = \"200ms\"\n\
              [rate.client]\nframes_per_second = 4\nframe_burst = 1\n",
        )
        .file("hs.key", SECRET)
        .admin("")
        .start()
        .await
}

/// The value of the metric `name` (no labels) the admin listener serves.
async fn metric(gw: &Gateway, name: &str) -> f64 {
    let (status, body) = crate::admin::admin(gw.admin.unwrap(), "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_keeps_every_message_in_order() {
    let up = Backend::echo().await;
    let gw = gateway(&up).await;
    let ws = accepted(gw.addr, "127.0.0.1", "/throttle", &[]).await;
    let (mut tx, mut rx) = ws.split();
    const N: usize = 300;
    // Sent as fast as the socket takes them: far over 200 frames/s.
    let sender = tokio::spawn(async move {
        for i in 0..N {
            tx.send(Message::text(format!("message {i}")))
                .await
                .unwrap();
        }
        tx
    });
    for i in 0..N {
        let msg = guard_for(
            "a message (lost or stuck?)",
            Duration::from_secs(20),
            rx.next(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(msg.into_text().unwrap().as_str(), format!("message {i}"));
    }
    drop(sender.await.unwrap());
    let stats = gw.stats();
    assert!(
        stats.throttled > 0,
        "the client leg was never throttled: {stats:?}"
    );
    assert_eq!(stats.rate_closed, 0);
    // Every pause is counted for Prometheus too.
    assert_eq!(
        metric(&gw, "framegate_rate_limit_throttles_total").await,
        stats.throttled as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_action_sends_1008_and_the_upstream_hears_1001() {
    let up = Backend::echo().await;
    let gw = gateway(&up).await;
    let mut ws = accepted(gw.addr, "127.0.0.1", "/close", &[]).await;
    for i in 0..50 {
        if ws.send(Message::text(format!("m{i}"))).await.is_err() {
            break;
        }
    }
    let (code, reason) = close_code(&mut ws).await;
    assert_eq!(code, 1008);
    assert_eq!(reason, "message rate exceeded");
    assert_eq!(gw.stats().rate_closed, 1);
    eventually("the upstream to hear 1001", || up.closes().contains(&1001)).await;
    eventually("the session to end", || gw.stats().open == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_the_session_with_4001() {
    let up = Backend::echo().await;
    let gw = gateway(&up).await;
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET),
        None,
        serde_json::json!({ "sub": "s", "exp": now() + 2 }),
    );
    let auth = format!("Bearer {token}");
    let mut ws = accepted(
        gw.addr,
        "127.0.0.1",
        "/expiring",
        &[("authorization", &auth)],
    )
    .await;
    round_trip(&mut ws, "still valid").await;
    let (code, reason) = close_code(&mut ws).await;
    assert_eq!((code, reason.as_str()), (4001, "token expired"));
    assert_eq!(gw.stats().expired, 1);
    assert_eq!(
        metric(&gw, "framegate_token_expiry_closes_total").await,
        1.0
    );
}

/// A throttled leg is not read, so its pongs are not either: the gateway
/// must not take it for dead (here each pause outlasts the pong timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_clients_are_not_taken_for_dead() {
    let up = Backend::echo().await;
    let gw = gateway(&up).await;
    let mut ws = accepted(gw.addr, "127.0.0.1", "/slow", &[]).await;
    for i in 0..6 {
        ws.send(Message::text(format!("slow {i}"))).await.unwrap();
    }
    for i in 0..6 {
        let msg = guard_for("a throttled message", Duration::from_secs(10), ws.next())
            .await
            .expect("ended")
            .expect("failed");
        assert_eq!(msg.into_text().unwrap().as_str(), format!("slow {i}"));
    }
    round_trip(&mut ws, "still here").await;
    assert!(gw.stats().throttled > 0);
}
