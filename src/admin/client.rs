//! The command line's side of the admin interface: `framegate drain` and
//! `framegate undrain` POST to a running gateway's admin listener.
//!
//! One request over a blocking socket is all it does, so it is a few lines
//! of HTTP/1.1 rather than an HTTP client and a runtime.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

/// Connect, write and read each get this long: the admin listener answers
/// a drain at once.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Answers longer than this are cut (an admin answer is one line).
const MAX_ANSWER: u64 = 64 * 1024;

/// Why the request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum DrainRequestError {
    #[error("cannot reach the admin listener at {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the admin listener at {addr} did not answer in HTTP")]
    NotHttp { addr: SocketAddr },
}

/// Drains (`on`) or undrains server `server` of upstream `group` through the
/// admin listener at `addr`; returns the status and the answer's body.
pub fn drain(
    addr: SocketAddr,
    token: Option<&str>,
    group: &str,
    server: &str,
    on: bool,
) -> Result<(u16, String), DrainRequestError> {
    let io = |source| DrainRequestError::Io { addr, source };
    let path = format!(
        "/upstreams/{}/servers/{}/{}",
        utf8_percent_encode(group, NON_ALPHANUMERIC),
        utf8_percent_encode(server, NON_ALPHANUMERIC),
        if on { "drain" } else { "undrain" }
    );
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(io)?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut answer).map_err(io)?;
    parse(&answer).ok_or(DrainRequestError::NotHttp { addr })
}

/// `(status, body)` of a whole HTTP/1.1 answer (`Connection: close`, so the
/// body runs to the end), its head read by the gateway's own codec.
fn parse(answer: &[u8]) -> Option<(u16, String)> {
    let (head, len) = crate::proto::head::parse_response(answer, 32).ok()??;
    let body = String::from_utf8_lossy(&answer[len..]).into_owned();
    Some((head.status.as_u16(), body))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn an_answer_is_split_into_status_and_body() {
        assert_eq!(
            parse(b"HTTP/1.1 409 Conflict\r\ncontent-length: 3\r\n\r\nno\n"),
            Some((409, "no\n".into()))
        );
        assert_eq!(parse(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse(b"HTTP/1.1 2\r\n\r\n"), None);
    }
}
