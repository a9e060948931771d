//! Token authentication at upgrade (jsonwebtoken).
//!
//! The token may come from `Authorization: Bearer`, a query parameter, a
//! cookie, or a `Sec-WebSocket-Protocol` entry such as `bearer.<jwt>`
//! (browsers cannot set headers on a WebSocket). Whatever carried it is
//! removed before the request goes upstream, so the backend and its logs
//! never see the token unless the route forwards it on purpose. The token
//! itself is never logged: errors carry fixed reasons, not token text.
//!
//! `exp` and `nbf` are checked here rather than by jsonwebtoken: see
//! `NumericDate` for why.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use jsonwebtoken::{decode, decode_header, errors::ErrorKind, Validation};
use serde_json::{Map, Value};

use super::jwks::{KeyError, Keys};
use crate::proto::{
    cookie,
    reject::{Reason, Reject},
};

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
    /// Signature algorithms, `iss`, `aud`, and which of `exp`/`nbf` are
    /// required and checked. jsonwebtoken is handed a copy without the
    /// `exp`/`nbf` part ([`Auth::authenticate`] checks those itself, see
    /// [`NumericDate`]).
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
    /// Clock skew allowed for `exp` and `nbf`, at the handshake and for
    /// `close_on_expiry` alike.
    pub leeway: Duration,
}

/// Who a valid token says the client is.
#[derive(Debug)]
pub struct Identity {
    /// `sub`, for per-subject limits.
    pub subject: Option<String>,
    /// `exp`, fractional seconds kept (clamped to the year 9999). The
    /// handshake refused the token if this plus the leeway had already passed.
    pub expires: Option<SystemTime>,
    /// The `forward_claims` headers to send upstream.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The token, kept only when the route forwards it.
    token: Option<String>,
    /// Every claim, for an upstream that balances on one (`claim:NAME`);
    /// dropped with the identity when the session starts.
    pub claims: Map<String, Value>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required")]
    Missing,
    /// Not a valid token for this route (401); a fixed reason, never token text.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// Valid once, but `exp` (plus leeway) has passed (401): kept apart
    /// from [`Invalid`](Self::Invalid) because a client only has to fetch a
    /// fresh token, and the metrics tell the two apart.
    #[error("invalid token: expired")]
    Expired,
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
        let invalid =
            |why: &str| format!("Bearer error=\"invalid_token\", error_description=\"{why}\"");
        let (status, reason, challenge) = match self {
            AuthError::Missing => (
                StatusCode::UNAUTHORIZED,
                Reason::TokenMissing,
                "Bearer".to_owned(),
            ),
            AuthError::Invalid(why) => {
                (StatusCode::UNAUTHORIZED, Reason::TokenInvalid, invalid(why))
            }
            AuthError::Expired => (
                StatusCode::UNAUTHORIZED,
                Reason::TokenExpired,
                invalid("expired"),
            ),
            AuthError::Insufficient(_) => (
                StatusCode::FORBIDDEN,
                Reason::ForbiddenClaims,
                "Bearer error=\"insufficient_scope\"".to_owned(),
            ),
            AuthError::KeysUnavailable => {
                return Reject::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Reason::TokenUnverifiable,
                    message,
                )
                .retry_after(Duration::from_secs(5))
            }
        };
        Reject::new(status, reason, message).with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&challenge).expect("fixed ASCII challenge"),
        )
    }
}

/// A NumericDate claim (RFC 7519 §2: seconds since the epoch, "non-integer
/// values can be represented"), as the time since the epoch.
///
/// Why `exp` and `nbf` are checked here and not by jsonwebtoken's
/// `Validation`: jsonwebtoken 10 does accept a float `exp`/`nbf`, but rounds
/// it to the nearest second, compares it with the current time floored to a
/// second and a leeway truncated to whole seconds. The session expiry that
/// `close_on_expiry` enforces is a [`SystemTime`] plus the exact leeway, so
/// with jsonwebtoken deciding the handshake the two would read the same
/// claim differently: a token up to a second and a half past its `exp`
/// (plus leeway) could be admitted, only for its session to be closed at
/// once, and one whose `nbf` had just passed could still be refused.
/// (Before this, the session read `exp` with `Value::as_u64`, which is
/// `None` for `1764300000.5`: such a token was admitted and its session
/// never closed.) Here one parse serves both: a token is admitted exactly
/// when `now < exp + leeway` and `now >= nbf - leeway`, and the session is
/// closed at `exp + leeway`; fractional seconds are kept.
///
/// Integers and floats are accepted; a negative number, a number too large
/// for a [`Duration`], or anything that is not a number (a string, a
/// boolean, ...) refuses the token (401, "malformed"). `null` counts as
/// absent, as it does for jsonwebtoken. JSON has no NaN or infinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct NumericDate(Duration);

impl NumericDate {
    /// The claim `name` of `claims`: `Ok(None)` when absent (or `null`),
    /// `Err` when present but not a non-negative number of seconds.
    fn claim(claims: &Map<String, Value>, name: &str) -> Result<Option<Self>, ()> {
        match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(secs) => Ok(Some(NumericDate(Duration::from_secs(secs)))),
                // A negative integer, or a float: negative, NaN and too
                // large are all errors of `try_from_secs_f64`.
                None => n
                    .as_f64()
                    .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
                    .map(|d| Some(NumericDate(d)))
                    .ok_or(()),
            },
            Some(_) => Err(()),
        }
    }

    /// As a [`SystemTime`], clamped to [`LATEST`] (a later `exp` means the
    /// same for a session, and could not be represented or added to).
    fn time(self) -> SystemTime {
        UNIX_EPOCH + self.0.min(LATEST)
    }
}

/// 9999-12-31T23:59:59Z: the latest session expiry kept. jsonwebtoken takes
/// an `exp` up to `u64::MAX` seconds, which no [`SystemTime`] can hold.
const LATEST: Duration = Duration::from_secs(253_402_300_799);

/// `exp` and `nbf` at `now` (all since the epoch), with `leeway` either
/// way: valid while `nbf - leeway <= now < exp + leeway`, so a token is
/// refused exactly when the session it would open is already due to close.
fn check_times(
    exp: Option<NumericDate>,
    nbf: Option<NumericDate>,
    now: Duration,
    leeway: Duration,
) -> Result<(), AuthError> {
    if exp.is_some_and(|exp| now >= exp.0.saturating_add(leeway)) {
        return Err(AuthError::Expired);
    }
    if nbf.is_some_and(|nbf| now < nbf.0.saturating_sub(leeway)) {
        return Err(AuthError::Invalid("not yet valid"));
    }
    Ok(())
}

/// A fixed reason for each way jsonwebtoken refuses a token. Its `exp`
/// and `nbf` checks are off (`check_times` decides, as
/// [`AuthError::Expired`] or "not yet valid"), so their errors never come.
fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
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
        // RFC 7515 §4.1.11: a recipient that does not understand every
        // extension `crit` names must refuse the JWS, and this gateway
        // implements none. (An empty list is invalid too.)
        if head.crit.is_some() {
            return Err(AuthError::Invalid("unsupported crit header"));
        }
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
        // Signature, algorithm, `iss` and `aud` by jsonwebtoken; `exp` and
        // `nbf` below, on the same reading the session expiry uses.
        let mut validation = self.validation.clone();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation
            .required_spec_claims
            .retain(|c| c != "exp" && c != "nbf");
        let claims = decode::<Map<String, Value>>(&token, &key, &validation)
            .map_err(|e| AuthError::Invalid(reason(e.kind())))?
            .claims;
        let exp = self.time_claim(&claims, "exp")?;
        let nbf = self.time_claim(&claims, "nbf")?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        check_times(
            exp.filter(|_| self.validation.validate_exp),
            nbf.filter(|_| self.validation.validate_nbf),
            now,
            self.leeway,
        )?;
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
            expires: exp.map(NumericDate::time),
            headers,
            token: self.forward_token.then_some(token),
            claims,
        })
    }

    /// The NumericDate claim `name` (`exp` or `nbf`): refused when it is
    /// malformed, or absent while the route requires it.
    fn time_claim(
        &self,
        claims: &Map<String, Value>,
        name: &str,
    ) -> Result<Option<NumericDate>, AuthError> {
        let (malformed, missing) = match name {
            "exp" => ("malformed exp claim", "no exp claim"),
            _ => ("malformed nbf claim", "no nbf claim"),
        };
        let value = NumericDate::claim(claims, name).map_err(|()| AuthError::Invalid(malformed))?;
        if value.is_none() && self.validation.required_spec_claims.contains(name) {
            return Err(AuthError::Invalid(missing));
        }
        Ok(value)
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
            TokenSource::Cookie => std::str::from_utf8(cookie::get(headers, &self.cookie)?)
                .ok()?
                .to_owned(),
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
                TokenSource::Cookie => {
                    cookie::remove(headers, &self.cookie);
                }
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

    fn date(claims: Value) -> Result<Option<NumericDate>, ()> {
        NumericDate::claim(claims.as_object().unwrap(), "exp")
    }

    fn secs(s: f64) -> NumericDate {
        NumericDate(Duration::from_secs_f64(s))
    }

    #[test]
    fn numeric_dates_are_integers_or_floats() {
        use serde_json::json;
        assert_eq!(
            date(json!({ "exp": 1_764_300_000u64 })),
            Ok(Some(NumericDate(Duration::from_secs(1_764_300_000))))
        );
        // Fractional seconds are kept, not rounded or floored.
        assert_eq!(
            date(json!({ "exp": 1_764_300_000.5 })),
            Ok(Some(NumericDate(Duration::new(1_764_300_000, 500_000_000))))
        );
        assert_eq!(
            date(json!({ "exp": 0 })),
            Ok(Some(NumericDate(Duration::ZERO)))
        );
        assert_eq!(date(json!({})), Ok(None));
        assert_eq!(date(json!({ "exp": null })), Ok(None));
        for bad in [
            json!(-1),
            json!(-0.5),
            json!(i64::MIN),
            json!(1e300),
            json!("1764300000"),
            json!(true),
            json!([1_764_300_000]),
            json!({ "secs": 1 }),
        ] {
            assert_eq!(date(json!({ "exp": bad })), Err(()), "{bad}");
        }
        // JSON has no NaN: serde_json writes it as null, which is "absent".
        assert_eq!(date(json!({ "exp": f64::NAN })), Ok(None));
    }

    #[test]
    fn far_future_expiry_is_clamped_not_overflowed() {
        use serde_json::json;
        for far in [json!(u64::MAX), json!(1e19)] {
            let d = date(json!({ "exp": far })).unwrap().unwrap();
            assert_eq!(d.time(), UNIX_EPOCH + LATEST);
        }
        assert_eq!(
            secs(1_764_300_000.25).time(),
            UNIX_EPOCH + Duration::from_millis(1_764_300_000_250)
        );
    }

    #[test]
    fn exp_and_nbf_boundaries_are_exact_with_the_leeway() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        // exp = 100.5: valid until 100.5 exactly (not rounded to 101 or 100).
        let exp = Some(secs(100.5));
        assert_eq!(check_times(exp, None, ms(100_499), s(0)), Ok(()));
        assert_eq!(
            check_times(exp, None, ms(100_500), s(0)),
            Err(AuthError::Expired)
        );
        // With leeway, until exp + leeway: the session's deadline.
        assert_eq!(check_times(exp, None, ms(102_499), s(2)), Ok(()));
        assert_eq!(
            check_times(exp, None, ms(102_500), s(2)),
            Err(AuthError::Expired)
        );
        // A sub-second leeway counts (jsonwebtoken's is whole seconds).
        assert_eq!(check_times(exp, None, ms(100_700), ms(250)), Ok(()));
        // exp = 100.4 at 100.45: expired (rounding would have said 100, and
        // a floored now 100: still valid).
        assert_eq!(
            check_times(Some(secs(100.4)), None, ms(100_450), s(0)),
            Err(AuthError::Expired)
        );
        // nbf = 100.5: valid from 100.5, or from 99.5 with a second of leeway.
        let nbf = Some(secs(100.5));
        assert_eq!(
            check_times(None, nbf, ms(100_499), s(0)),
            Err(AuthError::Invalid("not yet valid"))
        );
        assert_eq!(check_times(None, nbf, ms(100_500), s(0)), Ok(()));
        assert_eq!(
            check_times(None, nbf, ms(99_499), s(1)),
            Err(AuthError::Invalid("not yet valid"))
        );
        assert_eq!(check_times(None, nbf, ms(99_500), s(1)), Ok(()));
        // A leeway larger than the epoch offset neither wraps nor panics.
        assert_eq!(check_times(exp, nbf, ms(100_000), Duration::MAX), Ok(()));
        assert_eq!(check_times(None, None, Duration::ZERO, s(0)), Ok(()));
    }

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-unit-secret";

    /// An HS256 route as config builds one: `exp` required, `nbf` checked,
    /// no leeway.
    fn hs_auth() -> Auth {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Auth {
            sources: vec![TokenSource::Header],
            query_param: "access_token".into(),
            cookie: "access_token".into(),
            subprotocol_prefix: "bearer.".into(),
            validation,
            keys: Keys::One(jsonwebtoken::DecodingKey::from_secret(KEY)),
            required_claims: Vec::new(),
            required_scopes: Vec::new(),
            forward_claims: Vec::new(),
            forward_token: false,
            close_on_expiry: true,
            leeway: Duration::ZERO,
        }
    }

    fn now_f64() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }

    async fn check(header: jsonwebtoken::Header, claims: Value) -> Result<Identity, AuthError> {
        let key = jsonwebtoken::EncodingKey::from_secret(KEY);
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        hs_auth()
            .authenticate(&headers, &Uri::from_static("/"), &[])
            .await
    }

    async fn claims(claims: Value) -> Result<Identity, AuthError> {
        check(
            jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
        )
        .await
    }

    #[tokio::test]
    async fn float_exp_and_nbf_are_checked_and_exp_is_the_session_expiry() {
        use serde_json::json;
        // A float exp an hour ahead: admitted, and the session expiry is
        // that instant (it was `None` when read with `as_u64`).
        let exp = (now_f64() + 3600.0).floor() + 0.25;
        let id = claims(json!({ "sub": "a", "exp": exp })).await.unwrap();
        assert_eq!(id.expires, Some(UNIX_EPOCH + Duration::from_secs_f64(exp)));
        let id = claims(json!({ "exp": 4_000_000_000u64 })).await.unwrap();
        assert_eq!(
            id.expires,
            Some(UNIX_EPOCH + Duration::from_secs(4_000_000_000))
        );
        // An exp past what a SystemTime holds: admitted, clamped (the
        // integer read panicked on `UNIX_EPOCH + u64::MAX s`).
        let id = claims(json!({ "exp": u64::MAX })).await.unwrap();
        assert_eq!(id.expires, Some(UNIX_EPOCH + LATEST));

        let past = now_f64() - 3600.5;
        let future = now_f64() + 3600.5;
        assert_eq!(
            claims(json!({ "exp": past })).await.unwrap_err(),
            AuthError::Expired
        );
        for (c, why) in [
            (json!({ "exp": future, "nbf": future }), "not yet valid"),
            (json!({ "exp": -1.5 }), "malformed exp claim"),
            (json!({ "exp": -1 }), "malformed exp claim"),
            (json!({ "exp": "4000000000" }), "malformed exp claim"),
            (json!({ "exp": 1e300 }), "malformed exp claim"),
            (json!({ "exp": future, "nbf": "0" }), "malformed nbf claim"),
            (json!({ "exp": future, "nbf": -3.0 }), "malformed nbf claim"),
            (json!({ "sub": "a" }), "no exp claim"),
            (json!({ "exp": null }), "no exp claim"),
        ] {
            assert_eq!(
                claims(c.clone()).await.unwrap_err(),
                AuthError::Invalid(why),
                "{c}"
            );
        }
        claims(json!({ "exp": future, "nbf": past })).await.unwrap();
    }

    #[tokio::test]
    async fn any_crit_header_is_refused() {
        use jsonwebtoken::{Algorithm, Header};
        let claims = serde_json::json!({ "exp": now_f64() + 3600.0 });
        for crit in [vec!["exp".to_owned()], vec!["foo".to_owned()], vec![]] {
            let header = Header {
                crit: Some(crit.clone()),
                ..Header::new(Algorithm::HS256)
            };
            assert_eq!(
                check(header, claims.clone()).await.unwrap_err(),
                AuthError::Invalid("unsupported crit header"),
                "{crit:?}"
            );
        }
        check(Header::new(Algorithm::HS256), claims).await.unwrap();
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
            challenge(AuthError::Expired),
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
        let reasons = [
            AuthError::Missing,
            AuthError::Invalid("bad signature"),
            AuthError::Expired,
            AuthError::Insufficient("claim `x`".into()),
            AuthError::KeysUnavailable,
        ]
        .map(|e| e.reject().reason);
        assert_eq!(
            reasons,
            [
                Reason::TokenMissing,
                Reason::TokenInvalid,
                Reason::TokenExpired,
                Reason::ForbiddenClaims,
                Reason::TokenUnverifiable,
            ]
        );
    }
}
