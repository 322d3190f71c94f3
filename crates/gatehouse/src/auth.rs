//! The broker's authenticator: certificate identities through the PKI, legacy passwords
//! through Argon2 hashes from the configuration.

use std::borrow::Cow;
use std::collections::HashMap;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use gatehouse_broker::{AuthError, Authenticator};
use gatehouse_types::{Identity, IdentitySource, TlsFacts};

use crate::config::LegacyUser;

/// Identifies clients for the broker.
#[derive(Debug)]
pub struct GatehouseAuth {
    users: HashMap<String, LegacyUser>,
    /// A hash to verify against when the user is unknown, so that an unknown user costs
    /// the same time as a wrong password.
    decoy: String,
}

impl GatehouseAuth {
    pub fn new(users: Vec<LegacyUser>) -> Self {
        let decoy = hash_password(b"gatehouse-decoy").unwrap_or_default();
        Self {
            users: users
                .into_iter()
                .map(|u| (u.device.as_str().to_owned(), u))
                .collect(),
            decoy,
        }
    }
}

/// Hashes a password for `legacy.users` (Argon2id, random salt, PHC string).
pub fn hash_password(password: &[u8]) -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
}

fn verify(hash: &str, password: &[u8]) -> bool {
    PasswordHash::new(hash)
        .map(|h| Argon2::default().verify_password(password, &h).is_ok())
        .unwrap_or(false)
}

impl Authenticator for GatehouseAuth {
    fn identify_tls(
        &self,
        conn: &rustls::ServerConnection,
    ) -> Result<(Identity, TlsFacts), AuthError> {
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(AuthError(Cow::Borrowed("no_client_certificate")))?;
        let identity = gatehouse_pki::identity_from_cert(cert.as_ref())
            .map_err(|_| AuthError(Cow::Borrowed("no_usable_identity_in_certificate")))?;
        Ok((identity, gatehouse_pki::tls_facts(conn)))
    }

    fn identify_password(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Identity, AuthError> {
        let (Some(username), Some(password)) = (username, password) else {
            return Err(AuthError(Cow::Borrowed("missing_credentials")));
        };
        match self.users.get(username) {
            Some(u) if verify(&u.password_hash, password) => Ok(Identity {
                tenant: u.tenant.clone(),
                device: u.device.clone(),
                source: IdentitySource::Password,
            }),
            Some(_) => Err(AuthError(Cow::Borrowed("bad_password"))),
            None => {
                let _ = verify(&self.decoy, password);
                Err(AuthError(Cow::Borrowed("unknown_user")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_and_fail() {
        let hash = hash_password(b"s3cret").unwrap();
        let auth = GatehouseAuth::new(vec![LegacyUser {
            device: "meter-1".parse().unwrap(),
            tenant: "default".parse().unwrap(),
            password_hash: hash,
        }]);
        let id = auth
            .identify_password(Some("meter-1"), Some(b"s3cret"))
            .unwrap();
        assert_eq!(id.source, IdentitySource::Password);
        assert_eq!(
            auth.identify_password(Some("meter-1"), Some(b"wrong")),
            Err(AuthError(Cow::Borrowed("bad_password")))
        );
        assert_eq!(
            auth.identify_password(Some("nobody"), Some(b"s3cret")),
            Err(AuthError(Cow::Borrowed("unknown_user")))
        );
        assert!(auth.identify_password(Some("meter-1"), None).is_err());
    }
}
