//! Making revocations bite: CRLs signed and served, the MQTTS verifier given them, live
//! sessions of revoked devices ended.
//!
//! A revocation is first made durable in the registry (by the API, the CLI or another
//! process); [`RevocationSync::sync`] then reads every revoked certificate, signs fresh
//! CRLs, hands them to the [`SessionControl`] (which rebuilds the MQTTS TLS configuration
//! so a reconnect is refused) and only then disconnects the sessions of newly revoked
//! devices. The API calls it right after its write; a revocation written by another
//! process (the CLI writes the database directly) reaches it through the change feed.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use gatehouse_pki::{EnrollError, Enroller, PublishedCrl};
use gatehouse_store::{CertSerial, Change, ChangeRecord, Registry};
use gatehouse_types::DeviceRef;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tracing::{info, warn};

/// Revocation metrics; clones share the same counters.
#[derive(Debug, Clone, Default)]
pub struct RevocationMetrics {
    /// Devices whose live sessions were ended because a certificate was revoked.
    pub revoked_sessions_ended: Counter,
    /// CRL signings (at revocations and before expiry).
    pub crls_signed: Counter,
}

impl RevocationMetrics {
    /// Registers every metric under `gatehouse_` names.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "gatehouse_revoked_devices_disconnected",
            "Devices whose live sessions ended because a certificate was revoked",
            self.revoked_sessions_ended.clone(),
        );
        registry.register(
            "gatehouse_crls_signed",
            "Certificate revocation lists signed",
            self.crls_signed.clone(),
        );
    }
}

/// What a revocation does to the data plane.
pub trait SessionControl: Send + Sync {
    /// New CRLs: rebuild whatever verifies client certificates, before returning.
    fn crls_changed(&self, crls: &[PublishedCrl]);
    /// End every live session of `device` (certificate revoked).
    fn disconnect(&self, device: &DeviceRef);
}

/// Applies the registry's revocations; see the module docs.
pub struct RevocationSync {
    enroller: Arc<Enroller>,
    control: Arc<dyn SessionControl>,
    crls: ArcSwap<Vec<PublishedCrl>>,
    state: Mutex<SyncState>,
    /// Held across a whole sync, disconnects included: a caller that returns after its
    /// sync knows every revocation recorded before it has bitten, whichever sync applied it.
    applying: Mutex<()>,
    metrics: RevocationMetrics,
}

#[derive(Default)]
struct SyncState {
    /// Serials already applied (in the served CRLs, sessions ended).
    applied: HashSet<CertSerial>,
    /// When the CRLs were last signed (unix seconds).
    signed_at: i64,
}

impl std::fmt::Debug for RevocationSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationSync").finish_non_exhaustive()
    }
}

impl RevocationSync {
    /// Signs the first CRLs and hands them to `control`; the devices already revoked are
    /// taken as applied (they cannot have live sessions: nothing is running yet).
    pub fn start(
        enroller: Arc<Enroller>,
        control: Arc<dyn SessionControl>,
        metrics: RevocationMetrics,
    ) -> Result<Self, EnrollError> {
        let this = Self {
            enroller,
            control,
            metrics,
            crls: ArcSwap::from_pointee(Vec::new()),
            state: Mutex::new(SyncState::default()),
            applying: Mutex::new(()),
        };
        this.sync_inner(true, false)?;
        Ok(this)
    }

    /// The CRLs being served, one per live issuing CA.
    pub fn crls(&self) -> Arc<Vec<PublishedCrl>> {
        self.crls.load_full()
    }

    /// Applies revocations recorded since the last call; returns the devices disconnected.
    /// Blocking (database, signing).
    pub fn sync(&self) -> Result<Vec<DeviceRef>, EnrollError> {
        self.sync_inner(false, true)
    }

    /// Applies revocations recorded since the last call, then returns the devices of
    /// `revoked` (certificates this caller just revoked): their sessions are ended by the
    /// time it returns, by this sync or by one the change feed started first.
    pub fn sync_revoked(
        &self,
        revoked: &[gatehouse_store::Certificate],
    ) -> Result<Vec<DeviceRef>, EnrollError> {
        let _applying = self.applying.lock();
        self.sync_locked(false, true)?;
        let state = self.state.lock();
        let mut devices: Vec<DeviceRef> = Vec::new();
        for c in revoked {
            if state.applied.contains(&c.serial) && !devices.contains(&c.device) {
                devices.push(c.device.clone());
            }
        }
        Ok(devices)
    }

    /// Applies changes from the feed: when certificates were revoked (by the API, the
    /// command line or another process), signs fresh CRLs and ends the sessions of the
    /// devices newly revoked. Returns the devices disconnected.
    pub fn apply_changes(&self, changes: &[ChangeRecord]) -> Result<Vec<DeviceRef>, EnrollError> {
        if changes
            .iter()
            .any(|c| matches!(c.change, Change::CertificatesRevoked { .. }))
        {
            self.sync_inner(false, true)
        } else {
            Ok(Vec::new())
        }
    }

    /// Re-signs the CRLs when `resign_after` passed since the last signature, so the ones
    /// served never go stale: cheap enough to call every few hundred milliseconds.
    pub fn resign_if_stale(
        &self,
        resign_after: std::time::Duration,
    ) -> Result<Vec<DeviceRef>, EnrollError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let stale = {
            let s = self.state.lock();
            let age = u64::try_from(now - s.signed_at).unwrap_or(0);
            age >= resign_after.as_secs()
        };
        if stale {
            self.sync_inner(true, true)
        } else {
            Ok(Vec::new())
        }
    }

    fn sync_inner(
        &self,
        force_sign: bool,
        disconnect: bool,
    ) -> Result<Vec<DeviceRef>, EnrollError> {
        let _applying = self.applying.lock();
        self.sync_locked(force_sign, disconnect)
    }

    fn sync_locked(
        &self,
        force_sign: bool,
        disconnect: bool,
    ) -> Result<Vec<DeviceRef>, EnrollError> {
        let registry: &Arc<dyn Registry> = self.enroller.registry();
        let revoked = registry
            .list_revoked(None)
            .map_err(|e| EnrollError::Internal(format!("reading revocations: {e}")))?;
        let mut state = self.state.lock();
        let new: Vec<CertSerial> = revoked
            .iter()
            .filter(|r| !state.applied.contains(&r.serial))
            .map(|r| r.serial.clone())
            .collect();
        if !new.is_empty() || force_sign {
            let crls = self.enroller.crls()?;
            self.control.crls_changed(&crls);
            self.crls.store(Arc::new(crls));
            self.metrics.crls_signed.inc();
            state.signed_at = time::OffsetDateTime::now_utc().unix_timestamp();
        }
        let mut devices = Vec::new();
        for serial in &new {
            if disconnect {
                match registry.get_certificate(serial) {
                    Ok(Some(cert)) if !devices.contains(&cert.device) => devices.push(cert.device),
                    Ok(_) => {}
                    Err(e) => warn!(%serial, error = %e, "revoked certificate unreadable"),
                }
            }
            state.applied.insert(serial.clone());
        }
        drop(state);
        for device in &devices {
            self.control.disconnect(device);
            self.metrics.revoked_sessions_ended.inc();
            info!(%device, "certificate revoked: live sessions ended");
        }
        Ok(devices)
    }
}
