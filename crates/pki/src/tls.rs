//! rustls configurations for Gatehouse's listeners and for its own clients (tests, load
//! generator, simulator).
//!
//! Every config is built with the *ring* provider passed explicitly, so nothing depends on a
//! process-wide default provider being installed, and allows TLS 1.2 and 1.3 only. Client
//! certificates are checked by rustls' webpki verifier: chain to a given root, validity
//! period (expired certificates fail the handshake), key usage for client authentication and,
//! when given, revocation lists.

use std::fmt;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::issued::IssuedCert;
use crate::pem::PemError;

/// Protocol versions Gatehouse speaks.
static VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Whether a server asks for, and insists on, client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClientAuth {
    /// A client certificate chaining to a client root is required; the handshake fails
    /// without one. The default, and what MQTTS uses.
    #[default]
    Required,
    /// A client certificate is asked for and, if sent, must chain to a client root; a client
    /// may also connect without one (the application must then authenticate it otherwise).
    Optional,
    /// No client certificate is asked for: anyone may connect.
    None,
    /// A client certificate is asked for but not required, and any certificate is accepted
    /// at the TLS layer: the handshake still proves the client holds the certificate's key,
    /// but the chain is NOT verified. The application must verify it for every use (EST
    /// takes manufacturer IDevIDs, whose CAs change at runtime, and device certificates on
    /// the same listener). Client roots are not needed.
    Deferred,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Client certificates are wanted but no client root was given.
    #[error("client authentication is enabled but no client CA certificate was given")]
    NoClientRoots,
    /// A client needs at least one root to verify the server with.
    #[error("no trusted root certificate was given")]
    NoRoots,
    /// A root certificate cannot be used as a trust anchor.
    #[error("unusable root certificate: {0}")]
    InvalidRoot(rustls::Error),
    /// The client certificate verifier could not be built (e.g. an unparsable CRL).
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] VerifierBuilderError),
    /// rustls refused the configuration (e.g. a key that does not match its certificate, or
    /// an unsupported key type).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// A certificate or key could not be decoded.
    #[error(transparent)]
    Pem(#[from] PemError),
}

/// Builds the [`ServerConfig`] of a TLS listener.
///
/// Defaults: [`ClientAuth::Required`], no CRLs, no ALPN. Revocation lists given with
/// [`crls`](Self::crls) are checked for the client's *end-entity* certificate: a device
/// certificate whose issuer has no CRL among them fails (unknown status is not accepted), so
/// give the CRL of every live issuing CA ([`LocalCa::crls`](crate::LocalCa::crls)).
/// Intermediates are not checked against CRLs: they are Gatehouse's own issuing CAs, which
/// leave the trust anchors when they are retired, and the root publishes no CRL; requiring
/// one would fail every handshake.
pub struct ServerTlsBuilder {
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: Vec<CertificateDer<'static>>,
    client_auth: ClientAuth,
    crls: Vec<CertificateRevocationListDer<'static>>,
    alpn: Vec<Vec<u8>>,
}

// === impl ServerTlsBuilder ===

impl ServerTlsBuilder {
    /// A builder for a server presenting `cert_chain` (leaf first, then intermediates) with
    /// `key`.
    pub fn new(cert_chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        Self {
            cert_chain,
            key,
            client_roots: Vec::new(),
            client_auth: ClientAuth::default(),
            crls: Vec::new(),
            alpn: Vec::new(),
        }
    }

    /// A builder for a server presenting an issued certificate (see
    /// [`IssuedCert::presented_chain`]).
    pub fn from_issued(server: &IssuedCert) -> Result<Self, TlsError> {
        Ok(Self::new(server.presented_chain()?, server.key_der()?))
    }

    /// Trust anchors for client certificates (usually the local CA's certificate).
    pub fn client_roots(mut self, roots: &[CertificateDer<'static>]) -> Self {
        self.client_roots = roots.to_vec();
        self
    }

    /// Whether client certificates are required, optional or not asked for.
    pub fn client_auth(mut self, client_auth: ClientAuth) -> Self {
        self.client_auth = client_auth;
        self
    }

    /// Certificate revocation lists checked against client certificates. Ignored with
    /// [`ClientAuth::None`].
    pub fn crls(mut self, crls: Vec<CertificateRevocationListDer<'static>>) -> Self {
        self.crls = crls;
        self
    }

    /// ALPN protocols offered, in order of preference (e.g. `b"mqtt"`).
    pub fn alpn_protocols(mut self, protocols: Vec<Vec<u8>>) -> Self {
        self.alpn = protocols;
        self
    }

    /// Builds the configuration.
    pub fn build(self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = provider();
        let verifier = match self.client_auth {
            ClientAuth::None => WebPkiClientVerifier::no_client_auth(),
            ClientAuth::Deferred => Arc::new(DeferredClientVerifier {
                algorithms: provider.signature_verification_algorithms,
            }),
            auth @ (ClientAuth::Required | ClientAuth::Optional) => {
                if self.client_roots.is_empty() {
                    return Err(TlsError::NoClientRoots);
                }
                let roots = root_store(&self.client_roots)?;
                let mut builder =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .with_crls(self.crls)
                        .only_check_end_entity_revocation();
                if auth == ClientAuth::Optional {
                    builder = builder.allow_unauthenticated();
                }
                builder.build()?
            }
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(VERSIONS)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert_chain, self.key)?;
        config.alpn_protocols = self.alpn;
        Ok(Arc::new(config))
    }
}

/// Accepts any client certificate whose key signed the handshake; see
/// [`ClientAuth::Deferred`].
#[derive(Debug)]
struct DeferredClientVerifier {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::server::danger::ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl fmt::Debug for ServerTlsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTlsBuilder")
            .field("cert_chain_len", &self.cert_chain.len())
            .field("key", &"<redacted>")
            .field("client_roots_len", &self.client_roots.len())
            .field("client_auth", &self.client_auth)
            .field("crls_len", &self.crls.len())
            .field("alpn", &self.alpn)
            .finish()
    }
}

/// The [`ServerConfig`] of a listener presenting `server`, checking client certificates
/// against `client_roots` as `client_auth` says. Use [`ServerTlsBuilder`] for CRLs or ALPN.
pub fn server_config(
    server: &IssuedCert,
    client_roots: &[CertificateDer<'static>],
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    ServerTlsBuilder::from_issued(server)?
        .client_roots(client_roots)
        .client_auth(client_auth)
        .build()
}

/// A [`ClientConfig`] trusting `roots` for the server's certificate and, if `client` is
/// given, presenting it as the client certificate.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    client: Option<&IssuedCert>,
) -> Result<Arc<ClientConfig>, TlsError> {
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(root_store(roots)?);
    let config = match client {
        Some(cert) => builder.with_client_auth_cert(cert.presented_chain()?, cert.key_der()?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(TlsError::InvalidRoot)?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_client_auth_is_required() {
        assert_eq!(ClientAuth::default(), ClientAuth::Required);
    }

    #[test]
    fn client_config_needs_roots() {
        assert!(matches!(client_config(&[], None), Err(TlsError::NoRoots)));
    }
}
