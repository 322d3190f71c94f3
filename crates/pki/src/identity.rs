//! Device identity and TLS facts read from a peer certificate.
//!
//! These functions *read* a certificate; they do not *verify* it. They are meant for the leaf
//! of a chain that rustls' webpki verifier has already accepted (the broker calls them after
//! the handshake), so a certificate reaching here is known to be issued by a trusted CA.

use gatehouse_types::{DeviceId, IdError, Identity, IdentitySource, TenantId, TlsFacts};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED448, OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Name};

use crate::issued::serial_to_hex;

/// Longest attacker-chosen text (a SAN URI) quoted in an error message.
const MAX_QUOTED: usize = 160;

/// Why no identity could be read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not a valid X.509 certificate: {0}")]
    Malformed(String),
    /// The certificate has neither a `gatehouse://` SAN URI nor a subject common name.
    #[error("certificate names no device: no gatehouse:// SAN URI and no subject CN")]
    NoIdentity,
    /// A `gatehouse://` SAN URI is not of the form `gatehouse://<tenant>/device/<id>`.
    #[error("SAN URI {uri:?} is not of the form gatehouse://<tenant>/device/<id>")]
    BadSanUri {
        /// The URI (shortened if long).
        uri: String,
    },
    /// The tenant named by the certificate is not a valid tenant id.
    #[error("invalid tenant in certificate: {0}")]
    InvalidTenant(IdError),
    /// The device named by the certificate is not a valid device id.
    #[error("invalid device id in certificate: {0}")]
    InvalidDevice(IdError),
    /// The certificate carries several `gatehouse://` SAN URIs naming different devices.
    #[error("certificate names several different devices in gatehouse:// SAN URIs")]
    ConflictingSanUris,
    /// The subject carries several different common names (and no SAN URI decides).
    #[error("certificate subject has several different CNs")]
    ConflictingCommonNames,
    /// The subject common name is not a text string.
    #[error("certificate subject CN is not text")]
    CommonNameNotText,
}

/// The device identity a client certificate names.
///
/// A SAN URI `gatehouse://<tenant>/device/<id>` wins
/// ([`IdentitySource::CertificateSanUri`]); several such URIs must all name the same device.
/// Without one, the subject CN is the device id in tenant `default`
/// ([`IdentitySource::CertificateCommonName`]). A malformed `gatehouse://` URI is an error,
/// not a reason to fall back to the CN. SAN URIs with other schemes are ignored.
///
/// `der` must be a certificate that has already been verified (see the module docs).
pub fn identity_from_cert(der: &[u8]) -> Result<Identity, IdentityError> {
    let cert = parse(der)?;

    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Malformed(e.to_string()))?;
    let mut from_uri: Option<(TenantId, DeviceId)> = None;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        let Some(found) = parse_device_uri(uri)? else {
            continue;
        };
        match &from_uri {
            Some(previous) if *previous != found => return Err(IdentityError::ConflictingSanUris),
            Some(_) => {}
            None => from_uri = Some(found),
        }
    }
    if let Some((tenant, device)) = from_uri {
        return Ok(Identity {
            tenant,
            device,
            source: IdentitySource::CertificateSanUri,
        });
    }

    let mut common_name: Option<&str> = None;
    for attr in cert.subject().iter_common_name() {
        let cn = attr
            .as_str()
            .map_err(|_| IdentityError::CommonNameNotText)?;
        match common_name {
            Some(previous) if previous != cn => return Err(IdentityError::ConflictingCommonNames),
            Some(_) => {}
            None => common_name = Some(cn),
        }
    }
    let cn = common_name.ok_or(IdentityError::NoIdentity)?;
    Ok(Identity {
        tenant: TenantId::default(),
        device: DeviceId::new(cn).map_err(IdentityError::InvalidDevice)?,
        source: IdentitySource::CertificateCommonName,
    })
}

/// `Ok(None)` for a URI of another scheme; `Ok(Some(..))` for a well-formed device URI; an
/// error for a `gatehouse://` URI that is not one.
fn parse_device_uri(uri: &str) -> Result<Option<(TenantId, DeviceId)>, IdentityError> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case(crate::DEVICE_URI_SCHEME) {
        return Ok(None);
    }
    let bad = || IdentityError::BadSanUri { uri: quote(uri) };
    let (tenant, path) = rest.split_once('/').ok_or_else(bad)?;
    let device = path.strip_prefix("device/").ok_or_else(bad)?;
    // Ids forbid '/', '?', '#', '%', '@' and the like, so validating them also refuses extra
    // path segments, queries, fragments, userinfo and percent-encoding.
    let tenant = TenantId::new(tenant).map_err(IdentityError::InvalidTenant)?;
    let device = DeviceId::new(device).map_err(IdentityError::InvalidDevice)?;
    Ok(Some((tenant, device)))
}

fn quote(s: &str) -> String {
    if s.len() <= MAX_QUOTED {
        return s.to_owned();
    }
    let mut end = MAX_QUOTED;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, IdentityError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IdentityError::Malformed(
            "trailing bytes after the certificate".to_owned(),
        ));
    }
    Ok(cert)
}

/// Facts about a server-side TLS session and its client certificate, for observations.
///
/// Call it after the handshake. Certificate fields stay empty (and `cert_not_after` 0) when
/// the client sent no certificate.
pub fn tls_facts(conn: &rustls::ServerConnection) -> TlsFacts {
    let version = conn
        .protocol_version()
        .map(|v| v.as_str().map_or_else(|| format!("{v:?}"), str::to_owned))
        .unwrap_or_default();
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| {
            let suite = s.suite();
            suite
                .as_str()
                .map_or_else(|| format!("{suite:?}"), str::to_owned)
        })
        .unwrap_or_default();
    let mut facts = TlsFacts {
        version,
        cipher,
        ..TlsFacts::default()
    };
    if let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) {
        fill_cert_facts(&mut facts, leaf);
    }
    facts
}

/// Fills the certificate fields of `facts` from a DER certificate; leaves them empty if it
/// does not parse.
pub(crate) fn fill_cert_facts(facts: &mut TlsFacts, der: &[u8]) {
    let Ok(cert) = parse(der) else { return };
    facts.cert_serial = serial_to_hex(cert.raw_serial());
    facts.cert_issuer = rfc4514(cert.issuer());
    facts.cert_not_after = cert.validity().not_after.timestamp();
    facts.cert_key = key_description(&cert);
}

/// The public key as `ecdsa-p256`, `rsa-2048`, `ed25519`, …; `unknown` otherwise.
fn key_description(cert: &X509Certificate<'_>) -> String {
    let spki = cert.public_key();
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let name = match curve {
            Some(c) if c == OID_EC_P256 => "p256",
            Some(c) if c == OID_NIST_EC_P384 => "p384",
            Some(c) if c == OID_NIST_EC_P521 => "p521",
            _ => "unknown",
        };
        format!("ecdsa-{name}")
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                format!("rsa-{}", bit_length(rsa.modulus))
            }
            _ => "rsa".to_owned(),
        }
    } else if *alg == OID_SIG_ED25519 {
        "ed25519".to_owned()
    } else if *alg == OID_SIG_ED448 {
        "ed448".to_owned()
    } else {
        "unknown".to_owned()
    }
}

/// Bit length of a big-endian unsigned integer.
fn bit_length(bytes: &[u8]) -> usize {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    match bytes.get(start) {
        Some(first) => (bytes.len() - start) * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// A distinguished name as an RFC 4514 string: RDNs last-to-first, separated by `,`;
/// multi-valued RDNs joined with `+`; well-known attribute types by short name, others by
/// dotted OID; string values escaped, non-string values as `#` and hex of their DER.
pub(crate) fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let ty = attribute_short_name(&atv.attr_type().to_id_string());
                    let value = match atv.as_str() {
                        Ok(s) => escape_rfc4514(s),
                        // `#` and the hex of the value's whole DER encoding (RFC 4514 2.4).
                        Err(_) => {
                            let der = x509_parser::asn1_rs::ToDer::to_der_vec(atv.attr_value())
                                .unwrap_or_default();
                            let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
                            format!("#{hex}")
                        }
                    };
                    format!("{ty}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn attribute_short_name(oid: &str) -> String {
    match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        other => other,
    }
    .to_owned()
}

/// Escapes an attribute value per RFC 4514 section 2.4.
fn escape_rfc4514(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_uri_parses() {
        let got = parse_device_uri("gatehouse://acme/device/thermo-1");
        assert!(
            matches!(got, Ok(Some((ref t, ref d))) if t.as_str() == "acme" && d.as_str() == "thermo-1")
        );
        assert!(matches!(
            parse_device_uri("GATEHOUSE://acme/device/x"),
            Ok(Some(_))
        ));
    }

    #[test]
    fn other_schemes_are_ignored() {
        assert!(matches!(
            parse_device_uri("https://example.com/x"),
            Ok(None)
        ));
        assert!(matches!(parse_device_uri("urn:uuid:1234"), Ok(None)));
        assert!(matches!(
            parse_device_uri("spiffe://acme/device/x"),
            Ok(None)
        ));
    }

    #[test]
    fn malformed_device_uris_are_refused() {
        for uri in [
            "gatehouse://acme",
            "gatehouse://acme/",
            "gatehouse://acme/devices/x",
            "gatehouse://acme/device/",
            "gatehouse:///device/x",
            "gatehouse://acme/device/x/y",
            "gatehouse://acme/device/x?y",
            "gatehouse://acme/device/x#y",
            "gatehouse://acme/device/x%2Fy",
            "gatehouse://user@acme/device/x",
            "gatehouse://acme/device/a b",
        ] {
            assert!(parse_device_uri(uri).is_err(), "{uri} accepted");
        }
    }

    #[test]
    fn long_uris_are_shortened_in_errors() {
        let uri = format!("gatehouse://acme/dev/{}", "é".repeat(200));
        let Err(IdentityError::BadSanUri { uri: quoted }) = parse_device_uri(&uri) else {
            panic!("expected BadSanUri");
        };
        assert!(quoted.len() <= MAX_QUOTED + '…'.len_utf8());
    }

    #[test]
    fn rfc4514_escaping() {
        assert_eq!(escape_rfc4514("plain"), "plain");
        assert_eq!(escape_rfc4514("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_rfc4514("#x "), "\\#x\\ ");
        assert_eq!(escape_rfc4514(" lead"), "\\ lead");
        assert_eq!(escape_rfc4514("q\"\\"), "q\\\"\\\\");
        assert_eq!(escape_rfc4514("nl\n"), "nl\\0a");
    }

    #[test]
    fn rfc4514_names_are_last_rdn_first() -> Result<(), Box<dyn std::error::Error>> {
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "Acme, Inc.");
        dn.push(rcgen::DnType::CommonName, "gw #1");
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate()?;
        let der = params.self_signed(&key)?.der().to_vec();
        let cert = parse(&der)?;
        assert_eq!(rfc4514(cert.subject()), "CN=gw #1,O=Acme\\, Inc.,C=DE");
        let mut facts = TlsFacts::default();
        fill_cert_facts(&mut facts, &der);
        assert_eq!(facts.cert_issuer, "CN=gw #1,O=Acme\\, Inc.,C=DE");
        assert_eq!(facts.cert_key, "ecdsa-p256");
        assert_eq!(facts.cert_serial.len() % 2, 0);
        Ok(())
    }

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_length(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(bit_length(&[0x01]), 1);
        assert_eq!(bit_length(&[0x00]), 0);
        let mut modulus = vec![0x00, 0xc1];
        modulus.extend(std::iter::repeat_n(0xffu8, 255));
        assert_eq!(bit_length(&modulus), 2048);
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            identity_from_cert(b"not a certificate"),
            Err(IdentityError::Malformed(_))
        ));
    }
}
