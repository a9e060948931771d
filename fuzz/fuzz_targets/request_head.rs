//! `proto::head::parse_request`: the client's upgrade request head, the first
//! bytes an unauthenticated peer controls. No input may panic, and a head it
//! accepts must be self-delimiting and stable under re-parsing.
#![no_main]

use framegate::proto::head::{body_framing, parse_request};
use libfuzzer_sys::fuzz_target;

/// The default `max_headers` of a listener.
const MAX_HEADERS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((req, len))) = parse_request(data, MAX_HEADERS) else {
        return;
    };
    // The head's length is what `read_request` splits early data at.
    assert!(
        len > 0 && len <= data.len(),
        "head length {len} of {}",
        data.len()
    );
    assert!(
        data[..len].ends_with(b"\n"),
        "a head ends with its blank line"
    );
    // Self-delimiting: the head alone parses to the same request, so what
    // follows it on the socket cannot change it.
    let (alone, alone_len) = parse_request(&data[..len], MAX_HEADERS)
        .expect("the head alone parses")
        .expect("the head alone is complete");
    assert_eq!(alone_len, len);
    assert_eq!(alone.method(), req.method());
    assert_eq!(alone.uri(), req.uri());
    assert_eq!(alone.version(), req.version());
    assert_eq!(alone.headers(), req.headers());
    // What it accepted it has checked: the target is normalised to an
    // origin-form path (absolute form keeps its authority) and the body
    // framing is unambiguous.
    assert!(
        req.uri().path().starts_with('/'),
        "path {:?}",
        req.uri().path()
    );
    assert!(req.headers().len() <= MAX_HEADERS);
    body_framing(req.version(), req.headers()).expect("accepted heads have a clear body framing");
    // Normalising is idempotent: the request written back out the way the
    // gateway forwards it parses to the same request.
    let again = encode(&req);
    let (re, re_len) = parse_request(&again, MAX_HEADERS)
        .unwrap_or_else(|e| {
            panic!(
                "re-encoded head refused: {e}: {:?}",
                String::from_utf8_lossy(&again)
            )
        })
        .expect("re-encoded head is complete");
    assert_eq!(re_len, again.len());
    assert_eq!(re.method(), req.method());
    assert_eq!(
        re.uri(),
        req.uri(),
        "normalising the target again changed it"
    );
    assert_eq!(re.version(), req.version());
    assert_eq!(re.headers(), req.headers());
});

fn encode(req: &http::Request<()>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.uri().to_string().as_bytes());
    out.extend_from_slice(match req.version() {
        http::Version::HTTP_10 => b" HTTP/1.0\r\n",
        _ => b" HTTP/1.1\r\n",
    });
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}
