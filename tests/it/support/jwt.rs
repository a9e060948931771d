//! Tokens signed here, with keys made on the spot.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// The HMAC secret the tests' `hs.key` files hold.
pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";

/// Now, in seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT with `claims`, signed with `key` as `alg`, with header `kid`.
pub fn sign(
    alg: Algorithm,
    key: &EncodingKey,
    kid: Option<&str>,
    claims: serde_json::Value,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// An HS256 token for `sub` signed with [`SECRET`], valid for an hour.
pub fn hs256(sub: &str) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET),
        None,
        serde_json::json!({ "sub": sub, "exp": now() + 3600 }),
    )
}

/// A fresh key pair made with rcgen: (private PKCS#8 PEM, public SPKI PEM).
pub fn key_pair(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
    let kp = rcgen::KeyPair::generate_for(alg).unwrap();
    (kp.serialize_pem(), kp.public_key_pem())
}
