//! The storage traits every backend implements. All methods block: async code calls them
//! through `tokio::task::spawn_blocking`.

use std::net::IpAddr;

use gatehouse_types::{DeviceRef, Finding, TenantId};
use time::OffsetDateTime;

use crate::audit::{AuditEntry, AuditRecord, VerifyError, VerifyReport};
use crate::change::ChangeRecord;
use crate::error::{AuditError, ReadError, TokenEnrollError, TokenError, WriteError};
use crate::incident::*;
use crate::model::*;
use crate::operator::*;

/// The append-only, hash-chained audit log.
pub trait AuditLog: Send + Sync {
    /// Appends an event that changes nothing else (a refused enrollment, a login), durably.
    fn append(&self, entry: &AuditEntry) -> Result<AuditRecord, AuditError>;

    /// Up to `limit` records with `seq >= from`, in order.
    fn audit_records(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>, AuditError>;

    /// The last record's seq and hash, `None` for an empty log.
    fn audit_head(&self) -> Result<Option<(u64, String)>, AuditError>;

    /// The change feed from after `after`, in order, at most `limit` records (see
    /// [`crate::change`]).
    fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<ChangeRecord>, AuditError>;

    /// The last change's seq, 0 for an empty feed.
    fn change_head(&self) -> Result<u64, AuditError>;

    /// Writes every record as one JSON line, in order; returns how many.
    fn export_jsonl(&self, out: &mut dyn std::io::Write) -> Result<u64, AuditError>;

    /// Walks the whole chain; names the first bad record.
    fn verify(&self) -> Result<VerifyReport, VerifyError>;
}

/// The registry. Every mutating method takes the [`AuditEntry`] that records it and writes
/// the change and the audit record in one durable transaction: when it returns `Ok`, both
/// are on disk; when it returns `Err`, neither is.
pub trait Registry: AuditLog {
    // --- tenants
    /// Creates a tenant.
    fn create_tenant(
        &self,
        id: &TenantId,
        display_name: &str,
        audit: &AuditEntry,
    ) -> Result<Tenant, WriteError>;
    /// A tenant.
    fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, ReadError>;
    /// All tenants by id.
    fn list_tenants(&self) -> Result<Vec<Tenant>, ReadError>;

    // --- manufacturers and models
    /// Registers a manufacturer.
    fn add_manufacturer(
        &self,
        m: &NewManufacturer,
        audit: &AuditEntry,
    ) -> Result<Manufacturer, WriteError>;
    /// Replaces a manufacturer's IDevID CA certificates (a CA roll-over or a distrust).
    fn set_manufacturer_cas(
        &self,
        id: &ManufacturerId,
        idevid_ca_pems: &[String],
        audit: &AuditEntry,
    ) -> Result<Manufacturer, WriteError>;
    /// A manufacturer.
    fn get_manufacturer(&self, id: &ManufacturerId) -> Result<Option<Manufacturer>, ReadError>;
    /// All manufacturers by id.
    fn list_manufacturers(&self) -> Result<Vec<Manufacturer>, ReadError>;
    /// Registers a device model.
    fn add_model(&self, m: &NewModel, audit: &AuditEntry) -> Result<Model, WriteError>;
    /// A model.
    fn get_model(&self, id: &ModelId) -> Result<Option<Model>, ReadError>;
    /// All models by id.
    fn list_models(&self) -> Result<Vec<Model>, ReadError>;
    /// Stores a new profile version for a model (version = previous + 1).
    fn add_model_profile(
        &self,
        model: &ModelId,
        toml: &str,
        audit: &AuditEntry,
    ) -> Result<ModelProfile, WriteError>;
    /// The newest profile of a model.
    fn latest_model_profile(&self, model: &ModelId) -> Result<Option<ModelProfile>, ReadError>;
    /// One profile version.
    fn get_model_profile(
        &self,
        model: &ModelId,
        version: u32,
    ) -> Result<Option<ModelProfile>, ReadError>;

    // --- claims
    /// Claims serials for `tenant`, all or none. Serials the tenant already claimed are
    /// skipped; a serial claimed by another tenant refuses the whole batch
    /// (`AlreadyExists`). Returns how many were new.
    fn add_claims(
        &self,
        tenant: &TenantId,
        manufacturer: &ManufacturerId,
        claims: &[NewClaim],
        audit: &AuditEntry,
    ) -> Result<usize, WriteError>;
    /// Who claimed a manufacturer serial; `None` if nobody did.
    fn find_claim(
        &self,
        manufacturer: &ManufacturerId,
        serial: &str,
    ) -> Result<Option<Claim>, ReadError>;

    // --- devices
    /// Registers a device (status `Active`).
    fn create_device(&self, d: &NewDevice, audit: &AuditEntry) -> Result<Device, WriteError>;
    /// A device.
    fn get_device(&self, d: &DeviceRef) -> Result<Option<Device>, ReadError>;
    /// The tenant's device with this manufacturer serial.
    fn find_device_by_serial(
        &self,
        tenant: &TenantId,
        manufacturer: &ManufacturerId,
        serial: &str,
    ) -> Result<Option<Device>, ReadError>;
    /// Devices matching `filter`, ordered by (tenant, id), at most `limit` (capped at 1000)
    /// starting after `cursor`.
    fn list_devices(
        &self,
        filter: &DeviceFilter,
        limit: usize,
        cursor: Option<&Cursor>,
    ) -> Result<Page<Device>, ReadError>;
    /// Sets a device's status. Setting `Revoked` here does not revoke certificates: use
    /// [`Registry::revoke_device`].
    fn set_device_status(
        &self,
        d: &DeviceRef,
        status: DeviceStatus,
        audit: &AuditEntry,
    ) -> Result<Device, WriteError>;

    // --- certificates
    /// Registers the device if it is new (an existing one must be `Active`), records its
    /// certificate and sets `last_enrolled_at`: one enrollment, one transaction.
    fn enroll(
        &self,
        device: &NewDevice,
        cert: &NewCertificate,
        audit: &AuditEntry,
    ) -> Result<(Device, Certificate), WriteError>;
    /// Records a certificate issued to an existing, `Active` device (a renewal) and sets
    /// its `last_enrolled_at`.
    fn record_certificate(
        &self,
        cert: &NewCertificate,
        audit: &AuditEntry,
    ) -> Result<Certificate, WriteError>;
    /// A certificate.
    fn get_certificate(&self, serial: &CertSerial) -> Result<Option<Certificate>, ReadError>;
    /// A device's certificates, oldest first.
    fn list_certificates(&self, d: &DeviceRef) -> Result<Vec<Certificate>, ReadError>;
    /// Revoked certificates (of one issuer, or all), for a CRL, by serial.
    fn list_revoked(&self, issuer: Option<&str>) -> Result<Vec<RevokedCertificate>, ReadError>;
    /// Revokes one certificate.
    fn revoke_certificate(
        &self,
        serial: &CertSerial,
        reason: RevocationReason,
        at: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<Certificate, WriteError>;
    /// Marks a device `Revoked` and revokes its valid certificates; returns those.
    fn revoke_device(
        &self,
        d: &DeviceRef,
        reason: RevocationReason,
        at: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<Vec<Certificate>, WriteError>;
    /// Revokes a manufacturer's devices (all, or a serial range) in every tenant, and their
    /// valid certificates, in one transaction.
    fn revoke_batch(
        &self,
        scope: &BatchScope,
        reason: RevocationReason,
        at: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<BatchRevocation, WriteError>;

    // --- enrollment tokens
    /// Creates a token; the secret is returned here and never again. The new token's id is
    /// added to the audit record's detail as `"token"`.
    fn create_token(
        &self,
        t: &NewToken,
        audit: &AuditEntry,
    ) -> Result<(TokenRecord, TokenSecret), WriteError>;
    /// Checks a token and counts one use, atomically; `audit` is written with the use.
    /// Refusals write nothing: the caller audits them with [`AuditLog::append`].
    fn consume_token(
        &self,
        id: &TokenId,
        secret: &TokenSecret,
        now: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<TokenRecord, TokenError>;
    /// Uses a token and enrolls a new device with it, in one transaction: the token use
    /// (audited with `token_audit`), the device (which must not exist, and must be of the
    /// token's tenant and model), its certificate and `audit`. On any refusal nothing is
    /// written and the token keeps its uses.
    #[allow(clippy::too_many_arguments)]
    fn enroll_with_token(
        &self,
        token: &TokenId,
        secret: &TokenSecret,
        now: OffsetDateTime,
        device: &NewDevice,
        cert: &NewCertificate,
        token_audit: &AuditEntry,
        audit: &AuditEntry,
    ) -> Result<(Device, Certificate, TokenRecord), TokenEnrollError>;
    /// Revokes a token.
    fn revoke_token(&self, id: &TokenId, audit: &AuditEntry) -> Result<TokenRecord, WriteError>;
    /// A token (without its secret).
    fn get_token(&self, id: &TokenId) -> Result<Option<TokenRecord>, ReadError>;
    /// A tenant's tokens, newest first.
    fn list_tokens(&self, tenant: &TenantId) -> Result<Vec<TokenRecord>, ReadError>;

    // --- trust state and policy sets
    /// A device's trust state; `None` if nothing was written for it yet. A stored
    /// document that does not parse is [`ReadError::Corrupt`].
    fn get_device_trust(&self, d: &DeviceRef) -> Result<Option<DeviceTrust>, ReadError>;
    /// Every device's trust state (of one tenant, or all), ordered by (tenant, device):
    /// what the trust engine loads at start-up.
    fn list_device_trust(&self, tenant: Option<&TenantId>) -> Result<Vec<DeviceTrust>, ReadError>;
    /// Writes a device's facts (the pin and the assessment are kept), and `audit` with
    /// them when given. The device must exist (`NotFound`); a document larger than
    /// [`DeviceTrust::MAX_DOCUMENT_BYTES`] is refused (`Invalid`).
    fn put_device_facts(
        &self,
        d: &DeviceRef,
        facts: &serde_json::Value,
        at: OffsetDateTime,
        audit: Option<&AuditEntry>,
    ) -> Result<DeviceTrust, WriteError>;
    /// Sets (`Some`) or clears (`None`) an operator's pin of a device's tier. A device
    /// with no trust state yet gets facts `{}`. The device must exist (`NotFound`); a pin
    /// larger than [`DeviceTrust::MAX_DOCUMENT_BYTES`] is refused (`Invalid`).
    fn set_device_pin(
        &self,
        d: &DeviceRef,
        pin: Option<&serde_json::Value>,
        audit: &AuditEntry,
    ) -> Result<DeviceTrust, WriteError>;
    /// Records a device's latest assessment (replacing the previous one), and `audit` with
    /// it when given: callers pass one only when the tier or the verdict changed. A device
    /// with no trust state yet gets facts `{}`. The device must exist (`NotFound`); a
    /// document larger than [`DeviceTrust::MAX_DOCUMENT_BYTES`] is refused (`Invalid`).
    fn record_assessment(
        &self,
        d: &DeviceRef,
        assessment: &serde_json::Value,
        at: OffsetDateTime,
        audit: Option<&AuditEntry>,
    ) -> Result<(), WriteError>;
    /// [`Registry::record_assessment`] for many devices in one transaction (one commit for a
    /// policy change that moves a whole fleet): all are recorded, or none (an unknown
    /// device or an oversize document refuses the batch).
    fn record_assessments(
        &self,
        batch: &[AssessmentRecord],
        at: OffsetDateTime,
    ) -> Result<(), WriteError>;
    /// Puts a policy set in force as the next version (1 for the first), created at
    /// `audit.at`. The new version is added to the audit record's detail as `"version"`.
    /// Text longer than [`PolicySetRecord::MAX_TEXT_BYTES`] is refused (`Invalid`).
    fn put_policy_set(
        &self,
        text: &str,
        created_by: &str,
        audit: &AuditEntry,
    ) -> Result<PolicySetRecord, WriteError>;
    /// The policy set in force (the highest version); `None` if none was ever put.
    fn current_policy_set(&self) -> Result<Option<PolicySetRecord>, ReadError>;
    /// Every policy set version, newest first.
    fn list_policy_sets(&self) -> Result<Vec<PolicySetRecord>, ReadError>;
    // --- incidents, actions and bans (the respond stage)
    /// Records findings, in order, in one transaction. Each is grouped into the open or
    /// acknowledged incident with the same [`Finding::group_key`], else opens a new incident
    /// (audited as `open_incident` by `system`, with the incident's id in the detail). The
    /// incident counts every finding and keeps its first and last seen times and its worst
    /// severity; at most `max_stored_per_incident` findings of an incident are stored, the
    /// rest are only counted. A finding with an empty kind, a subject neither device nor
    /// address, or larger than [`StoredFinding::MAX_BYTES`] refuses the batch (`Invalid`).
    fn record_findings(
        &self,
        findings: &[Finding],
        at: OffsetDateTime,
        max_stored_per_incident: u32,
    ) -> Result<Vec<RecordedFinding>, WriteError>;
    /// Incidents matching `filter`, most recently active first.
    fn list_incidents(&self, filter: &IncidentFilter) -> Result<Vec<Incident>, ReadError>;
    /// An incident with its stored findings and its timeline.
    fn get_incident(&self, id: IncidentId) -> Result<Option<IncidentDetail>, ReadError>;
    /// Moves an incident along its lifecycle ([`IncidentState::transition`]); an illegal
    /// move is refused (`IllegalTransition`) and writes nothing.
    fn set_incident_state(
        &self,
        id: IncidentId,
        to: IncidentState,
        by: &str,
        note: Option<&str>,
        audit: &AuditEntry,
    ) -> Result<Incident, WriteError>;
    /// Records an action (in a state that [`ActionState::is_initial`]) with `audit`; the
    /// new action's id is added to the audit record's detail as `"action"`. Its incident,
    /// when given, must exist (`NotFound`); params larger than
    /// [`StoredAction::MAX_PARAMS_BYTES`] are refused (`Invalid`).
    fn record_action(
        &self,
        action: &ActionRecord,
        audit: &AuditEntry,
    ) -> Result<ActionId, WriteError>;
    /// Moves an action to another state ([`ActionState::transition`]): done after approval,
    /// failed, reversed, rejected. An illegal move is refused and writes nothing.
    fn set_action_state(
        &self,
        id: ActionId,
        state: ActionState,
        by: &str,
        note: Option<&str>,
        audit: &AuditEntry,
    ) -> Result<StoredAction, WriteError>;
    /// Actions matching `filter`, oldest first.
    fn list_actions(&self, filter: &ActionFilter) -> Result<Vec<StoredAction>, ReadError>;
    /// One action.
    fn get_action(&self, id: ActionId) -> Result<Option<StoredAction>, ReadError>;
    /// Bans a source address until `until` (replacing an existing ban of it), created at
    /// `audit.at`.
    fn put_ban(
        &self,
        addr: IpAddr,
        until: OffsetDateTime,
        reason: &str,
        audit: &AuditEntry,
    ) -> Result<Ban, WriteError>;
    /// Lifts a ban (expired or not); `NotFound` if the address is not banned. Returns it.
    fn remove_ban(&self, addr: IpAddr, audit: &AuditEntry) -> Result<Ban, WriteError>;
    /// The bans still in force at `now` (`until > now`), by address.
    fn list_bans(&self, now: OffsetDateTime) -> Result<Vec<Ban>, ReadError>;
}

/// Operators, their API tokens and dashboard sessions. Every change is written with its
/// audit record in one transaction, like the [`Registry`]'s.
pub trait OperatorStore: AuditLog {
    /// Creates an operator; its tenant, if any, must exist.
    fn create_operator(&self, o: &NewOperator, audit: &AuditEntry) -> Result<Operator, WriteError>;
    /// An operator.
    fn get_operator(&self, name: &OperatorName) -> Result<Option<Operator>, ReadError>;
    /// Operators, by name; those of `tenant` only when given (all-tenant operators are not
    /// listed then).
    fn list_operators(&self, tenant: Option<&TenantId>) -> Result<Vec<Operator>, ReadError>;
    /// How many operators exist.
    fn count_operators(&self) -> Result<u64, ReadError>;
    /// An operator's password hash (PHC string), if it has a password.
    fn password_hash(&self, name: &OperatorName) -> Result<Option<String>, ReadError>;
    /// Sets an operator's password hash and ends its sessions.
    fn set_password(
        &self,
        name: &OperatorName,
        hash: &str,
        audit: &AuditEntry,
    ) -> Result<Operator, WriteError>;
    /// Disables or enables an operator; disabling ends its sessions.
    fn set_operator_disabled(
        &self,
        name: &OperatorName,
        disabled: bool,
        audit: &AuditEntry,
    ) -> Result<Operator, WriteError>;
    /// Counts a failed login; at `max_failures` in a row, logins are refused for `lockout`.
    fn login_failed(
        &self,
        name: &OperatorName,
        max_failures: u32,
        lockout: std::time::Duration,
        audit: &AuditEntry,
    ) -> Result<Operator, WriteError>;
    /// A successful login: clears the failure count and starts a session lasting `ttl`
    /// from `audit.at`. Expired sessions are removed on the way.
    fn login_succeeded(
        &self,
        name: &OperatorName,
        ttl: std::time::Duration,
        audit: &AuditEntry,
    ) -> Result<(SessionKey, WebSession), WriteError>;
    /// The live session with this cookie value at `now`.
    fn session(
        &self,
        key: &SessionKey,
        now: OffsetDateTime,
    ) -> Result<Option<WebSession>, ReadError>;
    /// Ends a session (logout). Ending an unknown session is not an error.
    fn end_session(&self, key: &SessionKey, audit: &AuditEntry) -> Result<(), WriteError>;
    /// Creates an API token; its scope must be within its operator's role. The token's
    /// text is returned here and never again.
    fn create_api_token(
        &self,
        t: &NewApiToken,
        audit: &AuditEntry,
    ) -> Result<(ApiToken, ApiTokenText), WriteError>;
    /// Checks a token a client sent: its secret (in constant time), its state, and its
    /// operator's.
    fn check_api_token(
        &self,
        text: &ApiTokenText,
        now: OffsetDateTime,
    ) -> Result<Result<(ApiToken, Operator), ApiTokenRefusal>, ReadError>;
    /// A token, without its secret.
    fn get_api_token(&self, id: &str) -> Result<Option<ApiToken>, ReadError>;
    /// Tokens, newest first; `operator`'s only when given.
    fn list_api_tokens(&self, operator: Option<&OperatorName>) -> Result<Vec<ApiToken>, ReadError>;
    /// Revokes a token.
    fn revoke_api_token(&self, id: &str, audit: &AuditEntry) -> Result<ApiToken, WriteError>;
}
