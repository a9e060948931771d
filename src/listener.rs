//! Accepting connections: TCP options, the PROXY protocol header (when the
//! listener expects one), the TLS handshake (with a deadline), then the
//! HTTP side. One task per connection; a failure in one never touches another.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsStream};

use crate::{
    admission::client_ip,
    http::{self, Context},
    stream::Transport,
};

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
                let proxied = ctx.proxy_protocol.get(index).copied().unwrap_or(false);
                tokio::spawn(connection(stream, peer, tls, proxied, ctx));
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
    mut stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    proxied: bool,
    ctx: Arc<Context>,
) {
    let _ = stream.set_nodelay(true);
    let peer = match proxied {
        false => peer,
        // Boxed, like TLS below: only PROXY protocol listeners pay for its state.
        true => match Box::pin(proxied_peer(&mut stream, peer, &ctx)).await {
            Some(p) => p,
            None => return,
        },
    };
    match tls {
        None => http::serve(Transport::Tcp(stream), peer, false, ctx).await,
        // A TLS session's state is kilobytes: boxed, it is not part of every
        // plain connection's task (which tokio::spawn allocates and moves).
        Some(acceptor) => Box::pin(serve_tls(stream, peer, acceptor, ctx)).await,
    }
}

/// The TLS handshake (with its deadline), then the HTTP side.
async fn serve_tls(stream: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, ctx: Arc<Context>) {
    let limit = ctx.server.tls_handshake_timeout;
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let tls = Transport::Tls(Box::new(TlsStream::Server(tls)));
            http::serve(tls, peer, true, ctx).await
        }
        Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
    }
}

/// The client a PROXY protocol header names (or the socket peer, for a
/// header that names none). `None` closes the connection: the header is
/// missing or bad, or the peer is not a trusted proxy and so may not speak for anyone.
async fn proxied_peer(
    stream: &mut TcpStream,
    peer: SocketAddr,
    ctx: &Context,
) -> Option<SocketAddr> {
    if !ctx.admission.trusts(peer.ip()) {
        tracing::info!(client = %peer, "refused: PROXY protocol listener, peer not in trusted_proxies");
        return None;
    }
    let limit = ctx.server.request_timeout;
    match tokio::time::timeout(limit, client_ip::read_proxy_header(stream)).await {
        Ok(Ok(source)) => Some(source.unwrap_or(peer)),
        Ok(Err(e)) => {
            tracing::info!(client = %peer, error = %e, "refused: bad PROXY protocol header");
            None
        }
        Err(_) => {
            tracing::debug!(client = %peer, "PROXY protocol header timed out");
            None
        }
    }
}
