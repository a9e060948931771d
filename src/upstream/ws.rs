//! The WebSocket client handshake over a dialed transport: write the
//! upgrade request, read the answer's head, check that it is a 101 for
//! what was asked, and hand back the stream with the negotiated
//! subprotocol and the answer's end-to-end headers.

use std::{io, time::Duration};

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::timeout,
};

use super::{dial, error::Refusal, Endpoint, Phase, UpstreamError};
use crate::{
    proto::{
        body::{self, Decoder},
        forwarded,
        head::{self, HeadError, Lines, RawResponse},
        upgrade,
    },
    stream::ack::Prompt,
};

/// The largest refusal body passed on to the client (a JSON error, a
/// login hint); a longer one is replaced by a line of the gateway's.
pub const MAX_REFUSAL_BODY: usize = 64 * 1024;

/// Bounds on the upstream's answer head (its own headers, `Set-Cookie`s and all).
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// What to ask the upstream for, built from the client's request.
pub struct UpstreamRequest<'a> {
    /// Path and query after the route's rewrite.
    pub path: String,
    /// End-to-end and forwarding headers (no Host, no handshake headers).
    pub headers: HeaderMap,
    /// The client's `Host`, when the route preserves it; otherwise the
    /// server's own `host:port` is sent.
    pub host: Option<HeaderValue>,
    /// The subprotocols the client offered.
    pub protocols: &'a [String],
}

/// A completed client handshake.
pub struct Handshake<S> {
    /// The transport, positioned after the answer's head.
    pub io: S,
    /// What the server sent right behind its 101 (frames), read with the head.
    pub early: Vec<u8>,
    /// The subprotocol the server chose (one the client offered).
    pub protocol: Option<HeaderValue>,
    /// End-to-end headers of the 101 (e.g. `Set-Cookie`), in the order
    /// the server sent them.
    pub headers: Lines,
}

/// Runs the upgrade with `endpoint` over `io`, within `limit` from the first
/// byte written to the end of the answer's head. Every error is in
/// [`Phase::Upgrade`].
pub async fn handshake<S>(
    io: S,
    endpoint: &Endpoint,
    req: &UpstreamRequest<'_>,
    limit: Duration,
) -> Result<Handshake<S>, UpstreamError>
where
    S: AsyncRead + AsyncWrite + Prompt + Unpin,
{
    timeout(limit, exchange(io, endpoint, req))
        .await
        .map_err(|_| UpstreamError::timeout(endpoint.label(), Phase::Upgrade, limit))?
}

async fn exchange<S>(
    mut io: S,
    endpoint: &Endpoint,
    req: &UpstreamRequest<'_>,
) -> Result<Handshake<S>, UpstreamError>
where
    S: AsyncRead + AsyncWrite + Prompt + Unpin,
{
    let server = endpoint.label();
    // The connection broke (or closed) after it was reached: reported as
    // unreachable, like a failed connect, or as TLS failing when TLS broke it.
    let broken = |source| UpstreamError::broken(server, Phase::Upgrade, source);
    let key = upgrade::new_key();
    let key = std::str::from_utf8(&key).expect("base64 is ASCII");
    io.write_all(&request_head(req, endpoint.authority(), key))
        .await
        .map_err(broken)?;
    // The request carried the ACK the dial may have held back.
    if dial::may_hold_ack(endpoint) {
        io.ack_promptly();
    }
    let answer =
        head::read_raw_response(&mut io, Vec::new(), MAX_RESPONSE_HEAD, MAX_RESPONSE_HEADERS)
            .await
            .map_err(|e| match e {
                HeadError::Io(e) => broken(e),
                HeadError::Closed | HeadError::Truncated => {
                    broken(io::ErrorKind::UnexpectedEof.into())
                }
                e => UpstreamError::invalid(server, e.to_string()),
            })?;
    let protocol = match check_answer(&answer, key, req.protocols) {
        Ok(p) => p,
        Err(Bad::Invalid(why)) => return Err(UpstreamError::invalid(server, why)),
        Err(Bad::Status(status)) => {
            // A refusal is passed on whole: its head as a map.
            let rh = answer
                .to_response()
                .map_err(|e| UpstreamError::invalid(server, e.to_string()))?
                .headers;
            let body = refusal_body(&mut io, status, &rh, answer.into_early()).await;
            let mut headers = forwarded::end_to_end(rh);
            let body = match body {
                Some(body) => body,
                None => {
                    // The status and headers still go on; the body is ours.
                    for h in [header::CONTENT_TYPE, header::CONTENT_ENCODING] {
                        headers.remove(h);
                    }
                    b"the upstream refused the upgrade; its answer's body is not passed on\n"
                        .to_vec()
                }
            };
            return Err(UpstreamError::Refused {
                server: server.to_owned(),
                status,
                answer: Box::new(Refusal { headers, body }),
            });
        }
    };
    Ok(Handshake {
        io,
        protocol,
        headers: forwarded::end_to_end_lines(&answer),
        early: answer.into_early(),
    })
}

/// The body of a refused upgrade, read to its end, starting with `read`
/// (what came with the head); `None` if it is malformed, breaks off or is
/// over [`MAX_REFUSAL_BODY`]. The caller's handshake timeout bounds the wait.
async fn refusal_body<S: AsyncRead + Unpin>(
    io: &mut S,
    status: StatusCode,
    headers: &HeaderMap,
    mut read: Vec<u8>,
) -> Option<Vec<u8>> {
    let mut decoder = Decoder::new(body::response_framing(&Method::GET, status, headers).ok()?);
    let mut body = Vec::new();
    loop {
        let mut pos = 0;
        while !decoder.is_done() {
            let got = decoder.decode(&read[pos..]).ok()?;
            if got.consumed == 0 {
                break;
            }
            body.extend_from_slice(&read[pos..][got.data]);
            pos += got.consumed;
        }
        if body.len() > MAX_REFUSAL_BODY || read.len() - pos > MAX_REFUSAL_BODY {
            return None;
        }
        if decoder.is_done() {
            return Some(body);
        }
        read.drain(..pos);
        read.reserve(4096);
        if io.read_buf(&mut read).await.ok()? == 0 {
            decoder.finish().ok()?;
            return Some(body);
        }
    }
}

/// The upgrade request's head: `req`'s own headers, then the handshake's.
/// `Host` is the client's when the route preserves it, else `authority`.
fn request_head(req: &UpstreamRequest<'_>, authority: &HeaderValue, key: &str) -> Vec<u8> {
    let mut out = head::request_line(&Method::GET, &req.path);
    for (name, value) in &req.headers {
        head::header_line(&mut out, name, value.as_bytes());
    }
    // The handshake's own headers; `req.headers` has none of them (they
    // are per hop), so they are written straight after, with no map built.
    let host = req.host.as_ref().unwrap_or(authority);
    head::header_line(&mut out, &header::HOST, host.as_bytes());
    head::header_line(&mut out, &header::UPGRADE, b"websocket");
    head::header_line(&mut out, &header::CONNECTION, b"Upgrade");
    head::header_line(&mut out, &header::SEC_WEBSOCKET_VERSION, b"13");
    head::header_line(&mut out, &header::SEC_WEBSOCKET_KEY, key.as_bytes());
    head::list_line(&mut out, &header::SEC_WEBSOCKET_PROTOCOL, req.protocols);
    head::end_head(&mut out);
    out
}

/// Why an answer is not an accepted upgrade.
#[derive(Debug, PartialEq, Eq)]
enum Bad {
    /// Not a 101: the server refused.
    Status(StatusCode),
    /// A 101 that breaks the handshake.
    Invalid(&'static str),
}

/// Checks an answer to an upgrade sent with `key` offering `offered`;
/// returns the subprotocol the server chose, if any.
fn check_answer(
    rh: &RawResponse,
    key: &str,
    offered: &[String],
) -> Result<Option<HeaderValue>, Bad> {
    if rh.status != StatusCode::SWITCHING_PROTOCOLS {
        return Err(Bad::Status(rh.status));
    }
    if !upgrade::has_token(rh, header::UPGRADE, "websocket")
        || !upgrade::has_token(rh, header::CONNECTION, "upgrade")
    {
        return Err(Bad::Invalid(
            "101 without Upgrade: websocket and Connection: upgrade",
        ));
    }
    let expected = upgrade::accept_key(key.as_bytes());
    if rh.get(&header::SEC_WEBSOCKET_ACCEPT) != Some(&expected[..]) {
        return Err(Bad::Invalid("wrong or missing Sec-WebSocket-Accept"));
    }
    if rh.get(&header::SEC_WEBSOCKET_EXTENSIONS).is_some() {
        return Err(Bad::Invalid("negotiated an extension that was not offered"));
    }
    let Some(chosen) = rh.get(&header::SEC_WEBSOCKET_PROTOCOL) else {
        return Ok(None);
    };
    // What was offered is visible ASCII (`HeaderValue::to_str`), so a
    // value that is not matches none.
    if !offered.iter().any(|o| o.as_bytes() == chosen) {
        return Err(Bad::Invalid("chose a subprotocol the client did not offer"));
    }
    let chosen = HeaderValue::from_bytes(chosen).expect("httparse checked the value");
    Ok(Some(chosen))
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::{
        stream::Transport,
        upstream::{error::Retry, ServerSpec},
    };

    // The RFC 6455 example key and its accept value.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    header::HeaderName::from_static(n),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    fn a_101(extra: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = headers(&[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", ACCEPT),
        ]);
        h.extend(headers(extra));
        h
    }

    /// [`check_answer`] of an answer with `status` and `h`, read off the wire.
    fn check(
        status: StatusCode,
        h: &HeaderMap,
        key: &str,
        offered: &[String],
    ) -> Result<Option<HeaderValue>, Bad> {
        let wire = head::encode_response(status, h, b"");
        let rh = RawResponse::parse(wire, MAX_RESPONSE_HEADERS)
            .unwrap()
            .unwrap();
        check_answer(&rh, key, offered)
    }

    fn offered(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_valid_101_is_accepted() {
        let ok = check(StatusCode::SWITCHING_PROTOCOLS, &a_101(&[]), KEY, &[]);
        assert_eq!(ok, Ok(None));
        // Tokens are case-insensitive and may be in lists.
        let mut h = a_101(&[]);
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, upgrade"),
        );
        assert_eq!(
            check(StatusCode::SWITCHING_PROTOCOLS, &h, KEY, &[]),
            Ok(None)
        );
    }

    #[test]
    fn anything_but_101_is_a_refusal() {
        for status in [
            StatusCode::OK,
            StatusCode::FORBIDDEN,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            assert_eq!(
                check(status, &a_101(&[]), KEY, &[]),
                Err(Bad::Status(status))
            );
        }
    }

    #[test]
    fn a_101_that_is_not_a_websocket_upgrade_is_invalid() {
        let not_ws = Err(Bad::Invalid(
            "101 without Upgrade: websocket and Connection: upgrade",
        ));
        for missing in [header::UPGRADE, header::CONNECTION] {
            let mut h = a_101(&[]);
            h.remove(&missing);
            assert_eq!(check(StatusCode::SWITCHING_PROTOCOLS, &h, KEY, &[]), not_ws);
        }
        let mut h = a_101(&[]);
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert_eq!(check(StatusCode::SWITCHING_PROTOCOLS, &h, KEY, &[]), not_ws);
    }

    #[test]
    fn the_accept_key_must_match_ours() {
        let wrong = Err(Bad::Invalid("wrong or missing Sec-WebSocket-Accept"));
        let other_key = "x3JJHMbDL1EzLkh9GBhXDw==";
        assert_eq!(
            check(StatusCode::SWITCHING_PROTOCOLS, &a_101(&[]), other_key, &[]),
            wrong
        );
        let mut h = a_101(&[]);
        h.remove(header::SEC_WEBSOCKET_ACCEPT);
        assert_eq!(check(StatusCode::SWITCHING_PROTOCOLS, &h, KEY, &[]), wrong);
    }

    #[test]
    fn no_extension_may_be_negotiated() {
        let h = a_101(&[("sec-websocket-extensions", "permessage-deflate")]);
        assert_eq!(
            check(StatusCode::SWITCHING_PROTOCOLS, &h, KEY, &[]),
            Err(Bad::Invalid("negotiated an extension that was not offered"))
        );
    }

    #[test]
    fn the_subprotocol_must_be_one_offered() {
        let h = a_101(&[("sec-websocket-protocol", "b")]);
        let ok = check(
            StatusCode::SWITCHING_PROTOCOLS,
            &h,
            KEY,
            &offered(&["a", "b"]),
        );
        assert_eq!(ok, Ok(Some(HeaderValue::from_static("b"))));
        let unoffered = Err(Bad::Invalid("chose a subprotocol the client did not offer"));
        assert_eq!(
            check(StatusCode::SWITCHING_PROTOCOLS, &h, KEY, &offered(&["a"])),
            unoffered
        );
        assert_eq!(
            check(StatusCode::SWITCHING_PROTOCOLS, &h, KEY, &[]),
            unoffered
        );
    }

    fn request<'a>(protocols: &'a [String], host: Option<&'static str>) -> UpstreamRequest<'a> {
        UpstreamRequest {
            path: "/chat?room=1".into(),
            headers: headers(&[("x-forwarded-for", "192.0.2.7"), ("cookie", "a=1")]),
            host: host.map(HeaderValue::from_static),
            protocols,
        }
    }

    #[test]
    fn the_request_head_carries_the_handshake_after_the_forwarded_headers() {
        let protocols = offered(&["a", "b"]);
        let req = request(&protocols, None);
        let head = request_head(&req, &HeaderValue::from_static("10.0.0.5:8080"), KEY);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /chat?room=1 HTTP/1.1\r\n\
             x-forwarded-for: 192.0.2.7\r\n\
             cookie: a=1\r\n\
             host: 10.0.0.5:8080\r\n\
             upgrade: websocket\r\n\
             connection: Upgrade\r\n\
             sec-websocket-version: 13\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             sec-websocket-protocol: a, b\r\n\
             \r\n"
        );
    }

    #[test]
    fn a_preserved_host_replaces_the_servers_and_no_offer_no_protocol_header() {
        let req = request(&[], Some("chat.example.com"));
        let head = request_head(&req, &HeaderValue::from_static("10.0.0.5:8080"), KEY);
        let head = String::from_utf8(head).unwrap();
        assert!(head.contains("\r\nhost: chat.example.com\r\n"), "{head}");
        assert!(!head.contains("10.0.0.5"), "{head}");
        assert!(!head.contains("sec-websocket-protocol"), "{head}");
    }

    // --- Over a real loopback connection ------------------------------------

    /// A server that reads one request head and answers with `answer(key)`
    /// (`None`: hang up without answering); returns the request it read.
    async fn server(
        answer: impl FnOnce(&str) -> Option<Vec<u8>> + Send + 'static,
    ) -> (Endpoint, Transport, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoint = Endpoint::fixed(&ServerSpec::plain(addr));
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                if s.read(&mut b).await.unwrap() == 0 {
                    break;
                }
                got.push(b[0]);
            }
            let got = String::from_utf8(got).unwrap();
            let key = got
                .lines()
                .find_map(|l| l.strip_prefix("sec-websocket-key: "))
                .unwrap_or_default()
                .to_owned();
            if let Some(a) = answer(&tungstenite::handshake::derive_accept_key(key.as_bytes())) {
                s.write_all(&a).await.unwrap();
                // Hold the connection until the client is done with it.
                let _ = s.read(&mut [0u8; 1]).await;
            }
            got
        });
        let io = Transport::Left(TcpStream::connect(addr).await.unwrap());
        (endpoint, io, task)
    }

    const LIMIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_handshake_returns_the_stream_protocol_headers_and_early_bytes() {
        let (endpoint, io, srv) = server(|accept| {
            let mut answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\
                 Sec-WebSocket-Protocol: b\r\nSet-Cookie: s=1\r\n\r\n"
            )
            .into_bytes();
            // A text frame sent right behind the 101.
            answer.extend_from_slice(b"\x81\x02hi");
            Some(answer)
        })
        .await;
        let protocols = offered(&["a", "b"]);
        let req = request(&protocols, None);
        let done = handshake(io, &endpoint, &req, LIMIT).await.unwrap();
        assert_eq!(done.protocol, Some(HeaderValue::from_static("b")));
        // Only the end-to-end header, its name as a `HeaderName` writes it.
        assert_eq!(done.headers.as_bytes(), b"set-cookie: s=1\r\n");
        assert_eq!(done.early, b"\x81\x02hi");
        drop(done.io);
        let sent = srv.await.unwrap();
        assert!(sent.starts_with("GET /chat?room=1 HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains(&format!(
            "\r\nhost: {}\r\n",
            endpoint.authority().to_str().unwrap()
        )));
    }

    #[tokio::test]
    async fn a_refusal_names_the_status() {
        let (endpoint, io, _srv) =
            server(|_| Some(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_vec())).await;
        let err = handshake(io, &endpoint, &request(&[], None), LIMIT)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, UpstreamError::Refused { status, .. } if status == StatusCode::FORBIDDEN),
            "{err:?}"
        );
        assert_eq!(err.retry(), Retry::IfIdempotent);
    }

    #[tokio::test]
    async fn a_bad_101_is_invalid() {
        let (endpoint, io, _srv) = server(|_| {
            Some(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
                .to_vec())
        })
        .await;
        let err = handshake(io, &endpoint, &request(&[], None), LIMIT)
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "{} broke the handshake: wrong or missing Sec-WebSocket-Accept",
                endpoint.label()
            )
        );
        assert_eq!(err.retry(), Retry::IfIdempotent);
    }

    #[tokio::test]
    async fn a_malformed_answer_is_invalid() {
        let (endpoint, io, _srv) = server(|_| Some(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec())).await;
        let err = handshake(io, &endpoint, &request(&[], None), LIMIT)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, UpstreamError::Invalid { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_hang_up_before_the_answer_is_unreachable_in_the_upgrade() {
        let (endpoint, io, _srv) = server(|_| None).await;
        let err = handshake(io, &endpoint, &request(&[], None), LIMIT)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, UpstreamError::Unreachable { phase: Phase::Upgrade, source, .. }
                if source.kind() == io::ErrorKind::UnexpectedEof),
            "{err:?}"
        );
        assert_eq!(err.public_message(), "bad gateway: upstream unreachable");
        assert_eq!(err.retry(), Retry::IfIdempotent);
    }

    #[tokio::test]
    async fn a_silent_server_is_a_handshake_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoint = Endpoint::fixed(&ServerSpec::plain(addr));
        let io = Transport::Left(TcpStream::connect(addr).await.unwrap());
        let _held = listener.accept().await.unwrap();
        let limit = Duration::from_millis(200);
        let err = handshake(io, &endpoint, &request(&[], None), limit)
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "{} did not answer the upgrade within 200ms",
                endpoint.label()
            )
        );
        assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(err.retry(), Retry::IfIdempotent);
    }
}
