//! The device's identities: the key it generates, the CSR it sends, the certificate it is
//! given (LDevID) and the manufacturer certificate it may start from (IDevID).

mod cert;
mod credentials;
mod key;

pub(crate) use cert::names;
pub use cert::{CertError, CertInfo};
pub use credentials::{CredentialsError, DeviceCredentials, Idevid, certs_to_pem, load_certs};
pub use key::{CsrSubject, DeviceKey, KeyError};
