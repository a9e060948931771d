//! The client-side handshake: every refusal status, and the upstream
//! handshake that must succeed before the client gets its 101.

use std::time::{Duration, Instant};

use crate::support::*;
use futures_util::SinkExt;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

/// A gateway with one route, `/ws`, in front of an echo backend; the route
/// serves WebSockets only, so plain requests are refused here too.
async fn gateway() -> Gateway {
    let url = Backend::echo().await.url();
    Gateway::builder()
        .route(route("/ws", "echo").http(false))
        .upstream("echo", &[url])
        .start()
        .await
}

/// Sends `lines` (request line and headers) and returns the response.
async fn ask(gw: &Gateway, lines: &[&str]) -> RawResponse {
    let mut req = lines.join("\r\n");
    req.push_str("\r\n\r\n");
    http(gw.addr, &req).await
}

fn assert_refused(resp: &RawResponse, status: u16) {
    assert_eq!(resp.status, status, "{resp:?}");
    resp.assert_one_line_body();
    assert!(
        resp.header("content-type")
            .is_some_and(|v| v.starts_with("text/plain")),
        "{resp:?}"
    );
}

#[tokio::test]
async fn a_valid_upgrade_gets_101() {
    let gw = gateway().await;
    let mut ws = raw_upgrade(gw.addr, "/ws/chat", &[]).await;
    assert_eq!(
        ws.response
            .header("upgrade")
            .map(|v| v.to_ascii_lowercase()),
        Some("websocket".into())
    );
    assert!(ws
        .response
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
    ws.send(&client_frame(true, OP_TEXT, b"ping?")).await;
    assert_eq!(ws.read_message().await, (OP_TEXT, b"ping?".to_vec()));
}

#[tokio::test]
async fn no_route_is_404() {
    let gw = gateway().await;
    let resp = http(gw.addr, &upgrade_request("/elsewhere", &[])).await;
    assert_refused(&resp, 404);
    // A prefix is matched from the start of the path only.
    let resp = http(gw.addr, &upgrade_request("/x/ws", &[])).await;
    assert_refused(&resp, 404);
}

#[tokio::test]
async fn plain_get_on_a_websocket_only_route_is_426_with_upgrade_header() {
    let gw = gateway().await;
    let resp = ask(&gw, &["GET /ws HTTP/1.1", "Host: gateway.test"]).await;
    assert_refused(&resp, 426);
    assert_eq!(
        resp.header("upgrade").map(|v| v.to_ascii_lowercase()),
        Some("websocket".into())
    );
}

#[tokio::test]
async fn upgrade_with_post_is_405() {
    let gw = gateway().await;
    let resp = ask(
        &gw,
        &[
            "POST /ws HTTP/1.1",
            "Host: gateway.test",
            "Upgrade: websocket",
            "Connection: Upgrade",
            KEY,
            "Sec-WebSocket-Version: 13",
            "Content-Length: 0",
        ],
    )
    .await;
    assert_refused(&resp, 405);
    assert_eq!(resp.header("allow"), Some("GET"));
}

#[tokio::test]
async fn upgrade_to_something_else_is_400() {
    let gw = gateway().await;
    let resp = ask(
        &gw,
        &[
            "GET /ws HTTP/1.1",
            "Host: gateway.test",
            "Upgrade: h2c",
            "Connection: Upgrade",
            KEY,
            "Sec-WebSocket-Version: 13",
        ],
    )
    .await;
    assert_refused(&resp, 400);
}

#[tokio::test]
async fn connection_without_upgrade_is_400() {
    let gw = gateway().await;
    let resp = ask(
        &gw,
        &[
            "GET /ws HTTP/1.1",
            "Host: gateway.test",
            "Upgrade: websocket",
            "Connection: keep-alive",
            KEY,
            "Sec-WebSocket-Version: 13",
        ],
    )
    .await;
    assert_refused(&resp, 400);
}

#[tokio::test]
async fn missing_or_invalid_key_is_400() {
    let gw = gateway().await;
    let base = [
        "GET /ws HTTP/1.1",
        "Host: gateway.test",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
    ];
    assert_refused(&ask(&gw, &base).await, 400);
    for bad in [
        "Sec-WebSocket-Key: short",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=!",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZS*ub25jZQ==",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZSBsb25nZXI=",
    ] {
        let mut lines = base.to_vec();
        lines.push(bad);
        let resp = ask(&gw, &lines).await;
        assert_eq!(resp.status, 400, "{bad}: {resp:?}");
        resp.assert_one_line_body();
    }
}

#[tokio::test]
async fn other_websocket_version_is_426_naming_13() {
    let gw = gateway().await;
    let base = [
        "GET /ws HTTP/1.1",
        "Host: gateway.test",
        "Upgrade: websocket",
        "Connection: Upgrade",
        KEY,
    ];
    for version in [Some("8"), Some("14"), None] {
        let mut lines = base.to_vec();
        let header = version.map(|v| format!("Sec-WebSocket-Version: {v}"));
        if let Some(h) = &header {
            lines.push(h);
        }
        let resp = ask(&gw, &lines).await;
        assert_refused(&resp, 426);
        assert_eq!(
            resp.header("sec-websocket-version"),
            Some("13"),
            "{version:?}"
        );
    }
}

#[tokio::test]
async fn header_tokens_are_case_insensitive_lists() {
    let gw = gateway().await;
    let resp = ask(
        &gw,
        &[
            "GET /ws HTTP/1.1",
            "Host: gateway.test",
            "Upgrade: WebSocket",
            "Connection: keep-alive, UPGRADE",
            KEY,
            "Sec-WebSocket-Version: 13",
        ],
    )
    .await;
    assert_eq!(resp.status, 101, "{resp:?}");
}

#[tokio::test]
async fn http_1_0_upgrade_is_400() {
    let gw = gateway().await;
    let resp = ask(
        &gw,
        &[
            "GET /ws HTTP/1.0",
            "Host: gateway.test",
            "Upgrade: websocket",
            "Connection: Upgrade",
            KEY,
            "Sec-WebSocket-Version: 13",
        ],
    )
    .await;
    assert_eq!(resp.status, 400, "{resp:?}");
}

#[tokio::test]
async fn an_upgrade_with_a_body_is_400_and_the_connection_closes() {
    let gw = gateway().await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = upgrade_request("/ws", &["Content-Length: 5"]) + "hello";
    tcp.write_all(request.as_bytes()).await.unwrap();
    let (resp, _) = read_response(&mut tcp).await;
    assert_refused(&resp, 400);
    assert_eq!(resp.header("connection"), Some("close"));
    read_to_close(&mut tcp).await;
}

#[tokio::test]
async fn an_upgrade_after_a_refusal_on_the_same_connection_works() {
    let gw = gateway().await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        .await
        .unwrap();
    let (resp, _) = read_response(&mut tcp).await;
    assert_refused(&resp, 426);
    let mut ws = raw_upgrade_on(tcp, &upgrade_request("/ws", &[])).await;
    ws.send(&client_frame(true, OP_TEXT, b"second try")).await;
    assert_eq!(ws.read_message().await, (OP_TEXT, b"second try".to_vec()));
}

// --- The upstream handshake comes first -------------------------------------

#[tokio::test]
async fn upstream_port_closed_is_502() {
    let dead = closed_port().await;
    let gw = Gateway::to(&format!("ws://{dead}")).await;
    let resp = http(gw.addr, &upgrade_request("/", &[])).await;
    assert_refused(&resp, 502);
}

/// Starts the gateway in front of `addr` with `[upstream]` policy settings
/// `upstream`, asserts an upgrade is refused with 504, and returns how long
/// the answer took.
async fn answered_504_after(addr: std::net::SocketAddr, upstream: &str) -> Duration {
    let policy = format!("[upstream]\n{upstream}");
    let gw = Gateway::builder()
        .with_policy_to(&policy, &format!("ws://{addr}"))
        .start()
        .await;
    let started = Instant::now();
    let resp = http(gw.addr, &upgrade_request("/", &[])).await;
    assert_refused(&resp, 504);
    started.elapsed()
}

#[tokio::test]
async fn upstream_that_never_answers_is_504_after_handshake_timeout() {
    let (addr, mut accepted) = silent_server().await;
    let took = answered_504_after(addr, "handshake_timeout = \"300ms\"\n").await;
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "answered after {took:?}; the policy says 300ms"
    );
    guard("the silent upstream to have been reached", accepted.recv())
        .await
        .unwrap();
}

#[tokio::test]
async fn upstream_that_never_accepts_is_504_after_connect_timeout() {
    // A listener with a backlog of 0 and one connection already queued:
    // further SYNs are dropped, so connecting hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let _queued = guard(
        "the filler connection",
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .unwrap();
    let took = answered_504_after(
        addr,
        "connect_timeout = \"300ms\"\nhandshake_timeout = \"3s\"\n",
    )
    .await;
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2500),
        "answered after {took:?}; connect_timeout is 300ms"
    );
    drop(listener);
}

/// A backend's refusal is the client's answer (not a 502), so clients'
/// "log in again on 401" and "back off on 429" work through the gateway.
#[tokio::test]
async fn a_backend_refusing_the_upgrade_is_passed_on() {
    let addr = raw_http_server(
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"chat\", error=\"invalid_token\"\r\n\
          Content-Type: application/json\r\nContent-Length: 25\r\nX-Hop: 1\r\nConnection: X-Hop\r\n\r\n\
          {\"error\":\"token expired\"}",
    )
    .await;
    let gw = Gateway::builder()
        .to(&format!("ws://{addr}"))
        .admin("")
        .start()
        .await;
    let resp = http(gw.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 401, "{resp:?}");
    // Counted as the backend's refusal, not as the gateway's own 401.
    let (_, metrics) = crate::admin::admin(gw.admin.unwrap(), "GET", "/metrics", None).await;
    assert!(
        metrics.contains(r#"framegate_refusals_total{status="401",reason="upstream_refused"} 1"#),
        "{metrics}"
    );
    // ...and on the status page.
    let (_, status) = crate::admin::admin(gw.admin.unwrap(), "GET", "/status.json", None).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["refusals"]["total"], 1, "{status}");
    assert_eq!(
        resp.header("www-authenticate"),
        Some("Bearer realm=\"chat\", error=\"invalid_token\"")
    );
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.body_text(), "{\"error\":\"token expired\"}");
    assert!(!resp.has_header("x-hop"), "hop-by-hop headers stay behind");

    // A chunked 429 keeps its Retry-After and its body.
    let addr = raw_http_server(
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nslow \r\n4\r\ndown\r\n0\r\n\r\n",
    )
    .await;
    let gw = Gateway::to(&format!("ws://{addr}")).await;
    let resp = http(gw.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(resp.header("retry-after"), Some("7"));
    assert_eq!(resp.body_text(), "slow down");
}

/// A refusal whose body is too big to hold keeps its status and headers;
/// the body is replaced by the gateway's line.
#[tokio::test]
async fn a_refusal_body_over_64k_is_replaced() {
    let mut answer =
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: 70000\r\n\r\n"
            .to_vec();
    answer.extend(std::iter::repeat_n(b'x', 70_000));
    let addr = raw_http_server(answer.leak()).await;
    let gw = Gateway::to(&format!("ws://{addr}")).await;
    let resp = http(gw.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(!resp.has_header("content-type"), "{resp:?}");
    assert_eq!(
        resp.body_text(),
        "the upstream refused the upgrade; its answer's body is not passed on\n"
    );
}

#[tokio::test]
async fn upstream_with_a_wrong_accept_key_is_502() {
    let addr = raw_http_server(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    )
    .await;
    let gw = Gateway::to(&format!("ws://{addr}")).await;
    let resp = http(gw.addr, &upgrade_request("/", &[])).await;
    assert_refused(&resp, 502);
}

#[tokio::test]
async fn upstream_101_that_is_not_a_websocket_upgrade_is_502() {
    // RFC 6455 §4.1: the client (here the gateway) must fail the connection
    // when the 101 lacks `Upgrade: websocket` or `Connection: upgrade`.
    let mut statuses = Vec::new();
    for headers in [
        &[][..],
        &["Connection: Upgrade"][..],
        &["Upgrade: h2c", "Connection: Upgrade"][..],
        &["Upgrade: websocket"][..],
    ] {
        let addr = raw_ws_server(move |accept| switching_protocols(accept, headers), false).await;
        let gw = Gateway::to(&format!("ws://{addr}")).await;
        let resp = http(gw.addr, &upgrade_request("/", &[])).await;
        statuses.push((headers, resp.status));
    }
    assert!(
        statuses.iter().all(|(_, status)| *status == 502),
        "each must be 502: {statuses:?}"
    );
}

#[tokio::test]
async fn upstream_choosing_an_unoffered_subprotocol_is_502() {
    let b = Backend::builder().protocol("c").scripted().await;
    let gw = Gateway::to(&b.url()).await;
    let resp = http(
        gw.addr,
        &upgrade_request("/", &["Sec-WebSocket-Protocol: a, b"]),
    )
    .await;
    assert_refused(&resp, 502);
}

#[tokio::test]
async fn upstream_choosing_a_subprotocol_when_none_was_offered_is_502() {
    let b = Backend::builder().protocol("chat").scripted().await;
    let gw = Gateway::to(&b.url()).await;
    let resp = http(gw.addr, &upgrade_request("/", &[])).await;
    assert_refused(&resp, 502);
}

#[tokio::test]
async fn upstream_negotiating_an_extension_is_502() {
    let b = Backend::builder()
        .response_header("Sec-WebSocket-Extensions", "permessage-deflate")
        .scripted()
        .await;
    let gw = Gateway::to(&b.url()).await;
    let resp = http(gw.addr, &upgrade_request("/", &[])).await;
    assert_refused(&resp, 502);
}

#[tokio::test]
async fn an_unreachable_server_is_skipped_for_the_next() {
    let dead = closed_port().await;
    let url = Backend::echo().await.url();
    let gw = Gateway::builder()
        .route(Route::any("pool"))
        .upstream("pool", &[format!("ws://{dead}"), url])
        .start()
        .await;
    // Round-robin starts at a different server each time; both connections
    // must end up at the live one.
    for i in 0..2 {
        let mut c = connect(gw.addr, "/").await;
        c.send(Message::text(format!("n{i}"))).await.unwrap();
        assert_eq!(next_msg(&mut c).await, Message::text(format!("n{i}")));
    }
}

// --- Subprotocols and extensions ---------------------------------------------

#[tokio::test]
async fn subprotocol_chosen_upstream_reaches_the_client() {
    let mut b = Backend::builder().protocol("b").scripted().await;
    let gw = Gateway::to(&b.url()).await;
    let ws = raw_upgrade(gw.addr, "/", &["Sec-WebSocket-Protocol: a, b"]).await;
    assert_eq!(ws.response.header("sec-websocket-protocol"), Some("b"));
    let conn = b.accept().await;
    let offered: Vec<String> = conn
        .header("sec-websocket-protocol")
        .expect("protocols offered upstream")
        .split(',')
        .map(|p| p.trim().to_owned())
        .collect();
    assert_eq!(offered, ["a", "b"]);
}

#[tokio::test]
async fn no_subprotocol_upstream_means_none_for_the_client() {
    let mut b = Backend::scripted().await;
    let gw = Gateway::to(&b.url()).await;
    let ws = raw_upgrade(gw.addr, "/", &["Sec-WebSocket-Protocol: a, b"]).await;
    assert!(
        !ws.response.has_header("sec-websocket-protocol"),
        "{:?}",
        ws.response
    );
    b.accept().await;
}

#[tokio::test]
async fn extensions_are_never_negotiated() {
    let mut b = Backend::scripted().await;
    let gw = Gateway::to(&b.url()).await;
    let ws = raw_upgrade(
        gw.addr,
        "/",
        &["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"],
    )
    .await;
    assert!(
        !ws.response.has_header("sec-websocket-extensions"),
        "{:?}",
        ws.response
    );
    let conn = b.accept().await;
    assert_eq!(conn.header("sec-websocket-extensions"), None);
}

#[tokio::test]
async fn end_to_end_headers_of_the_upstream_101_reach_the_client() {
    let mut b = Backend::builder()
        .response_header("Set-Cookie", "session=42")
        .scripted()
        .await;
    let gw = Gateway::to(&b.url()).await;
    let ws = raw_upgrade(gw.addr, "/", &[]).await;
    assert_eq!(ws.response.header("set-cookie"), Some("session=42"));
    b.accept().await;
}
