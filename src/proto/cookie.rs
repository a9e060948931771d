//! The `Cookie` request header (RFC 6265 §4.2, §5.4), read and filtered as
//! bytes: the one reading that every part of the gateway that looks at a
//! cookie shares (a hashing key, a token, the sticky cookie).
//!
//! A browser sends one header, `a=1; b=2`; a proxy converting from HTTP/2
//! may send several, which are one list in order (RFC 9113 §8.2.3). Pairs
//! are split at `;`, a pair at its first `=`, and both sides trimmed of
//! spaces and tabs; a piece without `=` is a value with an empty name, as
//! browsers treat it (RFC 6265bis §5.4). Names are compared exactly (cookie
//! names are case-sensitive). Nothing here decodes, validates or allocates
//! while reading; bytes a client should not send (controls aside, which the
//! head parser refuses) are just part of a name or value.

use http::{header, HeaderMap, HeaderValue};

/// Every cookie the request carries as `(name, value)`, in the order sent,
/// across all its `Cookie` headers.
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| pieces(v.as_bytes()))
        .map(split)
}

/// The value of the first cookie named `name`. The first, because a
/// browser sends the cookie with the longest path first, then the oldest
/// (RFC 6265 §5.4 step 2), and the first is what most servers take.
pub fn get<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    pairs(headers).find_map(|(n, v)| (n == name.as_bytes()).then_some(v))
}

/// Removes every cookie named `name`, keeping the others as sent, in
/// order, in one `Cookie` header (none if no cookie is left); whether any
/// was removed. A request without one is not touched.
pub fn remove(headers: &mut HeaderMap, name: &str) -> bool {
    let named = |piece: &[u8]| split(piece).0 == name.as_bytes();
    let all = || headers.get_all(header::COOKIE).iter();
    if !all().flat_map(|v| pieces(v.as_bytes())).any(named) {
        return false;
    }
    let mut kept = Vec::new();
    for piece in all().flat_map(|v| pieces(v.as_bytes())) {
        if named(piece) {
            continue;
        }
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(piece);
    }
    headers.remove(header::COOKIE);
    // The kept bytes all came from valid header values: this always holds.
    if let Ok(v) = HeaderValue::from_bytes(&kept) {
        if !kept.is_empty() {
            headers.insert(header::COOKIE, v);
        }
    }
    true
}

/// The non-empty `;`-separated pieces of one header value, trimmed.
fn pieces(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b';')
        .map(trim)
        .filter(|p| !p.is_empty())
}

/// One piece as `(name, value)`.
fn split(piece: &[u8]) -> (&[u8], &[u8]) {
    match piece.iter().position(|&b| b == b'=') {
        Some(eq) => (trim(&piece[..eq]), trim(&piece[eq + 1..])),
        None => (&[], piece),
    }
}

/// Without leading and trailing spaces and tabs (RFC 6265's OWS).
fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    fn all(h: &HeaderMap) -> Vec<(String, String)> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        pairs(h).map(|(n, v)| (text(n), text(v))).collect()
    }

    #[test]
    fn pairs_across_headers_in_order() {
        let h = headers(&[b"a=1; b = 2 ;;c=x=y", b"\td=; nameless ;e=\"q\""]);
        let want = [
            ("a", "1"),
            ("b", "2"),
            ("c", "x=y"),
            ("d", ""),
            ("", "nameless"),
            ("e", "\"q\""),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(all(&h), want);
        assert_eq!(get(&h, "c"), Some(&b"x=y"[..]));
        assert_eq!(get(&h, "d"), Some(&b""[..]));
        assert_eq!(get(&h, "B"), None, "names are case-sensitive");
        assert_eq!(get(&h, ""), Some(&b"nameless"[..]));
        assert_eq!(get(&HeaderMap::new(), "a"), None);
    }

    #[test]
    fn the_first_of_a_repeated_name_wins() {
        let h = headers(&[b"srv=one; srv=two", b"srv=three"]);
        assert_eq!(get(&h, "srv"), Some(&b"one"[..]));
    }

    #[test]
    fn remove_keeps_the_others_as_sent() {
        let mut h = headers(&[b"a=1; srv=x; b=\"2\"", b"srv=y", b"c=3;  nameless"]);
        assert!(remove(&mut h, "srv"));
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=\"2\"; c=3; nameless");
        // Nothing left of it: a second removal changes nothing.
        assert!(!remove(&mut h, "srv"));
        assert_eq!(h[header::COOKIE], "a=1; b=\"2\"; c=3; nameless");
    }

    #[test]
    fn remove_drops_a_header_left_empty() {
        let mut h = headers(&[b"srv=x", b" srv = y ;"]);
        assert!(remove(&mut h, "srv"));
        assert!(!h.contains_key(header::COOKIE));
    }

    #[test]
    fn a_request_without_the_cookie_is_untouched() {
        // Two headers stay two, spacing and all.
        let mut h = headers(&[b"a=1;b=2", b"c=3"]);
        assert!(!remove(&mut h, "srv"));
        let values: Vec<&[u8]> = h
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(values, [&b"a=1;b=2"[..], b"c=3"]);
    }

    #[test]
    fn odd_bytes_are_just_bytes() {
        let mut h = headers(&[b"srv=\xff\xfe; x=\x80=; \xc3\xa9t\xc3\xa9=1"]);
        assert_eq!(get(&h, "srv"), Some(&b"\xff\xfe"[..]));
        assert_eq!(get(&h, "\u{e9}t\u{e9}"), Some(&b"1"[..]));
        assert!(remove(&mut h, "srv"));
        assert_eq!(
            h[header::COOKIE].as_bytes(),
            b"x=\x80=; \xc3\xa9t\xc3\xa9=1"
        );
    }

    proptest! {
        /// Any header value: never a panic; after a removal no cookie of
        /// that name is left and every other pair is there, in order.
        #[test]
        fn removal_keeps_exactly_the_others(
            values in prop::collection::vec(
                prop::collection::vec(
                    prop_oneof![
                        Just(b';'), Just(b'='), Just(b' '), Just(b'\t'), Just(b's'),
                        Just(b'r'), Just(b'v'), 0x21u8..0x7f, 0x80u8..=0xff
                    ],
                    0..40,
                ),
                0..4,
            ),
        ) {
            let mut h = HeaderMap::new();
            for v in &values {
                if let Ok(v) = HeaderValue::from_bytes(v) {
                    h.append(header::COOKIE, v);
                }
            }
            let before: Vec<(Vec<u8>, Vec<u8>)> =
                pairs(&h).map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
            let had = before.iter().any(|(n, _)| n == b"srv");
            prop_assert_eq!(remove(&mut h, "srv"), had);
            let after: Vec<(Vec<u8>, Vec<u8>)> =
                pairs(&h).map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
            let others: Vec<(Vec<u8>, Vec<u8>)> =
                before.into_iter().filter(|(n, _)| n != b"srv").collect();
            prop_assert_eq!(after, others);
        }
    }
}
