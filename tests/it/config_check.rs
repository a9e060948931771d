//! `framegate check`: every problem reported as `file:line: message`, and
//! the shipped example and policies load.

use std::path::Path;

use crate::support::*;

const GOOD: &str = r#"
[[listener]]
addr = "127.0.0.1:0"

[[route]]
path = "/"
upstream = "echo"

[upstream.echo]
builtin = "echo"
"#;

#[test]
fn a_good_config_checks_ok() {
    let (ok, stdout, stderr) = check(
        "framegate.toml",
        &[("framegate.toml", GOOD), ("policies/default.toml", "")],
    );
    assert!(ok, "stderr: {stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn an_unknown_key_is_reported_with_its_line() {
    let bad = r#"[[listener]]
addr = "127.0.0.1:0"

[[route]]
path = "/"
upstraem = "echo"

[upstream.echo]
builtin = "echo"
"#;
    let stderr = check_refused(bad);
    assert_reported(&stderr, "bad.toml:6:", "upstraem");
}

#[test]
fn a_bad_duration_is_reported_with_its_line() {
    let bad = r#"[server]
max_headers = 32
request_timeout = "5 parsecs"

[[listener]]
addr = "127.0.0.1:0"

[[route]]
upstream = "echo"

[upstream.echo]
builtin = "echo"
"#;
    let stderr = check_refused(bad);
    assert_reported(&stderr, "bad.toml:3:", "5 parsecs");
}

#[test]
fn semantic_errors_are_all_reported() {
    let bad = r#"[[listener]]
addr = "127.0.0.1:0"

[[listener]]
addr = "localhost:http"

[[route]]
path = "/chat/"
upstream = "chta"

[[route]]
path = "/slow/"
upstream = "echo"
policy = "slow"

[[route]]
path = "/missing/"
upstream = "echo"
policy = "nosuchpolicy"

[[route]]
path = "/also/"
upstream = "ghost"

[upstream.echo]
builtin = "echo"

[upstream.bad]
servers = ["http://127.0.0.1:1"]
"#;
    let slow = "[upstream]\nconnect_timeout = \"1s\"\nhandshake_timeout = \"5 parsecs\"\n";
    let (ok, _, stderr) = check(
        "bad.toml",
        &[
            ("bad.toml", bad),
            ("policies/default.toml", ""),
            ("policies/slow.toml", slow),
        ],
    );
    assert!(!ok);
    assert_reported(&stderr, "bad.toml:5:", "localhost:http");
    assert_reported(&stderr, "bad.toml:9:", "chta");
    assert_reported(&stderr, "bad.toml:19:", "nosuchpolicy");
    assert_reported(&stderr, "bad.toml:23:", "ghost");
    assert_reported(&stderr, "bad.toml:29:", "http://127.0.0.1:1");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("policies/slow.toml:3:") && l.contains("5 parsecs")),
        "bad policy duration not reported with its file and line:\n{stderr}"
    );
    assert!(
        stderr.contains("6 problem(s)"),
        "every problem is counted:\n{stderr}"
    );
}

#[test]
fn more_semantic_errors_are_reported_at_their_lines() {
    let bad = r#"[server]
max_header_bytes = "4KiB"
max_headers = 100000

[[listener]]
addr = "127.0.0.1:0"

[[route]]
path = "/"
upstream = "echo"

[[route]]
path = "/"
upstream = "echo"

[[route]]
path = "no-slash"
upstream = "echo"

[[route]]
path = "/both/"
strip_prefix = true
rewrite = "/v2/"
upstream = "echo"

[upstream.echo]
builtin = "echo"

[upstream.mixed]
servers = ["ws://127.0.0.1:1"]
builtin = "echo"

[upstream.odd]
builtin = "mirror"
"#;
    let stderr = check_refused(bad);
    assert_reported(&stderr, "bad.toml:2:", "8KiB");
    assert_reported(&stderr, "bad.toml:3:", "between 8 and 1024");
    assert_reported(&stderr, "bad.toml:13:", "another route");
    assert_reported(&stderr, "bad.toml:17:", "must start with /");
    assert_reported(&stderr, "bad.toml:23:", "strip_prefix or rewrite");
    assert_reported(&stderr, "bad.toml:31:", "either servers or builtin");
    assert_reported(&stderr, "bad.toml:34:", "mirror");
}

#[test]
fn listener_names_and_bindings_are_checked_at_their_lines() {
    let bad = r#"[[listener]]
name = "public"
addr = "127.0.0.1:0"

[[listener]]
name = "public"
addr = "127.0.0.1:0"

[[listener]]
name = "Admin"
addr = "127.0.0.1:0"

[[route]]
path = "/x"
listeners = ["public", "foo"]
upstream = "echo"

[[route]]
path = "/none"
listeners = []
upstream = "echo"

[[route]]
path = "/"
listeners = ["public"]
upstream = "echo"

[[route]]
path = "/"
upstream = "echo"

[upstream.echo]
builtin = "echo"
"#;
    let stderr = check_refused(bad);
    assert_reported(
        &stderr,
        "bad.toml:6:",
        r#"another listener is already named "public""#,
    );
    assert_reported(&stderr, "bad.toml:10:", "lower-case letters");
    assert_reported(
        &stderr,
        "bad.toml:15:",
        r#"route /x names listener "foo", but no listener has that name"#,
    );
    assert_reported(&stderr, "bad.toml:20:", "on no listener");
    assert_reported(
        &stderr,
        "bad.toml:29:",
        r#"another route already has this host and path on listener "public""#,
    );
    assert!(
        stderr.contains("5 problem(s)"),
        "every problem is counted once:\n{stderr}"
    );
}

#[test]
fn one_host_and_path_may_be_routed_on_each_listener() {
    let config = Gateway::builder()
        .named_listener("a", "")
        .named_listener("b", "")
        .route(route("/", "echo").listeners(&["a"]))
        .route(route("/", "echo").listeners(&["b"]))
        .route(route("/", "echo").host("x.test").listeners(&["a", "b"]))
        .builtin_echo("echo")
        .toml();
    let (ok, stdout, stderr) = check(
        "framegate.toml",
        &[("framegate.toml", &config), ("policies/default.toml", "")],
    );
    assert!(ok, "stderr: {stderr}");
    assert!(stdout.contains("2 listener(s), 3 route(s)"), "{stdout}");
    // Overlapping sets clash even when they are not the same set.
    let clashing = config.replace(r#"listeners = ["b"]"#, r#"listeners = ["b", "a"]"#);
    assert_reported(
        &check_refused(&clashing),
        "bad.toml:",
        r#"this host and path on listener "a""#,
    );
}

#[test]
fn request_path_settings_are_checked_at_their_lines() {
    let bad = r#"[server]
max_pending_connections = 0
max_pending_per_ip = 0

[[listener]]
addr = "127.0.0.1:0"

[[route]]
path = "/a/../b/"
upstream = "echo"

[[route]]
path = "/c%2fd"
upstream = "echo"

[[route]]
host = "evil.test/x"
upstream = "echo"

[[route]]
host = "a.test:8080"
upstream = "echo"

[[route]]
path = "/e/"
rewrite = "/v2/../x"
upstream = "echo"

[upstream.echo]
builtin = "echo"
"#;
    let stderr = check_refused(bad);
    assert_reported(
        &stderr,
        "bad.toml:2:",
        "max_pending_connections must be at least 1",
    );
    assert_reported(
        &stderr,
        "bad.toml:3:",
        "max_pending_per_ip must be at least 1",
    );
    assert_reported(&stderr, "bad.toml:9:", "write `/b/`");
    assert_reported(&stderr, "bad.toml:13:", "encoded /");
    assert_reported(&stderr, "bad.toml:17:", "must be a host name");
    assert_reported(&stderr, "bad.toml:21:", "without a port");
    assert_reported(&stderr, "bad.toml:26:", "normalised path");
}

#[test]
fn an_upstream_without_servers_is_reported_at_its_table() {
    let bad = r#"[[listener]]
addr = "127.0.0.1:0"

[[route]]
path = "/"
upstream = "empty"

[upstream.empty]
servers = []
"#;
    let stderr = check_refused(bad);
    assert!(stderr.contains("empty"), "{stderr}");
    assert!(
        stderr.lines().any(
            |l| (l.starts_with("bad.toml:8:") || l.starts_with("bad.toml:9:"))
                && l.contains("no servers")
        ),
        "the problem is on lines 8-9:\n{stderr}"
    );
}

#[test]
fn a_missing_cert_file_is_reported_with_its_line() {
    let bad = r#"[[listener]]
addr = "127.0.0.1:0"

[[listener]]
addr = "127.0.0.1:0"
tls = { cert = "missing.pem", key = "missing.key" }

[[route]]
upstream = "nowhere"

[upstream.echo]
builtin = "echo"
"#;
    let stderr = check_refused(bad);
    assert_reported(&stderr, "bad.toml:6:", "missing.pem");
    // Collected together with the other semantic error.
    assert_reported(&stderr, "bad.toml:9:", "nowhere");
}

#[test]
fn running_with_a_bad_config_does_not_start() {
    let bad = GOOD.replace("upstream = \"echo\"", "upstream = \"nope\"");
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[("bad.toml", &bad), ("policies/default.toml", "")],
    );
    let (ok, _, stderr) = run(dir.path(), &["--config", "bad.toml"]);
    assert!(!ok);
    assert_reported(&stderr, "bad.toml:7:", "nope");
}

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A config with one route, `/`, under `policy`, to a backend never reached.
fn one_route(policy: &str) -> String {
    Gateway::builder()
        .route(route("/", "backend").policy(policy))
        .upstream("backend", &["ws://127.0.0.1:9"])
        .toml()
}

#[test]
fn the_echo_example_loads_in_place() {
    let config = framegate::config::Config::load(&repo("examples/echo.toml"))
        .unwrap_or_else(|e| panic!("examples/echo.toml:\n{e}"));
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.routes.len(), 1);
}

#[test]
fn the_default_policy_file_matches_the_built_in_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(repo("policies/default.toml")).unwrap();
    write_files(
        dir.path(),
        &[
            ("policies/shipped.toml", &shipped),
            ("policies/empty.toml", ""),
        ],
    );
    let load = |policy: &str| {
        let text = one_route(policy);
        write_files(dir.path(), &[("framegate.toml", &text)]);
        let c = framegate::config::Config::load(&dir.path().join("framegate.toml")).unwrap();
        // Every field but the name, whatever fields a policy grows.
        let mut p = (*c.routes[0].policy).clone();
        p.name = String::new();
        format!("{p:?}")
    };
    assert_eq!(load("shipped"), load("empty"));
}

#[tokio::test]
async fn the_echo_example_serves() {
    let text = std::fs::read_to_string(repo("examples/echo.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace(
            "\"../policies\"",
            &format!("{:?}", repo("policies").to_str().unwrap()),
        );
    let gw = Gateway::from_toml(&text).start().await;
    let mut ws = raw_upgrade(gw.addr, "/echo", &[]).await;
    ws.send(&client_frame(true, OP_TEXT, "built-in echo ✓".as_bytes()))
        .await;
    assert_eq!(
        ws.read_message().await,
        (OP_TEXT, "built-in echo ✓".as_bytes().to_vec())
    );
    ws.send(&client_frame(true, OP_CLOSE, &close_payload(1000, "bye")))
        .await;
    assert_eq!(ws.expect_close().await, (1000, "bye".into()));
}

#[test]
fn balance_and_weights_are_checked_with_their_lines() {
    let bad = r#"[[listener]]
addr = "127.0.0.1:0"

[[route]]
path = "/"
upstream = "app"

[upstream.app]
servers = ["ws://127.0.0.1:9001", { url = "ws://127.0.0.1:9002", weight = 0 }]
balance = "ip_hash"
max_attempts = 0
"#;
    let stderr = check_refused(bad);
    assert_reported(
        &stderr,
        "bad.toml:9:",
        "weight 0 is out of range (1 to 100)",
    );
    assert_reported(&stderr, "bad.toml:10:", "unknown balance `ip_hash`");
    assert_reported(&stderr, "bad.toml:11:", "max_attempts must be at least 1");
}

#[test]
fn weighted_servers_and_a_balance_check_ok() {
    let good = r#"[[listener]]
addr = "127.0.0.1:0"

[[route]]
path = "/"
upstream = "app"

[upstream.app]
servers = ["ws://127.0.0.1:9001", { url = "ws://127.0.0.1:9002", weight = 3 }]
balance = "cookie:io"
max_attempts = 2
"#;
    let (ok, _, stderr) = check(
        "framegate.toml",
        &[("framegate.toml", good), ("policies/default.toml", "")],
    );
    assert!(ok, "stderr: {stderr}");
}

#[test]
fn a_claim_key_needs_auth_on_the_route() {
    let bad = r#"[[listener]]
addr = "127.0.0.1:0"

[[route]]
path = "/"
upstream = "app"

[upstream.app]
servers = ["ws://127.0.0.1:9001"]
balance = "claim:sub"
"#;
    let stderr = check_refused(bad);
    assert_reported(
        &stderr,
        "bad.toml:6:",
        "upstream `app` balances on the claim `sub`, but policy `default` has no [auth]",
    );
}

#[test]
fn every_problem_in_every_policy_file_is_reported() {
    let config = r#"[[listener]]
addr = "127.0.0.1:0"

[[route]]
path = "/a/"
upstream = "echo"
policy = "one"

[[route]]
path = "/b/"
upstream = "echo"
policy = "two"

[upstream.echo]
builtin = "echo"
"#;
    let one = "[client]\nmax_frame_size = \"lots\"\npong_timout = \"5s\"\n\n[session]\nclose_timeout = 5\n";
    let two = "[limits]\nmax_connections = -1\n\n[orgin]\nallow = []\n";
    let (ok, _, stderr) = check(
        "bad.toml",
        &[
            ("bad.toml", config),
            ("policies/one.toml", one),
            ("policies/two.toml", two),
        ],
    );
    assert!(!ok);
    assert_reported(&stderr, "policies/one.toml:2:", "lots");
    assert_reported(&stderr, "policies/one.toml:3:", "pong_timout");
    assert_reported(&stderr, "policies/one.toml:6:", "expected a string");
    assert_reported(&stderr, "policies/two.toml:2:", "-1");
    assert_reported(&stderr, "policies/two.toml:4:", "orgin");
    assert!(stderr.contains("5 problem(s)"), "{stderr}");
}

#[test]
fn several_mistakes_in_the_config_file_are_all_reported() {
    let bad = r#"[server]
request_timeout = 5

[[listener]]
adr = "127.0.0.1:0"

[[route]]
path = "/"
upstream = "echo"
http = "yes"
"#;
    let stderr = check_refused(bad);
    assert_reported(&stderr, "bad.toml:2:", "expected a string");
    assert_reported(&stderr, "bad.toml:5:", "adr");
    assert_reported(&stderr, "bad.toml:10:", "expected a boolean");
    // Misspelt, `addr` is missing too; said once, at its table.
    assert_reported(&stderr, "bad.toml:4:", "missing field `addr`");
    assert!(stderr.contains("4 problem(s)"), "{stderr}");
    let lines: Vec<_> = stderr
        .lines()
        .map(|l| l.split(':').nth(1).unwrap())
        .collect();
    assert_eq!(
        lines,
        ["2", "4", "5", "10", " 4 problem(s); not started"],
        "in line order"
    );
}

#[test]
fn a_broken_pem_file_is_described_in_words() {
    let bad = r#"[[listener]]
addr = "127.0.0.1:0"
tls = { cert = "cert.pem", key = "key.pem" }

[[route]]
upstream = "echo"

[upstream.echo]
builtin = "echo"
"#;
    let (ok, _, stderr) = check(
        "bad.toml",
        &[
            ("bad.toml", bad),
            ("cert.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n"),
            ("key.pem", ""),
        ],
    );
    assert!(!ok);
    assert_reported(
        &stderr,
        "bad.toml:3:",
        "no end line (`-----END CERTIFICATE-----`)",
    );
    assert!(!stderr.contains("[45, 45"), "a debug value:\n{stderr}");
}

#[test]
fn a_duplicate_route_names_the_route_it_clashes_with() {
    let bad = GOOD.to_owned() + "\n[[route]]\npath = \"/\"\nupstream = \"echo\"\n";
    let stderr = check_refused(&bad);
    assert_reported(
        &stderr,
        "bad.toml:13:",
        "another route already has this host and path: the route at bad.toml:6",
    );
}

#[test]
fn surprising_values_are_warnings_at_their_lines() {
    let config = GOOD.replace(
        "[[listener]]",
        "[server]\ndrain_timeout = \"30d\"\n\n[[listener]]",
    );
    let policy = "[client]\nmax_frame_size = \"2MiB\"\nmax_message_size = \"1MiB\"\npong_timeout = \"300ms\"\n";
    let (ok, stdout, stderr) = check(
        "framegate.toml",
        &[
            ("framegate.toml", &config),
            ("policies/default.toml", policy),
        ],
    );
    assert!(ok, "warnings do not refuse: {stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
    assert_reported(
        &stderr,
        "warning: framegate.toml:3:",
        "drain_timeout = 30days is more than a day",
    );
    assert_reported(
        &stderr,
        "warning: policies/default.toml:2:",
        "above max_message_size",
    );
    assert_reported(
        &stderr,
        "warning: policies/default.toml:4:",
        "pong_timeout = 300ms is under a second",
    );
    assert_eq!(stderr.lines().count(), 3, "{stderr}");
}

#[test]
fn the_default_policy_needs_no_file() {
    let (ok, stdout, stderr) = check("framegate.toml", &[("framegate.toml", GOOD)]);
    assert!(ok, "stderr: {stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
    // Another policy still needs its file, named at the key that names it.
    let other = GOOD.replace(
        "upstream = \"echo\"\n",
        "upstream = \"echo\"\npolicy = \"strict\"\n",
    );
    let (ok, _, stderr) = check("framegate.toml", &[("framegate.toml", &other)]);
    assert!(!ok);
    assert_reported(&stderr, "framegate.toml:8:", "policy `strict`: no file");
}

/// A `policy_dir` the config names but that is not there is a warning: the
/// routes would quietly run on the built-in default policy.
#[test]
fn a_named_policy_dir_that_is_not_there_is_a_warning() {
    let config = format!("policy_dir = \"polices\"\n{GOOD}");
    let (ok, _, stderr) = check("framegate.toml", &[("framegate.toml", &config)]);
    assert!(ok, "a warning does not refuse: {stderr}");
    assert_reported(
        &stderr,
        "warning: framegate.toml:1:",
        "polices is not a directory: routes on the `default` policy get the built-in one",
    );
    // Where it is, nothing is said.
    let config = format!("policy_dir = \"policies\"\n{GOOD}");
    let (ok, _, stderr) = check(
        "framegate.toml",
        &[("framegate.toml", &config), ("policies/default.toml", "")],
    );
    assert!(ok && stderr.is_empty(), "{stderr}");
}

/// The shipped echo example, copied with its policies and run from another
/// directory: its `policy_dir` is found beside the config, not in the
/// working directory, and its page and echo answer.
#[tokio::test]
async fn the_echo_example_runs_from_any_directory() {
    let tree = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(repo("examples/echo.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0");
    // A default policy of its own, to tell it was read: only this Origin.
    let policy = "[origin]\nallow = [\"https://app.test\"]\nallow_missing = false\n";
    write_files(
        tree.path(),
        &[
            ("examples/echo.toml", &example),
            ("policies/default.toml", policy),
        ],
    );
    let bin = Binary::start_from(
        elsewhere.path(),
        &tree.path().join("examples/echo.toml"),
        &[],
    )
    .await;
    let page = http(
        bin.addr,
        "GET / HTTP/1.1\r\nHost: x\r\nOrigin: https://app.test\r\n\r\n",
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(
        page.body_text().contains("new WebSocket("),
        "{}",
        page.body_text()
    );
    let refused = http(
        bin.addr,
        &upgrade_request("/echo", &["Origin: https://evil.test"]),
    )
    .await;
    assert_eq!(
        refused.status, 403,
        "the policy file beside the config applies"
    );
    let mut ws = raw_upgrade(bin.addr, "/echo", &["Origin: https://app.test"]).await;
    ws.send(&client_frame(true, OP_TEXT, b"from elsewhere"))
        .await;
    assert_eq!(
        ws.read_message().await,
        (OP_TEXT, b"from elsewhere".to_vec())
    );
}
