use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The identifier is empty.
    #[error("identifier is empty")]
    Empty,
    /// The identifier is longer than allowed.
    #[error("identifier is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// Length of the refused identifier in bytes.
        len: usize,
        /// The maximum length.
        max: usize,
    },
    /// The identifier holds a character outside `A-Z a-z 0-9 . _ : -`.
    #[error("identifier holds {0:?}; only letters, digits and . _ : - are allowed")]
    BadChar(char),
}

fn validate(s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong { len: s.len(), max });
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(IdError::BadChar(c));
    }
    Ok(())
}

macro_rules! ident {
    ($(#[$m:meta])* $name:ident, $max:expr) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Longest identifier accepted, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates and wraps an identifier.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate(&s, Self::MAX_LEN)?;
                Ok(Self(s))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

ident!(
    /// A device's identifier, unique within its tenant. It is also the device's MQTT client id.
    DeviceId,
    128
);
ident!(
    /// A tenant's identifier: the organisation that owns a fleet.
    TenantId,
    64
);

impl Default for TenantId {
    fn default() -> Self {
        Self("default".to_owned())
    }
}

/// Where an identity was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum IdentitySource {
    /// The client certificate's SAN URI `gatehouse://<tenant>/device/<id>`.
    CertificateSanUri,
    /// The client certificate's subject common name (no Gatehouse SAN URI present).
    CertificateCommonName,
    /// A username and password on a legacy plain listener (weaker identity).
    Password,
}

/// Who is at the other end of a session: bound at CONNECT, for the session's life.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// The tenant the device belongs to.
    pub tenant: TenantId,
    /// The device.
    pub device: DeviceId,
    /// Where the identity came from.
    pub source: IdentitySource,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_validated() {
        assert!(DeviceId::new("thermo-0001").is_ok());
        assert!(DeviceId::new("a.b_c:d-e").is_ok());
        assert_eq!(DeviceId::new(""), Err(IdError::Empty));
        assert_eq!(DeviceId::new("a/b"), Err(IdError::BadChar('/')));
        assert_eq!(DeviceId::new("a+b"), Err(IdError::BadChar('+')));
        assert!(matches!(
            DeviceId::new("x".repeat(129)),
            Err(IdError::TooLong { len: 129, max: 128 })
        ));
    }

    #[test]
    fn serde_refuses_invalid_ids() {
        assert!(serde_json::from_str::<DeviceId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<DeviceId>("\"not ok\"").is_err());
    }
}

/// A device named within its tenant: `tenant/device`, or just `device` for the default
/// tenant. Device ids are unique only within a tenant, so anything that acts on "a
/// device" (revoke, block, grant) names one of these.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceRef {
    /// The tenant.
    pub tenant: TenantId,
    /// The device.
    pub device: DeviceId,
}

impl DeviceRef {
    /// A reference to `device` in `tenant`.
    pub fn new(tenant: TenantId, device: DeviceId) -> Self {
        Self { tenant, device }
    }

    /// Whether the identity is this device.
    pub fn is(&self, identity: &Identity) -> bool {
        self.tenant == identity.tenant && self.device == identity.device
    }
}

impl From<&Identity> for DeviceRef {
    fn from(id: &Identity) -> Self {
        Self::new(id.tenant.clone(), id.device.clone())
    }
}

impl std::str::FromStr for DeviceRef {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        match s.split_once('/') {
            Some((t, d)) => Ok(Self::new(TenantId::new(t)?, DeviceId::new(d)?)),
            None => Ok(Self::new(TenantId::default(), DeviceId::new(s)?)),
        }
    }
}

impl fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.device)
    }
}

#[cfg(test)]
mod device_ref_tests {
    use super::*;

    #[test]
    fn device_refs_parse_with_or_without_tenant() {
        let r: DeviceRef = "acme/pump-1".parse().unwrap();
        assert_eq!(r.tenant.as_str(), "acme");
        assert_eq!(r.device.as_str(), "pump-1");
        let d: DeviceRef = "pump-1".parse().unwrap();
        assert_eq!(d.tenant, TenantId::default());
        assert!("a/b/c".parse::<DeviceRef>().is_err());
        assert_eq!(r.to_string(), "acme/pump-1");
    }
}
