//! The admin listener: metrics that move with sessions, refusals, pong
//! timeouts and drains; readiness through a drain; the token; runtime drain.

use std::net::SocketAddr;

use futures_util::SinkExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// One admin request over a fresh connection: `(status, body)`.
pub async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    admin_with(addr, method, path, &auth).await
}

/// [`admin`] with extra header lines (each ending in CRLF); `Host: admin`
/// unless they have a `Host`.
async fn admin_with(addr: SocketAddr, method: &str, path: &str, extra: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let host = if extra.contains("Host:") {
        ""
    } else {
        "Host: admin\r\n"
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\n{host}{extra}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |b| b.1).to_owned();
    (status, body)
}

/// The value of the sample `name{labels}` (labels as rendered), 0 if absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Scrapes until `series` reads `value`: for counts added when a session
/// ends, after the last event a test can await.
async fn until(gw: &Gateway, series: &str, value: f64) -> String {
    guard(series, async {
        loop {
            let m = metrics(gw).await;
            if sample(&m, series) == value {
                return m;
            }

            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
}

async fn metrics(gw: &Gateway) -> String {
    let (status, body) = admin(gw.admin.unwrap(), "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    body
}

#[tokio::test]
async fn metrics_move_as_sessions_open_close_and_are_refused() {
    let mut backend = Backend::scripted().await;
    let gw = Gateway::builder()
        .to(&backend.url())
        .admin("")
        .start()
        .await;
    let open = r#"framegate_sessions_open{route="/"}"#;
    assert_eq!(sample(&metrics(&gw).await, open), 0.0);

    let mut client = connect(gw.addr, "/").await;
    let mut conn = backend.accept().await;
    // Counted once the session runs, just after the client has its 101.
    until(&gw, open, 1.0).await;
    client.send(Message::text("hello")).await.unwrap();
    assert_eq!(conn.next().await, Message::text("hello"));
    client.close(None).await.unwrap();
    conn.expect_close().await;
    drop(conn);
    let m = until(
        &gw,
        r#"framegate_sessions_total{route="/",outcome="closed_by_client"}"#,
        1.0,
    )
    .await;
    assert_eq!(sample(&m, open), 0.0);
    assert_eq!(
        sample(
            &m,
            r#"framegate_sessions_total{route="/",outcome="closed_by_client"}"#
        ),
        1.0
    );
    assert!(sample(&m, r#"framegate_frames_total{direction="up"}"#) >= 1.0);
    assert!(sample(&m, r#"framegate_bytes_total{direction="up"}"#) >= 5.0);
    assert_eq!(
        sample(
            &m,
            r#"framegate_close_codes_total{side="client",code="none"}"#
        ) + sample(
            &m,
            r#"framegate_close_codes_total{side="client",code="1000"}"#
        ),
        1.0
    );
    assert_eq!(sample(&m, "framegate_upgrade_seconds_count"), 1.0);
    assert_eq!(sample(&m, "framegate_upstream_connect_seconds_count"), 1.0);
    assert_eq!(
        sample(&m, "framegate_upstream_handshake_seconds_count"),
        1.0
    );

    // A malformed request line: 400, refused by the gateway itself.
    let mut raw = TcpStream::connect(gw.addr).await.unwrap();
    raw.write_all(b"NOT A REQUEST\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    until(
        &gw,
        r#"framegate_refusals_total{status="400",reason="bad_request"}"#,
        1.0,
    )
    .await;
}

/// Frames and bytes of a session that stays open reach `/metrics` and
/// `/status.json` within about a second, not when it ends.
#[tokio::test]
async fn an_open_sessions_traffic_is_counted_while_it_runs() {
    let gw = Gateway::builder()
        .to(&Backend::echo().await.url())
        .admin("")
        .start()
        .await;
    let mut client = connect(gw.addr, "/").await;
    const N: usize = 20;
    for i in 0..N {
        let text = format!("message {i:02}");
        client.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(next_msg(&mut client).await, Message::text(text));
    }
    // The client holds the session open throughout. A publish may fall
    // between an up frame and its echo: both directions are awaited.
    until(&gw, r#"framegate_frames_total{direction="up"}"#, N as f64).await;
    let m = until(&gw, r#"framegate_frames_total{direction="down"}"#, N as f64).await;
    assert_eq!(
        sample(&m, r#"framegate_frames_total{direction="up"}"#),
        N as f64
    );
    assert_eq!(sample(&m, r#"framegate_sessions_open{route="/"}"#), 1.0);
    assert_eq!(
        sample(&m, r#"framegate_bytes_total{direction="up"}"#),
        200.0
    );
    assert_eq!(
        sample(&m, r#"framegate_bytes_total{direction="down"}"#),
        200.0
    );
    let (status, body) = admin(gw.admin.unwrap(), "GET", "/status.json", None).await;
    assert_eq!(status, 200);
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["sessions_open"], 1, "{s}");
    assert_eq!(
        (&s["frames"]["up_total"], &s["frames"]["down_total"]),
        (&N.into(), &N.into()),
        "{s}"
    );
    assert_eq!(
        (&s["bytes"]["up_total"], &s["bytes"]["down_total"]),
        (&200.into(), &200.into()),
        "{s}"
    );
    // Still open and relaying.
    client.send(Message::text("and on")).await.unwrap();
    assert_eq!(next_msg(&mut client).await, Message::text("and on"));
}

/// One status, several reasons: each refusal is labelled by what decided
/// it, in `/metrics`, on the status page and in the refusal's log line.
#[tokio::test]
async fn refusals_are_labelled_by_what_decided_them() {
    let up = Backend::echo().await;
    let refusing = raw_http_server(
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let auth = "[origin]\nallow = [\"https://app.example\"]\n\
                [auth]\nalgorithms = [\"HS256\"]\nsecret_file = \"hs.key\"\nleeway = \"0s\"\n\
                required_claims = [\"tenant\"]\n";
    let gw = Gateway::builder()
        .server("max_connections = 2")
        .route(route("/auth", "up").policy("auth"))
        .route(route("/ip", "up").policy("ip"))
        .route(route("/refusing", "refusing"))
        .upstream("up", &[up.url()])
        .upstream("refusing", &[format!("ws://{refusing}")])
        .policy("auth", auth)
        .policy("ip", "[limits]\nmax_connections_per_ip = 1\n")
        .file("hs.key", SECRET)
        .admin("")
        .start()
        .await;
    let at = gw.addr;
    let origin = ("origin", "https://app.example");
    let expired = sign(
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
        None,
        serde_json::json!({ "sub": "a", "tenant": "t", "exp": now() - 10 }),
    );
    let expired = format!("Bearer {expired}");
    let no_tenant = format!("Bearer {}", hs256("a"));
    let evil = ("origin", "https://evil.example");
    for (path, headers, status) in [
        // 401 three ways: no token, an expired one, the backend's own.
        ("/auth", vec![origin], 401),
        ("/auth", vec![origin, ("authorization", &expired)], 401),
        ("/refusing", vec![], 401),
        // 403 two ways: the Origin (missing, then not allowed), a claim.
        ("/auth", vec![], 403),
        ("/auth", vec![evil, ("authorization", &no_tenant)], 403),
        ("/auth", vec![origin, ("authorization", &no_tenant)], 403),
        ("/nowhere", vec![], 404),
    ] {
        let r = refused(at, "127.0.0.1", path, &headers).await;
        assert_eq!(r.status.as_u16(), status, "{path} {headers:?}: {}", r.body);
    }
    // Over the per-address limit (429), then the gateway's (503).
    let _a = accepted(at, "127.0.0.1", "/ip", &[]).await;
    assert_eq!(refused(at, "127.0.0.1", "/ip", &[]).await.status, 429);
    let _b = accepted(at, "127.0.0.2", "/ip", &[]).await;
    assert_eq!(refused(at, "127.0.0.3", "/ip", &[]).await.status, 503);

    // Counted before the answer is written: no wait needed.
    let m = metrics(&gw).await;
    for (series, n) in [
        (r#"status="401",reason="token_missing""#, 1.0),
        (r#"status="401",reason="token_expired""#, 1.0),
        (r#"status="401",reason="upstream_refused""#, 1.0),
        (r#"status="403",reason="forbidden_origin""#, 2.0),
        (r#"status="403",reason="forbidden_claims""#, 1.0),
        (r#"status="429",reason="limit_ip""#, 1.0),
        (r#"status="503",reason="limit_global""#, 1.0),
        (r#"status="404",reason="no_route""#, 1.0),
    ] {
        let series = format!("framegate_refusals_total{{{series}}}");
        assert_eq!(sample(&m, &series), n, "{series}\n{m}");
    }
    assert_eq!(
        m.lines()
            .filter(|l| l.starts_with("framegate_refusals_total{"))
            .count(),
        8,
        "{m}"
    );
    let (_, body) = admin(gw.admin.unwrap(), "GET", "/status.json", None).await;
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["refusals"]["total"], 9, "{s}");
    let keys: Vec<&str> = s["refusals"]["by_reason"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    for key in [
        "401 token_expired",
        "403 forbidden_origin",
        "503 limit_global",
    ] {
        assert!(keys.contains(&key), "{key}: {keys:?}");
    }
}

#[tokio::test]
async fn a_pong_timeout_is_counted() {
    let mut backend = Backend::scripted().await;
    let gw = Gateway::builder()
        .with_policy_to(
            "[client]\nping_interval = \"100ms\"\npong_timeout = \"100ms\"\n[session]\nclose_timeout = \"100ms\"\n",
            &backend.url(),
        )
        .admin("")
        .start()
        .await;
    // A raw client that never reads: it answers no ping.
    let _ws = raw_upgrade(gw.addr, "/", &[]).await;
    let _conn = backend.accept().await;
    let m = until(
        &gw,
        r#"framegate_sessions_total{route="/",outcome="unresponsive"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        sample(&m, r#"framegate_pong_timeouts_total{side="client"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"framegate_sessions_total{route="/",outcome="unresponsive"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn the_token_is_required_when_configured() {
    std::env::set_var("FRAMEGATE_TEST_ADMIN_TOKEN", "s3cret");
    let backend = Backend::echo().await;
    let gw = Gateway::builder()
        .to(&backend.url())
        .admin("token_env = \"FRAMEGATE_TEST_ADMIN_TOKEN\"")
        .start()
        .await;
    let at = gw.admin.unwrap();
    assert_eq!(admin(at, "GET", "/metrics", None).await.0, 401);
    assert_eq!(admin(at, "GET", "/metrics", Some("wrong")).await.0, 401);
    assert_eq!(admin(at, "GET", "/status.json", None).await.0, 401);
    assert_eq!(admin(at, "GET", "/metrics", Some("s3cret")).await.0, 200);
    assert_eq!(
        admin(at, "GET", "/status.json", Some("s3cret")).await.0,
        200
    );
    // Probes stay open: they tell nothing but alive and ready.
    assert_eq!(admin(at, "GET", "/healthz", None).await.0, 200);
    assert_eq!(admin(at, "GET", "/readyz", None).await.0, 200);
    // A rotated token needs a restart: the reload says so, and is refused
    // whole, rather than reporting success while the old token still works.
    std::env::set_var("FRAMEGATE_TEST_ADMIN_TOKEN", "rotated");
    let config = framegate::config::Config::load(&gw.dir.path().join("framegate.toml")).unwrap();
    let refused = gw.handle().reload(config).await.unwrap_err();
    assert!(refused.to_string().contains("[admin] changed"), "{refused}");
}

#[tokio::test]
async fn readyz_turns_503_when_the_drain_begins_while_healthz_stays() {
    let mut backend = Backend::scripted().await;
    let mut gw = Gateway::builder()
        .server("drain_timeout = \"30s\"\ndrain_spread = \"off\"")
        .to(&backend.url())
        .admin("")
        .start()
        .await;
    let at = gw.admin.unwrap();
    assert_eq!(
        admin(at, "GET", "/readyz", None).await,
        (200, "ready\n".into())
    );
    // A session whose client never answers the close keeps the drain going.
    let _ws = raw_upgrade(gw.addr, "/", &[]).await;
    let _conn = backend.accept().await;
    // Tracked by the drain once it runs, just after the client's 101.
    until(&gw, r#"framegate_sessions_open{route="/"}"#, 1.0).await;
    let _done = gw.stop();
    // The flag flips as the stop is heard, before the listeners close.
    guard("readyz 503", async {
        while admin(at, "GET", "/readyz", None).await.0 != 503 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(
        admin(at, "GET", "/readyz", None).await,
        (503, "draining\n".into())
    );
    assert_eq!(admin(at, "GET", "/healthz", None).await.0, 200);
    // The sessions' drain starts just after readiness drops.
    let m = until(&gw, "framegate_draining", 1.0).await;
    assert_eq!(sample(&m, "framegate_drain_sessions_remaining"), 1.0);
}

#[tokio::test]
async fn a_server_drained_through_admin_moves_its_sessions_and_undrains() {
    let backend = Backend::named("a").await;
    // The window off: the drain closes the session at once rather than at
    // a random moment within the default 30 s.
    let gw = Gateway::builder()
        .route(route("/", "backend").policy("default"))
        .upstream_with("backend", &[backend.url()], "drain_window = \"off\"")
        .admin("")
        .start()
        .await;
    let at = gw.admin.unwrap();
    let mut client = connect(gw.addr, "/").await;
    assert_eq!(
        next_msg(&mut client).await.into_text().unwrap().as_str(),
        "a /"
    );

    let (_, status) = admin(at, "GET", "/status.json", None).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let server = &status["servers"][0];
    assert_eq!(server["sessions"], 1);
    assert_eq!(server["draining"], false);
    let (group, label) = (
        server["upstream"].as_str().unwrap(),
        server["server"].as_str().unwrap(),
    );
    let opened = format!(
        "framegate_upstream_server_sessions_opened_total{{upstream=\"{group}\",server=\"{label}\"}}"
    );
    assert_eq!(sample(&metrics(&gw).await, &opened), 1.0);
    let path = |action: &str| {
        let label: String = url::form_urlencoded::byte_serialize(label.as_bytes()).collect();
        format!("/upstreams/{group}/servers/{label}/{action}")
    };
    assert_eq!(
        admin(at, "POST", "/upstreams/nope/servers/x/drain", None)
            .await
            .0,
        404
    );
    // A page of another origin cannot drain it (no token is set here);
    // the same origin can.
    let evil = admin_with(
        at,
        "POST",
        &path("drain"),
        "Origin: http://evil.example\r\n",
    )
    .await;
    assert_eq!(evil, (403, "cross-site request refused\n".into()));
    let (_, after) = admin(at, "GET", "/status.json", None).await;
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_eq!(after["servers"][0]["draining"], false, "{after}");
    // A page of a name rebound to the admin address (DNS rebinding): its
    // `Origin` and `Host` agree, but with no token a browser must ask by
    // address.
    let rebound = admin_with(at, "POST", &path("drain"), "Origin: http://admin\r\n").await;
    assert_eq!(rebound, (403, "cross-site request refused\n".into()));
    let own = admin_with(
        at,
        "POST",
        &path("drain"),
        &format!("Host: {at}\r\nOrigin: http://{at}\r\n"),
    )
    .await;
    assert_eq!(own.0, 200);
    assert_eq!(close_code(&mut client).await.0, 1012);
    // The session's end is counted with the code its client was sent.
    drop(client);
    until(
        &gw,
        r#"framegate_close_codes_total{side="gateway",code="1012"}"#,
        1.0,
    )
    .await;
    let m = metrics(&gw).await;
    let series =
        format!("framegate_upstream_server_draining{{upstream=\"{group}\",server=\"{label}\"}}");
    assert_eq!(sample(&m, &series), 1.0, "{m}");
    // Drained, the only server takes no session.
    assert_eq!(refused(gw.addr, "127.0.0.1", "/", &[]).await.status, 503);

    assert_eq!(admin(at, "POST", &path("undrain"), None).await.0, 200);
    assert_eq!(sample(&metrics(&gw).await, &series), 0.0);
    let _again = connect(gw.addr, "/").await;
}

#[tokio::test]
async fn an_admin_addr_equal_to_a_listener_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[
            (
                "framegate.toml",
                "[[listener]]\naddr = \"127.0.0.1:8080\"\n[[route]]\npath = \"/\"\nupstream = \"u\"\n\
                 [upstream.u]\nservers = [\"ws://127.0.0.1:9\"]\n[admin]\naddr = \"127.0.0.1:8080\"\n",
            ),
            ("policies/default.toml", ""),
        ],
    );
    let e = framegate::config::Config::load(&dir.path().join("framegate.toml")).unwrap_err();
    assert!(
        e.to_string()
            .contains("admin addr 127.0.0.1:8080 is a [[listener]]'s"),
        "{e}"
    );
}

/// `framegate drain|undrain --admin ADDR [--token-env VAR] GROUP SERVER`:
/// `(exit 0, stdout, stderr)`.
async fn drain_cli(action: &str, at: SocketAddr, extra: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_framegate"))
        .arg(action)
        .arg("--admin")
        .arg(at.to_string())
        .args(extra)
        .env("FRAMEGATE_TEST_CLI_TOKEN", "cli-s3cret")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_drain_and_undrain_commands_move_sessions_through_the_admin_listener() {
    std::env::set_var("FRAMEGATE_TEST_CLI_TOKEN", "cli-s3cret");
    let backend = Backend::named("a").await;
    let gw = Gateway::builder()
        .route(route("/", "backend").policy("default"))
        .upstream_with("backend", &[backend.url()], "drain_window = \"off\"")
        .admin("token_env = \"FRAMEGATE_TEST_CLI_TOKEN\"")
        .start()
        .await;
    let at = gw.admin.unwrap();
    let label = backend.url();
    let mut client = connect(gw.addr, "/").await;
    assert_eq!(
        next_msg(&mut client).await.into_text().unwrap().as_str(),
        "a /"
    );

    // Without the token: refused, and nothing drains.
    let (ok, _, err) = drain_cli("drain", at, &["backend", &label]).await;
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, _, err) = drain_cli(
        "drain",
        at,
        &["--token-env", "FRAMEGATE_TEST_CLI_TOKEN", "nope", &label],
    )
    .await;
    assert!(!ok && err.contains("404"), "{err}");

    let token = ["--token-env", "FRAMEGATE_TEST_CLI_TOKEN"];
    let (ok, out, err) = drain_cli("drain", at, &[&token[..], &["backend", &label]].concat()).await;
    assert!(ok, "{err}");
    assert_eq!(out, format!("draining backend {label}\n"));
    assert_eq!(close_code(&mut client).await.0, 1012);
    assert_eq!(refused(gw.addr, "127.0.0.1", "/", &[]).await.status, 503);

    let (ok, out, err) =
        drain_cli("undrain", at, &[&token[..], &["backend", &label]].concat()).await;
    assert!(ok, "{err}");
    assert_eq!(out, format!("undrained backend {label}\n"));
    let _again = connect(gw.addr, "/").await;
}

#[tokio::test]
async fn the_drain_command_says_when_the_address_is_no_admin_listener() {
    // Something else listens there: it answers, but not in HTTP.
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = other.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = other.accept().await.unwrap();
        // The whole request first, so that the client's write never meets a
        // closed socket.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(s.read_u8().await.unwrap());
        }
        s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
    });
    let (ok, _, err) = drain_cli("drain", at, &["g", "s"]).await;
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "the admin listener at {at} did not answer in HTTP"
        )),
        "{err}"
    );
}

/// The real binary: SIGTERM turns `/readyz` to 503 while the drain holds
/// the process (a session is still open), and `/healthz` stays 200.
#[tokio::test]
async fn sigterm_turns_the_binarys_readyz_503_while_it_drains() {
    let backend = Backend::echo().await;
    let dir = tempfile::tempdir().unwrap();
    Gateway::builder()
        .to(&backend.url())
        .server("drain_spread = \"60s\"\ndrain_timeout = \"60s\"")
        .admin("")
        .write(dir.path());
    let mut gw = Binary::start(&dir.path().join("framegate.toml"), &[]).await;
    let line = gw.wait_for("admin listening").await;
    let at = addr_in(&line);
    guard("ready", async {
        while admin(at, "GET", "/readyz", None).await.0 != 200 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    // A session the drain must wait for (its close comes within the 60 s spread).
    let _session = connect(gw.addr, "/").await;
    gw.signal("TERM");
    gw.wait_for("the drain begins").await;
    assert_eq!(admin(at, "GET", "/readyz", None).await.0, 503);
    assert_eq!(admin(at, "GET", "/healthz", None).await.0, 200);
}

/// The admin listener serves a bounded number of connections: one past
/// the cap is closed at once, and those within it are still answered.
#[tokio::test]
async fn admin_connections_are_capped() {
    let gw = Gateway::builder()
        .to(&Backend::echo().await.url())
        .admin("")
        .start()
        .await;
    let at = gw.admin.unwrap();
    let mut held = Vec::new();
    for _ in 0..framegate::MAX_ADMIN_CONNECTIONS {
        held.push(TcpStream::connect(at).await.unwrap());
    }
    // Accepted after the held ones (the backlog is first in, first out).
    let mut over = TcpStream::connect(at).await.unwrap();
    let mut buf = [0u8; 16];
    let n = guard(
        "the connection over the cap to be closed",
        over.read(&mut buf),
    )
    .await
    .unwrap_or(0);
    assert_eq!(n, 0, "over the cap: closed without an answer");
    let first = &mut held[0];
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    guard(
        "the held connection's answer",
        first.read_to_end(&mut answer),
    )
    .await
    .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}
