//! A client connection: read a request, validate its host and pick its
//! route; then either the WebSocket handshake (check the upgrade, run
//! admission so a refused client never reaches a backend, complete the
//! upstream handshake, answer 101, and run the session in the same task)
//! or, for a plain request, [`proxy`] it and read the next one.
//!
//! Heads are read and written here directly (httparse parses, [`body`]
//! streams bodies) rather than through a general HTTP server: no second
//! task, no upgrade hand-off, the relay gets the socket itself, and an
//! idle keep-alive connection holds no buffer at all. Why not hyper's
//! server: it keeps an 8 KiB read buffer per connection, idle or not.

mod body;
mod proxy;

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use http::{header, Request, StatusCode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::{timeout, Instant},
};

use crate::{
    admission::{client_ip, Admission, Admitted, Kind},
    proto::{
        close,
        forwarded::{self, ClientIp},
        frame,
        head::{self, HeadError},
        host,
        reject::{Reason, Reject},
        target, upgrade,
    },
    relay::{Jitter, Session},
    route::{Route, Routes},
    shutdown::Sessions,
    stream::{Stream, Transport},
    upstream::{Facts, InFlight, Placement, UpstreamError, UpstreamRequest},
};

/// How much a client may send ahead of its 101 while the upstream is being
/// reached; the relay takes it from there.
const EARLY_LIMIT: usize = 64 * 1024;

/// What every connection needs to know. Replaced whole on reload; a
/// session keeps the route and policy it started with.
pub struct Context {
    /// Each listener's routes, by listener number.
    pub routes: Routes,
    pub server: ServerSettings,
    /// Admission control; its counts are shared by every generation of the config.
    pub admission: Arc<Admission>,
    /// Shared by every generation of the config.
    pub sessions: Arc<Sessions>,
    /// Shared by every generation of the config.
    pub metrics: Arc<crate::observe::Metrics>,
}

/// Settings that apply before a route is known (see
/// `config::file::ServerSection`, where each is documented).
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub request_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub drain_timeout: Duration,
    pub drain_spread: Option<Duration>,
    /// How long an idle client connection waits for its next request.
    pub keepalive_timeout: Duration,
    /// Forward request headers whose names contain `_`.
    pub underscores_in_headers: bool,
    /// Trusted proxies, connection limits, client grouping.
    pub admission: crate::admission::ServerRules,
}

/// Who a connection is from, as the listener learned it.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The socket peer, or the source a PROXY protocol header named.
    pub addr: SocketAddr,
    /// The connection came in over TLS.
    pub tls: bool,
    /// The number (config order) of the listener that accepted it, which
    /// decides the routes it can reach; stable across reloads, as the
    /// listeners are.
    pub listener: usize,
    /// Whether this peer's `X-Forwarded-For` may be believed (it still has
    /// to be a trusted proxy). False when its PROXY header said it is the
    /// client itself (`UNKNOWN`, v2 `LOCAL`): then nobody vouched for the
    /// headers the client wrote.
    pub vouches: bool,
}

/// An upgrade both sides accepted: what the session needs.
struct Upgraded {
    /// Bytes the client sent behind its request.
    client_early: Vec<u8>,
    /// The request's path, for the access log.
    path: String,
    accepted: Accepted,
}

/// What the upstream side of an accepted upgrade leaves the session.
struct Accepted {
    upstream: Stream,
    route: Arc<Route>,
    admitted: Admitted,
    /// Counts the session on its server for as long as it lives, and names
    /// the server for the log.
    load: InFlight,
    /// Its server's beacon (health): the gateway's drain, its server's, and
    /// a rebalance's shed.
    drain: crate::relay::DrainSignal,
    /// The validated host and the chosen subprotocol, for the access log.
    host: Option<Box<str>>,
    subprotocol: Option<Box<str>>,
}

/// Serves one client connection (already past TLS, if any). `inflight`
/// counts it as not yet upgraded until the client has its 101.
pub async fn serve(
    mut io: Transport,
    peer: Peer,
    ctx: Arc<Context>,
    inflight: crate::admission::pending::Inflight,
) {
    // Both phases are boxed: the handshake's state is large (kilobytes) and
    // short-lived, and neither an idle keep-alive connection nor the task,
    // which lives on as the session, holds it.
    let mut inflight = Some(inflight);
    let mut pending = Vec::new();
    let up = loop {
        match Box::pin(handshake(&mut io, peer, &ctx, pending)).await {
            Handshake::Upgraded(up) => break up,
            Handshake::Served(rest) => {
                // A client that has had a response is no longer pending.
                inflight.take();
                pending = match rest.is_empty() {
                    false => rest,
                    // Boxed: its timer is not carried by the session's task.
                    true => match Box::pin(next_request(&mut io, &ctx)).await {
                        Some(first) => first,
                        None => return,
                    },
                };
            }
            Handshake::Done => return,
        }
    };
    drop(inflight);
    let session = session(io, peer.addr, up, &ctx);
    // A session keeps its own route and policy, not the whole config generation.
    drop(ctx);
    session.await;
}

/// The session of an accepted upgrade, ready to run; it logs itself when done.
/// `up` is taken boxed and emptied here, so that its allocation is freed
/// now: a box moved out of is freed where its binding ends, which in
/// `serve` would be after the session (a few hundred bytes for its life).
fn session(
    io: Transport,
    peer: SocketAddr,
    up: Box<Upgraded>,
    ctx: &Context,
) -> Pin<Box<impl Future<Output = ()>>> {
    let up = *up;
    let sessions = ctx.sessions.clone();
    let metrics = ctx.metrics.clone();
    let Accepted {
        upstream,
        route,
        admitted,
        load,
        mut drain,
        host,
        subprotocol,
    } = up.accepted;
    let subject: Option<Box<str>> = admitted.subject().map(Box::from);
    drain.spread = ctx.server.drain_spread;
    let (client_gate, upstream_gate) = admitted.gates();
    let slots = admitted.slots;
    let client = Stream::new(io, up.client_early);
    let mut session = Session::new(
        client,
        upstream,
        &route.policy.session,
        Some(drain),
        Jitter::random(),
    )
    .gated(client_gate, upstream_gate)
    .counted_in(metrics.traffic());
    let path = up.path;
    Box::pin(async move {
        // Held for the session's whole life, released on every way out.
        let _slots = slots;
        let open = route.metrics.opened();
        let started = Instant::now();
        // Counted as ended before it stops being tracked: the drain report,
        // read once nothing is tracked, must include it.
        let summary = sessions
            .track(async {
                let summary = session.run().await;
                sessions.ended(summary.clean);
                summary
            })
            .await;
        drop(open);
        metrics.session_ended(&route.metrics, &summary);
        let line = crate::log::Session {
            client: peer,
            host: host.as_deref(),
            route: &route.label,
            path: &path,
            subprotocol: subprotocol.as_deref(),
            subject: subject.as_deref(),
            upstream: load.label(),
            took: started.elapsed(),
        };
        crate::log::session(&line, &summary);
    })
}

/// How [`handshake`] left the connection.
enum Handshake {
    /// The client has its 101.
    Upgraded(Box<Upgraded>),
    /// A plain request was proxied and the connection kept; these bytes
    /// followed it.
    Served(Vec<u8>),
    Done,
}

/// Reads requests (the first from `pending` and the socket) and answers
/// them until one is upgraded, a plain one is proxied, or the connection is
/// done. A refused request leaves the connection open for another, as
/// HTTP/1.1 keep-alive would. After its first plain request the connection
/// no longer counts as pending: it has shown itself a client, and its idle
/// waits are bounded by `keepalive_timeout` ([`next_request`]).
async fn handshake(
    io: &mut Transport,
    client: Peer,
    ctx: &Context,
    mut pending: Vec<u8>,
) -> Handshake {
    let peer = client.addr;
    let limits = &ctx.server;
    loop {
        let read = head::read_request(io, pending, limits.max_header_bytes, limits.max_headers);
        let request = match timeout(limits.request_timeout, read).await {
            Ok(Ok(r)) => r,
            Ok(Err(HeadError::Closed | HeadError::Truncated | HeadError::Io(_))) => {
                return Handshake::Done
            }
            Ok(Err(e)) => {
                let seen = Seen::unread(peer);
                refuse(io, head_reject(e), false, Some(seen), ctx).await;
                return Handshake::Done;
            }
            Err(_) => {
                let reject = Reject::new(
                    StatusCode::REQUEST_TIMEOUT,
                    Reason::Timeout,
                    "no complete request within request_timeout",
                );
                refuse(io, reject, false, Some(Seen::unread(peer)), ctx).await;
                return Handshake::Done;
            }
        };
        let path = request.head.uri().path().to_owned();
        let keep_alive = upgrade::keeps_alive(request.head.version(), request.head.headers());
        let wants_ws = upgrade::has_token(request.head.headers(), header::UPGRADE, "websocket");
        let at = match locate(&request.head, client, ctx) {
            // Plain HTTP: no WebSocket asked for (an `Upgrade` to anything
            // else, `h2c` say, is per hop and ignored) on a route that
            // proxies plain requests.
            Ok(at) if at.route.http && !wants_ws => {
                // Tracked, so a drain waits for the request to finish.
                // Boxed: its state is kilobytes, which every upgrade's
                // handshake would otherwise carry and move.
                let next = Box::pin(proxy::serve(io, request, at, client, ctx));
                return match ctx.sessions.track(next).await {
                    // An idle connection holds no buffer.
                    proxy::Next::KeepAlive(rest) if rest.is_empty() => {
                        Handshake::Served(Vec::new())
                    }
                    proxy::Next::KeepAlive(rest) => Handshake::Served(rest),
                    proxy::Next::Close => Handshake::Done,
                };
            }
            Ok(at) => at,
            Err((reject, authority)) => {
                let seen = Seen {
                    what: if wants_ws {
                        "upgrade refused"
                    } else {
                        "request refused"
                    },
                    client: peer,
                    host: authority.as_ref(),
                    route: None,
                    path: Some(&path),
                };
                let keep_alive = keep_alive && !ctx.sessions.is_draining();
                if refuse(io, reject, keep_alive, Some(seen), ctx).await {
                    pending = request.early;
                    continue;
                }
                return Handshake::Done;
            }
        };
        // For the refusal line, should the upgrade be refused.
        let (route, authority) = (at.route.clone(), at.authority.clone());
        let mut early = request.early;
        // A client that hangs up meanwhile abandons the upstream handshake at
        // once, instead of holding a backend connection until its timeout.
        // Biased: an upstream handshake that has finished is always taken,
        // so a backend that already sent its 101 gets a close frame (below,
        // when the 101 to the client cannot be written), never a bare close.
        let asked = Instant::now();
        let answer = tokio::select! {
            biased;
            answer = Box::pin(upgrade_request(request.head, at, client, ctx)) => answer,
            () = hung_up(io, &mut early) => {
                tracing::debug!(client = %peer, "client left during the upstream handshake");
                return Handshake::Done;
            }
        };
        let (response, accepted) = match answer {
            Ok(ok) => {
                ctx.metrics.upgraded(asked.elapsed());
                ok
            }
            Err(reject) => {
                let keep_alive = keep_alive && !ctx.sessions.is_draining();
                let seen = Seen {
                    what: "upgrade refused",
                    client: peer,
                    host: authority.as_ref(),
                    route: Some(&route.label),
                    path: Some(&path),
                };
                if refuse(io, reject, keep_alive, Some(seen), ctx).await {
                    pending = early;
                    continue;
                }
                return Handshake::Done;
            }
        };
        if let Err(e) = io.write_all(&response).await {
            tracing::debug!(client = %peer, error = %e, "client left before the upgrade finished");
            let mut upstream = accepted.upstream;
            let mut bye = Vec::new();
            let v = close::peer_of_vanished(frame::Side::Client);
            frame::close_frame(&mut bye, frame::Side::Upstream, Some(v.code), v.reason);
            let _ = timeout(limits.request_timeout, async {
                let _ = upstream.write_all(&bye).await;
                let _ = upstream.shutdown().await;
            })
            .await;
            return Handshake::Done;
        }
        return Handshake::Upgraded(Box::new(Upgraded {
            client_early: early,
            path,
            accepted,
        }));
    }
}

/// Waits, on an idle keep-alive connection, until the next request begins;
/// `None` if it does not within `keepalive_timeout`, or the gateway drains.
/// Over TCP no buffer is held meanwhile: the request is read once it has
/// arrived. Over TLS rustls may already hold it decrypted, so it is read
/// (its first bytes are returned).
async fn next_request(io: &mut Transport, ctx: &Context) -> Option<Vec<u8>> {
    let first = async {
        let mut first = Vec::new();
        match io {
            Transport::Left(tcp) => tcp.readable().await.ok()?,
            Transport::Right(_) => {
                first.reserve(FIRST_TLS_READ);
                io.read_buf(&mut first).await.ok()?;
            }
        }
        Some(first)
    };
    tokio::select! {
        first = timeout(ctx.server.keepalive_timeout, first) => first.ok().flatten(),
        () = ctx.sessions.draining() => None,
    }
}

/// What an idle TLS keep-alive connection reads its next request into first.
const FIRST_TLS_READ: usize = 1024;

/// Where a request goes: its route, by its validated host.
struct Located {
    route: Arc<Route>,
    authority: Option<host::Authority>,
}

/// Validates the host and picks the route (400, 404). A 404 comes with the
/// host, for its log line.
fn locate(
    req: &Request<()>,
    conn: Peer,
    ctx: &Context,
) -> Result<Located, (Reject, Option<host::Authority>)> {
    let authority = host::of_request(
        req.version(),
        req.headers(),
        authority(req.uri()).as_ref(),
        conn.tls,
    )
    .map_err(|e| {
        let reject = Reject::new(StatusCode::BAD_REQUEST, Reason::BadHost, e.to_string());
        (reject, None)
    })?;
    let found = ctx.routes.find(
        conn.listener,
        authority.as_ref().map(host::Authority::host),
        req.uri().path(),
    );
    match found {
        Some(route) => Ok(Located {
            route: route.clone(),
            authority,
        }),
        None => Err((
            Reject::new(
                StatusCode::NOT_FOUND,
                Reason::NoRoute,
                "no route for this host and path",
            ),
            authority,
        )),
    }
}

/// Resolves when the client hangs up. What it sends meanwhile (frames sent
/// ahead of the 101) is kept in `early`, up to [`EARLY_LIMIT`]; past that
/// the client is no longer read until the session starts.
async fn hung_up(io: &mut Transport, early: &mut Vec<u8>) {
    // Read through the stack: a client that sends nothing before its 101
    // (nearly every one) costs no buffer.
    let mut chunk = [0; 256];
    while early.len() < EARLY_LIMIT {
        let room = (EARLY_LIMIT - early.len()).min(chunk.len());
        match io.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => early.extend_from_slice(&chunk[..n]),
        }
    }
    std::future::pending().await
}

fn head_reject(e: HeadError) -> Reject {
    let (status, reason) = match e {
        HeadError::TooLarge(_) | HeadError::TooManyHeaders(_) => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reason::TooLarge,
        ),
        HeadError::Target(target::TargetError::Authority(_)) => {
            (StatusCode::BAD_REQUEST, Reason::BadHost)
        }
        HeadError::Target(_) => (StatusCode::BAD_REQUEST, Reason::BadTarget),
        _ => (StatusCode::BAD_REQUEST, Reason::BadRequest),
    };
    Reject::new(status, reason, e.to_string())
}

/// Answers `reject`; returns whether the connection stays open for another
/// request. When it does not, our side is shut and whatever the client
/// still sends is read and dropped for a while, so that the close does not
/// reset the connection before the client has read the answer. `seen`, when
/// given, is logged as a refusal line (the proxy logs its own request line).
async fn refuse(
    io: &mut Transport,
    reject: Reject,
    keep_alive: bool,
    seen: Option<Seen<'_>>,
    ctx: &Context,
) -> bool {
    if let Some(seen) = seen {
        let host = seen.host.map(host::Authority::to_boxed_str);
        crate::log::refusal(&crate::log::Refusal {
            what: seen.what,
            client: seen.client,
            host: host.as_deref(),
            route: seen.route,
            path: seen.path,
            status: reject.status.as_u16(),
            reason: &reject.message,
            cause: reject.reason.as_str(),
        });
    }
    ctx.metrics.refused(reject.status.as_u16(), reject.reason);
    let answer = reject.encode(keep_alive);
    let limit = ctx.server.request_timeout;
    let written = timeout(limit, io.write_all(&answer)).await;
    if !keep_alive {
        // Boxed: its read buffer is not carried by every handshake.
        Box::pin(linger_close(io, limit)).await;
    }
    keep_alive && matches!(written, Ok(Ok(())))
}

impl Seen<'_> {
    /// A refusal of a request that could not be read.
    fn unread(client: SocketAddr) -> Self {
        Seen {
            what: "request refused",
            client,
            host: None,
            route: None,
            path: None,
        }
    }
}

/// What a refusal line says about the refused request.
struct Seen<'a> {
    /// "upgrade refused" or "request refused".
    what: &'static str,
    client: SocketAddr,
    host: Option<&'a host::Authority>,
    route: Option<&'a str>,
    /// `None` when no request could be read.
    path: Option<&'a str>,
}

/// Closes a connection after its last answer: our side is shut, and what
/// the client still sends is read and dropped for up to `limit`, so that
/// the close does not reset the connection before the client has read the
/// answer (unread bytes at close make the kernel send a reset).
async fn linger_close(io: &mut Transport, limit: Duration) {
    let _ = timeout(limit, async {
        io.shutdown().await?;
        let mut sink = [0u8; 1024];
        while io.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// The authority of an absolute-form target; [`head`] validated and
/// normalised it, so it parses again.
fn authority(uri: &http::Uri) -> Option<host::Authority> {
    host::Authority::parse(uri.authority()?.as_str().as_bytes()).ok()
}

/// Checks the request, runs admission, completes the upstream handshake.
/// `Ok` holds the 101 to send and the session's parts.
async fn upgrade_request(
    mut req: Request<()>,
    at: Located,
    conn: Peer,
    ctx: &Context,
) -> Result<(Vec<u8>, Accepted), Reject> {
    let (peer, tls) = (conn.addr, conn.tls);
    let Located { route, authority } = at;
    let up = upgrade::validate(req.method(), req.version(), req.headers())?;
    if ctx.sessions.is_draining() {
        return Err(Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::Draining,
            "shutting down; retry",
        ));
    }
    let client = ctx.admission.client(peer.ip(), req.headers(), conn.vouches);
    let admitted = ctx
        .admission
        .admit(
            &route.label,
            &route.policy.admission,
            Kind::Upgrade {
                protocols: &up.protocols,
            },
            &client,
            req.headers(),
            req.uri(),
        )
        .await?;
    let placement = placement(&route, &client, req.headers(), req.uri(), &admitted, ctx);

    // The validated host, as sent upstream in `X-Forwarded-Host` and (with
    // `preserve_host`) `Host`.
    let host = authority.as_ref().map(host::Authority::header_value);
    let mut headers = forwarded::upstream_headers(
        std::mem::take(req.headers_mut()),
        &client,
        tls,
        host.as_ref(),
        ctx.server.underscores_in_headers,
    );
    route.upstream.strip_cookie(&mut headers);
    let mut path = route.upstream_path(req.uri());
    let mut protocols = up.protocols.clone();
    admitted.prepare_upstream(&mut headers, &mut path, &mut protocols);
    let upstream_req = UpstreamRequest {
        path,
        headers,
        host: host.filter(|_| route.preserve_host),
        protocols: &protocols,
    };
    let connected = route
        .upstream
        .connect(upstream_req, &route.policy.upstream, placement)
        .await
        .map_err(|e| {
            tracing::warn!(client = %peer, route = %route.label, error = %e, "upstream handshake failed");
            match e {
                // The backend's own refusal (401 with `WWW-Authenticate`, 429
                // with `Retry-After`, a JSON error) is the client's answer.
                UpstreamError::Refused { status, answer, .. } => {
                    Reject::passed_on(status, &answer.headers, answer.body)
                }
                e => upstream_reject(&e),
            }
        })?;
    ctx.metrics
        .upstream_took(connected.connect_took, connected.handshake_took);
    let subprotocol = connected.protocol.as_ref().and_then(|p| p.to_str().ok());
    let subprotocol = subprotocol.map(Box::from);
    let mut end_to_end = connected.headers;
    if let Some(cookie) = &connected.cookie {
        cookie.set_on_101(&mut end_to_end, tls);
    }
    Ok((
        upgrade::accept(&up, connected.protocol.as_ref(), &end_to_end),
        Accepted {
            upstream: connected.io,
            route,
            admitted,
            load: connected.load,
            drain: connected.drain,
            host: authority.as_ref().map(host::Authority::to_boxed_str),
            subprotocol,
        },
    ))
}

/// What the request asks of the route's upstream balance (its key, its
/// sticky cookie): read the same way for an upgrade and for a plain
/// request (Engine.IO's polling requests and the upgrade that follows them
/// must reach one server), from the request as the client sent it and the
/// client as admission resolved and grouped it.
fn placement(
    route: &Route,
    client: &ClientIp,
    headers: &http::HeaderMap,
    uri: &http::Uri,
    admitted: &Admitted,
    ctx: &Context,
) -> Placement {
    let prefix = ctx.server.admission.client_ipv6_prefix;
    route.upstream.placement(&Facts {
        client: client_ip::client_key(client.ip, prefix),
        headers,
        uri,
        claims: admitted.claims(),
    })
}

/// What the client is told when the upstream cannot be reached: its status
/// and line, and `Retry-After` when no server is up (a 503 at once rather
/// than an attempt at a server known to be down).
pub(crate) fn upstream_reject(e: &UpstreamError) -> Reject {
    let reject = Reject::new(e.status(), e.reason(), e.public_message());
    match e.retry_after() {
        Some(secs) => reject.with_header(http::header::RETRY_AFTER, secs.into()),
        None => reject,
    }
}
