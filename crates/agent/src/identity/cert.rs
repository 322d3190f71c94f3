//! What the agent reads from a certificate: the device it names, its serial number and its
//! validity, and how certificates chain by name.

use gatehouse_types::{DeviceId, TenantId};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Scheme of the SAN URI that names a device: `gatehouse://<tenant>/device/<id>`.
const DEVICE_URI_PREFIX: &str = "gatehouse://";
/// The subject `serialNumber` attribute (2.5.4.5), where 802.1AR puts a device serial.
const OID_SERIAL_NUMBER: &str = "2.5.4.5";

/// Why a certificate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not a valid X.509 certificate: {0}")]
    Malformed(String),
    /// The certificate names no device: no `gatehouse://` SAN URI, no usable subject CN.
    #[error("the certificate names no device")]
    NoDevice,
    /// A `gatehouse://` SAN URI is malformed, or names an invalid tenant or device.
    #[error("the SAN URI {0:?} is not gatehouse://<tenant>/device/<id>")]
    BadDeviceUri(String),
}

/// The facts about a device certificate (LDevID) the agent acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertInfo {
    /// The tenant the certificate names (`default` when only a CN names the device).
    pub tenant: TenantId,
    /// The device the certificate names: its MQTT client id.
    pub device: DeviceId,
    /// The serial number, lowercase hex without leading zero bytes.
    pub serial_hex: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

// === impl CertInfo ===

impl CertInfo {
    /// Reads a device certificate: the SAN URI `gatehouse://<tenant>/device/<id>` names the
    /// device, or else the subject CN in tenant `default` (as the server reads it).
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let cert = parse(der)?;
        let (tenant, device) = match device_from_san(&cert)? {
            Some(found) => found,
            None => {
                let cn = cert
                    .subject()
                    .iter_common_name()
                    .next()
                    .and_then(|a| a.as_str().ok())
                    .ok_or(CertError::NoDevice)?;
                let device = DeviceId::new(cn).map_err(|_| CertError::NoDevice)?;
                (TenantId::default(), device)
            }
        };
        Ok(Self {
            tenant,
            device,
            serial_hex: serial_to_hex(cert.raw_serial()),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
        })
    }
}

/// The 802.1AR device serial of an IDevID: its subject `serialNumber`.
pub(crate) fn subject_serial_number(der: &[u8]) -> Result<Option<String>, CertError> {
    let cert = parse(der)?;
    Ok(cert
        .subject()
        .iter_attributes()
        .find(|a| a.attr_type().to_id_string() == OID_SERIAL_NUMBER)
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned))
}

/// The raw DER subject and issuer names of a certificate.
pub(crate) fn names(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let cert = parse(der)?;
    Ok((
        cert.subject().as_raw().to_vec(),
        cert.issuer().as_raw().to_vec(),
    ))
}

/// The raw DER SubjectPublicKeyInfo of a certificate.
pub(crate) fn spki(der: &[u8]) -> Result<Vec<u8>, CertError> {
    Ok(parse(der)?.public_key().raw.to_vec())
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(CertError::Malformed(
            "bytes after the certificate".to_owned(),
        )),
        Err(e) => Err(CertError::Malformed(e.to_string())),
    }
}

fn device_from_san(cert: &X509Certificate<'_>) -> Result<Option<(TenantId, DeviceId)>, CertError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Malformed(e.to_string()))?;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name
            && uri.starts_with(DEVICE_URI_PREFIX)
        {
            return parse_device_uri(uri).map(Some);
        }
    }
    Ok(None)
}

/// `gatehouse://<tenant>/device/<id>` → tenant and device.
pub(crate) fn parse_device_uri(uri: &str) -> Result<(TenantId, DeviceId), CertError> {
    let bad = || CertError::BadDeviceUri(uri.chars().take(160).collect());
    let rest = uri.strip_prefix(DEVICE_URI_PREFIX).ok_or_else(bad)?;
    let mut parts = rest.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(tenant), Some("device"), Some(device), None) => Ok((
            TenantId::new(tenant).map_err(|_| bad())?,
            DeviceId::new(device).map_err(|_| bad())?,
        )),
        _ => Err(bad()),
    }
}

/// The SAN URI naming `device` of `tenant`.
pub(crate) fn device_uri(tenant: &TenantId, device: &DeviceId) -> String {
    format!("{DEVICE_URI_PREFIX}{tenant}/device/{device}")
}

fn serial_to_hex(raw: &[u8]) -> String {
    let skip = raw
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(raw.len().saturating_sub(1));
    raw[skip..].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_uris_parse() {
        let (t, d) = parse_device_uri("gatehouse://acme/device/pump-1").expect("valid");
        assert_eq!((t.as_str(), d.as_str()), ("acme", "pump-1"));
        assert_eq!(device_uri(&t, &d), "gatehouse://acme/device/pump-1");
        for bad in [
            "gatehouse://acme/pump-1",
            "gatehouse://acme/device/pump-1/x",
            "gatehouse://acme/device/",
            "gatehouse://a b/device/x",
            "https://acme/device/x",
        ] {
            assert!(parse_device_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serials_lose_leading_zero_bytes() {
        assert_eq!(serial_to_hex(&[0, 0x7f, 0x01]), "7f01");
        assert_eq!(serial_to_hex(&[0]), "00");
        assert_eq!(serial_to_hex(&[]), "");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            CertInfo::from_der(b"nope"),
            Err(CertError::Malformed(_))
        ));
    }
}
