//! Upstream keep-alive: a connection is reused, and one that breaks before
//! answering is retried once on a fresh connection, only for an idempotent
//! request without a body, and only when it came from the pool.
//!
//! A pooled connection that is dead on arrival is made deterministic here:
//! the backend reads the request and hangs up without a byte of a response
//! ([`HttpBackend::hang_up_next`]), so the connection looked alive when the
//! gateway took it from the pool and broke when used.

use super::gateway;
use crate::support::*;

#[tokio::test]
async fn a_get_on_a_pooled_connection_that_breaks_is_retried_once_on_a_fresh_one() {
    let backend = HttpBackend::describe().await;
    let gw = gateway(&backend, "", "").await;
    let mut c = HttpConn::open(gw.addr).await;
    assert_eq!(c.ask(get("/a", &[])).await.status, 200);
    assert_eq!(c.ask(get("/b", &[])).await.status, 200);
    assert_eq!(
        backend.accepted(),
        1,
        "the second request reused the first's connection"
    );

    backend.hang_up_next(1);
    let resp = c.ask(get("/c", &[])).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body_text(), "GET /c 0");
    let seen = backend.requests();
    let at: Vec<(&str, usize)> = seen.iter().map(|s| (s.path.as_str(), s.conn)).collect();
    assert_eq!(at, [("/a", 0), ("/b", 0), ("/c", 0), ("/c", 1)]);

    // The fresh connection is pooled in turn, and the client's is still open.
    assert_eq!(c.ask(get("/d", &[])).await.status, 200);
    assert_eq!(backend.last().conn, 1);
    assert_eq!(backend.accepted(), 2);
}

#[tokio::test]
async fn a_post_on_a_pooled_connection_that_breaks_is_never_retried() {
    let backend = HttpBackend::describe().await;
    let gw = gateway(&backend, "", "").await;

    // With a body: 502, and the connection is closed (the body is spent).
    let mut c = HttpConn::open(gw.addr).await;
    assert_eq!(c.ask(get("/warm", &[])).await.status, 200);
    backend.hang_up_next(1);
    let resp = c.ask(request("POST", "/order", &[], b"pay 100")).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    resp.assert_one_line_body();
    c.expect_closed().await;
    let seen = backend.requests();
    assert_eq!(backend.paths(), ["/warm", "/order"]);
    assert_eq!(
        (seen[1].conn, seen[1].body_len, seen[1].complete),
        (0, 7, true)
    );
    assert_eq!(backend.accepted(), 1, "no second connection for the POST");

    // Without a body: the same, though the client's connection may stay.
    let mut c = HttpConn::open(gw.addr).await;
    assert_eq!(c.ask(get("/warm", &[])).await.status, 200);
    backend.hang_up_next(1);
    let resp = c.ask(request("POST", "/ping", &[], b"")).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(backend.paths(), ["/warm", "/order", "/warm", "/ping"]);
    assert_eq!(backend.accepted(), 2);
    assert_eq!(c.ask(get("/next", &[])).await.status, 200);
}

#[tokio::test]
async fn a_fresh_connection_that_breaks_is_not_retried() {
    let backend = HttpBackend::describe().await;
    let gw = gateway(&backend, "", "").await;
    let mut c = HttpConn::open(gw.addr).await;
    backend.hang_up_next(1);
    let resp = c.ask(get("/first", &[])).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(backend.paths(), ["/first"]);
    assert_eq!(backend.accepted(), 1);
    // A GET without a body leaves the client connection usable.
    assert_eq!(c.ask(get("/second", &[])).await.status, 200);
    assert_eq!(backend.accepted(), 2);
}

/// A connection the backend closed while it sat in the pool is seen to be
/// closed when taken, and not used: even a POST, which could not be
/// retried, gets through.
#[tokio::test]
async fn a_pooled_connection_the_backend_closed_is_not_used() {
    let backend = HttpBackend::describe().await;
    let gw = gateway(&backend, "", "").await;
    let mut c = HttpConn::open(gw.addr).await;
    assert_eq!(c.ask(get("/a", &[])).await.status, 200);
    // The backend closes its idle keep-alive connection, as servers do.
    backend.close_idle().await;
    let resp = c.ask(request("POST", "/b", &[], b"order")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = backend.requests();
    let at: Vec<(&str, usize)> = seen.iter().map(|s| (s.path.as_str(), s.conn)).collect();
    assert_eq!(at, [("/a", 0), ("/b", 1)]);
}

#[tokio::test]
async fn without_a_pool_each_request_has_its_own_connection() {
    let backend = HttpBackend::describe().await;
    let gw = gateway(&backend, "", "max_idle_per_server = 0").await;
    let mut c = HttpConn::open(gw.addr).await;
    for path in ["/1", "/2", "/3"] {
        assert_eq!(c.ask(get(path, &[])).await.status, 200);
    }
    assert_eq!(backend.accepted(), 3);
    // And none is kept open.
    backend.all_closed().await;
}

#[tokio::test]
async fn a_response_that_closes_its_connection_is_not_pooled() {
    let backend = HttpBackend::serve(|seen| async move {
        let mut resp = text(http::StatusCode::OK, &seen.path);
        resp.headers_mut()
            .insert("connection", http::HeaderValue::from_static("close"));
        resp
    })
    .await;
    let gw = gateway(&backend, "", "").await;
    let mut c = HttpConn::open(gw.addr).await;
    for path in ["/1", "/2"] {
        let resp = c.ask(get(path, &[])).await;
        assert_eq!(resp.body_text(), path);
        // The backend's close is its own connection's, not the client's.
        assert_eq!(resp.header("connection"), None, "{resp:?}");
    }
    assert_eq!(backend.accepted(), 2);
}

#[tokio::test]
async fn the_pool_keeps_at_most_max_idle_per_server_and_expires_them() {
    // Both requests are answered only once both have arrived, so each has
    // an upstream connection of its own.
    let both = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let backend = HttpBackend::serve(move |seen| {
        let both = both.clone();
        async move {
            if seen.path == "/together" {
                both.wait().await;
            }
            text(http::StatusCode::OK, "ok")
        }
    })
    .await;
    let gw = gateway(
        &backend,
        "",
        "max_idle_per_server = 1\nidle_timeout = \"300ms\"",
    )
    .await;
    let (mut a, mut b) = (HttpConn::open(gw.addr).await, HttpConn::open(gw.addr).await);
    a.send(get("/together", &[])).await;
    b.send(get("/together", &[])).await;
    assert_eq!(a.response().await.status, 200);
    assert_eq!(b.response().await.status, 200);
    assert_eq!(backend.accepted(), 2);
    // The second back in the pool pushes the first out.
    backend
        .until("one upstream connection closed", |b| b.closed() == 1)
        .await;
    // The one kept is used, then closed once idle for idle_timeout.
    assert_eq!(a.ask(get("/again", &[])).await.status, 200);
    assert_eq!(backend.accepted(), 2);
    backend.all_closed().await;
}

#[tokio::test]
async fn a_plain_request_fails_over_past_a_server_that_refuses_connections() {
    let dead = closed_port().await;
    let backend = HttpBackend::describe().await;
    let gw = Gateway::builder()
        .route(route("/", "b"))
        .upstream("b", &[format!("ws://{dead}"), backend.url()])
        .start()
        .await;
    let mut c = HttpConn::open(gw.addr).await;
    // Round robin starts once at each server; both requests reach the live one.
    for path in ["/1", "/2"] {
        assert_eq!(c.ask(get(path, &[])).await.status, 200);
    }
    assert_eq!(backend.paths(), ["/1", "/2"]);

    let gw = Gateway::builder()
        .route(route("/", "b"))
        .upstream("b", &[format!("ws://{dead}")])
        .start()
        .await;
    let resp = HttpConn::open(gw.addr).await.ask(get("/", &[])).await;
    assert_eq!(resp.status, 502, "{resp:?}");
}

/// Client connections (spread over the gateway's two workers) share the
/// pool. Each client asks to close: the gateway closes its side only after
/// putting the upstream connection back, so the next client finds it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connections_share_pooled_upstream_connections() {
    let backend = HttpBackend::describe().await;
    let gw = gateway(&backend, "", "").await;
    for i in 0..12 {
        let mut c = HttpConn::open(gw.addr).await;
        let resp = c.ask(get(&format!("/{i}"), &["Connection: close"])).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        c.expect_closed().await;
    }
    assert_eq!(backend.accepted(), 1);
}
