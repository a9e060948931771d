//! Token authentication at upgrade (jsonwebtoken).
//!
//! The token may come from `Authorization: Bearer`, a query parameter, a
//! cookie, or a `Sec-WebSocket-Protocol` entry such as `bearer.<jwt>`
//! (browsers cannot set headers on a WebSocket). Whatever carried it is
//! removed before the request goes upstream, so the backend and its logs
//! never see the token unless the route forwards it on purpose. The token
//! itself is never logged: errors carry fixed reasons, not token text.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use jsonwebtoken::{decode, decode_header, errors::ErrorKind, Validation};
use serde_json::{Map, Value};

use super::jwks::{KeyError, Keys};
use crate::http::upgrade::Reject;

/// Where a token may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`
    Header,
    /// `?<query_param>=<token>`
    Query,
    /// `Cookie: <cookie>=<token>`
    Cookie,
    /// `Sec-WebSocket-Protocol: <prefix><token>, chat`
    Subprotocol,
}

impl TokenSource {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "header" => TokenSource::Header,
            "query" => TokenSource::Query,
            "cookie" => TokenSource::Cookie,
            "subprotocol" => TokenSource::Subprotocol,
            _ => return None,
        })
    }
}

/// A route's `[auth]`, checked and with its keys loaded.
#[derive(Debug)]
pub struct Auth {
    pub(crate) sources: Vec<TokenSource>,
    pub(crate) query_param: String,
    pub(crate) cookie: String,
    pub(crate) subprotocol_prefix: String,
    /// Signature algorithms, `exp`/`nbf` with leeway, `iss`, `aud`.
    pub(crate) validation: Validation,
    pub(crate) keys: Keys,
    /// Claims that must be present (beyond the registered ones) → 403.
    pub(crate) required_claims: Vec<String>,
    pub(crate) required_scopes: Vec<String>,
    /// Claim name → upstream header.
    pub(crate) forward_claims: Vec<(String, HeaderName)>,
    pub(crate) forward_token: bool,
    /// Close the session when `exp` (plus leeway) passes.
    pub close_on_expiry: bool,
    pub leeway: Duration,
}

/// Who a valid token says the client is.
#[derive(Debug)]
pub struct Identity {
    /// `sub`, for per-subject limits.
    pub subject: Option<String>,
    /// `exp`.
    pub expires: Option<SystemTime>,
    /// The `forward_claims` headers to send upstream.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The token, kept only when the route forwards it.
    token: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required")]
    Missing,
    /// Not a valid token for this route (401); a fixed reason, never token text.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// Valid, but not enough (403).
    #[error("token lacks {0}")]
    Insufficient(String),
    /// The keys to check it could not be fetched (503).
    #[error("cannot verify tokens right now")]
    KeysUnavailable,
}

impl AuthError {
    /// The answer, with `WWW-Authenticate` as RFC 6750 §3 describes.
    pub fn reject(&self) -> Reject {
        let message = self.to_string();
        let (status, challenge) = match self {
            AuthError::Missing => (StatusCode::UNAUTHORIZED, "Bearer".to_owned()),
            AuthError::Invalid(why) => (
                StatusCode::UNAUTHORIZED,
                format!("Bearer error=\"invalid_token\", error_description=\"{why}\""),
            ),
            AuthError::Insufficient(_) => (
                StatusCode::FORBIDDEN,
                "Bearer error=\"insufficient_scope\"".to_owned(),
            ),
            AuthError::KeysUnavailable => {
                return Reject::new(StatusCode::SERVICE_UNAVAILABLE, message)
                    .retry_after(Duration::from_secs(5))
            }
        };
        Reject::new(status, message).with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&challenge).expect("fixed ASCII challenge"),
        )
    }
}

/// A fixed reason for each way jsonwebtoken refuses a token.
fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not yet valid",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidKeyFormat => "algorithm not accepted",
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => "no exp claim",
            "iss" => "no iss claim",
            "aud" => "no aud claim",
            _ => "missing claim",
        },
        _ => "malformed",
    }
}

impl Auth {
    /// Finds and checks the token of a request.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        protocols: &[String],
    ) -> Result<Identity, AuthError> {
        let token = self
            .sources
            .iter()
            .find_map(|s| self.token_from(*s, headers, uri, protocols))
            .ok_or(AuthError::Missing)?;
        let head = decode_header(&token).map_err(|e| AuthError::Invalid(reason(e.kind())))?;
        // Checked before a key is looked up, so an HS256 token cannot make a
        // public key act as an HMAC secret (and `none` never parses at all).
        if !self.validation.algorithms.contains(&head.alg) {
            return Err(AuthError::Invalid("algorithm not accepted"));
        }
        let key = self
            .keys
            .find(head.kid.as_deref(), head.alg)
            .await
            .map_err(|e| match e {
                KeyError::Unknown => AuthError::Invalid("unknown key id"),
                KeyError::Unavailable => AuthError::KeysUnavailable,
            })?;
        let claims = decode::<Map<String, Value>>(&token, &key, &self.validation)
            .map_err(|e| AuthError::Invalid(reason(e.kind())))?
            .claims;
        for c in &self.required_claims {
            if claims.get(c).is_none_or(Value::is_null) {
                return Err(AuthError::Insufficient(format!("claim `{c}`")));
            }
        }
        let scopes = scopes(&claims);
        for s in &self.required_scopes {
            if !scopes.contains(&s.as_str()) {
                return Err(AuthError::Insufficient(format!("scope `{s}`")));
            }
        }
        let headers = self
            .forward_claims
            .iter()
            .filter_map(|(claim, name)| Some((name.clone(), header_value(claims.get(claim)?)?)))
            .collect();
        Ok(Identity {
            subject: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
            expires: claims
                .get("exp")
                .and_then(Value::as_u64)
                .map(|s| UNIX_EPOCH + Duration::from_secs(s)),
            headers,
            token: self.forward_token.then_some(token),
        })
    }

    fn token_from(
        &self,
        source: TokenSource,
        headers: &HeaderMap,
        uri: &Uri,
        protocols: &[String],
    ) -> Option<String> {
        let token = match source {
            TokenSource::Header => {
                let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
                let (scheme, token) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_owned())?
            }
            TokenSource::Query => query_pairs(uri.query()?)
                .find(|(k, _)| *k == self.query_param)
                .map(|(_, v)| v)?,
            TokenSource::Cookie => cookies(headers)
                .find(|(k, _)| *k == self.cookie)
                .map(|(_, v)| v.to_owned())?,
            TokenSource::Subprotocol => protocols
                .iter()
                .find_map(|p| p.strip_prefix(self.subprotocol_prefix.as_str()))?
                .to_owned(),
        };
        (!token.is_empty()).then_some(token)
    }

    /// Removes every token carrier and every client-sent claim header from
    /// the upstream request, then adds the token's claim headers (and the
    /// token itself, as `Authorization: Bearer`, if the route forwards it).
    pub fn prepare_upstream(
        &self,
        id: &Identity,
        headers: &mut HeaderMap,
        path: &mut String,
        protocols: &mut Vec<String>,
    ) {
        for source in &self.sources {
            match source {
                TokenSource::Header => {
                    headers.remove(header::AUTHORIZATION);
                }
                TokenSource::Query => remove_query_param(path, &self.query_param),
                TokenSource::Cookie => remove_cookie(headers, &self.cookie),
                TokenSource::Subprotocol => {
                    protocols.retain(|p| !p.starts_with(self.subprotocol_prefix.as_str()))
                }
            }
        }
        for (_, name) in &self.forward_claims {
            headers.remove(name);
        }
        for (name, value) in &id.headers {
            headers.append(name.clone(), value.clone());
        }
        if let Some(token) = &id.token {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert(header::AUTHORIZATION, v);
            }
        }
    }
}

/// Scopes from `scope` (space-separated, RFC 8693) or `scp` (string or list).
fn scopes(claims: &Map<String, Value>) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_whitespace()),
            Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

/// A claim as a header value: strings as they are, numbers and booleans as
/// text, lists of strings joined with commas. Anything else is not sent.
fn header_value(v: &Value) -> Option<HeaderValue> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()?
            .join(","),
        _ => return None,
    };
    HeaderValue::from_str(&text).ok()
}

/// `name=value` pairs of a query string, percent-decoded.
fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

/// Drops every `name=...` pair from the query of `path` (matched decoded,
/// as the token was found), keeping the others as they were written.
fn remove_query_param(path: &mut String, name: &str) {
    let Some((base, query)) = path.split_once('?') else {
        return;
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && percent_decode(key) != name
        })
        .collect();
    *path = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(name, value)` of every cookie the request carries.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
}

/// Removes the cookie `name`, keeping the others (and the header only if any remain).
fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    if !headers.contains_key(header::COOKIE) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split_once('=').map_or(*c, |(k, _)| k.trim()) != name)
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_token_is_removed_and_the_rest_kept() {
        let mut p = "/chat?room=1&access_token=abc.def&x=%41".to_owned();
        remove_query_param(&mut p, "access_token");
        assert_eq!(p, "/chat?room=1&x=%41");
        let mut p = "/chat?access%5Ftoken=abc".to_owned();
        remove_query_param(&mut p, "access_token");
        assert_eq!(p, "/chat");
        let mut p = "/chat".to_owned();
        remove_query_param(&mut p, "access_token");
        assert_eq!(p, "/chat");
        let pairs: Vec<_> = query_pairs("a=1&access_token=x%2Ey&b").collect();
        assert_eq!(pairs[1], ("access_token".into(), "x.y".into()));
        assert_eq!(pairs[2], ("b".into(), "".into()));
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn only_the_token_cookie_is_removed() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; access_token=t"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(
            cookies(&h).find(|(k, _)| *k == "access_token"),
            Some(("access_token", "t"))
        );
        remove_cookie(&mut h, "access_token");
        assert_eq!(h[header::COOKIE], "a=1; b=2");
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("access_token=t"));
        remove_cookie(&mut h, "access_token");
        assert!(!h.contains_key(header::COOKIE));
    }

    #[test]
    fn scopes_and_claim_headers() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"scope": "chat:read chat:write", "scp": ["admin"], "n": 7, "o": {"a": 1}, "l": ["x", "y"]}"#,
        )
        .unwrap();
        assert_eq!(scopes(&claims), ["chat:read", "chat:write", "admin"]);
        assert_eq!(header_value(&claims["n"]).unwrap(), "7");
        assert_eq!(header_value(&claims["l"]).unwrap(), "x,y");
        assert!(header_value(&claims["o"]).is_none());
        assert!(header_value(&Value::String("a\r\nb".into())).is_none());
    }

    #[test]
    fn refusals_carry_a_bearer_challenge() {
        let challenge = |e: AuthError| {
            let reject = e.reject();
            (
                reject.status,
                reject
                    .answer_headers()
                    .get(header::WWW_AUTHENTICATE)
                    .cloned(),
            )
        };
        assert_eq!(
            challenge(AuthError::Invalid("expired")),
            (
                StatusCode::UNAUTHORIZED,
                Some(HeaderValue::from_static(
                    "Bearer error=\"invalid_token\", error_description=\"expired\""
                ))
            )
        );
        assert_eq!(
            challenge(AuthError::Missing),
            (
                StatusCode::UNAUTHORIZED,
                Some(HeaderValue::from_static("Bearer"))
            )
        );
        assert_eq!(
            challenge(AuthError::Insufficient("scope `x`".into())).0,
            StatusCode::FORBIDDEN
        );
        let busy = AuthError::KeysUnavailable.reject();
        assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.answer_headers()[header::RETRY_AFTER], "5");
    }
}
