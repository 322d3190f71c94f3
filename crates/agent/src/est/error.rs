//! What can go wrong talking to an EST server.

use std::io;
use std::time::Duration;

use rustls::AlertDescription;

use super::pkcs7::Pkcs7Error;

/// Longest server-supplied text kept in an [`EstError::Refused`] message.
pub(crate) const MAX_MESSAGE_CHARS: usize = 512;

/// Why an EST request failed.
///
/// A bad server response is always one of these, never a panic. The server's explanation of
/// a refusal (its `text/plain` body) is kept in [`EstError::Refused`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EstError {
    /// The server URL is not an `https://host[:port][/path]` URL.
    #[error("invalid EST server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No trust anchor was given for the server's certificate.
    #[error("no trust anchor for the EST server was given")]
    NoTrustAnchors,
    /// A trust anchor cannot be used (not a valid CA certificate).
    #[error("unusable trust anchor: {0}")]
    BadTrustAnchor(rustls::Error),
    /// The client certificate or key cannot be used for TLS client authentication.
    #[error("unusable client certificate or key: {0}")]
    ClientCertificate(rustls::Error),
    /// The request cannot be made as asked (e.g. a token id holding `:`, which HTTP Basic
    /// cannot carry).
    #[error("invalid EST request: {0}")]
    InvalidRequest(&'static str),
    /// The TCP connection could not be made.
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// The socket error.
        source: io::Error,
    },
    /// The TLS handshake failed (server certificate not trusted, alert from the server, ...).
    #[error("TLS handshake with {authority} failed: {source}")]
    Tls {
        /// `host:port`.
        authority: String,
        /// The error, usually wrapping a [`rustls::Error`].
        source: io::Error,
    },
    /// The HTTP exchange failed (connection closed, malformed response, ...).
    #[error("HTTP exchange failed: {0}")]
    Http(#[source] hyper::Error),
    /// The request did not finish in time.
    #[error("EST request timed out after {0:?}")]
    Timeout(Duration),
    /// The response body is larger than allowed.
    #[error("EST response is larger than {limit} bytes")]
    ResponseTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The server answered with an error status: 400 bad CSR, 401 missing or wrong
    /// credentials, 403 refused (identity mismatch, unclaimed device, revoked, used
    /// token), 413 too large, 5xx.
    #[error("EST server refused the request: {status} {message}")]
    Refused {
        /// The HTTP status code.
        status: u16,
        /// The server's explanation (its body as text, shortened and stripped of control
        /// characters).
        message: String,
    },
    /// A successful response had another content type than EST's.
    #[error("unexpected content type {got:?} (expected {expected})")]
    UnexpectedContentType {
        /// What the server sent.
        got: String,
        /// What EST specifies.
        expected: &'static str,
    },
    /// The response body could not be decoded.
    #[error("malformed EST response: {0}")]
    Body(#[from] Pkcs7Error),
    /// An enrollment response held no certificate.
    #[error("the EST response holds no certificate")]
    NoCertificate,
}

// === impl EstError ===

impl EstError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            EstError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The TLS alert the server sent, if the handshake failed with one.
    pub fn tls_alert(&self) -> Option<AlertDescription> {
        match self {
            EstError::Tls { source, .. } => tls_alert_in(source),
            _ => None,
        }
    }

    /// Whether the server refused the credentials presented (a 401 or 403 answer, or a TLS
    /// alert about the client certificate): trying again with the same credentials will
    /// not help, other credentials might.
    pub fn is_credential_refusal(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
            || self.tls_alert().is_some_and(is_certificate_alert)
    }

    /// Whether trying the same request later may succeed (network trouble, timeouts, 5xx,
    /// 429).
    pub fn is_transient(&self) -> bool {
        match self {
            EstError::Connect { .. } | EstError::Http(_) | EstError::Timeout(_) => true,
            EstError::Tls { .. } => self.tls_alert().is_none(),
            EstError::Refused { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// The alert a peer sent, found inside an I/O error from tokio-rustls (or rumqttc).
pub(crate) fn tls_alert_in(err: &io::Error) -> Option<AlertDescription> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = err.get_ref().map(|e| e as _);
    while let Some(e) = source {
        if let Some(rustls::Error::AlertReceived(alert)) = e.downcast_ref::<rustls::Error>() {
            return Some(*alert);
        }
        source = e.source();
    }
    None
}

/// Alerts a server sends when it does not accept the client's certificate.
pub(crate) fn is_certificate_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
    )
}

/// A server's error body as a message safe to log: lossy UTF-8, control characters
/// replaced, shortened.
pub(crate) fn server_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if text.trim().chars().count() > MAX_MESSAGE_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_are_cleaned_and_bounded() {
        assert_eq!(server_message(b"  token used\r\n"), "token used");
        assert_eq!(server_message(b"a\x1b[31mb"), "a [31mb");
        assert_eq!(server_message(&[0xff, b'x']), "\u{fffd}x");
        let long = server_message(&[b'x'; 2000]);
        assert_eq!(long.chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn alerts_are_found_inside_io_errors() {
        let err = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateRevoked),
        );
        assert_eq!(
            tls_alert_in(&err),
            Some(AlertDescription::CertificateRevoked)
        );
        let est = EstError::Tls {
            authority: "h:1".to_owned(),
            source: err,
        };
        assert!(est.is_credential_refusal());
        assert!(!est.is_transient());
    }

    #[test]
    fn refusals_are_classified_by_status() {
        let refused = |status| EstError::Refused {
            status,
            message: String::new(),
        };
        assert!(refused(403).is_credential_refusal());
        assert!(refused(401).is_credential_refusal());
        assert!(!refused(400).is_credential_refusal());
        assert!(refused(503).is_transient());
        assert!(!refused(400).is_transient());
    }
}
