//! Balancing over a fleet of real backends: each policy's spread, hashing's
//! stickiness (the same key to the same server, from every gateway with the
//! same server list, for plain HTTP and the upgrade alike), least
//! connections following live sessions (across a reload too), and failing
//! over before the client's 101.

use std::collections::{BTreeMap, HashMap};

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const NAMES: [&str; 3] = ["a", "b", "c"];

/// A gateway with one route, `/`, to the upstream `app` over `fleet`, with
/// extra upstream `lines` (`balance = ...`) and the policy `policy`.
async fn gateway(fleet: &Fleet, lines: &str, policy: &str) -> Gateway {
    Gateway::builder()
        .route(route("/", "app").policy("test"))
        .upstream_with("app", &fleet.urls(), lines)
        .policy("test", policy)
        .start()
        .await
}

/// Which backend a new session from `from` reached (its greeting), and the
/// session.
async fn reach(gw: &Gateway, from: &str, path: &str, headers: &[(&str, &str)]) -> (String, Client) {
    let mut ws = accepted(gw.addr, from, path, headers).await;
    let hello = next_msg(&mut ws).await.into_text().unwrap();
    let name = hello.split(' ').next().unwrap().to_owned();
    (name, ws)
}

/// Which backend a session from `from` reached; the session is closed.
async fn who(gw: &Gateway, from: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let (name, mut ws) = reach(gw, from, path, headers).await;
    let _ = ws.close(None).await;
    name
}

fn tally(names: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for n in names {
        *counts.entry(n).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn round_robin_spreads_sessions_exactly_evenly() {
    let fleet = fleet(&NAMES).await;
    let gw = gateway(&fleet, "balance = \"round_robin\"", "").await;
    let mut names = Vec::new();
    for _ in 0..300 {
        names.push(who(&gw, "127.0.0.1", "/", &[]).await);
    }
    let counts = tally(names);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [100, 100, 100]
    );
}

#[tokio::test]
async fn weights_give_larger_shares() {
    let fleet = fleet(&NAMES).await;
    let urls = fleet.urls();
    let gw = Gateway::from_toml(&format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\n\n\
         [upstream.app]\nservers = [\"{}\", \"{}\", {{ url = \"{}\", weight = 2 }}]\n",
        urls[0], urls[1], urls[2]
    ))
    .start()
    .await;
    let mut names = Vec::new();
    for _ in 0..100 {
        names.push(who(&gw, "127.0.0.1", "/", &[]).await);
    }
    let counts = tally(names);
    assert_eq!(
        counts,
        BTreeMap::from([("a".into(), 25), ("b".into(), 25), ("c".into(), 50)])
    );
}

#[tokio::test]
async fn random_two_spreads_live_sessions_within_a_fifth() {
    let fleet = fleet(&NAMES).await;
    let gw = gateway(&fleet, "balance = \"random_two\"", "").await;
    // Held open, so each choice sees the others' live counts.
    let mut held = Vec::new();
    let mut names = Vec::new();
    for _ in 0..300 {
        let (name, ws) = reach(&gw, "127.0.0.1", "/", &[]).await;
        names.push(name);
        held.push(ws);
    }
    let counts = tally(names);
    for (name, n) in &counts {
        assert!(n.abs_diff(100) <= 20, "{name}: {counts:?}");
    }
}

#[tokio::test]
async fn least_conn_follows_live_sessions() {
    let fleet = fleet(&NAMES).await;
    let gw = gateway(&fleet, "balance = \"least_conn\"", "").await;
    // Six sessions: two on each server (ties are taken in turn).
    let mut held: HashMap<String, Vec<Client>> = HashMap::new();
    for _ in 0..6 {
        let (name, ws) = reach(&gw, "127.0.0.1", "/", &[]).await;
        held.entry(name).or_default().push(ws);
    }
    assert!(held.values().all(|v| v.len() == 2), "{:?}", held.keys());
    // Sessions end on b and c; a keeps its two.
    for name in ["b", "c"] {
        for mut ws in held.remove(name).unwrap() {
            ws.close(None).await.unwrap();
            expect_close(&mut ws).await;
        }
    }
    eventually("the ended sessions to be released", || gw.stats().open == 2).await;
    // The next four go to b and c, two each, none to a.
    let mut names = Vec::new();
    for _ in 0..4 {
        let (name, ws) = reach(&gw, "127.0.0.1", "/", &[]).await;
        names.push(name);
        held.entry("new".into()).or_default().push(ws);
    }
    assert_eq!(
        tally(names),
        BTreeMap::from([("b".into(), 2), ("c".into(), 2)])
    );
}

#[tokio::test]
async fn least_conn_after_a_reload_still_counts_the_sessions_opened_before_it() {
    let fleet = fleet(&["a", "b"]).await;
    let urls = fleet.urls();
    let config = |servers: &[String]| {
        Gateway::builder().route(route("/", "app")).upstream_with(
            "app",
            servers,
            "balance = \"least_conn\"",
        )
    };
    let gw = config(&urls[..1]).start().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (name, ws) = reach(&gw, "127.0.0.1", "/", &[]).await;
        assert_eq!(name, "a");
        held.push(ws);
    }
    // b joins; a keeps its three sessions, and they still count.
    write_file(gw.dir.path(), "framegate.toml", config(&urls).toml());
    gw.reload().await;
    let mut names = Vec::new();
    for _ in 0..3 {
        let (name, ws) = reach(&gw, "127.0.0.1", "/", &[]).await;
        names.push(name);
        held.push(ws);
    }
    assert_eq!(names, ["b", "b", "b"]);
}

/// Twenty clients, from 127.0.0.10 to 127.0.0.29.
fn clients() -> impl Iterator<Item = String> {
    (10..30).map(|i| format!("127.0.0.{i}"))
}

#[tokio::test]
async fn client_ip_sends_each_client_to_one_server() {
    let fleet = fleet(&NAMES).await;
    let gw = gateway(&fleet, "balance = \"client_ip\"", "").await;
    let mut first = BTreeMap::new();
    for ip in clients() {
        first.insert(ip.clone(), who(&gw, &ip, "/", &[]).await);
    }
    // Again, in another order: the same server each time.
    for ip in clients().collect::<Vec<_>>().into_iter().rev() {
        assert_eq!(who(&gw, &ip, "/", &[]).await, first[&ip], "{ip}");
    }
    // Twenty clients do not all hash to one server (1 in 3^19).
    assert!(tally(first.values().cloned()).len() > 1, "{first:?}");
}

#[tokio::test]
async fn two_gateways_with_the_same_servers_agree() {
    let fleet = fleet(&NAMES).await;
    let one = gateway(&fleet, "balance = \"client_ip\"", "").await;
    let two = gateway(&fleet, "balance = \"client_ip\"", "").await;
    for ip in clients() {
        assert_eq!(
            who(&one, &ip, "/", &[]).await,
            who(&two, &ip, "/", &[]).await,
            "{ip}"
        );
    }
}

/// The same key reaches the same server; different keys spread.
async fn sticky_on(balance: &str, request: impl Fn(usize) -> (String, Vec<(String, String)>)) {
    let fleet = fleet(&NAMES).await;
    let gw = gateway(&fleet, &format!("balance = \"{balance}\""), "").await;
    let mut seen = Vec::new();
    for k in 0..20 {
        let (path, headers) = request(k);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let first = who(&gw, "127.0.0.1", &path, &headers).await;
        for _ in 0..3 {
            assert_eq!(
                who(&gw, "127.0.0.1", &path, &headers).await,
                first,
                "{balance} {k}"
            );
        }
        seen.push(first);
    }
    assert!(tally(seen).len() > 1, "{balance}: every key on one server");
}

#[tokio::test]
async fn a_header_cookie_or_query_key_is_sticky() {
    sticky_on("header:x-tenant", |k| {
        ("/".into(), vec![("x-tenant".into(), format!("tenant-{k}"))])
    })
    .await;
    sticky_on("cookie:sid", |k| {
        (
            "/".into(),
            vec![("cookie".into(), format!("theme=dark; sid=s{k}"))],
        )
    })
    .await;
    sticky_on("query:room", |k| {
        (format!("/chat?user=x&room=r{k}"), vec![])
    })
    .await;
}

#[tokio::test]
async fn without_its_key_a_request_goes_round_robin() {
    let fleet = fleet(&NAMES).await;
    let gw = gateway(&fleet, "balance = \"header:x-tenant\"", "").await;
    let mut names = Vec::new();
    for _ in 0..30 {
        names.push(who(&gw, "127.0.0.1", "/", &[]).await);
    }
    assert_eq!(
        tally(names).values().copied().collect::<Vec<_>>(),
        [10, 10, 10]
    );
}

/// Engine.IO's shape: long-polling requests, then the upgrade, from one
/// client: with `client_ip` all of them reach the server that served the
/// first.
#[tokio::test]
async fn plain_requests_and_the_upgrade_reach_the_same_server() {
    let backends = [
        HttpBackend::describe().await,
        HttpBackend::describe().await,
        HttpBackend::describe().await,
    ];
    let urls: Vec<String> = backends.iter().map(HttpBackend::url).collect();
    let gw = Gateway::builder()
        .route(route("/", "app").policy("default"))
        .upstream_with("app", &urls, "balance = \"client_ip\"")
        .start()
        .await;
    let which = |backends: &[HttpBackend], path: &str| -> Vec<usize> {
        (0..backends.len())
            .filter(|&i| backends[i].paths().iter().any(|p| p == path))
            .collect()
    };
    let mut used = Vec::new();
    for (n, ip) in clients().take(9).enumerate() {
        let poll = format!("/socket.io/?EIO=4&transport=polling&n={n}");
        let mut http = HttpConn::open_from(&ip, gw.addr).await;
        for _ in 0..3 {
            let answer = http.ask(get(&poll, &[])).await;
            assert_eq!(answer.status, 200);
        }
        let upgrade_path = format!("/socket.io/?EIO=4&transport=websocket&n={n}");
        let mut ws = accepted(gw.addr, &ip, &upgrade_path, &[]).await;
        ws.send(Message::text("ping")).await.unwrap();
        assert_eq!(next_msg(&mut ws).await, Message::text("ping"));
        let polled = which(&backends, &poll);
        let upgraded = which(&backends, &upgrade_path);
        assert_eq!(polled.len(), 1, "{ip}: polling spread over {polled:?}");
        assert_eq!(upgraded, polled, "{ip}: the upgrade went elsewhere");
        used.push(polled[0]);
    }
    assert!(tally(used.iter().map(usize::to_string)).len() > 1);
}

/// A refused connection and a server that accepts TCP and never answers
/// the upgrade are both passed over: every client gets its 101 from the
/// live server, whichever server its turn starts at.
#[tokio::test]
async fn failover_passes_refusing_and_silent_servers() {
    let refusing = closed_port().await;
    let (silent, mut silent_accepts) = silent_server().await;
    let live = Backend::named("live").await;
    let urls = [
        format!("ws://{refusing}"),
        format!("ws://{silent}"),
        live.url(),
    ];
    let gw = Gateway::builder()
        .route(route("/", "app").policy("test"))
        .upstream_with("app", &urls, "max_attempts = 3")
        .policy("test", "[upstream]\nattempt_timeout = \"300ms\"\n")
        .start()
        .await;
    for _ in 0..3 {
        assert_eq!(who(&gw, "127.0.0.1", "/", &[]).await, "live");
    }
    // The silent server was tried (and passed over).
    guard("the silent server's accept", silent_accepts.recv()).await;
    assert_eq!(live.count(), 3);
}

/// When every server fails, the last failure is the answer: a 504 when it
/// was a silence, a 502 when it was a refusal.
#[tokio::test]
async fn when_every_server_fails_the_client_gets_a_502_or_a_504() {
    let refusing = closed_port().await;
    let (silent, _accepts) = silent_server().await;
    let urls = [format!("ws://{refusing}"), format!("ws://{silent}")];
    let gw = Gateway::builder()
        .route(route("/", "app").policy("test"))
        .upstream("app", &urls)
        .policy(
            "test",
            "[upstream]\nhandshake_timeout = \"1s\"\nattempt_timeout = \"200ms\"\n",
        )
        .start()
        .await;
    // Round robin: the first starts at the refusing server and ends with the
    // silent one; the second the other way round.
    let first = refused(gw.addr, "127.0.0.1", "/", &[]).await;
    assert_eq!(first.status, 504, "{}", first.body);
    let second = refused(gw.addr, "127.0.0.1", "/", &[]).await;
    assert_eq!(second.status, 502, "{}", second.body);
}

/// `max_attempts = 1`: no failover, as before this policy existed.
#[tokio::test]
async fn one_attempt_does_not_fail_over() {
    let refusing = closed_port().await;
    let live = Backend::named("live").await;
    let urls = [format!("ws://{refusing}"), live.url()];
    let gw = Gateway::builder()
        .route(route("/", "app").policy("default"))
        .upstream_with("app", &urls, "max_attempts = 1")
        .start()
        .await;
    assert_eq!(refused(gw.addr, "127.0.0.1", "/", &[]).await.status, 502);
    assert_eq!(who(&gw, "127.0.0.1", "/", &[]).await, "live");
}

/// `examples/sticky.toml`, with its three backends' ports and its listener
/// moved to this test's: every client stays on one backend.
#[tokio::test]
async fn the_sticky_example_keeps_each_client_on_one_backend() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let fleet = fleet(&NAMES).await;
    let mut text = std::fs::read_to_string(repo.join("examples/sticky.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace(
            "\"../policies\"",
            &format!("{:?}", repo.join("policies").to_str().unwrap()),
        );
    for (port, url) in ["9001", "9002", "9003"].iter().zip(fleet.urls()) {
        text = text.replace(&format!("ws://127.0.0.1:{port}"), &url);
    }
    assert!(text.contains("balance = \"client_ip\""), "{text}");
    let gw = Gateway::from_toml(&text).start().await;
    for ip in clients().take(6) {
        let first = who(&gw, &ip, "/", &[]).await;
        assert_eq!(who(&gw, &ip, "/", &[]).await, first, "{ip}");
    }
    // The script that runs it is run by examples::the_sticky_example_runs.
}

/// `claim:sub`: a user's sessions reach one server whatever address or
/// connection they come from; the key is read after the token is checked.
#[tokio::test]
async fn a_claim_key_is_sticky_per_subject() {
    let fleet = fleet(&NAMES).await;
    let gw = Gateway::builder()
        .route(route("/", "app").policy("auth"))
        .upstream_with("app", &fleet.urls(), "balance = \"claim:sub\"")
        .policy(
            "auth",
            "[auth]\nalgorithms = [\"HS256\"]\nsecret_file = \"hs.key\"\n",
        )
        .file("hs.key", SECRET)
        .start()
        .await;
    let mut seen = Vec::new();
    for user in 0..12 {
        let bearer = format!("Bearer {}", hs256(&format!("user-{user}")));
        let headers = [("authorization", bearer.as_str())];
        let first = who(&gw, "127.0.0.2", "/", &headers).await;
        assert_eq!(
            who(&gw, "127.0.0.3", "/", &headers).await,
            first,
            "user-{user}"
        );
        seen.push(first);
    }
    assert!(tally(seen).len() > 1);
}
