//! A throwaway certificate authority, the certificates it signs, and TLS
//! to the gateway.

use std::{net::SocketAddr, path::Path, sync::Arc};

use tokio::net::TcpStream;

use super::{guard, write_file};

/// A throwaway CA that signs leaf certificates.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

/// A leaf certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls_pki_types::CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "framegate test CA");
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let pem = issuer.pem();
        TestCa { issuer, pem }
    }

    /// A server certificate for `names` (DNS names or IPs), signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "framegate test server");
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A server config presenting `leaf` that requires every client to
    /// present a certificate signed by this CA (mutual TLS).
    pub fn server_config_requiring_clients(&self, leaf: &Leaf) -> Arc<rustls::ServerConfig> {
        framegate::tls::install_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        Arc::new(
            rustls::ServerConfig::builder()
                .with_client_cert_verifier(verifier)
                .with_single_cert(vec![leaf.der.clone()], leaf.key())
                .unwrap(),
        )
    }

    /// A rustls client config trusting only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        framegate::tls::install_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Leaf {
    /// A self-signed certificate for `names`, signed by no CA.
    pub fn self_signed(names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let c = rcgen::generate_simple_self_signed(names).unwrap();
        Leaf {
            cert_pem: c.cert.pem(),
            key_pem: c.signing_key.serialize_pem(),
            der: c.cert.der().clone(),
        }
    }

    fn key(&self) -> rustls_pki_types::PrivateKeyDer<'static> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }

    /// Writes `STEM.pem` and `STEM.key` into `dir`.
    pub fn write_to(&self, dir: &Path, stem: &str) {
        write_file(dir, &format!("{stem}.pem"), &self.cert_pem);
        write_file(dir, &format!("{stem}.key"), &self.key_pem);
    }

    /// A rustls server config presenting this certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        framegate::tls::install_provider();
        Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(vec![self.der.clone()], self.key())
                .unwrap(),
        )
    }
}

/// Opens TLS to `addr` with SNI `name`, trusting `config`'s roots.
pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
    guard(
        "the TLS handshake",
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("TLS handshake with the gateway")
}
