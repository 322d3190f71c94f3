//! The EST client (RFC 7030): `cacerts`, `csrattrs`, `simpleenroll` with an enrollment token
//! or a manufacturer certificate, and `simplereenroll` with the current certificate.

mod client;
mod error;
pub mod pkcs7;

pub use client::{EstClient, EstLimits};
pub use error::EstError;
pub(crate) use error::{is_certificate_alert, tls_alert_in};
