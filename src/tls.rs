//! TLS with rustls: certificates for `wss` listeners (chosen by SNI) and
//! the client side for `wss://` upstreams: verified against the system
//! roots, a `ca` bundle or pinned certificates ([`pinned`]), with a client
//! certificate when the backend asks for one (mTLS).
//!
//! Only TLS 1.2 and 1.3 are offered, and ALPN is `http/1.1` on both sides:
//! WebSocket over HTTP/2 (RFC 8441) is not spoken.

use std::{collections::HashMap, fmt, path::Path, sync::Arc};

use rustls::{
    crypto::aws_lc_rs,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ClientConfig, RootCertStore, ServerConfig,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

mod pinned;

const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Installs aws-lc-rs as the process-wide crypto provider. Called at start;
/// harmless when a provider is already installed.
pub fn install_provider() {
    let _ = aws_lc_rs::default_provider().install_default();
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// Which of the two files of a certificate pair is at fault.
#[derive(Debug)]
pub enum CertError {
    Cert(String),
    Key(String),
}

/// A PEM reading error in words. rustls-pki-types prints the markers it
/// looked for as Rust debug values (`[45, 45, 45, 45, 45, 69, 78, 68, ...]`).
fn pem_problem(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "a PEM section has no end line (`-----END {}-----`)",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => format!(
            "a PEM section starts with the malformed line `{}`",
            String::from_utf8_lossy(line).trim_end()
        ),
        Error::Base64Decode(e) => format!("a PEM section's base64 is damaged ({e})"),
        Error::Io(e) => e.to_string(),
        Error::NoItemsFound => "no PEM item in the file".into(),
        other => other.to_string(),
    }
}

/// Loads a PEM chain and key and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| {
            CertError::Cert(format!(
                "cannot load certificate {}: {}",
                cert.display(),
                pem_problem(&e)
            ))
        })?;
    if chain.is_empty() {
        return Err(CertError::Cert(format!(
            "no certificate in {}",
            cert.display()
        )));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        CertError::Key(format!(
            "cannot load private key {}: {}",
            key.display(),
            pem_problem(&e)
        ))
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| CertError::Key(format!("unusable private key {}: {e}", key.display())))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|_| {
        CertError::Key(format!(
            "private key {} does not belong to certificate {}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(Arc::new(ck))
}

/// A `wss` listener's TLS config; the first certificate is the default.
pub fn server_config(certs: Vec<Arc<CertifiedKey>>) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(certs)));
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Arc::new(cfg)
}

/// Picks a certificate by the SNI name, from the names in each
/// certificate's subjectAltName; falls back to the first certificate.
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn new(certs: Vec<Arc<CertifiedKey>>) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for ck in &certs {
            let Some(leaf) = ck.cert.first() else {
                continue;
            };
            let Ok(parsed) = webpki::EndEntityCert::try_from(leaf) else {
                continue;
            };
            for name in parsed.valid_dns_names() {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_owned()),
                    None => exact.entry(name),
                }
                .or_insert_with(|| ck.clone());
            }
        }
        SniResolver {
            exact,
            wildcard,
            default: certs[0].clone(),
        }
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("names", &self.exact.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        let by_wildcard = || {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        };
        Some(
            self.exact
                .get(&name)
                .or_else(by_wildcard)
                .unwrap_or(&self.default)
                .clone(),
        )
    }
}

/// Reads a PEM bundle of CA certificates for verifying upstream servers.
pub fn load_ca(path: &Path) -> Result<RootCertStore, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect())
        .map_err(|e| {
            format!(
                "cannot load CA file {}: {}",
                path.display(),
                pem_problem(&e)
            )
        })?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("no usable CA certificate in {}", path.display()));
    }
    Ok(roots)
}

/// Reads the certificates a `wss://` group trusts as they are (`trust`):
/// typically a backend's self-signed certificate; see [`pinned`].
pub fn load_pinned(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect())
        .map_err(|e| {
            format!(
                "cannot load trusted certificates {}: {}",
                path.display(),
                pem_problem(&e)
            )
        })?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// How the servers of a `wss://` group are verified. Verification is always
/// on: these are the only two ways.
pub enum ServerTrust {
    /// The certificate chains to these roots (`ca`), or to the system's
    /// when `None`, and is valid for the server's name.
    Roots(Option<RootCertStore>),
    /// The certificate is one of these (`trust`), and the server holds its
    /// key: see [`pinned`].
    Pinned(Vec<CertificateDer<'static>>),
}

/// TLS config for `wss://` upstreams: the given roots, or the system's.
pub fn client_config(roots: Option<RootCertStore>) -> Arc<ClientConfig> {
    upstream_client_config(ServerTrust::Roots(roots), None)
}

/// TLS config for a `wss://` group: how its servers are verified, and the
/// certificate the gateway presents when a server asks for one (mTLS).
pub fn upstream_client_config(
    trust: ServerTrust,
    identity: Option<Arc<CertifiedKey>>,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3");
    let builder = match trust {
        ServerTrust::Roots(roots) => {
            builder.with_root_certificates(roots.unwrap_or_else(system_roots))
        }
        ServerTrust::Pinned(certs) => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(pinned::PinnedVerifier::new(
                    certs,
                    provider(),
                )))
        }
    };
    let mut cfg = match identity {
        None => builder.with_no_client_auth(),
        Some(key) => builder.with_client_cert_resolver(Arc::new(ClientIdentity(key))),
    };
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Arc::new(cfg)
}

/// The gateway's client certificate (`client_cert`, `client_key`), given
/// to every server that asks, whatever CAs it hints at: the operator
/// configured one identity per group, and a server that does not accept it
/// says so in the handshake.
#[derive(Debug)]
struct ClientIdentity(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn system_roots() -> RootCertStore {
    let loaded = rustls_native_certs::load_native_certs();
    for e in &loaded.errors {
        tracing::warn!(error = %e, "could not read some system CA certificates");
    }
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(loaded.certs);
    roots
}
