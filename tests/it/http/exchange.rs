//! One request and its response, as a client and a backend see them.

use http::{HeaderValue, StatusCode};

use super::{gateway, holding, to_raw};
use crate::support::*;

fn assert_no_header(resp: &RawResponse, name: &str) {
    assert!(
        !resp.has_header(name),
        "{name} reached the client: {resp:?}"
    );
}

#[tokio::test]
async fn a_page_and_a_websocket_share_one_route_and_one_backend_port() {
    let backend = HttpBackend::describe().await;
    let gw = gateway(&backend, "", "").await;

    let mut c = HttpConn::open(gw.addr).await;
    let page = c.ask(get("/app/page?x=1", &[])).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(page.body_text(), "GET /app/page?x=1 0");

    let mut ws = connect(gw.addr, "/app/socket").await;
    round_trip(&mut ws, "hello over the same port").await;

    let seen = backend.requests();
    assert_eq!(backend.paths(), ["/app/page?x=1", "/app/socket"]);
    assert_eq!(seen[0].header("upgrade"), None);
    assert_eq!(seen[1].header("upgrade"), Some("websocket"));
    // The upgrade has a connection of its own, never a pooled one.
    assert_eq!(backend.accepted(), 2);
    // The page's client connection serves another page, then upgrades.
    assert_eq!(c.ask(get("/app/again", &[])).await.status, 200);
    let upgrade = upgrade_request("/app/socket", &[]);
    let mut ws = raw_upgrade_on(c.into_stream(), &upgrade).await;
    ws.send(&client_frame(true, OP_TEXT, b"same connection"))
        .await;
    assert_eq!(
        ws.read_message().await,
        (OP_TEXT, b"same connection".to_vec())
    );
    assert_eq!(backend.accepted(), 3);
}

#[tokio::test]
async fn keep_alive_holds_both_ways() {
    let backend = HttpBackend::describe().await;
    let gw = gateway(&backend, "", "").await;
    let mut c = HttpConn::open(gw.addr).await;
    for i in 0..5 {
        let resp = c.ask(get(&format!("/r{i}"), &[])).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.body_text(), format!("GET /r{i} 0"));
        assert_no_header(&resp, "connection");
    }
    // Two requests in one write are answered in order.
    c.send([get("/p1", &[]), get("/p2", &[])].concat()).await;
    assert_eq!(c.response().await.body_text(), "GET /p1 0");
    assert_eq!(c.response().await.body_text(), "GET /p2 0");

    // One client connection, one upstream connection.
    assert_eq!(backend.accepted(), 1);
    let seen = backend.requests();
    assert_eq!(seen.len(), 7);
    assert!(seen.iter().all(|s| s.conn == 0), "{seen:?}");
    // `Connection: close` from the client is honoured after the answer.
    let resp = c.ask(get("/last", &["Connection: close"])).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    c.expect_closed().await;
}

#[tokio::test]
async fn request_and_response_bodies_arrive_intact_either_framing() {
    let backend = HttpBackend::serve(|seen| async move {
        match seen.path.as_str() {
            "/down/length" => Reply::new(full(pattern(200_000))),
            "/down/chunked" => Reply::new(pattern_body(200_000, 5_000)),
            _ => text(StatusCode::OK, "stored"),
        }
    })
    .await;
    let gw = gateway(&backend, "", "").await;
    let mut c = HttpConn::open(gw.addr).await;

    // Content-Length up.
    let body = pattern(300_000);
    let resp = c.ask(request("POST", "/up/length", &[], &body)).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    // Chunked up: odd sizes, an extension, a trailer.
    let data = pattern(100_000);
    let mut wire = b"POST /up/chunked HTTP/1.1\r\nHost: gateway.test\r\n\
        Transfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    let (a, rest) = data.split_at(1);
    let (b, rest) = rest.split_at(7);
    let (c4k, rest) = rest.split_at(4096);
    wire.extend(b"1;name=value\r\n");
    wire.extend(a);
    wire.extend(b"\r\n");
    wire.extend(chunked(&[b, c4k, rest]).strip_suffix(b"0\r\n\r\n").unwrap());
    wire.extend(b"0\r\nX-Trailer: t\r\n\r\n");
    let resp = c.ask(&wire).await;
    assert_eq!(resp.status, 200, "{resp:?}");

    let seen = backend.requests();
    let (length, chunks) = (&seen[0], &seen[1]);
    assert_eq!(
        (length.body_len, length.pattern, length.complete),
        (300_000, true, true)
    );
    assert_eq!(length.header("content-length"), Some("300000"));
    assert_eq!(length.header("transfer-encoding"), None);
    assert_eq!(
        (chunks.body_len, chunks.pattern, chunks.complete),
        (100_000, true, true)
    );
    assert_eq!(chunks.header("transfer-encoding"), Some("chunked"));
    assert_eq!(chunks.header("content-length"), None);
    // Trailers are read and dropped, not passed on.
    assert!(chunks.trailers.is_empty(), "{:?}", chunks.trailers);
    assert_eq!(chunks.header("x-trailer"), None);

    // The check can fail: a body off the pattern by one byte is seen.
    let mut off = pattern(70_000);
    off[69_999] ^= 1;
    assert_eq!(
        c.ask(request("POST", "/up/off", &[], &off)).await.status,
        200
    );
    assert!(!backend.last().pattern);

    // Down, with a length and chunked.
    let resp = c.ask(get("/down/length", &[])).await;
    assert_eq!(resp.header("content-length"), Some("200000"));
    assert!(resp.body == pattern(200_000), "content-length body differs");
    let resp = c.ask(get("/down/chunked", &[])).await;
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert!(resp.body == pattern(200_000), "chunked body differs");

    // An HTTP/1.0 client gets the chunked body as it is, to the close.
    let mut old = HttpConn::open(gw.addr).await;
    old.send(b"GET /down/chunked HTTP/1.0\r\nHost: gateway.test\r\n\r\n")
        .await;
    let resp = old.response().await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), None);
    assert_eq!(resp.header("content-length"), None);
    assert!(resp.body == pattern(200_000), "HTTP/1.0 body differs");
}

#[tokio::test]
async fn head_204_and_304_carry_no_body() {
    let backend = HttpBackend::serve(|seen| async move {
        let status = match seen.path.as_str() {
            "/204" => StatusCode::NO_CONTENT,
            "/304" => StatusCode::NOT_MODIFIED,
            _ => return Reply::new(full(pattern(1234))),
        };
        let mut resp = Reply::new(empty());
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert("etag", HeaderValue::from_static("\"v1\""));
        resp
    })
    .await;
    let gw = gateway(&backend, "", "").await;
    let mut c = HttpConn::open(gw.addr).await;

    c.send(request("HEAD", "/page", &[], b"")).await;
    let head = c.head().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1234"), "{head:?}");
    let no_content = c.ask(get("/204", &[])).await;
    assert_eq!(no_content.status, 204);
    assert_no_header(&no_content, "transfer-encoding");
    let not_modified = c.ask(get("/304", &["If-None-Match: \"v1\""])).await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag"), Some("\"v1\""));
    assert_no_header(&not_modified, "transfer-encoding");
    // Had any of them carried body bytes, this response would not parse.
    let page = c.ask(get("/page", &[])).await;
    assert_eq!(page.status, 200);
    assert!(page.body == pattern(1234));
    assert_eq!(backend.requests()[0].method, http::Method::HEAD);
    assert_eq!(backend.accepted(), 1);
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_the_gateway() {
    let backend = HttpBackend::describe().await;
    let gw = gateway(&backend, "", "").await;
    let mut c = HttpConn::open(gw.addr).await;
    c.send(
        b"POST /upload HTTP/1.1\r\nHost: gateway.test\r\nExpect: 100-continue\r\n\
          Content-Length: 5000\r\n\r\n",
    )
    .await;
    // The body is sent only after the interim answer.
    let interim = c.head().await;
    assert_eq!(interim.status, 100, "{interim:?}");
    c.send(pattern(5000)).await;
    let resp = c.response().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body_text(), "POST /upload 5000");
    let seen = backend.last();
    assert_eq!(seen.header("expect"), None);
    assert!(seen.complete && seen.pattern);

    // Any other expectation: 417, and the backend never hears of it.
    let resp = c.ask(get("/other", &["Expect: something-else"])).await;
    assert_eq!(resp.status, 417, "{resp:?}");
    assert_eq!(backend.paths(), ["/upload"]);
}

#[tokio::test]
async fn hop_by_hop_headers_stay_behind_and_forwarding_headers_are_set() {
    let backend = HttpBackend::serve(|_| async move {
        let mut resp = text(StatusCode::OK, "ok");
        let h = resp.headers_mut();
        for (name, value) in [
            ("connection", "X-Resp-Hop"),
            ("x-resp-hop", "1"),
            ("keep-alive", "timeout=9"),
            ("proxy-authenticate", "Basic"),
            ("x-resp-end", "kept"),
        ] {
            h.insert(name, HeaderValue::from_static(value));
        }
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append("set-cookie", HeaderValue::from_static("b=2"));
        resp
    })
    .await;
    let gw = gateway(&backend, "", "").await;
    let mut c = HttpConn::open(gw.addr).await;
    let resp = c
        .ask(get(
            "/h",
            &[
                "Connection: keep-alive, Upgrade, HTTP2-Settings, X-Hop",
                "Upgrade: h2c",
                "HTTP2-Settings: AAMAAABkAAQAAP__",
                "X-Hop: 1",
                "Keep-Alive: timeout=5",
                "TE: trailers",
                "Trailer: X-T",
                "Proxy-Authorization: Basic eDp5",
                "X-Forwarded-For: 6.6.6.6",
                "X-Forwarded-Host: evil.test",
                "X-End: kept",
            ],
        ))
        .await;
    // Not switched to h2c: a plain answer.
    assert_eq!(resp.status, 200, "{resp:?}");
    for name in ["x-resp-hop", "keep-alive", "proxy-authenticate", "upgrade"] {
        assert_no_header(&resp, name);
    }
    assert_eq!(resp.header("x-resp-end"), Some("kept"));
    let cookies: Vec<&str> = resp
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["a=1", "b=2"]);

    let seen = backend.last();
    for name in [
        "connection",
        "upgrade",
        "http2-settings",
        "x-hop",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
    ] {
        assert_eq!(seen.header(name), None, "{name} reached the backend");
    }
    assert_eq!(seen.header("x-end"), Some("kept"));
    assert_eq!(seen.header("host"), Some("gateway.test"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("gateway.test"));
    // The connection is still a plain HTTP/1.1 one.
    assert_eq!(c.ask(get("/after", &[])).await.status, 200);
}

#[tokio::test]
async fn a_websocket_only_route_answers_plain_requests_426() {
    let backend = HttpBackend::describe().await;
    let gw = Gateway::builder()
        .route(route("/ws", "b").http(false))
        .route(route("/", "b"))
        .upstream("b", &[backend.url()])
        .start()
        .await;
    let mut c = HttpConn::open(gw.addr).await;
    let refused = c.ask(get("/ws/page", &[])).await;
    assert_eq!(refused.status, 426, "{refused:?}");
    assert_eq!(
        refused.header("upgrade").map(str::to_ascii_lowercase),
        Some("websocket".into())
    );
    refused.assert_one_line_body();
    assert_eq!(c.ask(get("/page", &[])).await.status, 200);
    // The WebSocket-only route still takes upgrades.
    let mut ws = connect(gw.addr, "/ws/chat").await;
    round_trip(&mut ws, "still a websocket route").await;
    assert_eq!(backend.paths(), ["/page", "/ws/chat"]);
}

/// A backend response that runs to the close reaches an HTTP/1.1 client
/// chunked, so the client keeps its connection.
#[tokio::test]
async fn a_close_delimited_response_is_chunked_for_the_client() {
    let response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end";
    let gw = to_raw(raw_http_server_closing(response).await).await;
    let mut c = HttpConn::open(gw.addr).await;
    for _ in 0..2 {
        let resp = c.ask(get("/", &[])).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
        assert_eq!(resp.body_text(), "until the end");
    }
}

#[tokio::test]
async fn an_idle_client_connection_is_closed_after_keepalive_timeout() {
    let backend = HttpBackend::describe().await;
    let gw = Gateway::builder()
        .server("keepalive_timeout = \"300ms\"")
        .route(route("/", "b"))
        .upstream("b", &[backend.url()])
        .start()
        .await;
    let mut c = HttpConn::open(gw.addr).await;
    assert_eq!(c.ask(get("/", &[])).await.status, 200);
    c.expect_closed().await;
}

/// A drain lets a request in progress finish (its answer says the
/// connection closes) and closes idle keep-alive connections.
#[tokio::test]
async fn a_drain_finishes_requests_in_progress_and_closes_idle_connections() {
    let (backend, release_tx) = holding("/slow").await;
    let mut gw = gateway(&backend, "", "").await;
    let mut idle = HttpConn::open(gw.addr).await;
    assert_eq!(idle.ask(get("/idle", &[])).await.status, 200);
    let mut busy = HttpConn::open(gw.addr).await;
    busy.send(get("/slow", &[])).await;
    backend.requests_seen(2).await;

    let drained = gw.stop();
    idle.expect_closed().await;
    release_tx.send(true).unwrap();
    let resp = busy.response().await;
    assert_eq!((resp.status, resp.body_text().as_str()), (200, "/slow"));
    assert_eq!(resp.header("connection"), Some("close"));
    busy.expect_closed().await;
    // The gateway lingers on a closed connection until the client closes too.
    drop((idle, busy));
    guard("the drain", drained).await.unwrap();
}

/// A raw backend answering `response` on every connection and closing.
async fn raw_gateway(response: &'static [u8]) -> Gateway {
    to_raw(raw_http_server_closing(response).await).await
}

/// Interim answers: a 100 the backend sends unasked is the gateway's to
/// send (so it is dropped); 103 Early Hints go on to the client.
#[tokio::test]
async fn early_hints_are_passed_on_and_a_stray_100_is_not() {
    let gw = raw_gateway(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let mut c = HttpConn::open(gw.addr).await;
    c.send(get("/", &[])).await;
    let hints = c.head().await;
    assert_eq!(hints.status, 103, "{hints:?}");
    assert_eq!(hints.header("link"), Some("</app.css>; rel=preload"));
    let resp = c.response().await;
    assert_eq!((resp.status, resp.body_text().as_str()), (200, "ok"));
}

/// A backend that dies inside its body: the client's copy ends early too
/// (short of its length, or without the last chunk), never as a complete
/// body.
#[tokio::test]
async fn a_response_cut_short_reaches_the_client_cut_short() {
    let gw = raw_gateway(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort").await;
    let mut c = HttpConn::open(gw.addr).await;
    c.send(get("/", &[])).await;
    assert_eq!(c.head().await.header("content-length"), Some("100"));
    assert_eq!(c.rest().await, b"short");

    let gw =
        raw_gateway(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n").await;
    let mut c = HttpConn::open(gw.addr).await;
    c.send(get("/", &[])).await;
    assert_eq!(c.head().await.header("transfer-encoding"), Some("chunked"));
    let rest = c.rest().await;
    assert!(
        !rest.ends_with(b"0\r\n\r\n"),
        "a cut body was ended as if whole: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// The route's path rewriting and `preserve_host` apply to plain requests,
/// and an absolute-form target goes upstream in origin form.
#[tokio::test]
async fn route_rewrites_apply_to_plain_requests() {
    let backend = HttpBackend::describe().await;
    let gw = Gateway::builder()
        .route(route("/api", "b").strip_prefix().preserve_host(false))
        .route(route("/old", "b").rewrite("/new"))
        .upstream("b", &[backend.url()])
        .start()
        .await;
    let mut c = HttpConn::open(gw.addr).await;
    assert_eq!(c.ask(get("/api/users?id=7", &[])).await.status, 200);
    assert_eq!(backend.last().path, "/users?id=7");
    assert_eq!(
        backend.last().header("host"),
        Some(&*backend.addr.to_string())
    );
    assert_eq!(
        backend.last().header("x-forwarded-host"),
        Some("gateway.test")
    );
    let absolute = b"GET http://gateway.test/old/page HTTP/1.1\r\nHost: gateway.test\r\n\r\n";
    assert_eq!(c.ask(absolute).await.status, 200);
    assert_eq!(backend.last().path, "/new/page");
    assert_eq!(backend.last().header("host"), Some("gateway.test"));
}

/// Plain requests over a TLS listener: the backend is told `https`, and
/// the client's TLS connection carries several requests.
#[tokio::test]
async fn plain_requests_over_tls_say_https_upstream() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost"]);
    let backend = HttpBackend::describe().await;
    let gw = Gateway::builder()
        .listener(r#"tls = { cert = "server.pem", key = "server.key" }"#)
        .route(route("/", "b"))
        .upstream("b", &[backend.url()])
        .leaf("server", &leaf)
        .start()
        .await;
    let tls = tls_connect(gw.addr, "localhost", ca.client_config()).await;
    let (mut client, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for path in ["/secure/1", "/secure/2"] {
        guard("the client connection ready", client.ready())
            .await
            .unwrap();
        let resp = guard(
            "a response over TLS",
            client.send_request(hyper_request("GET", path, empty())),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, format!("GET {path} 0"));
        assert_eq!(backend.last().header("x-forwarded-proto"), Some("https"));
    }
    assert_eq!(backend.accepted(), 1);
}
