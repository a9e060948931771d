//! The client side of the handshake: a hyper HTTP/1.1 server that checks
//! the upgrade, picks the route, runs admission (so a refused client never
//! reaches a backend), completes the upstream handshake, answers 101 and
//! hands both sockets to the relay.

pub mod forwarded;
pub mod upgrade;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::{
    admission::Admission,
    config::ServerSettings,
    relay::{frame, Session},
    route::{host_of, RouteTable},
    shutdown::Sessions,
    upstream::UpstreamRequest,
};
use upgrade::Reject;

/// What every connection needs to know. Replaced whole on reload; a
/// session keeps the route and policy it started with.
pub struct Context {
    pub routes: RouteTable,
    pub server: ServerSettings,
    /// TLS for each listener, by index (`None` for plain `ws`).
    pub tls: Vec<Option<tokio_rustls::TlsAcceptor>>,
    /// Whether each listener's connections start with a PROXY protocol header, by index.
    pub proxy_protocol: Vec<bool>,
    /// Admission control; its counts are shared by every generation of the config.
    pub admission: Arc<Admission>,
    /// Shared by every generation of the config.
    pub sessions: Arc<Sessions>,
}

/// Serves one client connection (already past TLS, if any).
pub async fn serve<S>(io: S, peer: SocketAddr, tls: bool, ctx: Arc<Context>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.server.request_timeout)
        .max_buf_size(ctx.server.max_header_bytes)
        .max_headers(ctx.server.max_headers);
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, peer, tls, &ctx).await) }
    });
    if let Err(e) = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await
    {
        tracing::debug!(client = %peer, error = %e, "connection ended with an HTTP error");
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    tls: bool,
    ctx: &Context,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match upgrade_request(req, peer, tls, ctx).await {
        Ok(resp) => resp,
        Err(reject) => {
            tracing::info!(
                client = %peer,
                path = %path,
                status = reject.status.as_u16(),
                reason = %reject.message,
                "upgrade refused"
            );
            reject.into_response()
        }
    }
}

async fn upgrade_request(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    tls: bool,
    ctx: &Context,
) -> Result<Response<Full<Bytes>>, Reject> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .map(host_of);
    let route = ctx
        .routes
        .find(host.as_deref(), req.uri().path())
        .ok_or_else(|| Reject::new(StatusCode::NOT_FOUND, "no route for this host and path"))?
        .clone();
    let up = upgrade::validate(req.method(), req.version(), req.headers())?;
    if ctx.sessions.is_draining() {
        return Err(Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down; retry",
        ));
    }
    let client = ctx.admission.client(peer.ip(), req.headers());
    let admitted = ctx
        .admission
        .admit(&route, &client, req.headers(), req.uri(), &up.protocols)
        .await?;

    let mut headers = forwarded::end_to_end(req.headers());
    headers.remove(header::HOST);
    forwarded::add_forwarding(&mut headers, &client, tls, req.headers().get(header::HOST));
    let mut path = route.upstream_path(req.uri());
    let mut protocols = up.protocols.clone();
    admitted.prepare_upstream(&mut headers, &mut path, &mut protocols);
    let upstream_req = UpstreamRequest {
        path,
        headers,
        host: route
            .preserve_host
            .then(|| req.headers().get(header::HOST).cloned())
            .flatten(),
        protocols: &protocols,
    };
    let connected = route
        .upstream
        .connect(upstream_req, &route.policy)
        .await
        .map_err(|e| {
            tracing::warn!(client = %peer, route = %route.label, error = %e, "upstream handshake failed");
            Reject::new(e.status(), e.public_message())
        })?;

    let on_upgrade = hyper::upgrade::on(&mut req);
    let response = upgrade::accept(&up, connected.protocol, connected.headers);
    let path = req.uri().path().to_owned();
    let mut upstream_io = connected.io;
    let server = connected.server;
    let sessions = ctx.sessions.clone();
    let drain = sessions.drain_signal(ctx.server.drain_spread);
    let (client_gate, upstream_gate) = admitted.gates();
    ctx.sessions.spawn(async move {
        // Held for the session's whole life, released on every way out.
        let _slots = admitted.slots;
        let started = Instant::now();
        let client_io = match on_upgrade.await {
            Ok(io) => TokioIo::new(io),
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "client left before the upgrade finished");
                let mut bye = Vec::new();
                let v = crate::relay::close::peer_of_vanished(frame::Side::Client);
                frame::close_frame(&mut bye, frame::Side::Upstream, Some(v.code), v.reason);
                let _ = upstream_io.write_all(&bye).await;
                let _ = upstream_io.shutdown().await;
                return;
            }
        };
        let summary = Session::new(client_io, upstream_io, &route.policy, Some(drain))
            .gated(client_gate, upstream_gate)
            .run()
            .await;
        sessions.ended(summary.clean);
        crate::log::session(
            peer,
            &route.label,
            &path,
            &server,
            started.elapsed(),
            &summary,
        );
    });
    Ok(response)
}
