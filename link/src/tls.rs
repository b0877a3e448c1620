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

/// Which peer a [`Pinned`] verifier checks (its name in the log).
pub trait Peer: std::fmt::Debug + Send + Sync + 'static {
    /// The peer's role, as logged: `target` or `source`.
    const ROLE: &'static str;
}

/// The target, as its clients (agent, status) see it.
#[derive(Debug)]
pub struct TargetPeer;

impl Peer for TargetPeer {
    const ROLE: &'static str = "target";
}

/// The source (agent), as the target sees it.
#[derive(Debug)]
pub struct SourcePeer;

impl Peer for SourcePeer {
    const ROLE: &'static str = "source";
}

/// A verifier that trusts a peer's certificate by fingerprint only, and
/// verifies its handshake signatures with the provider's algorithms. One
/// type for both sides: `P` names the peer it checks.
#[derive(Debug)]
pub struct Pinned<P: Peer> {
    trusted: Vec<Fingerprint>,
    provider: Arc<CryptoProvider>,
    peer: std::marker::PhantomData<P>,
}

/// Verifies the server certificate by fingerprint (used by clients).
pub type PinnedServerVerifier = Pinned<TargetPeer>;

/// Verifies the client certificate by fingerprint (used by the target).
pub type PinnedClientVerifier = Pinned<SourcePeer>;

impl<P: Peer> Pinned<P> {
    fn new(trusted: &[Fingerprint], provider: &Arc<CryptoProvider>) -> Self {
        Self {
            trusted: trusted.to_vec(),
            provider: provider.clone(),
            peer: std::marker::PhantomData,
        }
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), Error> {
        check_pin(P::ROLE, &self.trusted, cert)
    }
}

/// The handshake-signature methods, the same in rustls's server- and
/// client-certificate verifier traits.
macro_rules! pinned_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            let algorithms = &self.provider.signature_verification_algorithms;
            verify_tls12_signature(message, cert, dss, algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            let algorithms = &self.provider.signature_verification_algorithms;
            verify_tls13_signature(message, cert, dss, algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

impl ServerCertVerifier for Pinned<TargetPeer> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.check(end_entity)
            .map(|_| ServerCertVerified::assertion())
    }

    pinned_signatures!();
}

impl ClientCertVerifier for Pinned<SourcePeer> {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.check(end_entity)
            .map(|_| ClientCertVerified::assertion())
    }

    pinned_signatures!();

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
    let verifier = Arc::new(PinnedClientVerifier::new(trusted, &provider));
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
    let verifier = Arc::new(PinnedServerVerifier::new(trusted, &provider));
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
