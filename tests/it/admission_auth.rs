//! JWT at upgrade: every accept and reject path, with tokens and keys made
//! here, against a real gateway and a recording upstream.

use crate::support::*;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

const CHALLENGE_INVALID: &str = "Bearer error=\"invalid_token\"";

struct Keys {
    rsa_private: String,
    rsa_public: String,
    ec_private: String,
}

/// Routes: /hs (HS256, secret file, every token source, claims forwarded),
/// /rs (RS256, PEM public key, iss + aud), /jwks (ES256 by kid, JWKS file),
/// /scoped (HS256, a required claim and scope).
async fn gateway(up: &Backend) -> (Gateway, Keys) {
    let (rsa_private, rsa_public) = key_pair(&rcgen::PKCS_RSA_SHA256);
    let (ec_private, _) = key_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let ec_key = EncodingKey::from_ec_pem(ec_private.as_bytes()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&ec_key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("ec-1".into());
    let jwks = json!({ "keys": [jwk] }).to_string();
    let hs = r#"
[auth]
algorithms = ["HS256"]
secret_file = "hs.key"
token_from = ["header", "query", "cookie", "subprotocol"]
forward_claims = { sub = "X-Auth-Subject", tenant = "X-Auth-Tenant" }
leeway = "0s"
"#;
    let rs = r#"
[auth]
algorithms = ["RS256"]
public_key = "rsa.pub.pem"
issuer = ["https://idp.test/"]
audience = ["chat"]
leeway = "0s"
"#;
    let jwks_policy = r#"
[auth]
algorithms = ["ES256"]
jwks_file = "jwks.json"
"#;
    let scoped = r#"
[auth]
algorithms = ["HS256"]
secret_file = "hs.key"
required_claims = ["tenant"]
required_scopes = ["chat:write"]
"#;
    let gw = Gateway::builder()
        .route(route("/hs", "up").policy("hs"))
        .route(route("/rs", "up").policy("rs"))
        .route(route("/jwks", "up").policy("jwks"))
        .route(route("/scoped", "up").policy("scoped"))
        .upstream("up", &[up.url()])
        .policy("hs", hs)
        .policy("rs", rs)
        .policy("jwks", jwks_policy)
        .policy("scoped", scoped)
        .file("hs.key", [SECRET, b"\n"].concat())
        .file("rsa.pub.pem", &rsa_public)
        .file("jwks.json", &jwks)
        .start()
        .await;
    (
        gw,
        Keys {
            rsa_private,
            rsa_public,
            ec_private,
        },
    )
}

/// An echo backend that chooses the subprotocol `chat` when offered.
async fn upstream() -> Backend {
    Backend::builder().protocol_if_offered("chat").echo().await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The session of an upgrade to `path` carrying `token` as a bearer token.
async fn accepted_bearer(gw: std::net::SocketAddr, path: &str, token: &str) -> Client {
    accepted(gw, "127.0.0.1", path, &[("authorization", &bearer(token))]).await
}

/// The refusal of an upgrade to `path` carrying `token` as a bearer token.
async fn refused_bearer(gw: std::net::SocketAddr, path: &str, token: &str) -> Refused {
    refused(gw, "127.0.0.1", path, &[("authorization", &bearer(token))]).await
}

fn assert_invalid(r: &Refused, reason: &str) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    let challenge = r.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with(CHALLENGE_INVALID), "{challenge}");
    assert!(r.body.contains(reason), "`{}` lacks `{reason}`", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_from_each_source_are_accepted_and_stripped() {
    let up = upstream().await;
    let (gw, _) = gateway(&up).await;
    let token = hs256("alice");

    // Authorization header: removed upstream, claims forwarded, spoofs removed.
    let auth = bearer(&token);
    let mut ws = accepted(
        gw.addr,
        "127.0.0.1",
        "/hs/room",
        &[
            ("authorization", &auth),
            ("x-auth-subject", "admin"),
            ("x-auth-tenant", "evil-corp"),
        ],
    )
    .await;
    round_trip(&mut ws, "hello").await;
    let seen = up.last();
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-auth-subject"), Some("alice"));
    // The token has no tenant claim: the client's value is still gone.
    assert_eq!(seen.header("x-auth-tenant"), None);

    // Query parameter: removed from the upstream query, other parameters kept.
    let path = format!("/hs/room?x=1&access_token={token}&y=2");
    accepted(gw.addr, "127.0.0.1", &path, &[]).await;
    let seen = up.last();
    assert_eq!(seen.path, "/hs/room?x=1&y=2");
    assert!(!format!("{:?}", seen.headers).contains(&token));

    // Cookie: only the token cookie is removed.
    let cookie = format!("theme=dark; access_token={token}");
    accepted(gw.addr, "127.0.0.1", "/hs", &[("cookie", &cookie)]).await;
    assert_eq!(up.last().header("cookie"), Some("theme=dark"));

    // Subprotocol: the token entry is stripped, the real choice echoed.
    let offer = format!("bearer.{token}, chat");
    let (_ws, resp) = upgrade(
        gw.addr,
        "127.0.0.1",
        "/hs",
        &[("sec-websocket-protocol", &offer)],
    )
    .await
    .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    let seen = up.last();
    assert_eq!(seen.header("sec-websocket-protocol"), Some("chat"));
    assert!(!format!("{:?}", seen.headers).contains(&token));

    // Only the token offered: nothing goes upstream and the token is never
    // echoed (clients should offer a real subprotocol beside it; see README).
    let offer = format!("bearer.{token}");
    let request = upgrade_request_to(
        &gw.addr.to_string(),
        "/hs",
        &[&format!("Sec-WebSocket-Protocol: {offer}")],
    );
    let answer = send_request(tcp_from("127.0.0.1", gw.addr).await, &request).await;
    assert_eq!(answer.response.status, 101);
    assert!(answer.response.header("sec-websocket-protocol").is_none());
    assert_eq!(up.last().header("sec-websocket-protocol"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_before_the_upstream_sees_them() {
    let up = upstream().await;
    let (gw, keys) = gateway(&up).await;
    let rsa = EncodingKey::from_rsa_pem(keys.rsa_private.as_bytes()).unwrap();
    let good_rs =
        json!({ "sub": "a", "exp": now() + 600, "iss": "https://idp.test/", "aud": "chat" });

    // No token at all: a bare challenge (RFC 6750 §3.1).
    let r = refused(gw.addr, "127.0.0.1", "/hs", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["www-authenticate"], "Bearer");

    // alg none: unsigned, so never valid.
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&json!({ "sub": "a", "exp": now() + 600 }).to_string())
    );
    assert_invalid(
        &refused_bearer(gw.addr, "/hs", &none).await,
        "invalid token",
    );

    // Algorithm confusion: HS256 with the RSA *public* key as the secret, on the RS256 route.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(keys.rsa_public.as_bytes()),
        None,
        good_rs.clone(),
    );
    assert_invalid(
        &refused_bearer(gw.addr, "/rs", &confused).await,
        "algorithm not accepted",
    );
    // The same claims properly signed pass.
    let ok = sign(Algorithm::RS256, &rsa, None, good_rs.clone());
    accepted_bearer(gw.addr, "/rs", &ok).await;

    let rs_with = |patch: serde_json::Value| {
        let mut claims = good_rs.clone();
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        sign(Algorithm::RS256, &rsa, None, claims)
    };
    for (claims, reason) in [
        (json!({ "exp": now() - 10 }), "expired"),
        (json!({ "nbf": now() + 600 }), "not yet valid"),
        (json!({ "aud": "billing" }), "wrong audience"),
        (json!({ "iss": "https://evil.test/" }), "wrong issuer"),
    ] {
        let t = rs_with(claims);
        assert_invalid(&refused_bearer(gw.addr, "/rs", &t).await, reason);
    }
    // A token without the configured iss is not let through for lacking it.
    let mut no_iss = good_rs.clone();
    no_iss.as_object_mut().unwrap().remove("iss");
    let t = sign(Algorithm::RS256, &rsa, None, no_iss);
    assert_invalid(&refused_bearer(gw.addr, "/rs", &t).await, "no iss claim");

    // Signed with another key.
    let (other, _) = key_pair(&rcgen::PKCS_RSA_SHA256);
    let t = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(other.as_bytes()).unwrap(),
        None,
        good_rs.clone(),
    );
    assert_invalid(&refused_bearer(gw.addr, "/rs", &t).await, "bad signature");

    // Malformed.
    for junk in ["abc", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.%%%.x"] {
        assert_invalid(
            &refused(
                gw.addr,
                "127.0.0.1",
                "/hs",
                &[("authorization", &bearer(junk))],
            )
            .await,
            "malformed",
        );
    }

    // JWKS by kid: known kid passes, unknown kid is refused.
    let ec = EncodingKey::from_ec_pem(keys.ec_private.as_bytes()).unwrap();
    let claims = json!({ "sub": "a", "exp": now() + 600 });
    let t = sign(Algorithm::ES256, &ec, Some("ec-1"), claims.clone());
    accepted_bearer(gw.addr, "/jwks", &t).await;
    let t = sign(Algorithm::ES256, &ec, Some("ec-2"), claims);
    assert_invalid(
        &refused_bearer(gw.addr, "/jwks", &t).await,
        "unknown key id",
    );

    // Only the accepted handshakes reached the upstream.
    assert_eq!(up.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_lacking_a_claim_or_scope_get_403() {
    let up = upstream().await;
    let (gw, _) = gateway(&up).await;
    let hs = EncodingKey::from_secret(SECRET);
    let token = |claims| bearer(&sign(Algorithm::HS256, &hs, None, claims));
    let exp = now() + 600;

    let r = refused(
        gw.addr,
        "127.0.0.1",
        "/scoped",
        &[(
            "authorization",
            &token(json!({ "exp": exp, "scope": "chat:write" })),
        )],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("claim `tenant`"), "{}", r.body);
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer error=\"insufficient_scope\""
    );

    let r = refused(
        gw.addr,
        "127.0.0.1",
        "/scoped",
        &[(
            "authorization",
            &token(json!({ "exp": exp, "tenant": "t", "scope": "chat:read" })),
        )],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("scope `chat:write`"), "{}", r.body);

    accepted(
        gw.addr,
        "127.0.0.1",
        "/scoped",
        &[(
            "authorization",
            &token(json!({ "exp": exp, "tenant": "t", "scp": ["chat:read", "chat:write"] })),
        )],
    )
    .await;
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// Now as fractional seconds since the epoch, for float `exp`/`nbf`.
fn now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// An HS256 token with `claims` and, if given, a `crit` header.
fn hs256_with(crit: Option<&[&str]>, claims: serde_json::Value) -> String {
    let header = jsonwebtoken::Header {
        crit: crit.map(|c| c.iter().map(|s| s.to_string()).collect()),
        ..jsonwebtoken::Header::new(Algorithm::HS256)
    };
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

/// `Date.now()/1000 + 3600` gives a float `exp`: it must close the session
/// when it passes, as an integer one does (it was read as an integer only,
/// so such a session was never closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_float_exp_closes_the_session_with_4001() {
    let up = upstream().await;
    let gw = Gateway::builder()
        .route(route("/expiring", "up").policy("expiring"))
        .upstream("up", &[up.url()])
        .policy(
            "expiring",
            "[auth]\nalgorithms = [\"HS256\"]\nsecret_file = \"hs.key\"\nleeway = \"0s\"\nclose_on_expiry = true\n",
        )
        .file("hs.key", SECRET)
        .start()
        .await;
    let exp = now_f64() + 2.5;
    let token = hs256_with(None, json!({ "sub": "s", "exp": exp }));
    let mut ws = accepted_bearer(gw.addr, "/expiring", &token).await;
    round_trip(&mut ws, "still valid").await;
    let (code, reason) = close_code(&mut ws).await;
    assert_eq!((code, reason.as_str()), (4001, "token expired"));
    assert_eq!(gw.stats().expired, 1);
}

/// Float `exp`/`nbf` at the handshake: compared as numbers, fractional
/// seconds included; a negative or non-numeric one refuses the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn float_exp_and_nbf_are_checked_at_the_handshake() {
    let up = upstream().await;
    let (gw, _) = gateway(&up).await;

    // An exp a millisecond before now: expired (leeway 0s on /hs). Rounded
    // to the nearest second and compared with a floored now, as
    // jsonwebtoken does, it was still valid for the rest of the second.
    let t = hs256_with(None, json!({ "sub": "a", "exp": now_f64() - 0.001 }));
    assert_invalid(&refused_bearer(gw.addr, "/hs", &t).await, "expired");

    let future = now_f64() + 600.5;
    for (claims, reason) in [
        (json!({ "exp": now_f64() - 10.5 }), "expired"),
        (json!({ "exp": future, "nbf": future }), "not yet valid"),
        (json!({ "exp": -1.5 }), "malformed exp claim"),
        (json!({ "exp": future.to_string() }), "malformed exp claim"),
        (json!({ "exp": future, "nbf": -0.5 }), "malformed nbf claim"),
    ] {
        let t = hs256_with(None, claims);
        assert_invalid(&refused_bearer(gw.addr, "/hs", &t).await, reason);
    }
    assert_eq!(up.count(), 0);

    // Float exp ahead and float nbf behind: admitted.
    let t = hs256_with(
        None,
        json!({ "sub": "a", "exp": future, "nbf": now_f64() - 10.5 }),
    );
    let mut ws = accepted_bearer(gw.addr, "/hs", &t).await;
    round_trip(&mut ws, "hi").await;
    assert_eq!(up.count(), 1);
}

/// RFC 7515 §4.1.11: the gateway understands no extension, so a token whose
/// header marks any as critical is refused, whatever it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crit_header_is_refused() {
    let up = upstream().await;
    let (gw, _) = gateway(&up).await;
    let claims = json!({ "sub": "a", "exp": now() + 600 });
    for crit in [&["exp"][..], &["foo"][..]] {
        let t = hs256_with(Some(crit), claims.clone());
        assert_invalid(
            &refused_bearer(gw.addr, "/hs", &t).await,
            "unsupported crit header",
        );
    }
    assert_eq!(up.count(), 0);
    let t = hs256_with(None, claims);
    accepted_bearer(gw.addr, "/hs", &t).await;
    assert_eq!(up.count(), 1);
}
