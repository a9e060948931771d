//! framegate: a WebSocket gateway that relays frames, not bytes.
//!
//! It completes the WebSocket handshake with the client *and* with the
//! backend, then relays parsed frames between the two legs. Seeing frames
//! is what lets it enforce message limits, answer pings per leg and close
//! both legs with a proper close frame.
//!
//! # Layout
//!
//! The data path, in the order a connection meets it:
//!
//! - [`listener`]: accept, TCP options, TLS handshake with a deadline.
//! - [`tls`]: rustls configs; certificates chosen by SNI.
//! - [`http`]: the hyper server; [`http::upgrade`] checks the RFC 6455
//!   request, [`http::forwarded`] builds the upstream request's headers.
//! - [`route`]: host and longest-prefix path matching, path rewrite.
//! - [`upstream`]: pick a server, connect, complete its handshake *before*
//!   the client gets a 101.
//! - [`relay`]: the session: frames both ways, close handshake on both legs.
//! - [`log`]: one access-log line per session.
//!
//! [`config`] turns the operator's TOML into checked values once, at start.
//! [`echo`] is the built-in backend used by the default config.

#![forbid(unsafe_code)]

pub mod config;
pub mod echo;
pub mod http;
pub mod listener;
pub mod log;
pub mod relay;
pub mod route;
pub mod tls;
pub mod upstream;

use std::{collections::HashMap, future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use config::{Config, ServerSpec, UpstreamConfig};
use route::{Route, RouteTable};
use upstream::Upstream;

/// A gateway with its sockets bound, ready to serve.
pub struct Gateway {
    listeners: Vec<(TcpListener, Option<TlsAcceptor>)>,
    ctx: Arc<http::Context>,
}

impl Gateway {
    /// Starts built-in upstreams and binds every listener.
    pub async fn bind(config: Config) -> anyhow::Result<Gateway> {
        tls::install_provider();
        let mut upstreams = HashMap::new();
        for (name, spec) in config.upstreams {
            let servers = match spec {
                UpstreamConfig::Servers(servers) => servers,
                UpstreamConfig::BuiltinEcho => {
                    let addr = echo::spawn()
                        .await
                        .context("starting the built-in echo upstream")?;
                    vec![ServerSpec {
                        url: format!("ws://{addr} (builtin echo)"),
                        host: addr.ip().to_string(),
                        port: addr.port(),
                        tls: None,
                    }]
                }
            };
            upstreams.insert(name.clone(), Arc::new(Upstream::new(name, servers)));
        }
        let routes = config
            .routes
            .iter()
            .map(|r| {
                Route::new(
                    r.host.as_deref(),
                    &r.path,
                    r.rewrite.as_deref(),
                    upstreams[&r.upstream].clone(),
                    r.policy.clone(),
                    r.preserve_host,
                )
            })
            .collect();
        let mut listeners = Vec::new();
        for l in config.listeners {
            let socket = TcpListener::bind(l.addr)
                .await
                .with_context(|| format!("cannot listen on {}", l.addr))?;
            listeners.push((socket, l.tls.map(TlsAcceptor::from)));
        }
        Ok(Gateway {
            listeners,
            ctx: Arc::new(http::Context {
                routes: RouteTable::new(routes),
                server: config.server,
            }),
        })
    }

    /// The bound addresses, in config order (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Serves until `stop` resolves; then stops accepting.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let (tx, rx) = tokio::sync::watch::channel(());
        let mut tasks = Vec::new();
        for (socket, tls) in self.listeners {
            let scheme = if tls.is_some() { "wss" } else { "ws" };
            if let Ok(addr) = socket.local_addr() {
                tracing::info!(addr = %addr, scheme, "listening");
            }
            let mut rx = rx.clone();
            let stopped = async move {
                let _ = rx.changed().await;
            };
            tasks.push(tokio::spawn(listener::serve(
                socket,
                tls,
                self.ctx.clone(),
                stopped,
            )));
        }
        stop.await;
        drop(tx);
        for t in tasks {
            let _ = t.await;
        }
    }
}
