//! The request path under attack: every request is routed, admitted and
//! forwarded by one normalised target and one validated Host, and nothing a
//! client writes can pass for what the gateway says. Each test sends the
//! attack to a real gateway with real backends on loopback.

use crate::support::*;
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// A policy that requires an HS256 token in `Authorization`.
const AUTH_POLICY: &str = "[auth]\nalgorithms = [\"HS256\"]\nsecret_file = \"hs.key\"\n";

/// The path a backend resolves `path` to, the way Node's
/// `new URL(req.url, base)` does (the WHATWG URL parser, which treats
/// `%2e%2e` as `..`).
fn resolved(path: &str) -> String {
    let base = url::Url::parse("http://backend.test/").unwrap();
    base.join(path).unwrap().path().to_owned()
}

/// The status a raw request gets on a fresh connection.
async fn status(gw: &Gateway, request: &str) -> u16 {
    http(gw.addr, request).await.status
}

#[tokio::test]
async fn dot_segments_never_reach_a_protected_route_without_its_token() {
    let b = Backend::echo().await;
    let gw = Gateway::builder()
        .route(route("/", "b"))
        .route(route("/admin/", "b").policy("auth"))
        .upstream("b", &[b.url()])
        .policy("auth", AUTH_POLICY)
        .file("hs.key", SECRET)
        .start()
        .await;
    for path in [
        "/admin/",
        "/admin",
        "/x/../admin/",
        "/./admin/",
        "/%2e%2e/admin/",
        "/.%2e/admin/",
        "/x/%2E%2E/admin/",
        "/x/.%2e/admin",
        "//admin/",
        "/x//..//admin/",
        "/%61dmin/",
        "/..;/admin/",
        "/x/..;/admin/",
        "/%2fadmin/",
        "/x%2f..%2fadmin/",
        "/x\\..\\admin/",
    ] {
        let got = status(&gw, &upgrade_request(path, &[])).await;
        assert!(
            got == 401 || got == 400,
            "{path}: got {got}, expected 401 or 400"
        );
    }
    // With the token, the same trick reaches the protected route, and the
    // backend is asked for the path the gateway routed by.
    let bearer = format!("Authorization: Bearer {}", hs256("alice"));
    let mut ws = raw_upgrade(gw.addr, "/x/%2e%2e/admin/", &[&bearer]).await;
    ws.send(&client_frame(true, OP_TEXT, b"hi")).await;
    assert_eq!(ws.read_message().await.1, b"hi");
    let seen: Vec<String> = b.requests().iter().map(|r| resolved(&r.path)).collect();
    assert_eq!(
        seen,
        ["/admin/"],
        "only the authorised upgrade reached the backend"
    );
}

#[tokio::test]
async fn a_rewrite_never_leaves_its_target() {
    let backends = fleet(&["root", "rw", "rwnoslash", "noslash"]).await;
    let gw = Gateway::builder()
        .route(route("/", "root"))
        .route(route("/services/rw/", "rw").rewrite("/v2/"))
        .route(route("/rwnoslash", "rwnoslash").rewrite("/v3"))
        .route(route("/noslash", "noslash").strip_prefix())
        .upstream_each(&backends)
        .start()
        .await;
    let reached = |path: &'static str| {
        let addr = gw.addr;
        async move {
            let mut ws = raw_upgrade(addr, path, &[]).await;
            String::from_utf8(ws.read_message().await.1).unwrap()
        }
    };
    assert_eq!(
        reached("/services/rw/../secret").await,
        "root /services/secret"
    );
    assert_eq!(reached("/services/rw/a/../chat").await, "rw /v2/chat");
    assert_eq!(reached("/noslash../secret").await, "root /noslash../secret");
    assert_eq!(reached("/noslash/chat").await, "noslash /chat");
    assert_eq!(reached("/rwnoslash/x").await, "rwnoslash /v3/x");
    assert_eq!(
        status(&gw, &upgrade_request("/rwnoslash/../../secret", &[])).await,
        400
    );
    assert_eq!(
        status(&gw, &upgrade_request("/services/rw/../../../secret", &[])).await,
        400
    );
}

/// A gateway with a protected host, a wildcard, a host with one path of
/// its own, and a host-agnostic route; backends name themselves.
async fn hosts_gateway() -> Gateway {
    let backends = fleet(&["open", "secure", "wild", "api"]).await;
    Gateway::builder()
        .route(route("/", "open"))
        .route(
            Route::any("secure")
                .host("secure.example.com")
                .policy("auth"),
        )
        .route(Route::any("wild").host("*.example.com"))
        .route(route("/v1/", "api").host("api.example.org"))
        .upstream_each(&backends)
        .policy("auth", AUTH_POLICY)
        .file("hs.key", SECRET)
        .start()
        .await
}

#[tokio::test]
async fn host_spellings_cannot_skip_a_hosts_routes() {
    let gw = hosts_gateway().await;
    for host in [
        "secure.example.com",
        "secure.example.com.",
        "secure.example.com.:80",
        "SECURE.Example.COM",
        "secure.example.com:80",
    ] {
        let got = status(&gw, &upgrade_request_to(host, "/", &[])).await;
        assert_eq!(got, 401, "Host: {host}");
    }
    // A host with routes of its own never falls through to the others.
    assert_eq!(
        status(&gw, &upgrade_request_to("api.example.org", "/other", &[])).await,
        404
    );
    let mut ws = raw_upgrade_to(gw.addr, "api.example.org", "/v1/x", &[]).await;
    assert_eq!(ws.read_message().await.1, b"api /v1/x");
}

#[tokio::test]
async fn a_host_must_be_one_valid_host() {
    let gw = hosts_gateway().await;
    for host in [
        "evil.test/.example.com",
        "evil.test?.example.com",
        "evil.test#.example.com",
        "evil.test .example.com",
        "evil@x.example.com",
        "a.example.com, b.example.com",
        "",
        "x.example.com:",
        "[::1",
    ] {
        let got = status(&gw, &upgrade_request_to(host, "/", &[])).await;
        assert_eq!(got, 400, "Host: {host:?}");
    }
    let no_host = "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let resp = http(gw.addr, no_host).await;
    assert_eq!(resp.status, 400);
    resp.assert_one_line_body();
    let two = upgrade_request_to("open.test", "/", &["Host: secure.example.com"]);
    assert_eq!(status(&gw, &two).await, 400);
    // An absolute-form target's authority must agree with Host…
    let disagree = upgrade_request_to("open.test", "ws://secure.example.com/", &[]);
    assert_eq!(status(&gw, &disagree).await, 400);
    // …and when it does, it is what routes.
    let agree = upgrade_request_to("x.example.com", "ws://X.example.com:80/chat", &[]);
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(agree.as_bytes()).await.unwrap();
    let (resp, _) = read_response(&mut tcp).await;
    assert_eq!(resp.status, 101);
}

#[tokio::test]
async fn the_backend_gets_the_validated_host() {
    let mut b = Backend::scripted().await;
    let gw = Gateway::to(&b.url()).await;
    let _ws = raw_upgrade_to(gw.addr, "Chat.Example.COM.:80", "/", &[]).await;
    let conn = b.accept().await;
    assert_eq!(conn.header("host"), Some("chat.example.com"));
    assert_eq!(conn.header("x-forwarded-host"), Some("chat.example.com"));
}

#[tokio::test]
async fn headers_a_client_could_pass_off_as_the_gateways_stay_behind() {
    let mut b = Backend::scripted().await;
    let gw = Gateway::to(&b.url()).await;
    let spoofs = [
        "X_Auth_Subject: admin",
        "X-Auth_Subject: admin",
        "X_Forwarded_For: 6.6.6.6",
        "X_Real_IP: 6.6.6.6",
        "Forwarded: for=6.6.6.6;proto=https",
        "X-Client-IP: 6.6.6.6",
        "True-Client-IP: 6.6.6.6",
        "CF-Connecting-IP: 6.6.6.6",
        "Fastly-Client-IP: 6.6.6.6",
        "X-Cluster-Client-IP: 6.6.6.6",
        "X-Original-URL: /admin/",
        "X-Forwarded-For: 6.6.6.6",
        "X-App: kept",
    ];
    let _ws = raw_upgrade(gw.addr, "/", &spoofs).await;
    let conn = b.accept().await;
    let mut names: Vec<&str> = conn.request.headers.keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    for name in &names {
        assert!(!name.contains('_'), "{name} reached the backend");
    }
    for gone in [
        "forwarded",
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "x-original-url",
    ] {
        assert!(
            conn.header(gone).is_none(),
            "{gone} reached the backend: {names:?}"
        );
    }
    assert_eq!(conn.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(conn.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(conn.header("x-app"), Some("kept"));
}

#[tokio::test]
async fn underscores_in_headers_can_be_allowed() {
    let mut b = Backend::scripted().await;
    let gw = Gateway::builder()
        .server("underscores_in_headers = true")
        .to(&b.url())
        .start()
        .await;
    let _ws = raw_upgrade(gw.addr, "/", &["X_Legacy: 1"]).await;
    assert_eq!(b.accept().await.header("x_legacy"), Some("1"));
}

#[tokio::test]
async fn ambiguous_framing_and_repeated_handshake_headers_are_400() {
    let url = Backend::echo().await.url();
    let gw = Gateway::to(&url).await;
    for extra in [
        &["Content-Length: 0", "Content-Length: 5"][..],
        &["Content-Length: 0, 5"],
        &["Content-Length: 0", "Transfer-Encoding: chunked"],
        &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="],
        &["Sec-WebSocket-Version: 13"],
    ] {
        let resp = http(gw.addr, &upgrade_request("/", extra)).await;
        assert_eq!(resp.status, 400, "{extra:?}");
        resp.assert_one_line_body();
    }
    // The same Content-Length twice is one length (RFC 9110 §8.6).
    let same = upgrade_request("/", &["Content-Length: 0", "Content-Length: 0"]);
    assert_eq!(status(&gw, &same).await, 101);
}

#[tokio::test]
async fn client_bytes_reach_log_lines_escaped() {
    let mut gw = Gateway::builder()
        .route(route("/only/", "echo"))
        .builtin_echo("echo")
        .binary(&["--workers", "1"])
        .await;
    let hostile = "/\u{202e}txt.exe\u{2028}x\u{9b}y";
    let refused = upgrade_request(hostile, &[]);
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(refused.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut tcp).await.0.status, 404);
    let line = gw.wait_for("upgrade refused").await;
    assert!(
        !line.contains(['\u{202e}', '\u{2028}', '\u{9b}']),
        "raw control or bidi character in {line:?}"
    );
    assert!(line.contains("%E2%80%AEtxt.exe%E2%80%A8x%C2%9By"), "{line}");
}
