//! `[http] max_request_body` (413) and `response_timeout` (504).

use super::gateway;
use crate::support::*;

const LIMIT: &str = "[http]\nmax_request_body = \"1KiB\"\n";

#[tokio::test]
async fn a_declared_body_over_the_limit_is_413_before_the_backend_sees_anything() {
    let backend = HttpBackend::describe().await;
    let gw = gateway(&backend, LIMIT, "").await;
    let mut c = HttpConn::open(gw.addr).await;
    let resp = c.ask(request("POST", "/exact", &[], &pattern(1024))).await;
    assert_eq!(resp.status, 200, "{resp:?}");

    let mut over = HttpConn::open(gw.addr).await;
    let resp = over
        .ask(request("POST", "/over", &[], &pattern(1025)))
        .await;
    assert_eq!(resp.status, 413, "{resp:?}");
    resp.assert_one_line_body();
    over.expect_closed().await;
    // With `Expect: 100-continue`, the 413 comes instead of the 100.
    let mut over = HttpConn::open(gw.addr).await;
    over.send(
        "POST /over HTTP/1.1\r\nHost: gateway.test\r\nExpect: 100-continue\r\n\
         Content-Length: 2048\r\n\r\n",
    )
    .await;
    assert_eq!(over.head().await.status, 413);

    // The next request on the pooled upstream connection is the next the
    // backend sees: nothing of the refused one came before it.
    assert_eq!(c.ask(get("/after", &[])).await.status, 200);
    assert_eq!(backend.paths(), ["/exact", "/after"]);
    assert_eq!(backend.accepted(), 1);
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413_and_never_complete_upstream() {
    let backend = HttpBackend::describe().await;
    // No pool: every upstream connection ends with its request, so the
    // backend's view is final once all have ended.
    let gw = gateway(&backend, LIMIT, "max_idle_per_server = 0").await;
    let mut c = HttpConn::open(gw.addr).await;
    let exact = pattern(1024);
    let head = "POST /exact HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    let resp = c
        .ask([head.as_bytes(), &chunked(&[&exact[..512], &exact[512..]])].concat())
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");

    let big = pattern(4096);
    let pieces: Vec<&[u8]> = big.chunks(512).collect();
    let head = head.replace("/exact", "/over");
    let mut over = HttpConn::open(gw.addr).await;
    let resp = over
        .ask([head.as_bytes(), &chunked(&pieces)].concat())
        .await;
    assert_eq!(resp.status, 413, "{resp:?}");
    over.expect_closed().await;
    drop(over);

    // A later request's connection is accepted after the refused one's (if
    // the gateway opened one), so once it is served and all have ended,
    // the backend has seen all it ever will of the refused request.
    assert_eq!(c.ask(get("/after", &[])).await.status, 200);
    backend.all_closed().await;
    let seen = backend.requests();
    let refused: Vec<&Seen> = seen.iter().filter(|s| s.path == "/over").collect();
    assert!(refused.len() <= 1, "{refused:?}");
    for s in refused {
        assert!(!s.complete, "the backend got the whole refused body: {s:?}");
        assert!(s.body_len <= 1024, "{s:?}");
    }
    let served: Vec<&str> = seen
        .iter()
        .filter(|s| s.complete)
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(served, ["/exact", "/after"]);
}

#[tokio::test]
async fn a_backend_that_does_not_answer_in_time_is_504() {
    let backend = HttpBackend::serve(|seen| async move {
        if seen.path == "/slow" {
            std::future::pending::<()>().await;
        }
        text(http::StatusCode::OK, "fast")
    })
    .await;
    let gw = gateway(&backend, "[http]\nresponse_timeout = \"300ms\"\n", "").await;
    let mut c = HttpConn::open(gw.addr).await;
    let resp = c.ask(get("/slow", &[])).await;
    assert_eq!(resp.status, 504, "{resp:?}");
    resp.assert_one_line_body();
    assert_eq!(backend.paths(), ["/slow"]);
    // The stuck upstream connection is not reused; the client's goes on.
    let resp = c.ask(get("/fast", &[])).await;
    assert_eq!(resp.body_text(), "fast");
    assert_eq!(backend.accepted(), 2);
}
