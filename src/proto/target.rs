//! The request target, normalised once: routing, admission, the path
//! rewrite and what the backend receives all read the same path, so no two
//! of them can disagree about what a request asks for.
//!
//! Written by hand: `http::Uri` and the `url` crate parse but do not
//! normalise the way a gateway must (`url` follows WHATWG and quietly keeps
//! going where a gateway has to refuse, such as an encoded `/` or a path
//! that climbs above the root), and no crate offers RFC 3986 §6.2.2
//! normalisation with those refusals.
//!
//! What the path becomes (RFC 3986 §6.2.2 and §5.2.4):
//! - `%XX` escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!   decoded, so `%2e%2e` is `..`; other escapes keep their byte with
//!   upper-case hex digits; characters outside RFC 3986's `pchar` (such as
//!   `"`, `<`, `{`, or any byte above 0x7F) are escaped. The result is
//!   plain, printable ASCII.
//! - Dot-segments are resolved and repeated `/` merged (nginx's
//!   `merge_slashes`): `/a//b/./c/../d` is `/a/b/d`. A trailing `/` is kept.
//! - Refused (400): an escaped `/`, `\` or NUL (`%2F`, `%5C`, `%00`, which a
//!   backend may decode into a separator the gateway did not see), a raw
//!   `\` or control byte, a broken escape, a fragment, a `..` that would
//!   climb above the root, and a `.`/`..` segment carrying `;` parameters
//!   (`..;/`, which servlet containers resolve as `..`).
//!
//! The query is kept as sent, except that bytes above 0x7F are escaped.

use std::fmt;

use super::host::{Authority, HostError};

/// A request target after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Starts with `/`; no dot-segments, no empty segments, printable ASCII.
    pub path: String,
    /// What followed `?`, without the `?`.
    pub query: Option<String>,
    /// The authority of an absolute-form target (`GET ws://host/path`),
    /// which takes the place of `Host` (RFC 9112 §3.2.2); its scheme's
    /// default port is folded away.
    pub authority: Option<Authority>,
    /// The absolute-form target's scheme is `https` or `wss`.
    pub secure: bool,
}

impl Target {
    /// The path and query, as sent upstream.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            None => self.path.clone(),
            Some(q) => format!("{}?{q}", self.path),
        }
    }
}

/// Why a request target was refused; each is a `400`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    /// Neither a path (`/…`) nor an absolute URI: `*`, `host:port`, …
    Form,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F`, `%5C` or `%00` in the path.
    EncodedSeparator,
    /// A raw `\` or a control byte.
    BadByte,
    /// `#` has no place in a request (the client keeps fragments).
    Fragment,
    /// A `..` with nothing left to remove.
    AboveRoot,
    /// `.;x` or `..;x` as a segment.
    DotParameters,
    /// The authority of an absolute-form target.
    Authority(HostError),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetError::Form => {
                "the request target must be a path starting with / or an absolute URI"
            }
            TargetError::BadEscape => "a % in the request target is not followed by two hex digits",
            TargetError::EncodedSeparator => "the path has an encoded /, \\ or NUL (%2F, %5C, %00)",
            TargetError::BadByte => "the request target has a \\ or a control character",
            TargetError::Fragment => "the request target has a fragment (#)",
            TargetError::AboveRoot => "the path climbs above the root with ..",
            TargetError::DotParameters => "the path has a . or .. segment with ; parameters",
            TargetError::Authority(e) => return write!(f, "the request target's authority: {e}"),
        })
    }
}

impl std::error::Error for TargetError {}

/// Schemes an absolute-form target may have, and whether each is TLS.
const SCHEMES: &[(&str, bool)] = &[
    ("http", false),
    ("ws", false),
    ("https", true),
    ("wss", true),
];

/// Normalises a request target as it came on the request line.
pub fn normalize(raw: &[u8]) -> Result<Target, TargetError> {
    let (authority, secure, rest) = match raw.first() {
        Some(b'/') => (None, false, raw),
        _ => {
            let (authority, secure, rest) = split_absolute(raw)?;
            (Some(authority), secure, rest)
        }
    };
    if rest.contains(&b'#') {
        return Err(TargetError::Fragment);
    }
    let (path, query) = match rest.iter().position(|&b| b == b'?') {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    // `http://host` and `http://host?q` have an empty path, which is `/`.
    let path = if path.is_empty() {
        b"/".as_slice()
    } else {
        path
    };
    Ok(Target {
        path: normalize_path(path)?,
        query: query.map(normalize_query).transpose()?,
        authority,
        secure,
    })
}

/// `scheme://authority`, whether the scheme is TLS, and what follows.
fn split_absolute(raw: &[u8]) -> Result<(Authority, bool, &[u8]), TargetError> {
    let sep = find(raw, b"://").ok_or(TargetError::Form)?;
    let scheme = &raw[..sep];
    let tls = SCHEMES
        .iter()
        .find(|(name, _)| scheme.eq_ignore_ascii_case(name.as_bytes()))
        .map(|&(_, tls)| tls)
        .ok_or(TargetError::Form)?;
    let after = &raw[sep + 3..];
    let end = after
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(after.len());
    let authority = Authority::parse(&after[..end])
        .map_err(TargetError::Authority)?
        .without_default_port(tls);
    Ok((authority, tls, &after[end..]))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// RFC 3986 unreserved characters: escaping them changes nothing (§6.2.2.2).
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// What a path segment may hold unescaped (`pchar` less `%`, RFC 3986 §3.3).
fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

/// One segment, decoded where decoding is safe, into `out`.
fn segment(raw: &[u8], out: &mut String) -> Result<(), TargetError> {
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    raw.get(i + 1).copied().and_then(hex),
                    raw.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(TargetError::BadEscape);
                };
                let byte = hi << 4 | lo;
                match byte {
                    b'/' | b'\\' | 0 => return Err(TargetError::EncodedSeparator),
                    _ if is_unreserved(byte) => out.push(char::from(byte)),
                    _ => push_escaped(out, byte),
                }
                i += 3;
                continue;
            }
            b'\\' | 0..=0x1f | 0x7f => return Err(TargetError::BadByte),
            _ if is_pchar(b) => out.push(char::from(b)),
            _ => push_escaped(out, b),
        }
        i += 1;
    }
    Ok(())
}

/// A path (starting with `/`) normalised; see the module doc.
fn normalize_path(raw: &[u8]) -> Result<String, TargetError> {
    debug_assert_eq!(raw.first(), Some(&b'/'));
    let mut out = String::with_capacity(raw.len() + 8);
    // Where each kept segment starts in `out`, so `..` can drop the last.
    let mut starts: Vec<usize> = Vec::new();
    let mut trailing_slash = false;
    let mut decoded = String::new();
    for raw_segment in raw[1..].split(|&b| b == b'/') {
        decoded.clear();
        segment(raw_segment, &mut decoded)?;
        let bare = decoded.split(';').next().unwrap_or("");
        if decoded.contains(';') && (bare == "." || bare == "..") {
            return Err(TargetError::DotParameters);
        }
        trailing_slash = true;
        match decoded.as_str() {
            "" | "." => {}
            ".." => {
                let start = starts.pop().ok_or(TargetError::AboveRoot)?;
                out.truncate(start);
            }
            s => {
                starts.push(out.len());
                out.push('/');
                out.push_str(s);
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// The query as sent, with bytes above 0x7F escaped; control bytes refused.
fn normalize_query(raw: &[u8]) -> Result<String, TargetError> {
    let mut out = String::with_capacity(raw.len());
    for &b in raw {
        match b {
            0..=0x1f | 0x7f => return Err(TargetError::BadByte),
            0x80.. => push_escaped(&mut out, b),
            _ => out.push(char::from(b)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn path(raw: &str) -> Result<String, TargetError> {
        normalize(raw.as_bytes()).map(|t| t.path)
    }

    #[test]
    fn dot_segments_and_escaped_dots_resolve() {
        for (raw, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/x/../admin/", "/admin/"),
            ("/./admin/", "/admin/"),
            ("/x/%2e%2e/admin/", "/admin/"),
            ("/x/.%2e/admin/", "/admin/"),
            ("/x/%2E%2E/admin/", "/admin/"),
            ("/a//b///c", "/a/b/c"),
            ("//admin/", "/admin/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/noslash../secret", "/noslash../secret"),
            ("/%41%7e%2d", "/A~-"),
            ("/a%2fb", "/a%2fb"),
        ] {
            match path(raw) {
                Ok(got) => assert_eq!(got, want, "{raw}"),
                Err(e) => assert_eq!(raw, "/a%2fb", "{raw}: {e}"),
            }
        }
    }

    #[test]
    fn what_is_refused() {
        use TargetError as E;
        for (raw, want) in [
            ("/..", E::AboveRoot),
            ("/%2e%2e/admin/", E::AboveRoot),
            ("/.%2e/admin/", E::AboveRoot),
            ("/%2e%2e/%2e%2e/x", E::AboveRoot),
            ("/a/../../x", E::AboveRoot),
            ("/a%2fb", E::EncodedSeparator),
            ("/a%2Fb", E::EncodedSeparator),
            ("/a%5cb", E::EncodedSeparator),
            ("/a%00", E::EncodedSeparator),
            ("/a\\..\\b", E::BadByte),
            ("/a%zz", E::BadEscape),
            ("/a%4", E::BadEscape),
            ("/a#frag", E::Fragment),
            ("/..;/admin", E::DotParameters),
            ("/a/.;x/b", E::DotParameters),
            ("*", E::Form),
            ("example.com:443", E::Form),
            ("ftp://example.com/", E::Form),
        ] {
            assert_eq!(normalize(raw.as_bytes()), Err(want), "{raw}");
        }
    }

    #[test]
    fn other_bytes_are_escaped_upper_case() {
        assert_eq!(path("/a%3cb").unwrap(), "/a%3Cb");
        assert_eq!(path("/a\"b{c}").unwrap(), "/a%22b%7Bc%7D");
        assert_eq!(path("/caf\u{e9}/\u{202e}").unwrap(), "/caf%C3%A9/%E2%80%AE");
        let t = normalize("/p?q=\u{2028}&t=a%2Fb".as_bytes()).unwrap();
        assert_eq!(t.query.as_deref(), Some("q=%E2%80%A8&t=a%2Fb"));
        assert_eq!(t.path_and_query(), "/p?q=%E2%80%A8&t=a%2Fb");
    }

    #[test]
    fn absolute_form_gives_its_authority() {
        let t = normalize(b"WSS://Secure.Example.com.:443/chat/../x?y").unwrap();
        assert_eq!(t.path, "/x");
        assert_eq!(t.query.as_deref(), Some("y"));
        assert_eq!(t.authority.unwrap().to_string(), "secure.example.com");
        let t = normalize(b"http://a.test:8080").unwrap();
        assert_eq!(t.path, "/");
        assert_eq!(t.authority.unwrap().to_string(), "a.test:8080");
        let t = normalize(b"ws://a.test?q").unwrap();
        assert_eq!(t.path_and_query(), "/?q");
        assert!(matches!(
            normalize(b"http://evil@a.test/"),
            Err(TargetError::Authority(_))
        ));
    }

    /// Bytes a request line can carry in its target (httparse refuses
    /// spaces and controls before this runs; they are included anyway).
    fn target() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"/".to_vec()),
            Just(b".".to_vec()),
            Just(b"..".to_vec()),
            Just(b"%2e".to_vec()),
            Just(b"%2E".to_vec()),
            Just(b"%2f".to_vec()),
            Just(b";".to_vec()),
            Just(b"?".to_vec()),
            proptest::collection::vec(any::<u8>(), 1..3),
            "[a-z%]{1,3}".prop_map(String::into_bytes),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|pieces| {
            let mut t = b"/".to_vec();
            t.extend(pieces.concat());
            t
        })
    }

    proptest! {
        #[test]
        fn normalising_twice_changes_nothing(raw in target()) {
            if let Ok(once) = normalize(&raw) {
                let twice = normalize(once.path_and_query().as_bytes()).unwrap();
                prop_assert_eq!(&twice, &once);
            }
        }

        #[test]
        fn a_normalised_path_has_no_dot_segments_and_is_plain_ascii(raw in target()) {
            if let Ok(t) = normalize(&raw) {
                prop_assert!(t.path.starts_with('/'));
                prop_assert!(t.path.bytes().all(|b| b.is_ascii_graphic()), "{}", t.path);
                for seg in t.path.split('/').skip(1) {
                    prop_assert!(seg != "." && seg != "..", "{}", t.path);
                }
                prop_assert!(!t.path.contains("//"), "{}", t.path);
            }
        }
    }
}
