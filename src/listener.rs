//! Accepting connections: TCP options, the TLS handshake (with a deadline),
//! then the HTTP side. One task per connection; a failure in one never
//! touches another.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::http::{self, Context};

/// Accepts on listener number `index` until `stop` resolves, serving each
/// connection with the config current when it arrived. Returning drops the
/// socket, so new connections are refused at once.
pub async fn serve(
    index: usize,
    listener: TcpListener,
    current: Arc<ArcSwap<Context>>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let ctx = current.load_full();
                let tls = ctx.tls.get(index).cloned().flatten();
                tokio::spawn(connection(stream, peer, tls, ctx));
            }
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    ctx: Arc<Context>,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => http::serve(stream, peer, false, ctx).await,
        Some(acceptor) => {
            let limit = ctx.server.tls_handshake_timeout;
            match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => http::serve(tls_stream, peer, true, ctx).await,
                Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
            }
        }
    }
}
