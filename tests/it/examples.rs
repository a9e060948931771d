//! The shipped examples cannot go stale: each `examples/NAME.sh` is run as
//! a user would (one command), one real client exchange is made through
//! it, and it is stopped; every `policies/*.toml` and `examples/*.toml`
//! passes `framegate check`.

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
};

use rustls_pki_types::pem::PemObject as _;
use tokio::process::{Child, Command};

use crate::support::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The `.toml` files of a repository directory.
fn tomls(dir: &str) -> Vec<PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(repo(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    found.sort();
    found
}

/// The secret `policies/public-jwt.toml` reads from the environment.
const SECRET_ENV: &str = "FRAMEGATE_EXAMPLE_SECRET";

/// `framegate check --config CONFIG`, asserted to pass without warnings.
fn assert_checks(config: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_framegate"))
        .args(["check", "--config"])
        .arg(config)
        .env(SECRET_ENV, "an example secret of thirty-two bytes")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}:\n{stderr}", config.display());
    assert!(stderr.is_empty(), "{} warns:\n{stderr}", config.display());
}

#[test]
fn every_example_and_policy_passes_check() {
    let examples = tomls("examples");
    assert!(examples.len() >= 4, "{examples:?}");
    for example in examples {
        // A copy beside the files its script makes at run time (a
        // certificate), with the repository's policies.
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(&example)
            .unwrap()
            .replace("\"../policies\"", &format!("{:?}", repo("policies")));
        let copy = dir.path().join(example.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        let tls = Leaf::self_signed(&["localhost"]);
        write_files(
            dir.path(),
            &[
                ("tls/cert.pem", &tls.cert_pem),
                ("tls/key.pem", &tls.key_pem),
            ],
        );
        assert_checks(&copy);
    }
    let policies = tomls("policies");
    assert!(policies.len() >= 4, "{policies:?}");
    for policy in policies {
        let name = policy.file_stem().unwrap().to_str().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "policy_dir = {:?}\n{}",
            repo("policies"),
            Gateway::builder()
                .route(route("/", "backend").policy(name))
                .upstream("backend", &["ws://127.0.0.1:9"])
                .toml()
        );
        write_files(dir.path(), &[("framegate.toml", &config)]);
        assert_checks(&dir.path().join("framegate.toml"));
    }
}

/// An example's script, running in a process group of its own so that
/// stopping it stops what it started (its trap kills its children).
struct Example {
    child: Child,
    lines: Lines,
}

impl Example {
    fn start(script: &str, env: &[(&str, &str)]) -> Example {
        let mut command = Command::new("bash");
        command
            .arg(repo(script))
            .env("FRAMEGATE_BIN", env!("CARGO_BIN_EXE_framegate"))
            .env("RUST_LOG", "info")
            // The gateway's lines in JSON, each checked (the script's own
            // are text).
            .env("FRAMEGATE_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command.as_std_mut().process_group(0);
        let mut child = command.spawn().expect("bash runs the example");
        // The gateway's own lines (`listening`) go to standard error.
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let lines = Lines::read_both(script, out, err).checked_objects();
        Example { child, lines }
    }

    /// The text after `prefix` on the next line that has it.
    async fn after(&mut self, prefix: &str) -> String {
        let line = self.lines.wait_for(prefix).await;
        line.split_once(prefix).unwrap().1.trim().to_owned()
    }

    async fn gateway_addr(&mut self) -> SocketAddr {
        let line = self.lines.wait_for(r#""message":"listening""#).await;
        fields(&line)["addr"].as_str().unwrap().parse().unwrap()
    }

    fn signal_group(&self, name: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-s", name, "--", &format!("-{pid}")])
                .status();
        }
    }

    /// SIGTERM to the script: it stops what it started (the gateway drains
    /// and says `stopped`), and exits 0. (Ctrl-C would signal the whole
    /// group, and the script's own TERM would then be the gateway's second
    /// signal, which skips the drain.)
    async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-s", "TERM", &pid])
            .status()
            .unwrap();
        let status = guard("the example to stop", self.child.wait())
            .await
            .unwrap();
        assert!(status.success(), "{status}");
        self.lines.wait_for(r#""message":"stopped""#).await;
        // Checks what came after, to the end.
        self.lines.so_far();
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        self.signal_group("KILL");
    }
}

#[tokio::test]
async fn the_chat_example_runs() {
    let mut chat = Example::start("examples/chat.sh", &[("PORT", "0"), ("BACKEND_PORT", "0")]);
    let addr = chat.gateway_addr().await;
    let page = http(addr, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body_text().contains("new WebSocket("),
        "{}",
        page.body_text()
    );
    let mut alice = raw_upgrade(addr, "/ws", &[]).await;
    let mut bob = raw_upgrade(addr, "/ws", &[]).await;
    alice
        .send(&client_frame(true, OP_TEXT, b"alice: hi all"))
        .await;
    // Broadcast: the sender hears it too, then the other. Bob is connected
    // before Alice sends, as his 101 came after the backend's.
    assert_eq!(
        alice.read_message().await,
        (OP_TEXT, b"alice: hi all".to_vec())
    );
    assert_eq!(
        bob.read_message().await,
        (OP_TEXT, b"alice: hi all".to_vec())
    );
    for mut ws in [alice, bob] {
        ws.send(&client_frame(true, OP_CLOSE, &close_payload(1000, "bye")))
            .await;
        assert_eq!(ws.expect_close().await.0, 1000);
    }
    chat.stop().await;
}

#[tokio::test]
async fn the_public_wss_example_runs() {
    let mut public = Example::start("examples/public-wss.sh", &[("PORT", "0")]);
    let cert = public.after("certificate:").await;
    let token = public.after("token:").await;
    let addr = public.gateway_addr().await;
    framegate::tls::install_provider();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&cert).unwrap();
    for der in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(der.unwrap()).unwrap();
    }
    let tls = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let anonymous = send_request(
        tls_connect(addr, "localhost", tls.clone()).await,
        &upgrade_request("/", &[]),
    )
    .await;
    assert_eq!(anonymous.response.status, 401, "no token, no session");
    let bearer = format!("Authorization: Bearer {token}");
    let mut ws = raw_upgrade_on(
        tls_connect(addr, "localhost", tls).await,
        &upgrade_request("/", &[&bearer]),
    )
    .await;
    ws.send(&client_frame(true, OP_TEXT, b"over wss")).await;
    assert_eq!(ws.read_message().await, (OP_TEXT, b"over wss".to_vec()));
    ws.send(&client_frame(true, OP_CLOSE, &close_payload(1000, "bye")))
        .await;
    assert_eq!(ws.expect_close().await, (1000, "bye".into()));
    public.stop().await;
}

/// The load tests' echo backend, which `examples/sticky.sh` runs three of:
/// built beside the binary under test when `cargo test --all-targets` has
/// not built it already.
fn echo_backend() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_framegate"));
    let path = bin.with_file_name("examples").join("echo_backend");
    if !path.exists() {
        let profile = bin.parent().unwrap().file_name().unwrap();
        let mut build = std::process::Command::new(env!("CARGO"));
        build.args(["build", "--example", "echo_backend"]);
        if profile == "release" {
            build.arg("--release");
        }
        let built = build.current_dir(repo(".")).status().unwrap();
        assert!(built.success(), "cargo build --example echo_backend");
    }
    path
}

#[tokio::test]
async fn the_sticky_example_runs() {
    let backend = echo_backend();
    let mut sticky = Example::start(
        "examples/sticky.sh",
        &[
            ("PORT", "0"),
            ("BACKEND_PORT", "0"),
            ("ECHO_BACKEND_BIN", backend.to_str().unwrap()),
        ],
    );
    for i in 1..=3 {
        sticky.after(&format!("backend {i}: listening")).await;
    }
    let addr = sticky.gateway_addr().await;
    let mut ws = raw_upgrade(addr, "/", &[]).await;
    ws.send(&client_frame(true, OP_TEXT, b"kept on one server"))
        .await;
    assert_eq!(
        ws.read_message().await,
        (OP_TEXT, b"kept on one server".to_vec())
    );
    ws.send(&client_frame(true, OP_CLOSE, &close_payload(1000, "bye")))
        .await;
    assert_eq!(ws.expect_close().await.0, 1000);
    sticky.stop().await;
}
