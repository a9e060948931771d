//! The close handshake relayed across both legs, and what each leg hears
//! when the other disappears.

use std::time::{Duration, Instant};

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// Drives the backend's stream until it ends, so tungstenite flushes its
/// automatic close reply; returns what it read on the way. The stream must
/// end cleanly (the gateway's FIN after the close handshake, no reset).
async fn drain(up: &mut BackendConn) -> Vec<Message> {
    let mut seen = Vec::new();
    while let Some(m) = guard("the backend stream to end", up.ws.next()).await {
        seen.push(m.expect("the backend's stream ends without an error"));
    }
    seen
}

#[tokio::test]
async fn client_close_reaches_the_backend_and_its_reply_the_client() {
    let mut rig = Rig::new().await;
    let (mut ws, mut up) = rig.raw().await;

    ws.send(&client_frame(true, OP_CLOSE, &close_payload(1000, "done")))
        .await;
    assert_eq!(code_reason(up.expect_close().await), (1000, "done".into()));
    // tungstenite answers with the same code and reason.
    let backend_rest = tokio::spawn(async move { drain(&mut up).await });
    assert_eq!(ws.expect_close().await, (1000, "done".into()));
    // The close frame and the FIN (sent together, stream.rs): no reset.
    ws.expect_clean_end().await;
    assert!(backend_rest.await.unwrap().is_empty());
}

#[tokio::test]
async fn client_close_with_a_tungstenite_client() {
    let mut rig = Rig::new().await;
    let (mut client, mut up) = rig.client().await;

    client.close(Some(close_frame(1000, "done"))).await.unwrap();
    assert_eq!(code_reason(up.expect_close().await), (1000, "done".into()));
    tokio::spawn(async move { drain(&mut up).await });
    // The reply completes the client's close handshake: the stream ends cleanly.
    assert_eq!(code_reason(expect_close(&mut client).await).0, 1000);
    assert!(guard("client stream end", client.next()).await.is_none());
}

#[tokio::test]
async fn client_close_without_a_code() {
    let mut rig = Rig::new().await;
    let (mut ws, mut up) = rig.raw().await;

    ws.send(&client_frame(true, OP_CLOSE, &[])).await;
    assert_eq!(up.expect_close().await, None);
    tokio::spawn(async move { drain(&mut up).await });
    let reply = ws.expect_frame().await;
    assert_eq!((reply.opcode, reply.payload.len()), (OP_CLOSE, 0));
    ws.expect_clean_end().await;
}

#[tokio::test]
async fn backend_close_reaches_the_client_and_its_reply_the_backend() {
    let mut rig = Rig::new().await;
    let (mut client, mut up) = rig.client().await;

    up.ws.close(Some(close_frame(4001, "bye"))).await.unwrap();
    assert_eq!(
        code_reason(expect_close(&mut client).await),
        (4001, "bye".into())
    );
    // tungstenite replies (on the next poll) with the same frame.
    let client_rest = tokio::spawn(async move { client.next().await.is_none() });
    assert_eq!(code_reason(up.expect_close().await), (4001, "bye".into()));
    assert!(drain(&mut up).await.is_empty());
    assert!(
        client_rest.await.unwrap(),
        "client stream ends after the handshake"
    );
}

#[tokio::test]
async fn data_still_flows_from_the_backend_until_it_answers_the_close() {
    let mut rig = Rig::new().await;
    let (mut ws, up) = rig.raw().await;

    ws.send(&client_frame(true, OP_CLOSE, &close_payload(1000, "")))
        .await;
    // Read the close at the frame level so tungstenite does not answer it.
    let mut backend = RawWs::after_handshake(up.ws.into_inner());
    let close = backend.expect_frame().await;
    assert!(close.masked, "frames to the backend are masked");
    assert_eq!(close.close_code(), (1000, String::new()));
    // Data sent after the client's close and before the backend's reply
    // still reaches the client.
    let mut bytes = server_frame(true, OP_TEXT, b"last words");
    bytes.extend(server_frame(true, OP_CLOSE, &close_payload(1000, "")));
    backend.send(&bytes).await;
    assert_eq!(ws.read_message().await, (OP_TEXT, b"last words".to_vec()));
    assert_eq!(ws.expect_close().await.0, 1000);
    ws.expect_end().await;
}

#[tokio::test]
async fn backend_vanishing_sends_1011_to_the_client() {
    let mut rig = Rig::new().await;
    let (mut client, mut up) = rig.client().await;

    // Make sure the session is relaying before the backend dies.
    client.send(Message::text("hi")).await.unwrap();
    assert_eq!(up.next().await, Message::text("hi"));
    drop(up);
    assert_eq!(code_reason(expect_close(&mut client).await).0, 1011);
    assert!(guard("client stream end", client.next()).await.is_none());
}

#[tokio::test]
async fn client_vanishing_sends_1001_to_the_backend() {
    let mut rig = Rig::new().await;
    let (mut client, mut up) = rig.client().await;

    client.send(Message::text("hi")).await.unwrap();
    assert_eq!(up.next().await, Message::text("hi"));
    drop(client);
    assert_eq!(code_reason(up.expect_close().await).0, 1001);
    assert!(drain(&mut up).await.is_empty());
}

#[tokio::test]
async fn client_leaving_during_the_upstream_handshake_releases_the_upstream() {
    // A backend that reads the upgrade request, reports it, and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (got_request, request_seen) = tokio::sync::oneshot::channel();
    let backend = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let (mut head, mut buf) = (Vec::new(), [0u8; 1024]);
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
                .await
                .unwrap();
            assert!(n > 0, "gateway hung up before sending its request");
            head.extend_from_slice(&buf[..n]);
        }
        got_request.send(()).unwrap();
        read_to_close(&mut s).await
    });
    let gw = Gateway::to(&format!("ws://{addr}")).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(upgrade_request("/", &[]).as_bytes())
        .await
        .unwrap();
    guard("the upstream request", request_seen).await.unwrap();
    drop(tcp);
    // The gateway abandons the half-done upstream handshake instead of
    // keeping the backend connection until its handshake timeout (10s).
    let after = guard("the gateway to release the backend", backend)
        .await
        .unwrap();
    assert!(after.is_empty(), "nothing follows the request: {after:?}");
}

#[tokio::test]
async fn backend_that_never_answers_a_close_is_given_up_on() {
    let mut rig = Rig::with_policy("[session]\nclose_timeout = \"300ms\"\n").await;
    let (mut ws, up) = rig.raw().await; // up: held, never read: tungstenite never replies

    let started = Instant::now();
    ws.send(&client_frame(true, OP_CLOSE, &close_payload(1000, "done")))
        .await;
    // The gateway answers the client's close itself once the deadline passes.
    assert_eq!(ws.expect_close().await.0, 1000);
    ws.expect_end().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "gave up after {took:?}; close_timeout is 300ms"
    );
    drop(up);
}

#[tokio::test]
async fn client_that_never_answers_a_close_is_given_up_on() {
    let mut rig = Rig::with_policy("[session]\nclose_timeout = \"300ms\"\n").await;
    let (mut ws, mut up) = rig.raw().await;

    up.ws.close(Some(close_frame(4001, "bye"))).await.unwrap();
    assert_eq!(ws.expect_close().await, (4001, "bye".into()));
    // The raw client does not reply; the backend still gets its handshake
    // completed (with its own code) and the client's TCP is closed.
    assert_eq!(code_reason(up.expect_close().await).0, 4001);
    ws.expect_end().await;
}

#[tokio::test]
async fn backend_closing_right_after_its_101_gives_the_client_1011() {
    // The backend completes its handshake and hangs up without a close frame.
    let addr = raw_ws_server(
        |accept| switching_protocols(accept, &["Upgrade: websocket", "Connection: Upgrade"]),
        true,
    )
    .await;
    let gw = Gateway::to(&format!("ws://{addr}")).await;
    let mut ws = raw_upgrade(gw.addr, "/", &[]).await;
    assert_eq!(ws.expect_close().await.0, 1011);
}

#[tokio::test]
async fn every_valid_close_code_is_relayed_unchanged() {
    let mut rig = Rig::new().await;
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999,
    ] {
        let (mut ws, up) = rig.raw().await;
        // Read at the frame level: what the gateway put on the wire.
        let mut backend = RawWs::after_handshake(up.ws.into_inner());
        let reason = format!("code {code}");
        ws.send(&client_frame(true, OP_CLOSE, &close_payload(code, &reason)))
            .await;
        let close = backend.expect_frame().await;
        assert_eq!(close.close_code(), (code, reason.clone()));
        backend
            .send(&server_frame(true, OP_CLOSE, &close_payload(code, &reason)))
            .await;
        assert_eq!(ws.expect_close().await, (code, reason));
    }
}
