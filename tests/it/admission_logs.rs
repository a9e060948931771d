//! Tokens never reach the logs: everything the gateway logs, at every
//! level, is captured while tokens travel in the query string, the header
//! and the subprotocol, accepted and refused.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use crate::support::*;

/// A tracing writer into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_never_logged() {
    // The global subscriber below would capture every other test's logs too
    // (and slow them all down with TRACE): this test runs in a process of
    // its own.
    if !alone_in_a_process("admission_logs::tokens_are_never_logged").await {
        return;
    }
    let capture = Capture::default();
    let writer = capture.clone();
    // Everything at TRACE except the test's own WebSocket client and
    // upstream (tungstenite), which log the requests they send and receive;
    // the gateway uses tungstenite only for frame headers and accept keys.
    tracing_subscriber::fmt()
        .with_env_filter("trace,tungstenite=off,tokio_tungstenite=off")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let up = Backend::echo().await;
    let policy = "[auth]\nalgorithms = [\"HS256\"]\nsecret_file = \"hs.key\"\n\
        token_from = [\"query\", \"header\", \"subprotocol\"]\n";
    let gw = Gateway::builder()
        .route(route("/", "up").policy("p"))
        .upstream("up", &[up.url()])
        .policy("p", policy)
        .file("hs.key", SECRET)
        .start()
        .await;

    let good = hs256("alice");
    // Expired, so refused: a refusal is logged with its reason.
    let expired = sign(
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
        None,
        serde_json::json!({ "sub": "alice", "exp": now() - 3600 }),
    );
    let mut ws = accepted(
        gw.addr,
        "127.0.0.1",
        &format!("/chat?room=1&access_token={good}"),
        &[],
    )
    .await;
    round_trip(&mut ws, "hi").await;
    ws.close(None).await.unwrap();
    drop(ws);
    refused(
        gw.addr,
        "127.0.0.1",
        &format!("/chat?access_token={expired}"),
        &[],
    )
    .await;
    refused(
        gw.addr,
        "127.0.0.1",
        "/chat",
        &[("authorization", &format!("Bearer {expired}"))],
    )
    .await;
    let offer = format!("bearer.{expired}, chat");
    refused(
        gw.addr,
        "127.0.0.1",
        "/chat",
        &[("sec-websocket-protocol", &offer)],
    )
    .await;

    eventually("the session's access log line", || {
        String::from_utf8_lossy(&capture.0.lock().unwrap()).contains("session ended")
    })
    .await;
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(logs.contains("upgrade refused"), "{logs}");
    assert!(logs.contains("invalid token: expired"), "{logs}");
    assert!(
        logs.contains("path=\"/chat\"") || logs.contains("path=/chat"),
        "{logs}"
    );
    for token in [&good, &expired] {
        // Not the token, nor any of its three parts.
        for part in token.split('.') {
            assert!(
                !logs.contains(part),
                "a token part leaked into the logs:\n{logs}"
            );
        }
    }
    assert!(
        !logs.contains("access_token"),
        "the query string was logged:\n{logs}"
    );
    // Nor the upstream's view.
    assert_eq!(up.last().path, "/chat?room=1");
}
