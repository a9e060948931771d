//! Where token signing keys come from: one key (an HMAC secret or a PEM
//! public key), a JWKS file, or a JWKS URL fetched over https and cached.
//!
//! A remote set is fetched when first needed, again once `refresh` has
//! passed, and again when a token names a `kid` the set does not have (a key
//! rotation) — but never more often than `min_refetch`, whatever clients
//! send: a made-up `kid` must not turn the gateway into a flood against the
//! key server. While a refresh fails, the keys already fetched stay in use.

use std::{
    collections::HashMap,
    str::FromStr,
    sync::{Arc, RwLock},
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{
    jwk::{Jwk, PublicKeyUse},
    Algorithm, AlgorithmFamily, DecodingKey,
};
use rustls_pki_types::ServerName;
use tokio::{net::TcpStream, time::Instant};
use tokio_rustls::TlsConnector;

/// How long one JWKS fetch (connect, TLS, request, body) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS document read.
const MAX_JWKS: usize = 1 << 20;

/// Why no key was found for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The token's `kid` (or `alg`) matches no key: the token is invalid.
    #[error("unknown signing key")]
    Unknown,
    /// The key server could not be reached and no keys are cached.
    #[error("signing keys unavailable")]
    Unavailable,
}

/// A verification key and the algorithm it is restricted to, if any.
#[derive(Clone)]
struct Entry {
    key: DecodingKey,
    alg: Option<Algorithm>,
}

/// Keys by `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Entry>,
    /// Keys without a `kid`: used only for tokens without one, and only
    /// when the set holds exactly one key.
    unnamed: Vec<Entry>,
}

impl KeySet {
    /// Reads a JWKS document, keeping the signature keys of `family`. Keys of
    /// other families, for encryption, or of unknown types are skipped, so
    /// one odd key does not take the whole set down.
    pub fn parse(json: &[u8], family: AlgorithmFamily) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut set = KeySet::default();
        for value in doc.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            let alg = match &jwk.common.key_algorithm {
                None => None,
                Some(a) => match Algorithm::from_str(&a.to_string()) {
                    Ok(alg) => Some(alg),
                    Err(_) => continue,
                },
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            if key.family() != family || alg.is_some_and(|a| a.family() != family) {
                continue;
            }
            let entry = Entry { key, alg };
            match jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid, entry);
                }
                None => set.unnamed.push(entry),
            }
        }
        if set.by_kid.is_empty() && set.unnamed.is_empty() {
            return Err(format!(
                "the JWKS has no signature key usable with {family:?} algorithms"
            ));
        }
        Ok(set)
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let entry = match kid {
            Some(kid) => self.by_kid.get(kid)?,
            None if self.by_kid.len() + self.unnamed.len() == 1 => self
                .unnamed
                .first()
                .or_else(|| self.by_kid.values().next())?,
            None => return None,
        };
        match entry.alg {
            Some(a) if a != alg => None,
            _ => Some(entry.key.clone()),
        }
    }

    /// How many keys the set holds.
    pub fn count(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }
}

/// Where a route's keys come from.
pub enum Keys {
    /// An HMAC secret or a PEM public key: every token is checked with it.
    One(DecodingKey),
    /// A JWKS read from a file at load.
    Set(KeySet),
    /// A JWKS fetched over https.
    Remote(Box<RemoteJwks>),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keys::One(_) => f.write_str("Keys::One"),
            Keys::Set(s) => write!(f, "Keys::Set({} keys)", s.count()),
            Keys::Remote(r) => write!(f, "Keys::Remote({})", r.url),
        }
    }
}

impl Keys {
    /// The key for a token whose header says `kid` and `alg`.
    pub async fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, KeyError> {
        match self {
            Keys::One(k) => Ok(k.clone()),
            Keys::Set(s) => s.find(kid, alg).ok_or(KeyError::Unknown),
            Keys::Remote(r) => r.find(kid, alg).await,
        }
    }
}

/// What the last fetches left.
#[derive(Default)]
struct Cache {
    set: Option<Arc<KeySet>>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

/// A JWKS URL and its cache.
pub struct RemoteJwks {
    url: String,
    host: String,
    port: u16,
    authority: HeaderValue,
    path: String,
    tls: TlsConnector,
    name: ServerName<'static>,
    family: AlgorithmFamily,
    refresh: Duration,
    min_refetch: Duration,
    cache: RwLock<Cache>,
    /// One fetch at a time; the others wait for its result.
    fetching: tokio::sync::Mutex<()>,
}

impl RemoteJwks {
    /// `url` must be `https://host[:port]/path`.
    pub fn new(
        url: &str,
        tls: Arc<rustls::ClientConfig>,
        family: AlgorithmFamily,
        refresh: Duration,
        min_refetch: Duration,
    ) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|_| format!("jwks_url `{url}` is not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!(
                "jwks_url `{url}` must be https: keys fetched in the clear could be replaced"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("jwks_url `{url}` has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let name = ServerName::try_from(host.clone())
            .map_err(|_| format!("jwks_url `{url}`: `{host}` is not a valid server name"))?;
        Ok(RemoteJwks {
            url: url.to_owned(),
            port: authority.port_u16().unwrap_or(443),
            authority: HeaderValue::from_str(authority.as_str())
                .map_err(|_| format!("jwks_url `{url}` has an invalid host"))?,
            host,
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            tls: TlsConnector::from(tls),
            name,
            family,
            refresh,
            min_refetch,
            cache: RwLock::default(),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The cached key, and whether the cache is due for a refresh.
    fn cached(&self, kid: Option<&str>, alg: Algorithm) -> (Option<DecodingKey>, bool) {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        let due = cache.fetched.is_none_or(|t| t.elapsed() >= self.refresh);
        (cache.set.as_ref().and_then(|s| s.find(kid, alg)), due)
    }

    async fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, KeyError> {
        if let (Some(key), false) = self.cached(kid, alg) {
            return Ok(key);
        }
        {
            let _one = self.fetching.lock().await;
            // Whoever held the lock may have fetched what we need.
            if let (Some(key), false) = self.cached(kid, alg) {
                return Ok(key);
            }
            let may = {
                let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
                cache
                    .attempted
                    .is_none_or(|t| t.elapsed() >= self.min_refetch)
            };
            if may {
                self.cache
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .attempted = Some(Instant::now());
                match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
                    Ok(Ok(set)) => {
                        tracing::info!(url = %self.url, keys = set.count(), "fetched JWKS");
                        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
                        cache.set = Some(Arc::new(set));
                        cache.fetched = Some(Instant::now());
                    }
                    Ok(Err(e)) => tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed"),
                    Err(_) => tracing::warn!(url = %self.url, "JWKS fetch timed out"),
                }
            }
        }
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        match &cache.set {
            None => Err(KeyError::Unavailable),
            Some(set) => set.find(kid, alg).ok_or(KeyError::Unknown),
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let tls = self
            .tls
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get(self.path.as_str())
            .header(header::HOST, self.authority.clone())
            .header(header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(format!("answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        KeySet::parse(&body, self.family)
    }
}
