//! The rustls pieces the agent shares between EST and MQTTS: the *ring* provider, passed
//! explicitly so nothing depends on a process-wide default, and TLS 1.2 and 1.3 only.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Protocol versions the agent speaks.
pub(crate) static TLS_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The *ring* crypto provider.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting `roots` and presenting `chain` (leaf first) with `key`:
/// what the agent connects to MQTTS with.
pub fn mutual_tls_config(
    roots: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'_>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(TLS_VERSIONS)?
        .with_root_certificates(store)
        .with_client_auth_cert(chain.to_vec(), key.clone_key())?;
    Ok(Arc::new(config))
}
