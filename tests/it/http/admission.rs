//! Admission on plain requests: the token applies unless `[http] auth =
//! false`, the origin check only with `[http] origin = true`; and the
//! access log's line per request.

use http::StatusCode;

use super::holding;
use crate::support::*;

const AUTH: &str = "[auth]\nalgorithms = [\"HS256\"]\nsecret_file = \"hs.key\"\n";
const ORIGIN: &str = "[origin]\nallow = [\"https://app.test\"]\nallow_missing = true\n";

#[tokio::test]
async fn the_token_applies_to_plain_requests_unless_exempted() {
    let backend = HttpBackend::describe().await;
    let gw = Gateway::builder()
        .route(route("/", "b").policy("auth"))
        .route(route("/open", "b").policy("open"))
        .upstream("b", &[backend.url()])
        .policy("auth", AUTH)
        .policy("open", &format!("{AUTH}[http]\nauth = false\n"))
        .file("hs.key", SECRET)
        .start()
        .await;
    let mut c = HttpConn::open(gw.addr).await;

    let resp = c.ask(get("/poll", &[])).await;
    assert_eq!(resp.status, 401, "{resp:?}");
    assert!(
        resp.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{resp:?}"
    );
    let bearer = format!("Authorization: Bearer {}", hs256("alice"));
    let resp = c.ask(get("/poll", &[&bearer])).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    // The token is not passed on.
    assert_eq!(backend.last().header("authorization"), None);

    let resp = c.ask(get("/open/health", &[])).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(backend.paths(), ["/poll", "/open/health"]);
    // Exempting plain requests leaves the upgrade's token check in place.
    let refused = refused(gw.addr, "127.0.0.1", "/open/socket", &[]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_origin_is_checked_on_plain_requests_only_when_asked() {
    let backend = HttpBackend::describe().await;
    let gw = Gateway::builder()
        .route(route("/", "b").policy("ws"))
        .route(route("/strict", "b").policy("strict"))
        .upstream("b", &[backend.url()])
        .policy("ws", ORIGIN)
        .policy("strict", &format!("{ORIGIN}[http]\norigin = true\n"))
        .start()
        .await;
    let mut c = HttpConn::open(gw.addr).await;
    let evil = "Origin: https://evil.test";

    let resp = c.ask(get("/page", &[evil])).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let refused_upgrade = refused(
        gw.addr,
        "127.0.0.1",
        "/socket",
        &[("origin", "https://evil.test")],
    )
    .await;
    assert_eq!(refused_upgrade.status, StatusCode::FORBIDDEN);

    let resp = c.ask(get("/strict/page", &[evil])).await;
    assert_eq!(resp.status, 403, "{resp:?}");
    let resp = c
        .ask(get("/strict/page", &["Origin: https://app.test"]))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(backend.paths(), ["/page", "/strict/page"]);
}

/// A plain request holds a connection slot while it is in flight (as
/// nginx's `limit_conn` counts requests in progress) and gives it back when
/// it ends, however it ends.
#[tokio::test]
async fn a_plain_request_holds_a_connection_slot_while_in_flight() {
    let (backend, release_tx) = holding("/poll").await;
    let gw = Gateway::builder()
        .route(route("/", "b").policy("p"))
        .upstream("b", &[backend.url()])
        .policy("p", "[limits]\nmax_connections_per_ip = 1\n")
        .start()
        .await;
    let mut polling = HttpConn::open(gw.addr).await;
    polling.send(get("/poll", &[])).await;
    backend.requests_seen(1).await;
    assert_eq!(gw.stats().open, 1);

    let mut other = HttpConn::open(gw.addr).await;
    let resp = other.ask(get("/page", &[])).await;
    assert_eq!(resp.status, 429, "{resp:?}");
    assert!(resp.has_header("retry-after"), "{resp:?}");
    // A WebSocket from the same address counts against the same limit.
    let refused_ws = refused(gw.addr, "127.0.0.1", "/socket", &[]).await;
    assert_eq!(refused_ws.status, StatusCode::TOO_MANY_REQUESTS);

    release_tx.send(true).unwrap();
    assert_eq!(polling.response().await.body_text(), "/poll");
    eventually("the long-poll's slot to be released", || {
        gw.stats().open == 0
    })
    .await;
    assert_eq!(other.ask(get("/page", &[])).await.status, 200);

    // A client that leaves mid-request gives its slot back too.
    release_tx.send(false).unwrap();
    other.send(get("/poll", &[])).await;
    backend.requests_seen(3).await;
    drop(other);
    eventually("the abandoned request's slot to be released", || {
        gw.stats().open == 0
    })
    .await;
    assert_eq!(gw.stats().counted_keys, 0);
}

#[tokio::test]
async fn each_request_has_an_access_log_line() {
    let backend = HttpBackend::serve(|seen| async move {
        if seen.path == "/poll" {
            std::future::pending::<()>().await;
        }
        text(StatusCode::OK, "ok")
    })
    .await;
    let mut gateway = Gateway::builder()
        .route(route("/", "b"))
        .upstream("b", &[backend.url()])
        .binary(&["--workers", "1"])
        .await;
    let mut c = HttpConn::open(gateway.addr).await;
    assert_eq!(c.ask(get("/one", &[])).await.status, 200);
    let first = gateway.wait_for("http request").await;
    let post = request("POST", "/two?token=SECRET", &[], b"hello");
    assert_eq!(c.ask(post).await.status, 200);
    let second = gateway.wait_for("http request").await;
    for (line, method, path, reused) in [
        (&first, "GET", "/one", false),
        (&second, "POST", "/two", true),
    ] {
        let f = fields(line);
        assert_eq!(
            (&f["method"], &f["path"], &f["status"], &f["reused"]),
            (&method.into(), &path.into(), &200.into(), &reused.into()),
            "{line}"
        );
        assert_eq!(f["upstream"], backend.url(), "{line}");
    }
    assert_eq!(fields(&second)["bytes_in"], 5, "{second}");
    assert!(!second.contains("SECRET"), "the query was logged: {second}");

    // A client that leaves while the backend holds its answer: 499.
    c.send(get("/poll", &[])).await;
    backend.requests_seen(3).await;
    drop(c);
    let left = gateway.wait_for("http request").await;
    let f = fields(&left);
    assert_eq!(
        (&f["path"], &f["status"]),
        (&"/poll".into(), &499.into()),
        "{left}"
    );
    assert!(
        f["error"].as_str().unwrap().contains("client closed"),
        "{left}"
    );

    // A request the gateway refuses itself has its line too, saying why.
    let mut c = HttpConn::open(gateway.addr).await;
    let refused = request("GET", "/refused", &["Expect: teapot"], b"");
    assert_eq!(c.ask(refused).await.status, 417);
    let line = gateway.wait_for("http request").await;
    let f = fields(&line);
    assert_eq!(
        (&f["path"], &f["status"]),
        (&"/refused".into(), &417.into()),
        "{line}"
    );
    assert!(
        f["error"].as_str().unwrap().contains("only 100-continue"),
        "{line}"
    );
}
