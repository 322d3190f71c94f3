//! A PEM-encoded secret (a private key) that never prints itself.

use std::fmt;

use zeroize::Zeroizing;

/// A PEM-encoded private key.
///
/// `Debug` and `Display` are not what they seem: `Debug` prints `<redacted>` and there is no
/// `Display`. The text is wiped from memory when the value is dropped. Reach the PEM on
/// purpose with [`SecretPem::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPem(Zeroizing<String>);

// === impl SecretPem ===

impl SecretPem {
    /// Wraps PEM text.
    pub fn new(pem: String) -> Self {
        Self(Zeroizing::new(pem))
    }

    /// The PEM text. Do not log it.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl From<String> for SecretPem {
    fn from(pem: String) -> Self {
        Self::new(pem)
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretPem::new("-----BEGIN PRIVATE KEY-----\nAAAA\n".to_owned());
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:#?}", Some(&s)), "Some(\n    <redacted>,\n)");
        assert!(s.expose().contains("AAAA"));
    }
}
