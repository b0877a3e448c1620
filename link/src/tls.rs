//! Mutual TLS 1.3 where each side pins the other's certificate fingerprint.
//!
//! There is no CA: a peer is trusted exactly when the sha256 of the DER
//! certificate it presents is in the trust list. The handshake signature is
//! still verified with the provider's `verify_tls13_signature`, so a peer
//! must hold the private key of the pinned certificate. A refused peer is
//! logged with the fingerprint it offered, before any application data moves.

use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use crate::{Fingerprint, Identity};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn check_pin(role: &str, trusted: &[Fingerprint], cert: &CertificateDer<'_>) -> Result<(), Error> {
    let offered = Fingerprint::of_der(cert);
    if trusted.contains(&offered) {
        tracing::info!(%offered, "{role} certificate accepted (pinned fingerprint)");
        Ok(())
    } else {
        tracing::warn!(
            %offered,
            "refusing {role} certificate: fingerprint {offered} is not trusted (pass it with --trust if this peer is yours)"
        );
        Err(Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(Untrusted {
                role: role.to_string(),
                offered,
            })),
        )))
    }
}

/// The error a pinning verifier returns for an unknown fingerprint.
#[derive(thiserror::Error)]
#[error("{role} offered certificate {offered}, which is not trusted")]
pub struct Untrusted {
    pub role: String,
    pub offered: Fingerprint,
}

impl std::fmt::Debug for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The trust list and the signature algorithms both verifiers share.
#[derive(Debug)]
struct Pins {
    trusted: Vec<Fingerprint>,
    provider: Arc<CryptoProvider>,
}

impl Pins {
    fn new(trusted: &[Fingerprint], provider: &Arc<CryptoProvider>) -> Self {
        Self {
            trusted: trusted.to_vec(),
            provider: provider.clone(),
        }
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies the server certificate by fingerprint (used by clients).
#[derive(Debug)]
pub struct PinnedServerVerifier(Pins);

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        check_pin("target", &self.0.trusted, end_entity).map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// Verifies the client certificate by fingerprint (used by the target).
#[derive(Debug)]
pub struct PinnedClientVerifier(Pins);

impl ClientCertVerifier for PinnedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        check_pin("source", &self.0.trusted, end_entity).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// Server (target) TLS config: TLS 1.3 only, client certificate required and pinned.
pub fn server_config(
    identity: &Identity,
    trusted: &[Fingerprint],
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = provider();
    let verifier = Arc::new(PinnedClientVerifier(Pins::new(trusted, &provider)));
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("selecting TLS 1.3")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .with_context(|| format!("using the identity in {}", identity.dir.display()))?;
    Ok(Arc::new(config))
}

/// Client (agent, status) TLS config: TLS 1.3 only, server pinned, own certificate presented.
pub fn client_config(
    identity: &Identity,
    trusted: &[Fingerprint],
) -> Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let verifier = Arc::new(PinnedServerVerifier(Pins::new(trusted, &provider)));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("selecting TLS 1.3")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .with_context(|| format!("using the identity in {}", identity.dir.display()))?;
    Ok(Arc::new(config))
}

/// The server name clients send; the pinning verifier ignores it.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("standin").expect("static name is valid")
}

/// Fingerprint of the peer's certificate after a completed handshake.
pub fn peer_fingerprint(certs: Option<&[CertificateDer<'_>]>) -> Option<Fingerprint> {
    certs
        .and_then(|c| c.first())
        .map(|c| Fingerprint::of_der(c))
}
