//! Request smuggling: every framing two parsers could read differently is
//! refused with 400, and the backend never receives a second request from
//! the bytes of the first (each attack hides `GET /smuggled` where a
//! lenient parser would find it), nor the first one whole.

use super::{gateway, to_raw};
use crate::support::*;

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: gateway.test\r\n\r\n";

/// A `POST /attack` with these header lines and then `rest` (its body as
/// the attack frames it, with the smuggled request inside or after).
fn attack(version: &str, headers: &str, rest: &str) -> Vec<u8> {
    format!("POST /attack HTTP/{version}\r\nHost: gateway.test\r\n{headers}\r\n{rest}").into_bytes()
}

/// The attacks, by name: in the head, then in the chunked framing.
fn attacks() -> Vec<(&'static str, Vec<u8>)> {
    let te = |value: &str| {
        attack(
            "1.1",
            &format!("{value}\r\n"),
            &format!("0\r\n\r\n{SMUGGLED}"),
        )
    };
    let cl = |value: &str| attack("1.1", &format!("{value}\r\n"), &format!("hello{SMUGGLED}"));
    let body = |framing: &str| {
        attack(
            "1.1",
            "Transfer-Encoding: chunked\r\n",
            &format!("{framing}{SMUGGLED}"),
        )
    };
    vec![
        // CL.TE: a front end going by the length sends the whole; a
        // back end going by chunked sees the request after `0`.
        (
            "CL.TE",
            attack(
                "1.1",
                &format!(
                    "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                    5 + SMUGGLED.len()
                ),
                &format!("0\r\n\r\n{SMUGGLED}"),
            ),
        ),
        // TE.CL: the other way round.
        (
            "TE.CL",
            attack(
                "1.1",
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                &format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len()),
            ),
        ),
        ("TE xchunked", te("Transfer-Encoding: xchunked")),
        (
            "TE chunked, identity",
            te("Transfer-Encoding: chunked, identity"),
        ),
        ("TE identity", te("Transfer-Encoding: identity")),
        (
            "TE chunked then identity lines",
            te("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity"),
        ),
        (
            "TE space before the colon",
            te("Transfer-Encoding : chunked"),
        ),
        ("TE vertical tab", te("Transfer-Encoding:\x0bchunked")),
        ("TE folded", te("Transfer-Encoding:\r\n chunked")),
        (
            "TE on HTTP/1.0",
            attack(
                "1.0",
                "Transfer-Encoding: chunked\r\n",
                &format!("0\r\n\r\n{SMUGGLED}"),
            ),
        ),
        (
            "CL differing lines",
            cl("Content-Length: 5\r\nContent-Length: 50"),
        ),
        ("CL differing list", cl("Content-Length: 5, 50")),
        ("CL sign", cl("Content-Length: +5")),
        ("CL hex", cl("Content-Length: 0x5")),
        ("chunk size bare LF", body("5\nhello\r\n0\r\n\r\n")),
        ("chunk data bare LF", body("5\r\nhello\n0\r\n\r\n")),
        (
            "chunk size 17 hex digits",
            body("10000000000000005\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk extension bare LF",
            body("5;a\nb\r\nhello\r\n0\r\n\r\n"),
        ),
        ("chunk size empty", body("\r\n")),
        ("chunk size leading space", body(" 5\r\nhello\r\n0\r\n\r\n")),
        ("chunk size 0x", body("0x5\r\nhello\r\n0\r\n\r\n")),
    ]
}

#[tokio::test]
async fn ambiguous_framing_is_refused_and_nothing_is_smuggled() {
    let backend = HttpBackend::describe().await;
    // No pool: every upstream connection ends with its request, so once
    // all have ended the backend has seen all it ever will.
    let gw = gateway(&backend, "", "max_idle_per_server = 0").await;
    for (i, (name, wire)) in attacks().into_iter().enumerate() {
        let mut c = HttpConn::open(gw.addr).await;
        c.send(&wire).await;
        let resp = c.response().await;
        assert_eq!(resp.status, 400, "{name}: {resp:?}");
        resp.assert_one_line_body();
        c.expect_closed().await;
        drop(c);

        // A request after it: its upstream connection is accepted after
        // any the attack opened, so once it is served and every connection
        // has ended, nothing more of the attack can arrive.
        let mut after = HttpConn::open(gw.addr).await;
        let sentinel = format!("/after/{i}");
        let resp = after.ask(get(&sentinel, &[])).await;
        assert_eq!(resp.status, 200, "{name}: the next request: {resp:?}");
        backend.all_closed().await;

        let seen = backend.requests();
        for s in &seen {
            assert_ne!(s.path, "/smuggled", "{name}: smuggled: {seen:?}");
            if s.path == "/attack" {
                assert!(
                    !s.complete,
                    "{name}: the backend got the attack whole: {s:?}"
                );
            }
        }
        assert_eq!(backend.last().path, sentinel, "{name}");
    }
}

/// Spellings of chunked that are valid (coding names are case-insensitive,
/// whitespace around them optional) are read as chunked, and the body ends
/// where the gateway's decoder says: the backend gets one request with
/// exactly that body, and the bytes after it are the client's next request.
#[tokio::test]
async fn valid_spellings_of_chunked_are_read_as_chunked() {
    let backend = HttpBackend::describe().await;
    let gw = gateway(&backend, "", "").await;
    let mut c = HttpConn::open(gw.addr).await;
    for value in ["ChUnKeD", "\tchunked  ", "chunked\r\nX-Other: 1"] {
        let wire = attack(
            "1.1",
            &format!("Transfer-Encoding: {value}\r\n"),
            &format!(
                "5\r\nhello\r\n0\r\n\r\n{}",
                "GET /next HTTP/1.1\r\nHost: gateway.test\r\n\r\n"
            ),
        );
        c.send(&wire).await;
        let resp = c.response().await;
        assert_eq!(resp.status, 200, "{value:?}: {resp:?}");
        assert_eq!(resp.body_text(), "POST /attack 5", "{value:?}");
        let next = c.response().await;
        assert_eq!(next.body_text(), "GET /next 0", "{value:?}");
        let seen = backend.requests();
        let attack = &seen[seen.len() - 2];
        assert_eq!(attack.body, b"hello", "{value:?}");
        assert_eq!(attack.header("transfer-encoding"), Some("chunked"));
    }
}

/// The backend's side: a response framed two ways is refused (502), and
/// bytes a backend sends past the end of its response never reach the
/// client, as a second response or otherwise.
#[tokio::test]
async fn ambiguous_or_overlong_responses_never_reach_the_client_as_sent() {
    for (name, response) in [
        (
            "CL and TE",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nhello"[..],
        ),
        (
            "differing CLs",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 9\r\n\r\nhelloevil",
        ),
    ] {
        let gw = to_raw(raw_http_server(response).await).await;
        let mut c = HttpConn::open(gw.addr).await;
        let resp = c.ask(get("/", &[])).await;
        assert_eq!(resp.status, 502, "{name}: {resp:?}");
        c.expect_closed().await;
    }

    // One response, then a second one the gateway never asked for: the
    // connection is not used again (the backend would answer the next
    // request with what it already sent).
    let (addr, mut reused) = one_answer_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
    )
    .await;
    let gw = Gateway::builder()
        .route(route("/", "raw"))
        .upstream("raw", &[format!("ws://{addr}")])
        .start()
        .await;
    let mut c = HttpConn::open(gw.addr).await;
    for _ in 0..2 {
        let resp = c.ask(get("/", &[])).await;
        assert_eq!((resp.status, resp.body_text().as_str()), (200, "hello"));
    }
    drop((c, gw));
    for _ in 0..2 {
        let more = guard("a backend connection to end", reused.recv()).await;
        assert_eq!(
            more,
            Some(Vec::new()),
            "a used connection got another request"
        );
    }
}

/// A server that answers each connection's first request with `response`,
/// then reports what else arrived on it before it ended.
async fn one_answer_server(
    response: &'static [u8],
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                s.write_all(response).await.unwrap();
                let _ = tx.send(read_to_close(&mut s).await);
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn response_trailers_are_dropped() {
    let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Secret\r\n\r\n\
        5\r\nhello\r\n0\r\nX-Secret: s3cr3t\r\n\r\n";
    let gw = to_raw(raw_http_server(response).await).await;
    let mut c = HttpConn::open(gw.addr).await;
    let resp = c.ask(get("/", &[])).await;
    assert_eq!((resp.status, resp.body_text().as_str()), (200, "hello"));
    assert_eq!(resp.header("trailer"), None);
    assert!(c.trailers.is_empty(), "{:?}", c.trailers);
}

/// A transfer coding other than chunked (`gzip`, say) cannot be passed on
/// when the gateway re-frames the body: dropped, it would leave the
/// recipient taking coded bytes for the content. A request with one is
/// refused (501, as nginx does) before any backend sees it; a response
/// with one is not passed on (502).
#[tokio::test]
async fn other_transfer_codings_are_refused_not_dropped() {
    let backend = HttpBackend::describe().await;
    let gw = gateway(&backend, "", "").await;
    for value in ["gzip, chunked", "identity, chunked", "chunked, chunked"] {
        let mut c = HttpConn::open(gw.addr).await;
        let wire = attack(
            "1.1",
            &format!("Transfer-Encoding: {value}\r\n"),
            "5\r\nhello\r\n0\r\n\r\n",
        );
        let resp = c.ask(&wire).await;
        assert_eq!(resp.status, 501, "{value}: {resp:?}");
        resp.assert_one_line_body();
        c.expect_closed().await;
    }
    assert_eq!(backend.accepted(), 0);

    for response in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    ] {
        let gw = to_raw(raw_http_server_closing(response).await).await;
        let resp = HttpConn::open(gw.addr).await.ask(get("/", &[])).await;
        assert_eq!(resp.status, 502, "{resp:?}");
    }
}
