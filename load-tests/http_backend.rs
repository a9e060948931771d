//! The HTTP backend of the load tests' HTTP workload (see
//! `load-tests/README.md`): fixed bodies for `GET`, a sink for uploads.
//!
//! | request         | response                                           |
//! |-----------------|----------------------------------------------------|
//! | `GET /100`      | 200, a 100-byte body                               |
//! | `GET /16k`      | 200, a 16 KiB body                                 |
//! | `POST /upload`  | the body is read and dropped as it arrives, then 200, `ok\n` |
//! | anything else   | 404                                                |
//!
//! Every response has a `Content-Length` and connections are kept alive.
//! It shares a core with the load generator, so it is cheap: hyper's HTTP/1
//! server, bodies built once and shared (`Bytes`), `TCP_NODELAY`, and a
//! single-threaded runtime unless `--threads` asks for more.
//!
//! ```sh
//! cargo run --release --example http_backend -- --listen 127.0.0.1:0 --threads 1
//! ```
//!
//! The first line on stdout is `listening ADDR`, so a script can start it on
//! port 0 and read the port back.

#[path = "backend_runtime.rs"]
mod backend_runtime;

use std::{convert::Infallible, io::Write as _, net::SocketAddr};

use bytes::Bytes;
use clap::Parser;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// HTTP backend for the load tests.
#[derive(Parser)]
struct Cli {
    /// Address to listen on; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Runtime worker threads; 1 runs everything on the main thread.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// The two response bodies, built once; every response shares them.
#[derive(Clone)]
struct Bodies {
    small: Bytes,
    large: Bytes,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = backend_runtime::build(cli.threads)?;
    rt.block_on(serve(cli.listen))
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    // The idle test opens a few thousand connections in bursts: a deep
    // backlog keeps them from being dropped and retried.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener: TcpListener = socket.listen(4096)?;
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let bodies = Bodies {
        small: Bytes::from(vec![b'a'; 100]),
        large: Bytes::from(vec![b'b'; 16 * 1024]),
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, bodies.clone()));
            }
            Err(e) => {
                // Out of file descriptors, usually: back off instead of spinning.
                eprintln!("http_backend: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(stream: TcpStream, bodies: Bodies) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| respond(req, bodies.clone()));
    // Keep-alive is hyper's default; a peer that goes away just ends the task.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn respond(
    req: Request<Incoming>,
    bodies: Bodies,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match (req.method(), req.uri().path()) {
        (&Method::GET, "/100") => bodies.small,
        (&Method::GET, "/16k") => bodies.large,
        (&Method::POST, "/upload") => {
            // Frame by frame, so an upload is never held whole in memory.
            let mut incoming = req.into_body();
            while let Some(frame) = incoming.frame().await {
                if frame.is_err() {
                    return Ok(status(StatusCode::BAD_REQUEST));
                }
            }
            Bytes::from_static(b"ok\n")
        }
        _ => return Ok(status(StatusCode::NOT_FOUND)),
    };
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Full::new(body))
        .expect("a valid response"))
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}
