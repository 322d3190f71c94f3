//! Gatehouse's public-key infrastructure: the local certificate authority that issues device
//! and server certificates, the device identity read back from a client certificate, and the
//! rustls configurations that put both on the wire.
//!
//! Invariant 1 of the design is *identity is a certificate*: a device is who its client
//! certificate says it is, and nothing else. This crate is where that holds.
//!
//! - [`LocalCa`] keeps a self-signed ECDSA P-256 root in a directory (`ca.key` 0600 and
//!   `ca.crt`) and issues [`IssuedCert`]s: device certificates naming
//!   `gatehouse://<tenant>/device/<id>` in a SAN URI, and server certificates for the
//!   listeners.
//! - [`identity_from_cert`] turns a verified peer certificate into an
//!   [`Identity`](gatehouse_types::Identity); [`tls_facts`] describes the TLS session for the
//!   detection stage.
//! - [`ServerTlsBuilder`] / [`server_config`] and [`client_config`] build rustls configs with
//!   the *ring* provider chosen explicitly, TLS 1.2 and 1.3 only, and client certificates
//!   checked by webpki against the CA.
//!
//! The one design decision that shapes this crate: **the CA's private key never leaves
//! [`LocalCa`]**. No accessor returns it, no error or `Debug` output prints it, and every
//! private key that does travel (a freshly issued device key) is wrapped in a [`SecretPem`]
//! whose `Debug` prints `<redacted>` and whose memory is wiped on drop. Issuance is split into
//! "build the certificate parameters" and "sign a public key", so that enrollment (EST, a CSR
//! carrying the device's own public key) can reuse the signing half later without the key
//! ever being generated here.

mod ca;
mod fsutil;
mod identity;
mod issued;
mod pem;
mod secret;
mod tls;

pub use ca::{CaError, DeviceCertParams, LocalCa, ServerCertParams};
pub use identity::{IdentityError, identity_from_cert, tls_facts};
pub use issued::{IssuedCert, WrittenFiles};
pub use pem::{PemError, load_certs_pem, load_key_pem};
pub use secret::SecretPem;
pub use tls::{ClientAuth, ServerTlsBuilder, TlsError, client_config, server_config};

/// Scheme of the SAN URI that names a device: `gatehouse://<tenant>/device/<id>`.
pub const DEVICE_URI_SCHEME: &str = "gatehouse";
