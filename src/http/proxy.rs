//! Plain HTTP requests on a route (nginx `location` semantics): pages,
//! Engine.IO long-polling, Server-Sent Events, health URLs beside the
//! WebSockets, proxied to the same upstream group over HTTP/1.1.
//!
//! One request, top to bottom:
//!
//! 1. Checks that need no backend: a transfer coding other than chunked
//!    (501: re-framing the body would drop it), `Expect` (417), the
//!    declared body size (413), then admission ([`Kind::Http`]).
//! 2. A connection from the group ([`crate::upstream::Group::checkout`]),
//!    pooled when the chosen server has one idle.
//! 3. The request head, then its body streamed ([`super::body`]). The
//!    gateway answers `Expect: 100-continue` itself as it starts reading the
//!    body (as nginx does), and the backend never sees `Expect`.
//! 4. The response head within `response_timeout` (504), interim `1xx`
//!    answers passed on; meanwhile the client is watched, and one that
//!    hangs up abandons the request (logged as 499, as nginx does).
//! 5. The response head, with the group's sticky cookie when the request
//!    did not carry the one of the server that answered
//!    ([`CookieToSet::set_on_response`]), and its body streamed to the
//!    client, re-framed for it.
//! 6. The upstream connection back to the pool if the exchange left it
//!    clean; the client connection kept for its next request if both sides
//!    allow it.
//!
//! A pooled connection the server closed just before the request was
//! written is the one failure retried: once, on a fresh connection, only
//! for an idempotent request without a body, and only when not one byte of
//! a response arrived. A request whose body was sent is never repeated.
//!
//! Trailers are read and dropped, both ways; `Via` is not added (a backend
//! nginx with its default `gzip_proxied off` would stop compressing).

use std::sync::Arc;

use http::{header, HeaderValue, Request, StatusCode, Version};
use tokio::{io::AsyncWriteExt, time::Instant};

use super::{
    body::{self, CopyError, Sink},
    hung_up, refuse, Context, Located, Peer,
};
use crate::{
    admission::Kind,
    proto::{
        body::{only_chunked, response_framing, Decoder, Framing},
        forwarded,
        head::{self, Head, HeadError, RawResponse},
        host,
        reject::{Reason, Reject},
        upgrade,
    },
    route::Route,
    stream::{ack::Prompt, Transport},
    upstream::{Conn, CookieToSet, MAX_RESPONSE_HEAD, MAX_RESPONSE_HEADERS},
};

/// The first read of a response: room for its head and a body of a few KiB,
/// read and then written on to the client in one piece.
const FIRST_RESPONSE_READ: usize = 32 * 1024;

/// What the client connection does after a request.
pub enum Next {
    /// Read the next request, starting with these bytes.
    KeepAlive(Vec<u8>),
    Close,
}

/// The parts of one exchange the access log reports.
struct Outcome {
    /// `None` when no status reached the client.
    status: Option<u16>,
    bytes_in: u64,
    bytes_out: u64,
    /// The server's label; `None` when none was reached.
    upstream: Option<Arc<str>>,
    reused: bool,
    error: Option<String>,
}

/// Proxies one plain request from `io`.
pub async fn serve(
    io: &mut Transport,
    request: Head<Request<()>>,
    at: Located,
    peer: Peer,
    ctx: &Context,
) -> Next {
    let started = Instant::now();
    let Head { head: req, early } = request;
    let route = at.route.clone();
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let (next, outcome) = exchange(io, req, early, &at, peer, ctx).await;
    let Some(outcome) = outcome else {
        return next;
    };
    // No status reached the client (it left, or the exchange broke): a 5xx.
    ctx.metrics
        .http_request(outcome.status.unwrap_or(0), started.elapsed());
    let host = at.authority.as_ref().map(host::Authority::to_boxed_str);
    crate::log::request(&crate::log::Request {
        client: peer.addr,
        host: host.as_deref(),
        route: &route.label,
        method: &method,
        path: &path,
        status: outcome.status,
        bytes_in: outcome.bytes_in,
        bytes_out: outcome.bytes_out,
        took: started.elapsed(),
        upstream: outcome.upstream.as_deref(),
        reused: outcome.reused,
        error: outcome.error.as_deref(),
    });
    next
}

/// Answers a request with the gateway's own refusal (`upstream` is the
/// server it reached, if any); the connection stays only if `keep` (no
/// body is left unread). Its access line says why.
async fn refused(
    io: &mut Transport,
    reject: Reject,
    keep: bool,
    rest: Vec<u8>,
    upstream: Option<Arc<str>>,
    ctx: &Context,
) -> (Next, Option<Outcome>) {
    let outcome = Outcome {
        status: Some(reject.status.as_u16()),
        bytes_in: 0,
        bytes_out: 0,
        upstream,
        reused: false,
        error: Some(reject.message.clone()),
    };
    let next = match refuse(io, reject, keep, None, ctx).await {
        true => Next::KeepAlive(rest),
        false => Next::Close,
    };
    (next, Some(outcome))
}

async fn exchange(
    io: &mut Transport,
    mut req: Request<()>,
    early: Vec<u8>,
    at: &Located,
    conn: Peer,
    ctx: &Context,
) -> (Next, Option<Outcome>) {
    let route = &at.route;
    let rules = &route.policy.http;
    let peer = conn.addr;
    // Held apart, to be filtered in place for the upstream request.
    let req_headers = std::mem::take(req.headers_mut());
    let framing =
        head::body_framing(req.version(), &req_headers).expect("checked when the head was parsed");
    let client_keeps = req.version() == Version::HTTP_11
        && !upgrade::has_token(&req_headers, header::CONNECTION, "close");
    // A refusal can keep the connection only if no body follows the head.
    let bodiless = framing == Framing::None;
    let keep_if_refused = client_keeps && bodiless;
    if !bodiless {
        // A client may hold its body back until its head is acknowledged
        // (Nagle's algorithm): that ACK goes now, not with the answer.
        io.ack_promptly();
    }

    if framing == Framing::Chunked && !only_chunked(&req_headers) {
        let reject = Reject::new(
            StatusCode::NOT_IMPLEMENTED,
            Reason::Unsupported,
            "only the chunked transfer coding is supported",
        );
        return refused(io, reject, false, early, None, ctx).await;
    }

    let expects = match req_headers.get(header::EXPECT) {
        None => false,
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"100-continue") => true,
        Some(_) => {
            let reject = Reject::new(
                StatusCode::EXPECTATION_FAILED,
                Reason::Unsupported,
                "only 100-continue is supported",
            );
            return refused(io, reject, keep_if_refused, early, None, ctx).await;
        }
    };
    if let Framing::Length(n) = framing {
        if n > rules.max_request_body {
            let reject = Reject::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Reason::TooLarge,
                format!("the request body is over {} bytes", rules.max_request_body),
            );
            return refused(io, reject, false, early, None, ctx).await;
        }
    }
    let client = ctx.admission.client(peer.ip(), &req_headers, conn.vouches);
    let kind = Kind::Http {
        token: rules.auth,
        origin: rules.origin,
    };
    let admission = &route.policy.admission;
    let admitted = match ctx
        .admission
        .admit(
            &route.label,
            admission,
            kind,
            &client,
            &req_headers,
            req.uri(),
        )
        .await
    {
        Ok(a) => a,
        Err(reject) => return refused(io, reject, keep_if_refused, early, None, ctx).await,
    };

    let placement = super::placement(route, &client, &req_headers, req.uri(), &admitted, ctx);
    let host = at.authority.as_ref().map(host::Authority::header_value);
    let mut headers = forwarded::upstream_headers(
        req_headers,
        &client,
        conn.tls,
        host.as_ref(),
        ctx.server.underscores_in_headers,
    );
    headers.remove(header::EXPECT);
    route.upstream.strip_cookie(&mut headers);
    let mut target = route.upstream_path(req.uri());
    admitted.prepare_upstream(&mut headers, &mut target, &mut Vec::new());
    match framing {
        Framing::Length(n) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        Framing::Chunked => {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        Framing::None | Framing::UntilClose => {}
    }

    let upstream = &route.upstream;
    let mut up = match upstream.checkout(&route.policy.upstream, placement).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(client = %peer, route = %route.label, error = %e, "upstream connection failed");
            let reject = super::upstream_reject(&e);
            return refused(io, reject, keep_if_refused, early, None, ctx).await;
        }
    };
    let host = host
        .filter(|_| route.preserve_host)
        .unwrap_or_else(|| up.authority().clone());
    let head = head::encode_request(
        req.method(),
        &target,
        std::iter::once((&header::HOST, &host)).chain(&headers),
    );

    // Send the request (with its body), then read the response head;
    // `rest` ends up holding what the client sent past this request.
    let mut rest = early;
    let mut bytes_in = 0;
    let mut retried = false;
    let answer = loop {
        let sent = match framing {
            Framing::None | Framing::UntilClose => write_head(&mut up, &head, rules.body_timeout)
                .await
                .map_err(Failure::Upstream),
            _ => {
                // Not to HTTP/1.0 clients, which do not know 1xx (RFC 9110 §15.2).
                if expects && rest.is_empty() && req.version() == Version::HTTP_11 {
                    let _ = io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                }
                let mut sink = Sink::new(
                    &mut up.io,
                    head.clone(),
                    framing == Framing::Chunked,
                    rules.body_timeout,
                );
                let from = std::mem::take(&mut rest);
                match body::copy(
                    io,
                    from,
                    Decoder::new(framing),
                    &mut sink,
                    rules.max_request_body,
                    rules.body_timeout,
                )
                .await
                {
                    Ok(copied) => {
                        bytes_in = copied.bytes;
                        rest = copied.rest;
                        Ok(())
                    }
                    Err(e) if e.on_read_side() => Err(Failure::Client(e)),
                    Err(e) => Err(Failure::Upstream(e.to_string())),
                }
            }
        };
        let answer = match sent {
            Err(Failure::Client(e)) => {
                let reject = client_body_reject(&e);
                // The upstream connection goes now, not after the linger.
                let server = Some(up.server());
                drop(up);
                return refused(io, reject, false, Vec::new(), server, ctx).await;
            }
            Err(Failure::Upstream(e)) => Err(Broken::Write(e)),
            Ok(()) => {
                let read = head::read_raw_response(
                    &mut up.io,
                    Vec::with_capacity(FIRST_RESPONSE_READ),
                    MAX_RESPONSE_HEAD,
                    MAX_RESPONSE_HEADERS,
                );
                tokio::select! {
                    biased;
                    r = tokio::time::timeout(rules.response_timeout, read) => match r {
                        Ok(Ok(h)) => Ok(h),
                        Ok(Err(e @ (HeadError::Closed | HeadError::Io(_)))) => Err(Broken::BeforeAnswer(e.to_string())),
                        Ok(Err(e)) => Err(Broken::Invalid(e.to_string())),
                        Err(_) => Err(Broken::Timeout),
                    },
                    () = hung_up(io, &mut rest) => {
                        return (Next::Close, Some(Outcome {
                            status: Some(499),
                            bytes_in,
                            bytes_out: 0,
                            upstream: Some(up.server()),
                            reused: up.reused,
                            error: Some("client closed the connection before the response".into()),
                        }));
                    }
                }
            }
        };
        match answer {
            Ok(h) => break h,
            Err(Broken::Write(_) | Broken::BeforeAnswer(_))
                if up.reused && !retried && bodiless && req.method().is_idempotent() =>
            {
                retried = true;
                match upstream.redial(&up, route.policy.upstream.connect).await {
                    Ok(fresh) => up = fresh,
                    Err(e) => {
                        let reject = super::upstream_reject(&e);
                        let server = Some(up.server());
                        return refused(io, reject, keep_if_refused, rest, server, ctx).await;
                    }
                }
            }
            Err(broken) => {
                let (status, reason, message) = broken.answer();
                tracing::warn!(client = %peer, route = %route.label, upstream = %up.server(), error = %broken, "upstream request failed");
                let mut reject = Reject::new(status, reason, message);
                reject.message = format!("{message} ({broken})");
                // A body, if any, is gone: the connection cannot carry on.
                let server = Some(up.server());
                drop(up);
                return refused(io, reject, keep_if_refused, rest, server, ctx).await;
            }
        }
    };
    let exchange = Exchanged {
        req: &req,
        route,
        tls: conn.tls,
        client_keeps,
        rest,
        bytes_in,
    };
    respond(io, up, answer, exchange, ctx).await
}

/// Why a request could not be sent.
enum Failure {
    /// The client's body failed (it broke off, stalled, was malformed or too large).
    Client(CopyError),
    Upstream(String),
}

/// Why no usable response head came back.
#[derive(Debug, thiserror::Error)]
enum Broken {
    #[error("writing the request: {0}")]
    Write(String),
    /// Closed or reset before one byte of an answer.
    #[error("{0}")]
    BeforeAnswer(String),
    #[error("invalid response: {0}")]
    Invalid(String),
    #[error("no response within response_timeout")]
    Timeout,
}

impl Broken {
    fn answer(&self) -> (StatusCode, Reason, &'static str) {
        match self {
            Broken::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                Reason::UpstreamTimeout,
                "gateway timeout: the upstream did not answer in time",
            ),
            Broken::Invalid(_) => (
                StatusCode::BAD_GATEWAY,
                Reason::UpstreamInvalid,
                "bad gateway: invalid upstream answer",
            ),
            Broken::Write(_) | Broken::BeforeAnswer(_) => (
                StatusCode::BAD_GATEWAY,
                Reason::UpstreamUnreachable,
                "bad gateway: upstream closed the connection",
            ),
        }
    }
}

/// What the client is told when its own body failed.
fn client_body_reject(e: &CopyError) -> Reject {
    let (status, reason) = match e {
        CopyError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, Reason::TooLarge),
        CopyError::ReadTimeout(_) => (StatusCode::REQUEST_TIMEOUT, Reason::Timeout),
        _ => (StatusCode::BAD_REQUEST, Reason::BadRequest),
    };
    Reject::new(status, reason, e.to_string())
}

/// Writes a bodiless request's head.
async fn write_head(up: &mut Conn, head: &[u8], limit: std::time::Duration) -> Result<(), String> {
    let write = async {
        up.io.write_all(head).await?;
        up.io.flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the request could not be written in time".into()),
    }
}

/// A request sent and answered: what the response phase needs of it.
struct Exchanged<'q, 'r> {
    req: &'q Request<()>,
    route: &'r Route,
    /// The client came over TLS (a sticky cookie is then `Secure`).
    tls: bool,
    client_keeps: bool,
    /// What the client sent past the request.
    rest: Vec<u8>,
    bytes_in: u64,
}

/// Passes interim answers on, then writes the response head and streams
/// its body; returns the upstream connection to the pool if it is clean.
async fn respond<'r>(
    io: &mut Transport,
    mut up: Conn,
    mut answer: RawResponse,
    x: Exchanged<'_, 'r>,
    ctx: &Context,
) -> (Next, Option<Outcome>) {
    let (req, rules) = (x.req, &x.route.policy.http);
    let idle = rules.body_timeout;
    let outcome = |status: Option<u16>, bytes_out, up: &Conn, error: Option<String>| Outcome {
        status,
        bytes_in: x.bytes_in,
        bytes_out,
        upstream: Some(up.server()),
        reused: up.reused,
        error,
    };
    // Interim answers: 100 was the gateway's to send (the backend never
    // saw `Expect`); others (103 Early Hints) go on to an HTTP/1.1 client.
    while answer.status.is_informational() {
        let status = answer.status;
        let error = if status == StatusCode::SWITCHING_PROTOCOLS {
            Some("upstream answered 101 to a plain request".to_owned())
        } else {
            let mut interim = head::response_with(status, &forwarded::end_to_end_lines(&answer));
            head::end_head(&mut interim);
            if status != StatusCode::CONTINUE && req.version() == Version::HTTP_11 {
                if let Err(e) = io.write_all(&interim).await {
                    return (
                        Next::Close,
                        Some(outcome(None, 0, &up, Some(e.to_string()))),
                    );
                }
            }
            let read = head::read_raw_response(
                &mut up.io,
                answer.into_early(),
                MAX_RESPONSE_HEAD,
                MAX_RESPONSE_HEADERS,
            );
            match tokio::time::timeout(rules.response_timeout, read).await {
                Ok(Ok(next)) => {
                    answer = next;
                    continue;
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("no final response within response_timeout".into()),
            }
        };
        let failed = outcome(Some(502), 0, &up, error);
        drop(up);
        return bad_gateway(io, ctx, failed).await;
    }
    let framing = match response_framing(req.method(), answer.status, &answer) {
        Ok(f) => f,
        Err(e) => {
            let error = Some(e.to_string());
            let failed = outcome(Some(502), 0, &up, error);
            drop(up);
            return bad_gateway(io, ctx, failed).await;
        }
    };
    // A chunked or close-delimited body reaches an HTTP/1.1 client chunked
    // (so it keeps its connection), an HTTP/1.0 one as it is, to the close.
    let chunked_out = req.version() == Version::HTTP_11
        && matches!(framing, Framing::Chunked | Framing::UntilClose);
    let keep =
        x.client_keeps && !ctx.sessions.is_draining() && (chunked_out || framing.is_delimited());
    // Whether the backend lets this connection carry another request.
    let upstream_keeps = answer.version == Version::HTTP_11
        && !upgrade::has_token(&answer, header::CONNECTION, "close");
    let cookie = up.cookie.as_ref().map(|c| (c, x.tls));
    let head = response_head(&answer, framing, chunked_out, keep, cookie);
    let status = answer.status.as_u16();
    let early = answer.into_early();
    let mut sink = Sink::new(io, head, chunked_out, idle);
    let copied = body::copy(
        &mut up.io,
        early,
        Decoder::new(framing),
        &mut sink,
        u64::MAX,
        idle,
    )
    .await;
    let copied = match copied {
        Ok(c) => c,
        Err(e) => {
            // Part of the response may be out: the client learns of the
            // failure from the connection closing before the body's end.
            let side = if e.on_read_side() {
                "upstream"
            } else {
                "client"
            };
            let error = Some(format!("{side}: {e}"));
            return (Next::Close, Some(outcome(Some(status), 0, &up, error)));
        }
    };
    let out = outcome(Some(status), copied.bytes, &up, None);
    let reusable = upstream_keeps && framing.is_delimited() && copied.rest.is_empty();
    if reusable {
        x.route.upstream.checkin(up);
    }
    if keep {
        return (Next::KeepAlive(x.rest), Some(out));
    }
    super::linger_close(io, ctx.server.request_timeout).await;
    (Next::Close, Some(out))
}

/// Answers 502 for an upstream answer that cannot be passed on.
async fn bad_gateway(
    io: &mut Transport,
    ctx: &Context,
    outcome: Outcome,
) -> (Next, Option<Outcome>) {
    let reject = Reject::new(
        StatusCode::BAD_GATEWAY,
        Reason::UpstreamInvalid,
        "bad gateway: invalid upstream answer",
    );
    let _ = refuse(io, reject, false, None, ctx).await;
    (Next::Close, Some(outcome))
}

/// The client-facing head: the backend's end-to-end headers as it sent
/// them, with the sticky cookie to set (and whether the client came over
/// TLS), framed for this client.
fn response_head(
    resp: &RawResponse,
    framing: Framing,
    chunked_out: bool,
    keep: bool,
    cookie: Option<(&CookieToSet, bool)>,
) -> Vec<u8> {
    let mut lines = forwarded::end_to_end_lines(resp);
    if let Some((cookie, tls)) = cookie {
        cookie.set_on_response(&mut lines, resp, tls);
    }
    let mut out = head::response_with(resp.status, &lines);
    match framing {
        Framing::Length(n) => {
            let mut digits = itoa::Buffer::new();
            head::header_line(
                &mut out,
                &header::CONTENT_LENGTH,
                digits.format(n).as_bytes(),
            );
        }
        _ if chunked_out => head::header_line(&mut out, &header::TRANSFER_ENCODING, b"chunked"),
        // A response to HEAD, or a 304, states the length of the body it
        // does not carry.
        Framing::None => {
            if let Some(n) = resp.get(&header::CONTENT_LENGTH) {
                head::header_line(&mut out, &header::CONTENT_LENGTH, n);
            }
        }
        Framing::Chunked | Framing::UntilClose => {}
    }
    if !keep {
        head::header_line(&mut out, &header::CONNECTION, b"close");
    }
    head::end_head(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(wire: &[u8]) -> RawResponse {
        let mut io = wire;
        head::read_raw_response(&mut io, Vec::new(), 4096, 16)
            .await
            .unwrap()
    }

    fn text(head: Vec<u8>) -> String {
        String::from_utf8(head).unwrap()
    }

    #[tokio::test]
    async fn the_client_head_keeps_the_end_to_end_lines_in_order_and_is_framed_afresh() {
        let resp = answer(
            b"HTTP/1.1 200 OK\r\nX-B: 1\r\nConnection: keep-alive, X-Secret\r\n\
              Content-Length: 5\r\nX-Secret: s\r\nSet-Cookie: a=1\r\nX-A: 2\r\n\r\nhello",
        )
        .await;
        let head = response_head(&resp, Framing::Length(5), false, true, None);
        assert_eq!(
            text(head),
            "HTTP/1.1 200 OK\r\nx-b: 1\r\nset-cookie: a=1\r\nx-a: 2\r\ncontent-length: 5\r\n\r\n"
        );
        // Re-framed chunked for an HTTP/1.1 client that is then let go.
        let resp =
            answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: e\r\n\r\n").await;
        let head = response_head(&resp, Framing::Chunked, true, false, None);
        assert_eq!(
            text(head),
            "HTTP/1.1 200 OK\r\netag: e\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        // A repeated header stays where each line came, not grouped by name.
        let resp =
            answer(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-A: 2\r\nSet-Cookie: b=2\r\n\r\n")
                .await;
        let head = response_head(&resp, Framing::Length(0), false, true, None);
        assert_eq!(
            text(head),
            "HTTP/1.1 200 OK\r\nset-cookie: a=1\r\nx-a: 2\r\nset-cookie: b=2\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_bodiless_answer_states_the_length_it_was_declared() {
        let resp =
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\nContent-Length: 42\r\n\r\n").await;
        let head = response_head(&resp, Framing::None, false, true, None);
        assert_eq!(text(head), "HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n");
        let resp = answer(b"HTTP/1.1 304 Not Modified\r\nETag: e\r\n\r\n").await;
        let head = response_head(&resp, Framing::None, false, true, None);
        assert_eq!(text(head), "HTTP/1.1 304 Not Modified\r\netag: e\r\n\r\n");
    }
}
