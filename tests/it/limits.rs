//! What the gateway accepts before a route is known: the request timeout
//! (slowloris guard) and the request head limits. A misbehaving connection
//! never disturbs the others.

use std::time::{Duration, Instant};

use crate::support::*;
use futures_util::SinkExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

async fn gateway(server: &str) -> Gateway {
    let url = Backend::echo().await.url();
    Gateway::builder().server(server).to(&url).start().await
}

/// A normal client relaying a few messages.
async fn relay_works(gw: &Gateway) {
    let mut c = connect(gw.addr, "/").await;
    for i in 0..3 {
        c.send(Message::text(format!("still fine {i}")))
            .await
            .unwrap();
        assert_eq!(
            next_msg(&mut c).await,
            Message::text(format!("still fine {i}"))
        );
    }
}

/// Reads until the gateway closes the connection; returns what came first.
async fn closed_by_gateway(s: &mut TcpStream) -> Vec<u8> {
    read_to_close(s).await
}

#[tokio::test]
async fn slowloris_half_request_is_cut_off_while_others_are_served() {
    let gw = gateway("request_timeout = \"300ms\"").await;
    let started = Instant::now();
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET / HT").await.unwrap();

    // Meanwhile, a real client is served normally.
    relay_works(&gw).await;

    let got = closed_by_gateway(&mut slow).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "cut off after {took:?}, before request_timeout"
    );
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408 "), "{got:?}");
    assert!(
        got.ends_with("\r\n\r\nno complete request within request_timeout\n"),
        "{got:?}"
    );
    relay_works(&gw).await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_cut_off() {
    let gw = gateway("request_timeout = \"300ms\"").await;
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    closed_by_gateway(&mut silent).await;
}

#[tokio::test]
async fn trickling_a_request_does_not_reset_the_timeout() {
    let gw = gateway("request_timeout = \"300ms\"").await;
    let started = Instant::now();
    let slow = TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = slow.into_split();
    // One byte every 50ms: the whole request would take ~7s.
    let request = upgrade_request("/", &[]);
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for b in request.bytes() {
            tick.tick().await;
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
        }
    });
    let got = read_to_close(&mut rd).await;
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408 "),
        "{got:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    trickle.abort();
}

#[tokio::test]
async fn an_idle_connection_after_a_refusal_is_cut_off() {
    let gw = gateway("request_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: gateway.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    )
    .await
    .unwrap();
    let (resp, _) = read_response(&mut s).await;
    assert_eq!(resp.status, 426);
    closed_by_gateway(&mut s).await;
}

/// An upgrade request with `n` extra headers of `size` bytes of value each.
fn with_headers(n: usize, size: usize) -> String {
    let extra: Vec<String> = (0..n)
        .map(|i| format!("X-Extra-{i}: {}", "v".repeat(size)))
        .collect();
    let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    upgrade_request("/", &refs)
}

/// Sends `request`; returns the status, or `None` if the connection was
/// closed without an answer.
async fn status_of(gw: &Gateway, request: &str) -> Option<u16> {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // The gateway may stop reading (and close) part-way through the request.
    let _ = s.write_all(request.as_bytes()).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match guard("an answer or a close", s.read(&mut chunk)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    text.split(' ').nth(1).and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn too_many_headers_are_refused_without_affecting_others() {
    let gw = gateway("").await;
    // A session already running before, and one started after.
    let mut before = connect(gw.addr, "/").await;
    assert_eq!(status_of(&gw, &with_headers(200, 8)).await, Some(431));
    before.send(Message::text("unaffected")).await.unwrap();
    assert_eq!(next_msg(&mut before).await, Message::text("unaffected"));
    relay_works(&gw).await;
}

#[tokio::test]
async fn max_headers_counts_every_header() {
    // The upgrade request has 5 headers of its own; the default limit is 64.
    let gw = gateway("").await;
    assert_eq!(status_of(&gw, &with_headers(59, 8)).await, Some(101));
    assert_eq!(status_of(&gw, &with_headers(60, 8)).await, Some(431));

    let gw = gateway("max_headers = 10").await;
    assert_eq!(status_of(&gw, &with_headers(5, 8)).await, Some(101));
    assert_eq!(status_of(&gw, &with_headers(6, 8)).await, Some(431));
}

#[tokio::test]
async fn a_request_head_over_max_header_bytes_is_431() {
    let gw = gateway("").await;
    // Default 16 KiB: 12 KiB passes, 20 KiB does not.
    assert_eq!(status_of(&gw, &with_headers(3, 4096)).await, Some(101));
    assert_eq!(status_of(&gw, &with_headers(5, 4096)).await, Some(431));
    relay_works(&gw).await;
}
