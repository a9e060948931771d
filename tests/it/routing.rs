//! Choosing the route (host, then longest path prefix) and rewriting the
//! path sent upstream.

use crate::support::*;

/// Backends that each greet with their name and the path they got.
async fn gateway() -> Gateway {
    let backends = fleet(&["root", "api", "v2", "special", "wild", "exact"]).await;
    Gateway::builder()
        .route(route("/", "root"))
        .route(route("/api/v2/", "v2"))
        .route(route("/api/", "api"))
        .route(Route::any("special").host("special.test"))
        .route(Route::any("wild").host("*.wild.test"))
        .route(route("/api/", "exact").host("exact.wild.test"))
        .upstream_each(&backends)
        .start()
        .await
}

/// Which backend a request reached, and the path it saw.
async fn reached(gw: &Gateway, host: &str, path: &str) -> String {
    let mut ws = raw_upgrade_to(gw.addr, host, path, &[]).await;
    let (opcode, hello) = ws.read_message().await;
    assert_eq!(opcode, OP_TEXT);
    String::from_utf8(hello).unwrap()
}

#[tokio::test]
async fn longest_prefix_wins() {
    let gw = gateway().await;
    for (path, expect) in [
        ("/", "root /"),
        ("/chat", "root /chat"),
        // `/api/` also takes `/api`, so the bare name gets its policy.
        ("/api", "api /api"),
        ("/apix", "root /apix"),
        ("/api/", "api /api/"),
        ("/api/x?q=1", "api /api/x?q=1"),
        ("/api/v2", "v2 /api/v2"),
        ("/api/v2x", "api /api/v2x"),
        ("/api/v2/x", "v2 /api/v2/x"),
    ] {
        assert_eq!(reached(&gw, "any.test", path).await, expect, "{path}");
    }
}

#[tokio::test]
async fn host_specific_route_wins() {
    let gw = gateway().await;
    for (host, path, expect) in [
        // Exact host beats a longer path on a route for any host.
        ("special.test", "/api/v2/x", "special /api/v2/x"),
        // Case and port do not matter.
        ("SPECIAL.Test:8443", "/x", "special /x"),
        ("other.test", "/api/x", "api /api/x"),
        // Wildcards match subdomains only.
        ("a.wild.test", "/api/v2/x", "wild /api/v2/x"),
        ("a.b.wild.test", "/", "wild /"),
        ("wild.test", "/", "root /"),
        ("exact.wild.test", "/api/x", "exact /api/x"),
    ] {
        assert_eq!(reached(&gw, host, path).await, expect, "{host}{path}");
    }
    // A host picks its routes like nginx's server_name: exact.wild.test has
    // routes of its own, so a path none of them matches is 404, never the
    // wildcard's or the host-agnostic route.
    let resp = http(
        gw.addr,
        &upgrade_request_to("exact.wild.test", "/other", &[]),
    )
    .await;
    assert_eq!(resp.status, 404);
}

#[tokio::test]
async fn a_host_with_no_route_is_404() {
    let url = Backend::echo().await.url();
    let gw = Gateway::builder()
        .route(Route::any("b").host("only.test"))
        .upstream("b", &[url])
        .start()
        .await;
    let resp = http(gw.addr, &upgrade_request_to("other.test", "/", &[])).await;
    assert_eq!(resp.status, 404);
    resp.assert_one_line_body();
    raw_upgrade_to(gw.addr, "only.test", "/", &[]).await;
}

#[tokio::test]
async fn strip_prefix_and_rewrite() {
    let backends = fleet(&["strip", "rewrite", "keep"]).await;
    let gw = Gateway::builder()
        .route(route("/svc/", "strip").strip_prefix())
        .route(route("/old/", "rewrite").rewrite("/v2/"))
        .route(route("/", "keep"))
        .upstream_each(&backends)
        .start()
        .await;
    for (path, expect) in [
        ("/svc/chat?room=1", "strip /chat?room=1"),
        ("/svc/", "strip /"),
        ("/svc/a/b/?x=%20y&z", "strip /a/b/?x=%20y&z"),
        ("/old/chat?room=1", "rewrite /v2/chat?room=1"),
        ("/old/", "rewrite /v2/"),
        ("/keep/me?q", "keep /keep/me?q"),
    ] {
        assert_eq!(reached(&gw, "any.test", path).await, expect, "{path}");
    }
}

#[tokio::test]
async fn servers_of_an_upstream_take_turns() {
    let pool = fleet(&["one", "two"]).await;
    let gw = Gateway::builder()
        .route(Route::any("pool"))
        .upstream("pool", &pool.urls())
        .start()
        .await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(reached(&gw, "any.test", "/").await);
    }
    assert_eq!(seen, ["one /", "two /", "one /", "two /"]);
}

#[tokio::test]
async fn each_route_applies_its_own_policy() {
    let url = Backend::echo().await.url();
    let gw = Gateway::builder()
        .route(route("/tight/", "b").policy("tight"))
        .route(route("/", "b"))
        .upstream("b", &[url])
        .policy(
            "tight",
            "[client]\nmax_frame_size = 100\nmax_message_size = 100\n",
        )
        .start()
        .await;
    let message = client_frame(true, OP_BINARY, &[0u8; 101]);
    let mut relaxed = raw_upgrade(gw.addr, "/x", &[]).await;
    relaxed.send(&message).await;
    assert_eq!(relaxed.read_message().await, (OP_BINARY, vec![0u8; 101]));
    let mut tight = raw_upgrade(gw.addr, "/tight/x", &[]).await;
    tight.send(&message).await;
    assert_eq!(tight.expect_close().await.0, 1009);
}

/// Listeners `a` and `b`, each with a route `/` of its own; `/admin/` on `a`
/// only; `/shared/` on both (bound to none).
fn two_ports() -> GatewayBuilder {
    Gateway::builder()
        .named_listener("a", "")
        .named_listener("b", "")
        .route(route("/", "A").listeners(&["a"]))
        .route(route("/", "B").listeners(&["b"]))
        .route(route("/admin/", "admin").listeners(&["a"]))
        .route(route("/shared/", "shared"))
}

/// The greeting a WebSocket client at `ws://addr{path}` gets.
async fn greeting(addr: std::net::SocketAddr, path: &str) -> String {
    let mut ws = connect(addr, path).await;
    next_msg(&mut ws).await.into_text().unwrap().to_string()
}

#[tokio::test]
async fn each_listener_serves_the_routes_bound_to_it() {
    let backends = fleet(&["A", "B", "admin", "shared"]).await;
    let gw = two_ports().upstream_each(&backends).start().await;
    let [a, b] = gw.addrs[..] else {
        panic!("two listeners: {:?}", gw.addrs)
    };
    assert_eq!(greeting(a, "/x").await, "A /x");
    assert_eq!(greeting(b, "/x").await, "B /x");
    assert_eq!(greeting(a, "/admin/x").await, "admin /admin/x");
    // b has no /admin/: its own `/` takes the request.
    assert_eq!(greeting(b, "/admin/x").await, "B /admin/x");
    assert_eq!(greeting(a, "/shared/x").await, "shared /shared/x");
    assert_eq!(greeting(b, "/shared/x").await, "shared /shared/x");
}

#[tokio::test]
async fn a_route_bound_to_another_listener_is_404() {
    let url = Backend::named("A").await.url();
    let gw = Gateway::builder()
        .named_listener("a", "")
        .named_listener("b", "")
        .route(route("/", "A").listeners(&["a"]))
        .upstream("A", &[url])
        .start()
        .await;
    assert_eq!(greeting(gw.addrs[0], "/x").await, "A /x");
    let resp = http(gw.addrs[1], &upgrade_request("/x", &[])).await;
    assert_eq!(resp.status, 404);
}

#[tokio::test]
async fn one_path_on_two_listeners_is_two_routes_to_admission() {
    let url = Backend::echo().await.url();
    let gw = Gateway::builder()
        .named_listener("a", "")
        .named_listener("b", "")
        .route(route("/", "up").listeners(&["a"]).policy("one"))
        .route(route("/", "up").listeners(&["b"]).policy("one"))
        .upstream("up", &[url])
        .policy("one", "[limits]\nmax_connections = 1\n")
        .start()
        .await;
    let [a, b] = gw.addrs[..] else {
        panic!("two listeners: {:?}", gw.addrs)
    };
    let _on_a = connect(a, "/").await;
    // Counted apart: a's session does not fill b's route.
    let _on_b = connect(b, "/").await;
    let r = refused(a, "127.0.0.1", "/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(gw.stats().open, 2);
}

#[tokio::test]
async fn a_reload_rebinds_routes() {
    let backends = fleet(&["A", "B", "admin", "shared"]).await;
    let gw = two_ports().upstream_each(&backends).start().await;
    let [a, b] = gw.addrs[..] else {
        panic!("two listeners: {:?}", gw.addrs)
    };
    assert_eq!(greeting(a, "/x").await, "A /x");
    let swapped = Gateway::builder()
        .named_listener("a", "")
        .named_listener("b", "")
        .route(route("/", "B").listeners(&["a"]))
        .route(route("/", "A").listeners(&["b"]))
        .upstream_each(&backends)
        .toml();
    write_file(gw.dir.path(), "framegate.toml", swapped);
    gw.reload().await;
    assert_eq!(greeting(a, "/x").await, "B /x");
    assert_eq!(greeting(b, "/x").await, "A /x");
}
