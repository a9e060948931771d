//! The gateway under test, in-process: a builder that writes `framegate.toml`
//! (and its policies and other files) into a temp dir, loads it as the
//! binary would, and serves it; the running [`Gateway`] and its
//! [`framegate::Handle`].

use std::{fmt::Write as _, net::SocketAddr, num::NonZeroUsize, path::Path};

use framegate::{admission::Stats, config::Config, shutdown::DrainReport, Handle};
use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};

use super::{
    assert_no_bad_line, check_in_process_logs, connect, raw_upgrade, Backend, BackendConn, Binary,
    Client, Fleet, Leaf, RawWs,
};

/// Writes `contents` to `name` (a relative path) in `dir`, creating parent
/// directories.
pub fn write_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, contents).unwrap();
}

/// [`write_file`] for several text files.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        write_file(dir, name, text);
    }
}

/// A TOML string literal.
fn quoted(s: &str) -> String {
    toml::Value::from(s).to_string()
}

/// A `[[route]]` table.
#[derive(Clone)]
pub struct Route {
    lines: Vec<String>,
}

/// A route for requests under `path` to the upstream `upstream`.
pub fn route(path: &str, upstream: &str) -> Route {
    Route::any(upstream).with("path", quoted(path))
}

impl Route {
    /// A route without a `path` (every path) to `upstream`.
    pub fn any(upstream: &str) -> Route {
        Route { lines: Vec::new() }.with("upstream", quoted(upstream))
    }

    /// Bound to the listeners of these names (see [`GatewayBuilder::named_listener`]).
    pub fn listeners(self, names: &[&str]) -> Route {
        let names: Vec<String> = names.iter().map(|n| quoted(n)).collect();
        self.with("listeners", format!("[{}]", names.join(", ")))
    }

    pub fn host(self, host: &str) -> Route {
        self.with("host", quoted(host))
    }

    pub fn policy(self, name: &str) -> Route {
        self.with("policy", quoted(name))
    }

    pub fn strip_prefix(self) -> Route {
        self.with("strip_prefix", "true".into())
    }

    pub fn rewrite(self, to: &str) -> Route {
        self.with("rewrite", quoted(to))
    }

    pub fn preserve_host(self, on: bool) -> Route {
        self.with("preserve_host", on.to_string())
    }

    /// Whether plain HTTP requests are proxied (`http = ...`).
    pub fn http(self, on: bool) -> Route {
        self.with("http", on.to_string())
    }

    fn with(mut self, key: &str, value: String) -> Route {
        self.lines.push(format!("{key} = {value}"));
        self
    }
}

/// What a [`Gateway`] is started from; see [`Gateway::builder`].
#[must_use]
pub struct GatewayBuilder {
    /// The whole `framegate.toml`, for tests of the file format itself.
    toml: Option<String>,
    server: Vec<String>,
    listeners: Vec<String>,
    routes: Vec<Route>,
    upstreams: Vec<String>,
    /// Lines for `[resolver]`, if any.
    resolver: Option<String>,
    /// Lines for `[log]`, if any.
    log: Option<String>,
    /// Lines for `[admin]` (its `addr` is `127.0.0.1:0`), if any.
    admin: Option<String>,
    files: Vec<(String, Vec<u8>)>,
    workers: usize,
}

impl GatewayBuilder {
    /// An `[admin]` section on `127.0.0.1:0` with extra `lines`.
    pub fn admin(mut self, lines: &str) -> Self {
        self.admin = Some(lines.to_owned());
        self
    }

    /// Lines for `[server]`.
    pub fn server(mut self, lines: &str) -> Self {
        if !lines.is_empty() {
            self.server.push(lines.to_owned());
        }
        self
    }

    /// Lines for `[log]` (`format = "json"`...).
    pub fn log(mut self, lines: &str) -> Self {
        self.log = Some(lines.to_owned());
        self
    }

    /// A listener on `127.0.0.1:0` with extra `lines` (`tls = ...`,
    /// `proxy_protocol = true`). Without any, the gateway has one plain listener.
    pub fn listener(mut self, lines: &str) -> Self {
        self.listeners.push(lines.to_owned());
        self
    }

    /// [`listener`](Self::listener) named `name`, for routes to be bound to.
    pub fn named_listener(self, name: &str, lines: &str) -> Self {
        self.listener(&format!("name = {}\n{lines}", quoted(name)))
    }

    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// `[upstream.NAME]` with these servers.
    pub fn upstream(self, name: &str, servers: &[impl AsRef<str>]) -> Self {
        self.upstream_with(name, servers, "")
    }

    /// [`upstream`](Self::upstream) with extra `lines` (`ca = ...`).
    pub fn upstream_with(mut self, name: &str, servers: &[impl AsRef<str>], lines: &str) -> Self {
        let servers: Vec<String> = servers.iter().map(|s| quoted(s.as_ref())).collect();
        self.upstreams.push(format!(
            "[upstream.{name}]\nservers = [{}]\n{lines}",
            servers.join(", ")
        ));
        self
    }

    /// An upstream per member of `fleet`, named after it.
    pub fn upstream_each(mut self, fleet: &Fleet) -> Self {
        for (name, backend) in &fleet.members {
            self = self.upstream(name, &[backend.url()]);
        }
        self
    }

    /// `[resolver]` with these lines (`servers = [...]`).
    pub fn resolver(mut self, lines: &str) -> Self {
        self.resolver = Some(lines.to_owned());
        self
    }

    /// `[upstream.NAME]`, the built-in echo backend.
    pub fn builtin_echo(mut self, name: &str) -> Self {
        self.upstreams
            .push(format!("[upstream.{name}]\nbuiltin = \"echo\"\n"));
        self
    }

    /// One route, `/`, to the upstream `backend` at `url`, with the default policy.
    pub fn to(self, url: &str) -> Self {
        self.route(route("/", "backend").policy("default"))
            .upstream("backend", &[url])
    }

    /// [`to`](Self::to) with the route's policy `test` of the given text.
    pub fn with_policy_to(self, policy: &str, url: &str) -> Self {
        self.route(route("/", "backend").policy("test"))
            .upstream("backend", &[url])
            .policy("test", policy)
    }

    /// `policies/NAME.toml`. Without one, `default` is empty (the built-in defaults).
    pub fn policy(self, name: &str, text: &str) -> Self {
        self.file(&format!("policies/{name}.toml"), text)
    }

    /// Any other file beside `framegate.toml`.
    pub fn file(mut self, name: &str, contents: impl AsRef<[u8]>) -> Self {
        self.files
            .push((name.to_owned(), contents.as_ref().to_vec()));
        self
    }

    /// `STEM.pem` and `STEM.key`: a certificate and its key.
    pub fn leaf(self, stem: &str, leaf: &Leaf) -> Self {
        self.file(&format!("{stem}.pem"), &leaf.cert_pem)
            .file(&format!("{stem}.key"), &leaf.key_pem)
    }

    /// Worker threads (2 unless told: sessions land on both, so limits,
    /// reloads and the drain are tested across threads).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// The text of `framegate.toml`.
    pub fn toml(&self) -> String {
        if let Some(text) = &self.toml {
            return text.clone();
        }
        let mut out = String::new();
        if !self.server.is_empty() {
            writeln!(out, "[server]\n{}\n", self.server.join("\n")).unwrap();
        }
        let plain = [String::new()];
        let listeners = if self.listeners.is_empty() {
            &plain[..]
        } else {
            &self.listeners
        };
        for lines in listeners {
            writeln!(out, "[[listener]]\naddr = \"127.0.0.1:0\"\n{lines}\n").unwrap();
        }
        for route in &self.routes {
            writeln!(out, "[[route]]\n{}\n", route.lines.join("\n")).unwrap();
        }
        for upstream in &self.upstreams {
            writeln!(out, "{upstream}").unwrap();
        }
        if let Some(lines) = &self.resolver {
            writeln!(out, "[resolver]\n{lines}\n").unwrap();
        }
        if let Some(lines) = &self.log {
            writeln!(out, "[log]\n{lines}\n").unwrap();
        }
        if let Some(lines) = &self.admin {
            writeln!(out, "[admin]\naddr = \"127.0.0.1:0\"\n{lines}\n").unwrap();
        }
        out
    }

    /// Writes `framegate.toml`, an empty default policy and the files into `dir`.
    pub fn write(&self, dir: &Path) {
        write_file(dir, "framegate.toml", self.toml());
        write_file(dir, "policies/default.toml", "");
        for (name, contents) in &self.files {
            write_file(dir, name, contents);
        }
    }

    /// Loads the config from a new temp dir and serves it.
    pub async fn start(self) -> Gateway {
        framegate::tls::install_provider();
        check_in_process_logs();
        let dir = tempfile::tempdir().unwrap();
        self.write(dir.path());
        let config = Config::load(&dir.path().join("framegate.toml"))
            .unwrap_or_else(|e| panic!("test config does not load:\n{e}"));
        let workers = NonZeroUsize::new(self.workers).expect("at least one worker");
        let gw = framegate::Gateway::bind(config, workers)
            .await
            .expect("bind");
        let addrs = gw.local_addrs();
        let admin = gw.admin_addr();
        let handle = gw.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(gw.run(async move {
            let _ = stopped.await;
        }));
        Gateway {
            addr: addrs[0],
            addrs,
            admin,
            dir,
            handle,
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// Runs the framegate binary on this config, from a new temp dir.
    pub async fn binary(self, args: &[&str]) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        self.write(dir.path());
        Binary::start_in(dir, args).await
    }
}

/// A running in-process gateway; it drains when dropped, and fails the
/// test then if a gateway in this process has printed a bad log line
/// (see [`check_in_process_logs`]).
pub struct Gateway {
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Every listener's address, in config order.
    pub addrs: Vec<SocketAddr>,
    /// The admin listener's address, with `[admin]`.
    pub admin: Option<SocketAddr>,
    /// The directory holding `framegate.toml`, its policies and other files.
    pub dir: TempDir,
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    done: Option<JoinHandle<DrainReport>>,
}

impl Gateway {
    /// A gateway built up from listeners, routes, upstreams, policies and files.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder {
            toml: None,
            server: Vec::new(),
            listeners: Vec::new(),
            routes: Vec::new(),
            upstreams: Vec::new(),
            resolver: None,
            log: None,
            admin: None,
            files: Vec::new(),
            workers: 2,
        }
    }

    /// A gateway from the whole text of `framegate.toml`.
    pub fn from_toml(text: &str) -> GatewayBuilder {
        GatewayBuilder {
            toml: Some(text.to_owned()),
            ..Gateway::builder()
        }
    }

    /// A gateway with one route, `/`, to the backend at `url` (default policy).
    pub async fn to(url: &str) -> Gateway {
        Gateway::builder().to(url).start().await
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Admission's live counts.
    pub fn stats(&self) -> Stats {
        self.handle.admission_stats()
    }

    /// Reloads `framegate.toml` from [`dir`](Self::dir), as SIGHUP does.
    pub async fn reload(&self) {
        let config = Config::load(&self.dir.path().join("framegate.toml")).unwrap();
        self.handle.reload(config).await.unwrap();
    }

    /// Starts the drain (as SIGTERM does); the task ends with its report.
    pub fn stop(&mut self) -> JoinHandle<DrainReport> {
        self.stop.take().expect("stopped once").send(()).unwrap();
        self.done.take().unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Not while the test fails already: a panic in a panic aborts.
        if !std::thread::panicking() {
            assert_no_bad_line();
        }
    }
}

/// A gateway with one route, `/`, in front of a scripted backend: what most
/// relay tests start from. Each session is the client's end and the
/// backend's end of one connection through it.
pub struct Rig {
    pub gw: Gateway,
    pub backend: Backend,
}

impl Rig {
    /// With the default policy.
    pub async fn new() -> Rig {
        let backend = Backend::scripted().await;
        let gw = Gateway::to(&backend.url()).await;
        Rig { gw, backend }
    }

    /// With a route policy of this text.
    pub async fn with_policy(policy: &str) -> Rig {
        let backend = Backend::scripted().await;
        let gw = Gateway::builder()
            .with_policy_to(policy, &backend.url())
            .start()
            .await;
        Rig { gw, backend }
    }

    /// A session from the raw client.
    pub async fn raw(&mut self) -> (RawWs, BackendConn) {
        let ws = raw_upgrade(self.gw.addr, "/", &[]).await;
        (ws, self.backend.accept().await)
    }

    /// A session from a tungstenite client.
    pub async fn client(&mut self) -> (Client, BackendConn) {
        let client = connect(self.gw.addr, "/").await;
        (client, self.backend.accept().await)
    }
}
