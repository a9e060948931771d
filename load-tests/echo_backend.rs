//! The echo backend of the load tests: every text or binary message comes
//! back on the same connection.
//!
//! It shares a core with the load generator, so it has to be cheap: it sets
//! `TCP_NODELAY`, queues every message that is already readable and flushes
//! once per batch (one `write` for many echoes instead of one each), and runs
//! on a single-threaded runtime unless `--threads` asks for more.
//!
//! ```sh
//! cargo run --release --example echo_backend -- --listen 127.0.0.1:0 --threads 1
//! ```
//!
//! The first line on stdout is `listening ADDR`, so a script can start it on
//! port 0 and read the port back. `--ports N` listens on N ports at once,
//! served by the same runtime: the line is then `listening ADDR ADDR …`.
//! The load tests' 8-server pool is this one process on 8 ports, so the
//! backend costs the same CPU behind one server as behind eight (eight
//! processes would share their core eight ways and be woken eight times as
//! often, which is the backend's cost, not the gateway's).

#[path = "backend_runtime.rs"]
mod backend_runtime;

use std::{io::Write as _, net::SocketAddr};

use clap::Parser;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tungstenite::{protocol::WebSocketConfig, Message};

/// Echo backend for the load tests.
#[derive(Parser)]
struct Cli {
    /// Address to listen on; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Ports to listen on, all echoing alike: each a free one for port 0,
    /// else the `--listen` port and the ones after it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    ports: u16,
    /// Runtime worker threads; 1 runs everything on the main thread.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// tungstenite's read buffer per connection, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    read_buffer: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = backend_runtime::build(cli.threads)?;
    rt.block_on(async {
        let mut listeners = Vec::new();
        for i in 0..cli.ports {
            let mut addr = cli.listen;
            if addr.port() != 0 {
                let port = addr.port().checked_add(i);
                addr.set_port(port.ok_or_else(|| anyhow::anyhow!("--ports runs past port 65535"))?);
            }
            listeners.push(listen(addr)?);
        }
        let addrs = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.to_string()))
            .collect::<std::io::Result<Vec<_>>>()?;
        // One line, written once every port listens: a script that sees it
        // can connect to any of them.
        println!("listening {}", addrs.join(" "));
        std::io::stdout().flush()?;
        let serving = listeners.into_iter().map(|l| serve(l, cli.read_buffer));
        futures_util::future::join_all(serving).await;
        Ok(())
    })
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    // The load tests hold ~9,000 connections at once: a deep backlog keeps
    // a burst of connects from being dropped and retried.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn serve(listener: TcpListener, read_buffer: usize) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(echo(stream, read_buffer));
            }
            Err(e) => {
                // Out of file descriptors, usually: back off instead of spinning.
                eprintln!("echo_backend: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn echo(stream: TcpStream, read_buffer: usize) {
    let _ = stream.set_nodelay(true);
    // 64 KiB reads take a whole window of 16 KiB messages at once; the
    // default 128 KiB would only cost memory on the idle test.
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .max_message_size(Some(64 << 20));
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    // tungstenite answers pings and closes itself; reading on after a close
    // is what sends its reply, and the stream ends once the handshake is done.
    while let Some(Ok(first)) = ws.next().await {
        let mut queued = false;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            if matches!(msg, Message::Text(_) | Message::Binary(_)) {
                if ws.feed(msg).await.is_err() {
                    return;
                }
                queued = true;
            }
            // Take whatever is already readable without waiting, so one
            // flush covers the whole batch.
            if let Some(Some(Ok(m))) = ws.next().now_or_never() {
                next = Some(m);
            }
        }
        if queued && ws.flush().await.is_err() {
            return;
        }
    }
}
