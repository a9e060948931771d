//! `sticky_cookie`: the gateway sets a cookie naming the server that took a
//! client and follows it afterwards, on upgrades and plain requests alike;
//! gateways with the same servers agree on it; a cookie whose server is
//! down, draining or refusing fails over and is replaced; the cookie never
//! reaches a backend, whose own cookies pass; hostile values fall back to
//! the balance.

use std::collections::BTreeMap;

use futures_util::SinkExt;
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// A gateway with one route, `/`, to `app` over `urls`, which sets the
/// cookie `fg_srv`, with extra upstream `lines`.
async fn gateway(urls: &[String], lines: &str) -> Gateway {
    Gateway::builder()
        .route(route("/", "app"))
        .upstream_with("app", urls, &format!("sticky_cookie = \"fg_srv\"\n{lines}"))
        .start()
        .await
}

/// The gateway's `Set-Cookie` among these, whole; panics if it is there twice.
fn ours<'a>(set_cookies: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut found = set_cookies.into_iter().filter(|c| c.starts_with("fg_srv="));
    let first = found.next().map(str::to_owned);
    assert!(found.next().is_none(), "the cookie set twice");
    first
}

/// `fg_srv=VALUE` of a `Set-Cookie` line: what the client sends back.
fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

/// The documented value for a server: the xxh3 of its label (for a server
/// written as an IP, its URL), as 16 hex digits.
fn id(url: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(url.as_bytes()))
}

/// Which backend an upgrade from 127.0.0.1 with these extra headers
/// reached (its greeting), and the gateway's `Set-Cookie` on the 101.
async fn reach(
    gw_addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
) -> (String, Option<String>) {
    let (mut ws, resp) = match upgrade(gw_addr, "127.0.0.1", "/", headers).await {
        Ok(ok) => ok,
        Err(r) => panic!("expected 101, got {} {}", r.status, r.body),
    };
    let hello = next_msg(&mut ws).await.into_text().unwrap();
    let _ = ws.close(None).await;
    let set = ours(
        resp.headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap()),
    );
    (hello.split(' ').next().unwrap().to_owned(), set)
}

/// [`reach`] carrying `cookie` (a whole `Cookie` header value), if any.
async fn with_cookie(gw: &Gateway, cookie: Option<&str>) -> (String, Option<String>) {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
    reach(gw.addr, &headers).await
}

#[tokio::test]
async fn the_first_upgrade_sets_the_cookie_and_the_next_ones_follow_it() {
    let fleet = fleet(&["a", "b", "c"]).await;
    let gw = gateway(&fleet.urls(), "").await;
    let (first, set) = with_cookie(&gw, None).await;
    let set = set.expect("the first 101 sets the cookie");
    let value = pair(&set)["fg_srv=".len()..].to_owned();
    assert_eq!(
        set,
        format!("fg_srv={value}; Path=/; HttpOnly; SameSite=Lax"),
        "a session cookie, not Secure on a plain listener"
    );
    let url = &fleet.urls()[["a", "b", "c"].iter().position(|n| *n == first).unwrap()];
    assert_eq!(value, id(url), "the documented value");
    // Round robin would spread these over all three: the cookie keeps them
    // on one, and is not set again.
    for _ in 0..6 {
        assert_eq!(
            with_cookie(&gw, Some(&pair(&set))).await,
            (first.clone(), None)
        );
    }
    // The cookie was the request's only one: no backend saw a Cookie header.
    for (name, backend) in &fleet.members {
        for req in backend.requests() {
            assert_eq!(req.header("cookie"), None, "{name}");
        }
    }
    // Without it, requests are spread again (round robin goes on).
    let mut names = Vec::new();
    for _ in 0..3 {
        let (name, set) = with_cookie(&gw, None).await;
        assert!(set.is_some());
        names.push(name);
    }
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
}

/// Engine.IO's shape: the first polling request gets the cookie (and
/// `Cache-Control: private`), and the polls and the upgrade that carry it
/// reach the server that answered the first, whatever the client's address.
#[tokio::test]
async fn plain_requests_and_the_upgrade_follow_the_cookie() {
    let backends = [
        HttpBackend::describe().await,
        HttpBackend::describe().await,
        HttpBackend::describe().await,
    ];
    let urls: Vec<String> = backends.iter().map(HttpBackend::url).collect();
    let gw = gateway(&urls, "").await;
    let which = |path: &str| -> Vec<usize> {
        (0..backends.len())
            .filter(|&i| backends[i].paths().iter().any(|p| p == path))
            .collect()
    };
    let mut used = Vec::new();
    for n in 0..6 {
        let poll = format!("/socket.io/?EIO=4&transport=polling&n={n}");
        let mut http = HttpConn::open(gw.addr).await;
        let first = http.ask(get(&poll, &[])).await;
        assert_eq!(first.status, 200);
        let set = ours(set_cookies(&first)).expect("the first poll sets the cookie");
        assert_eq!(first.header("cache-control"), Some("private"));
        let cookie = format!("Cookie: {}", pair(&set));
        // Further polls, from other addresses too (a phone between networks).
        for from in ["127.0.0.2", "127.0.0.3"] {
            let mut http = HttpConn::open_from(from, gw.addr).await;
            let again = http.ask(get(&poll, &[&cookie])).await;
            assert_eq!(again.status, 200);
            assert_eq!(ours(set_cookies(&again)), None, "set again");
            assert_eq!(
                again.header("cache-control"),
                None,
                "nothing to keep private"
            );
        }
        let upgrade_path = format!("/socket.io/?EIO=4&transport=websocket&n={n}");
        let mut ws = accepted(
            gw.addr,
            "127.0.0.4",
            &upgrade_path,
            &[("cookie", &pair(&set))],
        )
        .await;
        ws.send(Message::text("ping")).await.unwrap();
        assert_eq!(next_msg(&mut ws).await, Message::text("ping"));
        let polled = which(&poll);
        assert_eq!(polled.len(), 1, "polls spread over {polled:?}");
        assert_eq!(which(&upgrade_path), polled, "the upgrade went elsewhere");
        assert_eq!(pair(&set), format!("fg_srv={}", id(&urls[polled[0]])));
        used.push(polled[0]);
    }
    // The first polls were placed by round robin.
    used.sort_unstable();
    used.dedup();
    assert_eq!(used, [0, 1, 2]);
    for b in &backends {
        assert!(b.requests().iter().all(|r| r.header("cookie").is_none()));
    }
}

fn set_cookies(resp: &RawResponse) -> impl Iterator<Item = &str> {
    resp.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.as_str())
}

/// Two gateways with the same servers write the same value for each
/// server, and each follows the other's.
#[tokio::test]
async fn two_gateways_set_the_same_cookie_and_follow_each_others() {
    let fleet = fleet(&["a", "b", "c"]).await;
    let one = gateway(&fleet.urls(), "balance = \"least_conn\"").await;
    let two = gateway(&fleet.urls(), "").await;
    let mut cookies: [BTreeMap<String, String>; 2] = Default::default();
    for (gw, seen) in [&one, &two].into_iter().zip(&mut cookies) {
        // Least connections and round robin both go through every server
        // in three requests when nothing is held open.
        for _ in 0..3 {
            let (name, set) = with_cookie(gw, None).await;
            seen.insert(name, pair(&set.expect("a cookie")));
        }
    }
    assert_eq!(cookies[0].len(), 3, "{cookies:?}");
    assert_eq!(cookies[0], cookies[1]);
    for (name, cookie) in &cookies[0] {
        assert_eq!(with_cookie(&two, Some(cookie)).await, (name.clone(), None));
        assert_eq!(with_cookie(&one, Some(cookie)).await, (name.clone(), None));
    }
}

/// With `key_env`, a server's value is the first 8 bytes of
/// HMAC-SHA256(key, label): gateways with the key agree and follow each
/// other's, and the unkeyed value (which anyone can compute from a guessed
/// URL) names nothing.
#[tokio::test]
async fn keyed_gateways_agree_on_an_hmac_and_ignore_the_unkeyed_value() {
    const KEY: &str = "a fleet-wide key of 32 bytes ...";
    std::env::set_var("FRAMEGATE_TEST_STICKY_KEY", KEY);
    let fleet = fleet(&["a", "b", "c"]).await;
    let keyed = |balance: &'static str| {
        Gateway::builder()
            .route(route("/", "app"))
            .upstream_with(
                "app",
                &fleet.urls(),
                &format!(
                    "sticky_cookie = {{ name = \"fg_srv\", key_env = \"FRAMEGATE_TEST_STICKY_KEY\" }}\n{balance}"
                ),
            )
            .start()
    };
    let (one, two) = (keyed("balance = \"least_conn\"").await, keyed("").await);
    let hmac = |url: &str| keyed_id(KEY, url);
    let names: BTreeMap<String, String> = ["a", "b", "c"]
        .into_iter()
        .zip(fleet.urls())
        .map(|(n, u)| (n.to_owned(), u))
        .collect();
    for gw in [&one, &two] {
        for _ in 0..3 {
            let (name, set) = with_cookie(gw, None).await;
            assert_eq!(
                pair(&set.expect("a cookie")),
                format!("fg_srv={}", hmac(&names[&name]))
            );
        }
    }
    for (name, url) in &names {
        let cookie = format!("fg_srv={}", hmac(url));
        assert_eq!(with_cookie(&one, Some(&cookie)).await, (name.clone(), None));
        assert_eq!(with_cookie(&two, Some(&cookie)).await, (name.clone(), None));
        // The unkeyed value names no server here: the balance places the
        // request and the answer sets the keyed value.
        let (_, set) = with_cookie(&one, Some(&format!("fg_srv={}", id(url)))).await;
        assert!(set.is_some_and(|s| !s.contains(&id(url))));
    }
}

/// A keyed server id: the first 8 bytes of HMAC-SHA256(key, url), in hex.
fn keyed_id(key: &str, url: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, url.as_bytes());
    tag.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A key in rotation (`key_env = [NEW, OLD]`): a cookie under the old key
/// still reaches its server, and the answer replaces it with the new key's
/// value; the new value sticks without a `Set-Cookie`.
#[tokio::test]
async fn a_rotated_keys_old_values_are_followed_and_replaced() {
    const NEW: &str = "the new fleet-wide key, 32 bytes";
    const OLD: &str = "the old fleet-wide key, 32 bytes";
    std::env::set_var("FRAMEGATE_TEST_STICKY_NEW", NEW);
    std::env::set_var("FRAMEGATE_TEST_STICKY_OLD", OLD);
    let fleet = fleet(&["a", "b", "c"]).await;
    let gw = Gateway::builder()
        .route(route("/", "app"))
        .upstream_with(
            "app",
            &fleet.urls(),
            "sticky_cookie = { name = \"fg_srv\", key_env = [\"FRAMEGATE_TEST_STICKY_NEW\", \"FRAMEGATE_TEST_STICKY_OLD\"] }",
        )
        .start()
        .await;
    for (name, url) in ["a", "b", "c"].into_iter().zip(fleet.urls()) {
        let old = format!("fg_srv={}", keyed_id(OLD, &url));
        let new = format!("fg_srv={}", keyed_id(NEW, &url));
        // Three times each: round robin alone would reach all three servers.
        for _ in 0..3 {
            let (reached, set) = with_cookie(&gw, Some(&old)).await;
            assert_eq!(reached, name);
            assert_eq!(pair(&set.expect("the new key's value")), new);
            assert_eq!(with_cookie(&gw, Some(&new)).await, (name.to_owned(), None));
        }
    }
}

/// The cookie's server refuses connections: the next candidate takes the
/// client and the 101 names it; the new cookie then sticks.
#[tokio::test]
async fn a_refusing_servers_cookie_fails_over_and_is_replaced() {
    let dead = closed_port().await;
    let live = fleet(&["b", "c"]).await;
    let dead_url = format!("ws://{dead}");
    let mut urls = vec![dead_url.clone()];
    urls.extend(live.urls());
    // eject_after = 0: every request tries the dead server first.
    let gw = gateway(&urls, "eject_after = 0").await;
    let dead_cookie = format!("fg_srv={}", id(&dead_url));
    let mut reached = Vec::new();
    for _ in 0..4 {
        let (name, set) = with_cookie(&gw, Some(&dead_cookie)).await;
        let set = set.expect("a new cookie");
        let url = &live.urls()[if name == "b" { 0 } else { 1 }];
        assert_eq!(pair(&set), format!("fg_srv={}", id(url)));
        assert_eq!(
            with_cookie(&gw, Some(&pair(&set))).await,
            (name.clone(), None)
        );
        reached.push(name);
    }
    // The failover is the balance's (round robin over the live two).
    reached.sort();
    reached.dedup();
    assert_eq!(reached, ["b", "c"]);
}

/// A draining server takes no new sessions: its cookie is not followed,
/// and the client gets the cookie of the server that took it.
#[tokio::test]
async fn a_draining_servers_cookie_is_replaced() {
    let fleet = fleet(&["a", "b"]).await;
    let urls = fleet.urls();
    let gw = Gateway::from_toml(&format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\n\n\
         [upstream.app]\nservers = [{{ url = \"{}\", drain = true }}, \"{}\"]\n\
         sticky_cookie = \"fg_srv\"\n",
        urls[0], urls[1]
    ))
    .start()
    .await;
    let (name, set) = with_cookie(&gw, Some(&format!("fg_srv={}", id(&urls[0])))).await;
    assert_eq!(name, "b");
    assert_eq!(pair(&set.unwrap()), format!("fg_srv={}", id(&urls[1])));
}

/// The gateway's cookie is taken out of the forwarded request, every one of
/// its name, in every `Cookie` header; the others pass in order. The
/// backend's own `Set-Cookie`s reach the client, before the gateway's.
#[tokio::test]
async fn the_cookie_is_stripped_and_the_backends_cookies_pass() {
    let backend = Backend::builder()
        .response_header("set-cookie", "app=1; Path=/")
        .serve(|conn| async move { conn.greet_and_echo("a").await })
        .await;
    let gw = gateway(&[backend.url()], "").await;
    let valid = format!("fg_srv={}", id(&backend.url()));
    let (name, set) = reach(
        gw.addr,
        &[
            ("cookie", &format!("theme=dark; {valid}; lang=en")),
            ("cookie", "fg_srv=junk; x=\"1\""),
        ],
    )
    .await;
    assert_eq!((name.as_str(), set), ("a", None));
    assert_eq!(
        backend.last().header("cookie"),
        Some("theme=dark; lang=en; x=\"1\"")
    );
    // On a 101 that sets it, the backend's cookie comes first.
    let (mut ws, resp) = upgrade(gw.addr, "127.0.0.1", "/", &[]).await.ok().unwrap();
    let all: Vec<&str> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0], "app=1; Path=/");
    assert_eq!(pair(all[1]), valid);
    let _ = ws.close(None).await;

    // Plain HTTP: the same, and a cacheable answer is made private.
    let http = HttpBackend::serve(|seen| async move {
        let mut reply = text(StatusCode::OK, seen.header("cookie").unwrap_or("-"));
        let h = reply.headers_mut();
        h.append("set-cookie", "app=2; Path=/".parse().unwrap());
        let cache = if seen.path == "/public" {
            "public, max-age=60"
        } else {
            "no-store"
        };
        h.insert("cache-control", cache.parse().unwrap());
        reply
    })
    .await;
    let gw = gateway(&[http.url()], "").await;
    let mut conn = HttpConn::open(gw.addr).await;
    let resp = conn
        .ask(get(
            "/public",
            &["Cookie: a=1; fg_srv=0000000000000000", "Cookie: b=2"],
        ))
        .await;
    assert_eq!(resp.body_text(), "a=1; b=2", "what the backend saw");
    let all: Vec<&str> = set_cookies(&resp).collect();
    assert_eq!(all[0], "app=2; Path=/");
    assert_eq!(
        pair(&ours(all).unwrap()),
        format!("fg_srv={}", id(&http.url()))
    );
    let cache: Vec<&str> = resp
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("cache-control"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cache, ["public, max-age=60", "private"]);
    // Already kept from shared caches: nothing added.
    let resp = conn.ask(get("/nostore", &[])).await;
    assert!(ours(set_cookies(&resp)).is_some());
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(resp.body_text(), "-");
}

/// `Secure` on a TLS listener (not on a plain one); the table form's
/// attributes as written.
#[tokio::test]
async fn the_cookie_is_secure_on_a_tls_listener_and_takes_its_attributes() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost"]);
    let backend = Backend::named("a").await;
    let gw = Gateway::builder()
        .listener("")
        .listener(r#"tls = { cert = "server.pem", key = "server.key" }"#)
        .route(Route::any("app"))
        .upstream_with(
            "app",
            &[backend.url()],
            r#"sticky_cookie = { name = "srv", path = "/chat", max_age = "1h", same_site = "strict" }"#,
        )
        .leaf("server", &leaf)
        .start()
        .await;
    let value = id(&backend.url());
    let plain = raw_upgrade(gw.addrs[0], "/", &[]).await;
    assert_eq!(
        plain.response.header("set-cookie"),
        Some(format!("srv={value}; Path=/chat; Max-Age=3600; HttpOnly; SameSite=Strict").as_str())
    );
    let tls = tls_connect(gw.addrs[1], "localhost", ca.client_config()).await;
    let secure = raw_upgrade_on(tls, &upgrade_request("/", &[])).await;
    assert_eq!(
        secure.response.header("set-cookie"),
        Some(
            format!("srv={value}; Path=/chat; Max-Age=3600; Secure; HttpOnly; SameSite=Strict")
                .as_str()
        )
    );
}

/// Values that are not a server's id, odd bytes, a repeated name whose
/// first is garbage, and a Cookie header near the size limit: the balance
/// places the request, the gateway sets a cookie, nothing breaks.
#[tokio::test]
async fn hostile_cookies_fall_back_to_the_balance() {
    let fleet = fleet(&["a", "b", "c"]).await;
    let gw = gateway(&fleet.urls(), "").await;
    let valid = format!("fg_srv={}", id(&fleet.urls()[1]));
    let garbage = [
        "fg_srv=".to_owned(),
        "fg_srv=b".to_owned(),
        "fg_srv=0000000000000000".to_owned(),
        format!("fg_srv={}", id(&fleet.urls()[1]).to_uppercase()),
        format!("fg_srv={}0", id(&fleet.urls()[1])),
        format!("fg_srv=\"{}\"", id(&fleet.urls()[1])),
        format!("fg_srv=../../etc/passwd; {valid}"),
        format!("fg_srv; fg_srv=%00; ={valid}"),
    ];
    let mut names = Vec::new();
    for cookie in &garbage {
        let (name, set) = with_cookie(&gw, Some(cookie)).await;
        let set = set.unwrap_or_else(|| panic!("{cookie}: no new cookie"));
        assert_eq!(
            with_cookie(&gw, Some(&pair(&set))).await,
            (name.clone(), None)
        );
        names.push(name);
    }
    // Placed in turn, not all sent to b.
    assert!(names.iter().any(|n| n != "b"), "{names:?}");

    // Bytes that are not UTF-8, written raw.
    let mut raw = tcp_from("127.0.0.1", gw.addr).await;
    let mut request = upgrade_request("/", &[]).into_bytes();
    request.truncate(request.len() - 2);
    request.extend_from_slice(b"Cookie: fg_srv=\xff\xfe\x80; x=\xc3\r\n\r\n");
    raw.write_all(&request).await.unwrap();
    let (resp, _) = read_response(&mut raw).await;
    assert_eq!(resp.status, 101);
    assert!(resp
        .header("set-cookie")
        .is_some_and(|c| c.starts_with("fg_srv=")));

    // A big Cookie header (about 14 KiB, the head limit is 16) in many
    // pieces, with the valid cookie last: followed, and stripped.
    let mut big: String = (0..1400).map(|i| format!("k{i:04}=v; ")).collect();
    big.push_str(&valid);
    let (name, set) = with_cookie(&gw, Some(&big)).await;
    assert_eq!((name.as_str(), set), ("b", None));
    let seen = fleet.members[1].1.last();
    let forwarded = seen.header("cookie").unwrap();
    assert!(forwarded.starts_with("k0000=v; k0001=v") && forwarded.ends_with("k1399=v"));
    assert!(!forwarded.contains("fg_srv"));
}

/// `bad.toml:N:` for the line of `text` that holds `needle`.
fn at(text: &str, needle: &str) -> String {
    let n = text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    format!("bad.toml:{n}:")
}

#[test]
fn sticky_cookie_mistakes_are_reported_at_their_lines() {
    let head = r#"[[listener]]
addr = "127.0.0.1:0"

[[route]]
path = "/"
upstream = "app"

[upstream.app]
servers = ["ws://127.0.0.1:9001"]
"#;
    let unreadable = format!("{head}sticky_cookie = {{ name = \"srv\", max_age = \"forever\" }}\n");
    let stderr = check_refused(&unreadable);
    assert_reported(
        &stderr,
        &at(&unreadable, "forever"),
        "`forever` is not a duration",
    );
    let unknown = format!("{head}sticky_cookie = {{ name = \"srv\", expires = \"1h\" }}\n");
    let stderr = check_refused(&unknown);
    assert_reported(&stderr, &at(&unknown, "expires"), "unknown field `expires`");
    // The `check` child does not have it: refused by the variable's name.
    let unkeyed = format!(
        "{head}sticky_cookie = {{ name = \"srv\", key_env = \"FRAMEGATE_TEST_NO_SUCH_KEY\" }}\n"
    );
    let stderr = check_refused(&unkeyed);
    assert_reported(
        &stderr,
        &at(&unkeyed, "key_env"),
        "key_env: environment variable FRAMEGATE_TEST_NO_SUCH_KEY is unset or shorter than 16 bytes",
    );

    let bad = format!(
        r#"{head}sticky_cookie = "a b"

[[route]]
path = "/two"
upstream = "two"

[upstream.two]
servers = ["ws://127.0.0.1:9002"]
balance = "cookie:srv"
sticky_cookie = {{ name = "srv", same_site = "none", secure = false }}
rebalance_per_second = 5
"#
    );
    let stderr = check_refused(&bad);
    let line = |needle| at(&bad, needle);
    assert_reported(
        &stderr,
        &line("\"a b\""),
        "sticky_cookie name `a b` is not a cookie name",
    );
    assert_reported(&stderr, &line("secure = false"), "needs Secure");
    let fixed = bad
        .replace("\"a b\"", "\"srv\"")
        .replace(", secure = false", "");
    let stderr = check_refused(&fixed);
    assert_reported(
        &stderr,
        &at(&fixed, "cookie:srv"),
        "hashes the cookie `srv` that its sticky_cookie sets",
    );
    assert_reported(
        &stderr,
        &at(&fixed, "rebalance_per"),
        "rebalance_per_second cannot move sessions",
    );
    let good = fixed
        .replace("balance = \"cookie:srv\"\n", "")
        .replace("rebalance_per_second = 5\n", "");
    let (ok, _, stderr) = check(
        "bad.toml",
        &[("bad.toml", &good), ("policies/default.toml", "")],
    );
    assert!(ok, "{stderr}");
}
