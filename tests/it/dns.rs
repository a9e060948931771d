//! A server named by a DNS name: every address of the name is a server of
//! its own, the name is resolved by the DNS server that `[resolver]` names
//! (here the test's own, [`DnsServer`]), and a changed answer is followed
//! without a reload. The backends are "pods" on 127.0.0.2, 127.0.0.3, ...,
//! all on one port (the URL's: an address record carries none), each
//! greeting with its own address.

use std::time::Duration;

use crate::support::*;

const NAME: &str = "backends.test";

/// Backends on each of some loopback addresses, on one port.
struct Pods {
    port: u16,
    /// Each backend, by the address it is on (and greets with).
    backends: Vec<(String, Backend)>,
}

async fn pods(ips: &[&str]) -> Pods {
    let (port, listeners) = same_port(ips).await;
    let mut backends = Vec::new();
    for (ip, listener) in ips.iter().zip(listeners) {
        backends.push((ip.to_string(), Backend::named_on(listener, ip).await));
    }
    Pods { port, backends }
}

impl Pods {
    /// Sessions each backend got, in order.
    fn counts(&self) -> Vec<usize> {
        self.backends.iter().map(|(_, b)| b.count()).collect()
    }

    fn count(&self, ip: &str) -> usize {
        self.backends
            .iter()
            .find(|(at, _)| at == ip)
            .unwrap()
            .1
            .count()
    }
}

/// A gateway whose upstream `app` is `ws://backends.test:PORT`, resolved by
/// `dns` every second; `lines` are more of the upstream's keys. The route
/// sends the server's own `Host`.
async fn gateway(dns: &DnsServer, port: u16, lines: &str) -> Gateway {
    Gateway::builder()
        .route(route("/", "app").preserve_host(false))
        .upstream_with(
            "app",
            &[format!("ws://{NAME}:{port}")],
            &format!("resolve_interval = \"1s\"\n{lines}"),
        )
        .resolver(&format!("servers = [\"{}\"]", dns.addr))
        .start()
        .await
}

/// A session from `from`, and who it reached (the backend's address).
async fn session(gw: &Gateway, from: &str) -> (String, Client) {
    let mut ws = accepted(gw.addr, from, "/", &[]).await;
    let hello = next_msg(&mut ws).await.into_text().unwrap();
    let who = hello.split(' ').next().unwrap().to_owned();
    (who, ws)
}

/// Who a new session from `from` reaches; the session is closed.
async fn reached(gw: &Gateway, from: &str) -> String {
    let (who, mut ws) = session(gw, from).await;
    let _ = ws.close(None).await;
    who
}

/// (a) Three addresses, three servers: round robin gives each its share,
/// and each is asked for the name (its `Host`).
#[tokio::test]
async fn every_address_of_a_name_is_a_server() {
    let dns = DnsServer::start().await;
    let pods = pods(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]).await;
    dns.set(NAME, &["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let gw = gateway(&dns, pods.port, "").await;
    assert!(dns.queries() > 0, "resolved by the configured server");
    for _ in 0..6 {
        let (_, mut ws) = session(&gw, "127.0.0.1").await;
        round_trip(&mut ws, "hi").await;
        let _ = ws.close(None).await;
    }
    assert_eq!(pods.counts(), [2, 2, 2]);
    let host = format!("{NAME}:{}", pods.port);
    for (_, backend) in &pods.backends {
        assert_eq!(backend.last().header("host"), Some(host.as_str()));
    }
}

/// (b) With `balance = "client_ip"`, each client stays on one address (a
/// name that was one server rotating over its addresses would not keep
/// it), and a second gateway given the same answer sends each client to
/// the same address: the hash ranks the servers by their labels.
#[tokio::test]
async fn client_ip_keeps_each_client_on_one_address() {
    let dns = DnsServer::start().await;
    let pods = pods(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]).await;
    dns.set(NAME, &["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let hashed = "balance = \"client_ip\"";
    let (one, other) = (
        gateway(&dns, pods.port, hashed).await,
        gateway(&dns, pods.port, hashed).await,
    );
    for n in 20..28 {
        let from = format!("127.0.0.{n}");
        let first = reached(&one, &from).await;
        for _ in 0..3 {
            assert_eq!(reached(&one, &from).await, first, "{from} moved");
            assert_eq!(reached(&other, &from).await, first, "{from} differs");
        }
    }
    assert_eq!(pods.counts().iter().sum::<usize>(), 8 * 7);
}

/// (c) The answer changes (127.0.0.4 added, 127.0.0.3 removed): new
/// sessions follow at the next resolution, without a reload, and none
/// reaches the removed address after; a session already on it is not
/// drained and keeps working.
#[tokio::test]
async fn a_changed_answer_is_followed_without_a_reload() {
    let dns = DnsServer::start().await;
    let pods = pods(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]).await;
    dns.set(NAME, &["127.0.0.2", "127.0.0.3"]);
    let gw = gateway(&dns, pods.port, "").await;
    // Round robin over two: one of the first two sessions is on .3.
    let mut live = None;
    for _ in 0..2 {
        let (who, ws) = session(&gw, "127.0.0.1").await;
        if who == "127.0.0.3" {
            live = Some(ws);
        }
    }
    let mut live = live.expect("a session on 127.0.0.3");
    assert_eq!(pods.count("127.0.0.4"), 0, "not in the answer yet");

    dns.set(NAME, &["127.0.0.2", "127.0.0.4"]);
    // Polls what the gateway does: a new session reaches the new address
    // once the answer is picked up (within about a second).
    guard_for(
        "a session on the new address",
        Duration::from_secs(10),
        async {
            while reached(&gw, "127.0.0.1").await != "127.0.0.4" {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;
    let on_removed = pods.count("127.0.0.3");
    for _ in 0..4 {
        assert_ne!(reached(&gw, "127.0.0.1").await, "127.0.0.3");
    }
    assert_eq!(pods.count("127.0.0.3"), on_removed, "no new session on .3");
    // The live session on the removed address still relays both ways.
    round_trip(&mut live, "still here").await;
}

/// A name the DNS server does not know yet contributes no server: with no
/// other, the all-down 503 with `Retry-After`; once it answers, sessions
/// go through without a reload.
#[tokio::test]
async fn a_name_without_an_answer_yet_is_all_down() {
    let dns = DnsServer::start().await;
    let pods = pods(&["127.0.0.2"]).await;
    let gw = gateway(&dns, pods.port, "").await;
    let refused = refused(gw.addr, "127.0.0.1", "/", &[]).await;
    assert_eq!(refused.status, 503);
    assert!(refused.headers.contains_key("retry-after"));
    dns.set(NAME, &["127.0.0.2"]);
    guard_for("the name's first answer", Duration::from_secs(10), async {
        while upgrade(gw.addr, "127.0.0.1", "/", &[]).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(pods.counts(), [1]);
}

#[test]
fn bad_resolver_keys_are_reported_at_their_lines() {
    let bad = r#"[[listener]]
addr = "127.0.0.1:0"

[[route]]
path = "/"
upstream = "app"

[upstream.app]
servers = ["ws://backend.internal:80"]

[resolver]
servers = [
  "10.0.0.2",
  "dns.internal:53",
  "10.0.0.2:53",
  "0.0.0.0",
]
timeout = "10ms"
"#;
    let stderr = check_refused(bad);
    for (prefix, needle) in [
        ("bad.toml:14:", "is not an IP or IP:port"),
        ("bad.toml:15:", "listed twice"),
        ("bad.toml:16:", "not a DNS server"),
        ("bad.toml:18:", "between 100ms and 30s"),
    ] {
        assert_reported(&stderr, prefix, needle);
    }
    // A section without servers says how to write one, or to leave it out.
    let empty = bad.split("[resolver]").next().unwrap().to_owned() + "[resolver]\nservers = []\n";
    let stderr = check_refused(&empty);
    assert!(stderr.contains("[resolver] has no servers"), "{stderr}");
}
