//! Plain HTTP proxying on the WebSocket routes, end to end: the real
//! gateway, real sockets, and a real HTTP/1.1 backend ([`HttpBackend`],
//! hyper's server) that counts its connections and records every request.
//!
//! - [`exchange`]: one request and its response: pages and WebSockets on
//!   one port, keep-alive, bodies both ways, HEAD/204/304, `Expect`,
//!   hop-by-hop and forwarding headers, WebSocket-only routes.
//! - [`streaming`]: event streams, long-polls, and 100 MiB each way with the
//!   gateway's memory measured.
//! - [`pool`]: upstream keep-alive, and the one retry on a dead pooled
//!   connection (a GET, never a POST).
//! - [`limits`]: 413 and 504.
//! - [`admission`]: the token and the origin check on plain requests, and
//!   the access log.
//! - [`smuggling`]: ambiguous framing is refused and nothing extra reaches
//!   the backend.

mod admission;
mod exchange;
mod limits;
mod pool;
mod smuggling;
mod streaming;

use crate::support::*;

/// A gateway with one route, `/`, to `backend`, whose policy has the text
/// `policy` and whose upstream the extra lines `upstream`.
async fn gateway(backend: &HttpBackend, policy: &str, upstream: &str) -> Gateway {
    Gateway::builder()
        .route(route("/", "b").policy("p"))
        .upstream_with("b", &[backend.url()], upstream)
        .policy("p", policy)
        .start()
        .await
}

/// A gateway with one route, `/`, to a raw server at `addr`.
async fn to_raw(addr: std::net::SocketAddr) -> Gateway {
    Gateway::builder()
        .route(route("/", "raw"))
        .upstream("raw", &[format!("ws://{addr}")])
        .start()
        .await
}

/// A backend that answers every request with its path, but holds requests
/// for `held` until the returned sender says `true`.
async fn holding(held: &'static str) -> (HttpBackend, tokio::sync::watch::Sender<bool>) {
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let backend = HttpBackend::serve(move |seen| {
        let mut release = release.clone();
        async move {
            if seen.path == held {
                release.wait_for(|r| *r).await.unwrap();
            }
            text(http::StatusCode::OK, &seen.path)
        }
    })
    .await;
    (backend, release_tx)
}
