//! Bodies that are streams: an event stream goes out as it is written, a
//! client leaving a long-poll frees the backend, and 100 MiB each way pass
//! through the real binary without its memory growing.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::{gateway, holding};
use crate::support::*;

#[tokio::test]
async fn server_sent_events_arrive_as_they_are_written() {
    // The handler hands the test the sending end of each event stream.
    let (streams_tx, mut streams) = mpsc::unbounded_channel();
    let streams_tx = Arc::new(Mutex::new(streams_tx));
    let backend = HttpBackend::serve(move |seen| {
        let streams_tx = streams_tx.clone();
        async move {
            if seen.path != "/events" {
                return text(StatusCode::OK, "after");
            }
            let (events, body) = channel_body();
            streams_tx.lock().unwrap().send(events).unwrap();
            let mut resp = Reply::new(body);
            resp.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("text/event-stream"),
            );
            resp
        }
    })
    .await;
    let gw = gateway(&backend, "", "").await;
    let mut client = hyper_conn(gw.addr).await;
    let response = client.send_request(hyper_request("GET", "/events", empty()));
    let events = guard("the event stream at the backend", streams.recv())
        .await
        .unwrap();

    // Each event is read through the gateway before the next is written.
    let (first, second) = (&b"id: 1\ndata: one\n\n"[..], &b"id: 2\ndata: two\n\n"[..]);
    events.send(Bytes::from_static(first)).unwrap();
    let response = guard("the event stream's head", response).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut got = Vec::new();
    while got.len() < first.len() {
        got.extend(next_data(&mut body).await.expect("the first event"));
    }
    assert_eq!(got, first);
    events.send(Bytes::from_static(second)).unwrap();
    got.clear();
    while got.len() < second.len() {
        got.extend(next_data(&mut body).await.expect("the second event"));
    }
    assert_eq!(got, second);
    // The stream ends when the backend ends it, and the connection goes on.
    drop(events);
    assert_eq!(next_data(&mut body).await, None);
    guard("the client connection ready", client.ready())
        .await
        .unwrap();
    let after = client
        .send_request(hyper_request("GET", "/after", empty()))
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
}

/// An upload goes on to the backend as the client sends it: each chunk
/// arrives there before the client sends the next.
#[tokio::test]
async fn an_upload_reaches_the_backend_as_it_is_sent() {
    let backend = HttpBackend::describe().await;
    let gw = gateway(&backend, "", "").await;
    let mut c = HttpConn::open(gw.addr).await;
    c.send(b"POST /upload HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    let data = pattern(3000);
    for (i, piece) in data.chunks(1000).enumerate() {
        c.send([format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat())
            .await;
        let sent = 1000 * (i as u64 + 1);
        backend
            .until(&format!("{sent} body bytes at the backend"), |b| {
                b.body_bytes() == sent
            })
            .await;
    }
    let resp = c.ask(b"0\r\n\r\n").await;
    assert_eq!(resp.body_text(), "POST /upload 3000");
    assert!(backend.last().pattern);
}

/// A request the client sends while the previous one waits for its answer
/// is kept, and served after it, in order.
#[tokio::test]
async fn a_request_sent_during_a_long_poll_is_served_after_it() {
    let (backend, release_tx) = holding("/poll").await;
    let gw = gateway(&backend, "", "").await;
    let mut c = HttpConn::open(gw.addr).await;
    c.send(get("/poll", &[])).await;
    backend.requests_seen(1).await;
    c.send(request("POST", "/send", &[], b"message")).await;
    release_tx.send(true).unwrap();
    assert_eq!(c.response().await.body_text(), "/poll");
    assert_eq!(c.response().await.body_text(), "/send");
    assert_eq!(backend.last().body, b"message");
}

#[tokio::test]
async fn a_client_leaving_a_long_poll_frees_the_backend_connection() {
    let backend = HttpBackend::serve(|_| std::future::pending()).await;
    let gw = gateway(&backend, "", "").await;
    let mut c = HttpConn::open(gw.addr).await;
    c.send(get("/socket.io/?transport=polling", &[])).await;
    backend.requests_seen(1).await;
    drop(c);
    // The gateway drops its upstream connection; the backend sees it end.
    backend.all_closed().await;
    assert_eq!((backend.accepted(), backend.closed()), (1, 1));
}

/// 100 MiB.
const BIG: u64 = 100 << 20;

/// Uploads `len` bytes of the pattern chunked, then downloads as many
/// chunked; both must arrive intact.
async fn up_and_down(
    client: &mut hyper::client::conn::http1::SendRequest<HttpBody>,
    backend: &HttpBackend,
    len: u64,
) {
    guard("the client connection ready", client.ready())
        .await
        .unwrap();
    let up = hyper_request("POST", "/up", pattern_body(len, 64 * 1024));
    let resp = guard_for(
        "the upload",
        std::time::Duration::from_secs(120),
        client.send_request(up),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = backend.last();
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        (seen.body_len, seen.pattern, seen.complete),
        (len, true, true)
    );
    let stored = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(stored, "stored");

    guard("the client connection ready", client.ready())
        .await
        .unwrap();
    let down = hyper_request("GET", &format!("/down/{len}"), empty());
    let resp = guard("the download's head", client.send_request(down))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let got = guard_for(
        "the download",
        std::time::Duration::from_secs(120),
        check_pattern(resp.into_body()),
    )
    .await;
    assert_eq!((got.len, got.ok), (len, true));
}

/// The real binary streams 100 MiB up and 100 MiB down, both chunked, with
/// its peak resident memory growing by at most 1 MiB: bodies are never
/// held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_mib_each_way_streams_with_bounded_gateway_memory() {
    let backend = HttpBackend::serve(|seen| async move {
        match seen.path.strip_prefix("/down/") {
            Some(len) => Reply::new(pattern_body(len.parse().unwrap(), 64 * 1024)),
            None => text(StatusCode::OK, "stored"),
        }
    })
    .await;
    // Over the default 64 MiB limit on request bodies.
    let gateway = Gateway::builder()
        .route(route("/", "b").policy("big"))
        .upstream("b", &[backend.url()])
        .policy("big", "[http]\nmax_request_body = \"128MiB\"\n")
        .binary(&["--workers", "1"])
        .await;
    let pid = gateway.pid();
    let mut client = hyper_conn(gateway.addr).await;

    // Warm up: the connection, the pool, the copy buffers at their largest,
    // the allocator's arenas.
    for _ in 0..2 {
        up_and_down(&mut client, &backend, 4 << 20).await;
    }
    let before = status_kib(pid, "VmHWM");
    up_and_down(&mut client, &backend, BIG).await;
    let after = status_kib(pid, "VmHWM");
    let rss = status_kib(pid, "VmRSS");
    eprintln!(
        "gateway VmHWM {before} -> {after} KiB (VmRSS now {rss} KiB) for {BIG} bytes each way"
    );
    assert!(
        after.saturating_sub(before) <= 1024,
        "the gateway's peak RSS grew by {} KiB ({before} -> {after}) streaming {BIG} bytes each way",
        after - before
    );
    assert_eq!(backend.accepted(), 1, "one upstream connection throughout");
}
