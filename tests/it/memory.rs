//! The real binary relays a 16 MiB message without holding it: its peak
//! resident memory grows by far less than the message. Also checks the
//! startup and access log lines.

use std::net::SocketAddr;

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const BIG: usize = 16 << 20;

/// `len` bytes of a position-dependent pattern.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().enumerate().fold(0u64, |acc, (i, &b)| {
        acc.wrapping_mul(31).wrapping_add(b as u64 ^ i as u64)
    })
}

/// Runs the gateway binary (two workers) on port 0 in front of `url` with a
/// route policy of `policy_text`.
async fn spawn_binary(url: &str, policy_text: &str) -> Binary {
    Gateway::builder()
        .with_policy_to(policy_text, url)
        .binary(&["--workers", "2"])
        .await
}

#[tokio::test]
async fn idle_sessions_hold_no_buffers() {
    let url = Backend::echo().await.url();
    let gateway = spawn_binary(&url, "").await;
    let (addr, pid) = (gateway.addr, gateway.pid());

    // Each session relays 100 KB each way (so its buffers were used), then idles.
    async fn busy_then_idle(addr: SocketAddr) -> Client {
        let mut c = connect(addr, "/").await;
        c.send(Message::binary(vec![1u8; 100_000])).await.unwrap();
        assert_eq!(next_msg(&mut c).await, Message::binary(vec![1u8; 100_000]));
        c
    }
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(busy_then_idle(addr).await);
    }
    let before = status_kib(pid, "VmRSS");
    const N: u64 = 200;
    for _ in 0..N {
        clients.push(busy_then_idle(addr).await);
    }
    let after = status_kib(pid, "VmRSS");
    let per_session = after.saturating_sub(before) * 1024 / N;
    eprintln!("VmRSS {before} -> {after} KiB: {per_session} bytes per idle session");
    // A read buffer per leg would be 128 KiB per session.
    assert!(
        per_session < 32 * 1024,
        "{per_session} bytes of RSS per idle session ({before} -> {after} KiB)"
    );
    drop(clients);
}

#[tokio::test]
async fn sixteen_mib_message_relayed_with_bounded_memory() {
    // The backend acks each binary message with its length and checksum;
    // `send N` makes it send an N-byte message; other text is echoed.
    let url = Backend::serve(|mut conn| async move {
        while let Some(Ok(msg)) = conn.ws.next().await {
            let reply = match msg {
                Message::Binary(data) => {
                    Message::text(format!("got {} {}", data.len(), checksum(&data)))
                }
                Message::Text(t) => match t.strip_prefix("send ") {
                    Some(n) => Message::binary(pattern(n.parse().unwrap())),
                    None => Message::text(format!("echo {t}")),
                },
                _ => continue,
            };
            if conn.ws.send(reply).await.is_err() {
                break;
            }
        }
    })
    .await
    .url();

    let policy = "[client]\nmax_frame_size = \"16MiB\"\nmax_message_size = \"16MiB\"\n";
    let mut gateway = spawn_binary(&url, policy).await;
    let (addr, pid) = (gateway.addr, gateway.pid());

    let mut client = connect(addr, "/big?token=SECRET-IN-QUERY").await;
    // Warm up: the session, its buffers and both worker threads' scratch space.
    for i in 0..4 {
        client.send(Message::text(format!("w{i}"))).await.unwrap();
        assert_eq!(
            next_msg(&mut client).await,
            Message::text(format!("echo w{i}"))
        );
        client
            .send(Message::binary(vec![1u8; 256 * 1024]))
            .await
            .unwrap();
        let ack = format!("got 262144 {}", checksum(&[1u8; 256 * 1024]));
        assert_eq!(next_msg(&mut client).await, Message::text(ack));
        client.send(Message::text("send 100000")).await.unwrap();
        assert_eq!(
            next_msg(&mut client).await,
            Message::binary(pattern(100_000))
        );
    }
    let before = status_kib(pid, "VmHWM");

    // Client to backend.
    let payload = pattern(BIG);
    let sum = checksum(&payload);
    client.send(Message::binary(payload)).await.unwrap();
    assert_eq!(
        next_msg(&mut client).await,
        Message::text(format!("got {BIG} {sum}"))
    );
    let after_up = status_kib(pid, "VmHWM");
    // Backend to client.
    client
        .send(Message::text(format!("send {BIG}")))
        .await
        .unwrap();
    match next_msg(&mut client).await {
        Message::Binary(got) => {
            assert_eq!(got.len(), BIG);
            assert_eq!(checksum(&got), sum);
        }
        other => panic!("{other:?}"),
    }
    let after_down = status_kib(pid, "VmHWM");
    eprintln!("VmHWM {before} -> {after_up} -> {after_down} KiB");
    for (direction, after) in [
        ("client to backend", after_up),
        ("backend to client", after_down),
    ] {
        let growth_kib = after.saturating_sub(before);
        assert!(
            growth_kib < 8 * 1024,
            "gateway peak RSS grew by {growth_kib} KiB ({before} -> {after}) \
             relaying {BIG} bytes {direction}"
        );
    }

    // One access-log line per session, without the query string.
    client.close(None).await.unwrap();
    while let Some(Ok(_)) = guard("client close", client.next()).await {}
    let access = gateway.wait_for("session ended").await;
    let f = fields(&access);
    assert_eq!(f["path"], "/big", "{access}");
    assert!(
        !access.contains("SECRET-IN-QUERY"),
        "query string logged: {access}"
    );
    assert_eq!(f["closed_by"], "client", "{access}");
    drop(gateway);
}
