//! Trusting a backend by its exact certificate (`trust = "backend.pem"`):
//! the one way to reach a backend that presents a self-signed certificate.
//!
//! Written by hand because it cannot be had otherwise: rustls verifies
//! through webpki, and webpki refuses, by design, a certificate that is its
//! own issuer as the end entity (a CA certificate put in `ca` fails with
//! `CaUsedAsEndEntity`; a plain self-signed leaf is `UnknownIssuer`). This
//! is pinning, not skipping: the server must present one of the pinned
//! certificates byte for byte, and must prove in the handshake that it
//! holds its key (the signatures are checked with the process's crypto
//! provider, exactly as the default verifier checks them). There is no
//! "skip verification" anywhere in framegate.
//!
//! What is *not* checked is the certificate's names and validity dates:
//! the operator named this exact certificate, which is a stronger
//! statement about who the server is than any name in it.

use std::sync::Arc;

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    CertificateError, DigitallySignedStruct, Error, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// Accepts exactly the pinned certificates.
#[derive(Debug)]
pub struct PinnedVerifier {
    pinned: Vec<CertificateDer<'static>>,
    /// Whose signature algorithms check the handshake signatures.
    provider: Arc<CryptoProvider>,
}

impl PinnedVerifier {
    pub fn new(pinned: Vec<CertificateDer<'static>>, provider: Arc<CryptoProvider>) -> Self {
        PinnedVerifier { pinned, provider }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    /// Whether `end_entity` is one of the pinned certificates. The chain
    /// the server sends after it is ignored: a pin needs no issuer.
    ///
    /// A mismatch is `ApplicationVerificationFailure` (rustls's variant for
    /// "refused by the application's own check"; it sends the server an
    /// `access_denied` alert), which the log shows as
    /// `invalid peer certificate: ApplicationVerificationFailure`.
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            true => Ok(ServerCertVerified::assertion()),
            false => Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rustls::{server::ResolvesServerCert, sign::CertifiedKey};
    use rustls_pki_types::PrivateKeyDer;

    use super::*;

    fn self_signed() -> rcgen::CertifiedKey<rcgen::KeyPair> {
        rcgen::generate_simple_self_signed(vec!["backend.test".into()]).unwrap()
    }

    fn check(v: &PinnedVerifier, cert: &CertificateDer<'_>) -> Result<ServerCertVerified, Error> {
        let name = ServerName::try_from("anything.test").unwrap();
        v.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
    }

    #[test]
    fn only_a_pinned_certificate_passes_whatever_the_name() {
        let (a, b, other) = (self_signed(), self_signed(), self_signed());
        let pins = vec![a.cert.der().clone(), b.cert.der().clone()];
        let v = PinnedVerifier::new(pins, super::super::provider());
        assert!(check(&v, a.cert.der()).is_ok());
        assert!(check(&v, b.cert.der()).is_ok());
        let err = check(&v, other.cert.der()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid peer certificate: ApplicationVerificationFailure"
        );
    }

    /// Presents a certificate with a key that is not its own.
    #[derive(Debug)]
    struct Impostor(Arc<CertifiedKey>);

    impl ResolvesServerCert for Impostor {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    /// A server that has a copy of the pinned certificate but not its key
    /// fails: the pin is on the certificate, the proof is the signature.
    #[tokio::test]
    async fn a_copy_of_the_certificate_without_its_key_fails() {
        crate::tls::install_provider();
        let (pinned, stranger) = (self_signed(), self_signed());
        let key = PrivateKeyDer::Pkcs8(stranger.signing_key.serialize_der().into());
        let signing = super::super::provider()
            .key_provider
            .load_private_key(key)
            .unwrap();
        let stolen = CertifiedKey::new(vec![pinned.cert.der().clone()], signing);
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Impostor(Arc::new(stolen))));
        let client = crate::tls::upstream_client_config(
            crate::tls::ServerTrust::Pinned(vec![pinned.cert.der().clone()]),
            None,
        );
        let (a, b) = tokio::io::duplex(64 << 10);
        let accept = tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(b);
        let name = ServerName::try_from("backend.test").unwrap();
        let connect = tokio_rustls::TlsConnector::from(client).connect(name, a);
        let (_, connected) = tokio::join!(accept, connect);
        let err = connected.unwrap_err().to_string();
        assert!(err.contains("invalid peer certificate"), "{err}");
    }
}
