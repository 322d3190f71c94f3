//! The broker's authenticator: certificate identities through the PKI, legacy passwords
//! through Argon2 hashes from the configuration, checked within the server's one budget of
//! password checks ([`PasswordChecks`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use gatehouse_broker::{AuthError, Authenticator, PASSWORD_CHECK_SHED, PasswordCheck};
use gatehouse_pki::password::PasswordChecks;
use gatehouse_types::{Identity, IdentitySource, TlsFacts};

use crate::config::LegacyUser;

/// Identifies clients for the broker.
#[derive(Debug)]
pub struct GatehouseAuth {
    users: Arc<HashMap<String, LegacyUser>>,
    checks: Arc<PasswordChecks>,
}

impl GatehouseAuth {
    /// Legacy `users`, checked within `checks` (shared with operators' logins).
    pub fn new(users: Vec<LegacyUser>, checks: Arc<PasswordChecks>) -> Self {
        Self {
            users: Arc::new(
                users
                    .into_iter()
                    .map(|u| (u.device.as_str().to_owned(), u))
                    .collect(),
            ),
            checks,
        }
    }
}

/// Hashes a password for `legacy.users` (Argon2id, random salt, PHC string).
pub fn hash_password(password: &[u8]) -> anyhow::Result<String> {
    gatehouse_pki::password::hash_password(password)
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
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

    fn password_check(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<PasswordCheck, AuthError> {
        let (Some(username), Some(password)) = (username, password) else {
            return Err(AuthError(Cow::Borrowed("missing_credentials")));
        };
        // Shed before any work when the budget is spent.
        let admission = self
            .checks
            .admit()
            .map_err(|_| AuthError(Cow::Borrowed(PASSWORD_CHECK_SHED)))?;
        let users = Arc::clone(&self.users);
        let username = username.to_owned();
        let password = password.to_vec();
        Ok(Box::new(move || match users.get(&username) {
            Some(u) => {
                if admission.verify(&u.password_hash, &password) {
                    Ok(Identity {
                        tenant: u.tenant.clone(),
                        device: u.device.clone(),
                        source: IdentitySource::Password,
                    })
                } else {
                    Err(AuthError(Cow::Borrowed("bad_password")))
                }
            }
            None => {
                // An unknown user costs what a wrong password does.
                admission.verify_decoy(&password);
                Err(AuthError(Cow::Borrowed("unknown_user")))
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_pki::password::PasswordBudget;

    fn identify(
        auth: &GatehouseAuth,
        user: Option<&str>,
        pw: Option<&[u8]>,
    ) -> Result<Identity, AuthError> {
        auth.password_check(user, pw).and_then(|check| check())
    }

    #[test]
    fn passwords_verify_and_fail() {
        let hash = hash_password(b"s3cret").unwrap();
        let auth = GatehouseAuth::new(
            vec![LegacyUser {
                device: "meter-1".parse().unwrap(),
                tenant: "default".parse().unwrap(),
                password_hash: hash,
            }],
            PasswordChecks::new(PasswordBudget::default()),
        );
        let id = identify(&auth, Some("meter-1"), Some(b"s3cret")).unwrap();
        assert_eq!(id.source, IdentitySource::Password);
        assert_eq!(
            identify(&auth, Some("meter-1"), Some(b"wrong")),
            Err(AuthError(Cow::Borrowed("bad_password")))
        );
        assert_eq!(
            identify(&auth, Some("nobody"), Some(b"s3cret")),
            Err(AuthError(Cow::Borrowed("unknown_user")))
        );
        assert!(identify(&auth, Some("meter-1"), None).is_err());
    }

    #[test]
    fn checks_over_the_budget_are_shed_before_hashing() {
        let checks = PasswordChecks::new(PasswordBudget {
            concurrent: 1,
            queue: 0,
            per_second: 100,
        });
        let auth = GatehouseAuth::new(vec![], checks.clone());
        let held = auth.password_check(Some("x"), Some(b"y")).unwrap();
        assert_eq!(
            auth.password_check(Some("x"), Some(b"y")).err(),
            Some(AuthError(Cow::Borrowed(PASSWORD_CHECK_SHED)))
        );
        assert!(held().is_err());
        assert_eq!(checks.slots(), 1);
    }
}
