//! The embedded backend: one SQLite file, one connection behind a mutex.
//!
//! Durability: WAL journal with `synchronous = FULL`, so a commit is on disk (fsynced)
//! before a method returns. Every write is an `IMMEDIATE` transaction, so it takes the
//! write lock first and never fails half-way on a lock upgrade; several processes or
//! stores on the same file wait up to [`BUSY_TIMEOUT`] for each other.

mod operators;
mod respond;
mod schema;

use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use gatehouse_types::{DeviceId, DeviceRef, Finding, TenantId};
use parking_lot::Mutex;
use rusqlite::types::Type;
use rusqlite::{
    Connection, ErrorCode, OptionalExtension, Row, Transaction, TransactionBehavior, params,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

pub use schema::{MIGRATIONS, SCHEMA_VERSION};

use crate::audit::{self, AuditEntry, AuditRecord, VerifyError, VerifyReport};
use crate::change::{Change, ChangeRecord};
use crate::error::*;
use crate::hex;
use crate::incident::*;
use crate::model::*;
use crate::traits::{AuditLog, Registry};

/// How long a write waits for another connection's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Most devices one `list_devices` call returns.
pub const MAX_PAGE: usize = 1000;

/// The SQLite store. `Send + Sync`; every method blocks on the database.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

// === helpers ===

fn backend(e: rusqlite::Error) -> BackendError {
    BackendError::new("sqlite", e)
}

fn is_corrupt_value(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
    )
}

fn read_err(e: rusqlite::Error) -> ReadError {
    if is_corrupt_value(&e) {
        ReadError::Corrupt {
            what: "value".to_owned(),
        }
    } else {
        ReadError::Backend(backend(e))
    }
}

/// Maps a failed write: constraint violations become typed errors naming `what`.
fn write_err(what: &str) -> impl Fn(rusqlite::Error) -> WriteError + '_ {
    move |e| {
        if let rusqlite::Error::SqliteFailure(f, _) = &e
            && f.code == ErrorCode::ConstraintViolation
        {
            return match f.extended_code {
                rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => WriteError::NotFound {
                    what: format!("something {what} refers to"),
                },
                rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                | rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE => WriteError::AlreadyExists {
                    what: what.to_owned(),
                },
                _ => WriteError::Invalid {
                    what: what.to_owned(),
                },
            };
        }
        WriteError::from(read_err(e))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected value {0:?}")]
struct BadValue(String);

fn conv(idx: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e))
}

fn parse<T>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let s: String = row.get(idx)?;
    s.parse().map_err(|e| conv(idx, e))
}

fn parse_opt<T>(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<T>>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let s: Option<String> = row.get(idx)?;
    s.map(|s| s.parse().map_err(|e| conv(idx, e))).transpose()
}

fn ts(row: &Row<'_>, idx: usize) -> rusqlite::Result<OffsetDateTime> {
    let secs: i64 = row.get(idx)?;
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| conv(idx, e))
}

fn ts_opt(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<OffsetDateTime>> {
    let secs: Option<i64> = row.get(idx)?;
    secs.map(|s| OffsetDateTime::from_unix_timestamp(s).map_err(|e| conv(idx, e)))
        .transpose()
}

fn json<T: serde::de::DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    serde_json::from_str(&s).map_err(|e| conv(idx, e))
}

fn json_opt<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    idx: usize,
) -> rusqlite::Result<Option<T>> {
    let s: Option<String> = row.get(idx)?;
    s.map(|s| serde_json::from_str(&s).map_err(|e| conv(idx, e)))
        .transpose()
}

fn secs(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn u32_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<u32> {
    let v: i64 = row.get(idx)?;
    u32::try_from(v).map_err(|e| conv(idx, e))
}

fn assurance_str(a: Assurance) -> &'static str {
    match a {
        Assurance::Idevid => "idevid",
        Assurance::Token => "token",
    }
}

fn assurance(row: &Row<'_>, idx: usize) -> rusqlite::Result<Assurance> {
    let s: String = row.get(idx)?;
    match s.as_str() {
        "idevid" => Ok(Assurance::Idevid),
        "token" => Ok(Assurance::Token),
        _ => Err(conv(idx, BadValue(s))),
    }
}

fn status_str(s: DeviceStatus) -> &'static str {
    match s {
        DeviceStatus::Active => "active",
        DeviceStatus::Revoked => "revoked",
        DeviceStatus::Blocked => "blocked",
    }
}

fn status(row: &Row<'_>, idx: usize) -> rusqlite::Result<DeviceStatus> {
    let s: String = row.get(idx)?;
    match s.as_str() {
        "active" => Ok(DeviceStatus::Active),
        "revoked" => Ok(DeviceStatus::Revoked),
        "blocked" => Ok(DeviceStatus::Blocked),
        _ => Err(conv(idx, BadValue(s))),
    }
}

fn cert_status(row: &Row<'_>, idx: usize) -> rusqlite::Result<CertStatus> {
    let s: String = row.get(idx)?;
    match s.as_str() {
        "valid" => Ok(CertStatus::Valid),
        "revoked" => Ok(CertStatus::Revoked),
        _ => Err(conv(idx, BadValue(s))),
    }
}

fn reason_opt(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<RevocationReason>> {
    let code: Option<i64> = row.get(idx)?;
    code.map(|c| {
        u8::try_from(c)
            .ok()
            .and_then(RevocationReason::from_code)
            .ok_or_else(|| conv(idx, BadValue(c.to_string())))
    })
    .transpose()
}

const TENANT_COLS: &str = "id, display_name, created_at";
fn tenant_row(r: &Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant {
        id: parse(r, 0)?,
        display_name: r.get(1)?,
        created_at: ts(r, 2)?,
    })
}

const MANUFACTURER_COLS: &str = "id, display_name, idevid_ca_pems, model_mapping, created_at";
fn manufacturer_row(r: &Row<'_>) -> rusqlite::Result<Manufacturer> {
    Ok(Manufacturer {
        id: parse(r, 0)?,
        display_name: r.get(1)?,
        idevid_ca_pems: json(r, 2)?,
        model_mapping: r.get(3)?,
        created_at: ts(r, 4)?,
    })
}

const MODEL_COLS: &str = "id, manufacturer, display_name, created_at";
fn model_row(r: &Row<'_>) -> rusqlite::Result<Model> {
    Ok(Model {
        id: parse(r, 0)?,
        manufacturer: parse(r, 1)?,
        display_name: r.get(2)?,
        created_at: ts(r, 3)?,
    })
}

const PROFILE_COLS: &str = "model, version, toml, created_at";
fn profile_row(r: &Row<'_>) -> rusqlite::Result<ModelProfile> {
    Ok(ModelProfile {
        model: parse(r, 0)?,
        version: u32_col(r, 1)?,
        toml: r.get(2)?,
        created_at: ts(r, 3)?,
    })
}

const CLAIM_COLS: &str = "tenant, manufacturer, serial, expected_model, claimed_at";
fn claim_row(r: &Row<'_>) -> rusqlite::Result<Claim> {
    Ok(Claim {
        tenant: parse(r, 0)?,
        manufacturer: parse(r, 1)?,
        serial: r.get(2)?,
        expected_model: parse_opt(r, 3)?,
        claimed_at: ts(r, 4)?,
    })
}

const DEVICE_COLS: &str = "tenant, id, model, manufacturer, serial, assurance, status, \
                           created_at, last_enrolled_at, tags";
fn device_row(r: &Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        device: DeviceRef::new(parse::<TenantId>(r, 0)?, parse::<DeviceId>(r, 1)?),
        model: parse(r, 2)?,
        manufacturer: parse_opt(r, 3)?,
        serial: r.get(4)?,
        assurance: assurance(r, 5)?,
        status: status(r, 6)?,
        created_at: ts(r, 7)?,
        last_enrolled_at: ts_opt(r, 8)?,
        tags: json(r, 9)?,
    })
}

const CERT_COLS: &str =
    "serial, tenant, device, issuer, not_before, not_after, pem, status, revoked_at, reason";
fn cert_row(r: &Row<'_>) -> rusqlite::Result<Certificate> {
    Ok(Certificate {
        serial: parse(r, 0)?,
        device: DeviceRef::new(parse::<TenantId>(r, 1)?, parse::<DeviceId>(r, 2)?),
        issuer: r.get(3)?,
        not_before: ts(r, 4)?,
        not_after: ts(r, 5)?,
        pem: r.get(6)?,
        status: cert_status(r, 7)?,
        revoked_at: ts_opt(r, 8)?,
        revocation_reason: reason_opt(r, 9)?,
    })
}

const TOKEN_COLS: &str =
    "id, tenant, model, max_uses, uses, expires_at, created_by, created_at, revoked";
fn token_row(r: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: parse(r, 0)?,
        tenant: parse(r, 1)?,
        model: parse(r, 2)?,
        max_uses: u32_col(r, 3)?,
        uses: u32_col(r, 4)?,
        expires_at: ts(r, 5)?,
        created_by: r.get(6)?,
        created_at: ts(r, 7)?,
        revoked: r.get(8)?,
    })
}

const TRUST_COLS: &str = "tenant, device, facts, facts_updated_at, pin, assessment, assessed_at";
fn trust_row(r: &Row<'_>) -> rusqlite::Result<DeviceTrust> {
    let assessment: Option<serde_json::Value> = json_opt(r, 5)?;
    let assessed_at = ts_opt(r, 6)?;
    if assessment.is_some() != assessed_at.is_some() {
        return Err(conv(
            6,
            BadValue("an assessment without its time, or a time without one".to_owned()),
        ));
    }
    Ok(DeviceTrust {
        device: DeviceRef::new(parse::<TenantId>(r, 0)?, parse::<DeviceId>(r, 1)?),
        facts: json(r, 2)?,
        facts_updated_at: ts(r, 3)?,
        pin: json_opt(r, 4)?,
        assessment,
        assessed_at,
    })
}

const POLICY_COLS: &str = "version, text, created_at, created_by";
fn policy_row(r: &Row<'_>) -> rusqlite::Result<PolicySetRecord> {
    Ok(PolicySetRecord {
        version: u32_col(r, 0)?,
        text: r.get(1)?,
        created_at: ts(r, 2)?,
        created_by: r.get(3)?,
    })
}

const AUDIT_COLS: &str =
    "seq, at, actor, action, subject, outcome, reason, detail, prev_hash, hash";
fn audit_row(r: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    let seq: i64 = r.get(0)?;
    Ok(AuditRecord {
        seq: u64::try_from(seq).map_err(|e| conv(0, e))?,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        subject: r.get(4)?,
        outcome: r.get(5)?,
        reason: r.get(6)?,
        detail: r.get(7)?,
        prev_hash: r.get(8)?,
        hash: r.get(9)?,
    })
}

/// Appends one audit record inside `tx`.
fn append_tx(tx: &Transaction<'_>, entry: &AuditEntry) -> Result<AuditRecord, BackendError> {
    let head: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(backend)?;
    let prev = match head {
        None => None,
        Some((seq, hash)) => {
            let seq = u64::try_from(seq)
                .map_err(|_| BackendError::msg("the audit log's last seq is negative"))?;
            let hash = hex::decode32(&hash).ok_or_else(|| {
                BackendError::msg("the audit log's last hash is corrupt; run audit verify")
            })?;
            Some((seq, hash))
        }
    };
    let rec = entry.seal(prev);
    let seq = i64::try_from(rec.seq).map_err(|_| BackendError::msg("audit seq overflow"))?;
    tx.execute(
        "INSERT INTO audit_log (seq, at, actor, action, subject, outcome, reason, detail, \
         prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            seq,
            rec.at,
            rec.actor,
            rec.action,
            rec.subject,
            rec.outcome,
            rec.reason,
            rec.detail,
            rec.prev_hash,
            rec.hash
        ],
    )
    .map_err(backend)?;
    if let Some(change) = &entry.change {
        insert_change_tx(tx, &rec, change)?;
    }
    Ok(rec)
}

/// Appends one audit record inside `tx` with the change it explains: the caller's, if
/// its entry carries one, or else `change`.
pub(crate) fn append_change_tx(
    tx: &Transaction<'_>,
    entry: &AuditEntry,
    change: Change,
) -> Result<AuditRecord, BackendError> {
    if entry.change.is_some() {
        return append_tx(tx, entry);
    }
    let rec = append_tx(tx, entry)?;
    insert_change_tx(tx, &rec, &change)?;
    Ok(rec)
}

fn insert_change_tx(
    tx: &Transaction<'_>,
    rec: &AuditRecord,
    change: &Change,
) -> Result<(), BackendError> {
    let text = serde_json::to_string(change)
        .map_err(|e| BackendError::msg(format!("encoding a change: {e}")))?;
    let audit_seq = i64::try_from(rec.seq).map_err(|_| BackendError::msg("audit seq overflow"))?;
    tx.execute(
        "INSERT INTO changes (audit_seq, at, actor, change) VALUES (?1, ?2, ?3, ?4)",
        params![audit_seq, rec.at, rec.actor, text],
    )
    .map_err(backend)?;
    Ok(())
}

fn exists(tx: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<bool, WriteError> {
    tx.query_row(sql, p, |_| Ok(()))
        .optional()
        .map(|o| o.is_some())
        .map_err(write_err("lookup"))
}

fn require(
    tx: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    what: impl FnOnce() -> String,
) -> Result<(), WriteError> {
    if exists(tx, sql, p)? {
        Ok(())
    } else {
        Err(WriteError::NotFound { what: what() })
    }
}

fn get_device_tx(c: &Connection, d: &DeviceRef) -> rusqlite::Result<Option<Device>> {
    c.query_row(
        &format!("SELECT {DEVICE_COLS} FROM devices WHERE tenant = ?1 AND id = ?2"),
        params![d.tenant.as_str(), d.device.as_str()],
        device_row,
    )
    .optional()
}

fn get_cert_tx(c: &Connection, serial: &str) -> rusqlite::Result<Option<Certificate>> {
    c.query_row(
        &format!("SELECT {CERT_COLS} FROM certificates WHERE serial = ?1"),
        [serial],
        cert_row,
    )
    .optional()
}

fn get_trust_tx(c: &Connection, d: &DeviceRef) -> rusqlite::Result<Option<DeviceTrust>> {
    c.query_row(
        &format!("SELECT {TRUST_COLS} FROM device_trust WHERE tenant = ?1 AND device = ?2"),
        params![d.tenant.as_str(), d.device.as_str()],
        trust_row,
    )
    .optional()
}

fn require_device(tx: &Connection, d: &DeviceRef) -> Result<(), WriteError> {
    require(
        tx,
        "SELECT 1 FROM devices WHERE tenant = ?1 AND id = ?2",
        params![d.tenant.as_str(), d.device.as_str()],
        || format!("device {d}"),
    )
}

/// A device's trust state read back inside a write; a corrupt document names the device.
fn trust_after_write(tx: &Connection, d: &DeviceRef) -> Result<DeviceTrust, WriteError> {
    get_trust_tx(tx, d)
        .map_err(|e| WriteError::from(trust_read_err(d)(e)))?
        .ok_or_else(|| WriteError::NotFound {
            what: format!("trust state of device {d}"),
        })
}

/// Maps a failed read of `device_trust`: a corrupt row names the device.
fn trust_read_err(d: &DeviceRef) -> impl Fn(rusqlite::Error) -> ReadError + '_ {
    move |e| match read_err(e) {
        ReadError::Corrupt { .. } => ReadError::Corrupt {
            what: format!("trust state of device {d}"),
        },
        other => other,
    }
}

/// A trust document as stored: compact JSON of at most [`DeviceTrust::MAX_DOCUMENT_BYTES`].
fn trust_doc(what: &str, v: &serde_json::Value) -> Result<String, WriteError> {
    let text = serde_json::to_string(v).map_err(|_| WriteError::Invalid {
        what: format!("{what} document (not serializable as JSON)"),
    })?;
    if text.len() > DeviceTrust::MAX_DOCUMENT_BYTES {
        return Err(WriteError::Invalid {
            what: format!(
                "{what} document ({} bytes of JSON; at most {} are allowed)",
                text.len(),
                DeviceTrust::MAX_DOCUMENT_BYTES
            ),
        });
    }
    Ok(text)
}

fn insert_device_tx(tx: &Transaction<'_>, d: &NewDevice, at: i64) -> Result<(), WriteError> {
    require(
        tx,
        "SELECT 1 FROM tenants WHERE id = ?1",
        [d.device.tenant.as_str()],
        || format!("tenant {}", d.device.tenant),
    )?;
    require(
        tx,
        "SELECT 1 FROM models WHERE id = ?1",
        [d.model.as_str()],
        || format!("model {}", d.model),
    )?;
    if let Some(m) = &d.manufacturer {
        require(
            tx,
            "SELECT 1 FROM manufacturers WHERE id = ?1",
            [m.as_str()],
            || format!("manufacturer {m}"),
        )?;
    }
    let tags = serde_json::to_string(&d.tags).map_err(|_| WriteError::Invalid {
        what: "tags".to_owned(),
    })?;
    tx.execute(
        "INSERT INTO devices (tenant, id, model, manufacturer, serial, assurance, status, \
         created_at, last_enrolled_at, tags) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active', ?7, NULL, ?8)",
        params![
            d.device.tenant.as_str(),
            d.device.device.as_str(),
            d.model.as_str(),
            d.manufacturer.as_ref().map(|m| m.as_str()),
            d.serial,
            assurance_str(d.assurance),
            at,
            tags
        ],
    )
    .map_err(write_err(&format!("device {}", d.device)))?;
    Ok(())
}

fn insert_cert_tx(
    tx: &Transaction<'_>,
    c: &NewCertificate,
    at: i64,
) -> Result<Certificate, WriteError> {
    let dev = get_device_tx(tx, &c.device)
        .map_err(write_err("device"))?
        .ok_or_else(|| WriteError::NotFound {
            what: format!("device {}", c.device),
        })?;
    if dev.status != DeviceStatus::Active {
        return Err(WriteError::DeviceNotActive {
            device: c.device.to_string(),
        });
    }
    if c.not_after <= c.not_before {
        return Err(WriteError::Invalid {
            what: "certificate validity (not_after must follow not_before)".to_owned(),
        });
    }
    tx.execute(
        "INSERT INTO certificates (serial, tenant, device, issuer, not_before, not_after, pem, \
         status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'valid')",
        params![
            c.serial.as_str(),
            c.device.tenant.as_str(),
            c.device.device.as_str(),
            c.issuer,
            secs(c.not_before),
            secs(c.not_after),
            c.pem
        ],
    )
    .map_err(write_err(&format!("certificate {}", c.serial)))?;
    tx.execute(
        "UPDATE devices SET last_enrolled_at = ?3 WHERE tenant = ?1 AND id = ?2",
        params![c.device.tenant.as_str(), c.device.device.as_str(), at],
    )
    .map_err(write_err("device"))?;
    get_cert_tx(tx, c.serial.as_str())
        .map_err(write_err("certificate"))?
        .ok_or_else(|| WriteError::NotFound {
            what: format!("certificate {}", c.serial),
        })
}

/// Revokes every valid certificate of a device; returns them as revoked.
fn revoke_device_certs_tx(
    tx: &Transaction<'_>,
    d: &DeviceRef,
    reason: RevocationReason,
    at: i64,
) -> Result<Vec<Certificate>, WriteError> {
    let serials: Vec<String> = {
        let mut st = tx
            .prepare(
                "SELECT serial FROM certificates WHERE tenant = ?1 AND device = ?2 \
                 AND status = 'valid' ORDER BY serial",
            )
            .map_err(write_err("certificate"))?;
        st.query_map(params![d.tenant.as_str(), d.device.as_str()], |r| r.get(0))
            .map_err(write_err("certificate"))?
            .collect::<rusqlite::Result<_>>()
            .map_err(write_err("certificate"))?
    };
    let mut out = Vec::with_capacity(serials.len());
    for s in serials {
        tx.execute(
            "UPDATE certificates SET status = 'revoked', revoked_at = ?2, reason = ?3 \
             WHERE serial = ?1",
            params![s, at, i64::from(reason.code())],
        )
        .map_err(write_err("certificate"))?;
        if let Some(c) = get_cert_tx(tx, &s).map_err(write_err("certificate"))? {
            out.push(c);
        }
    }
    tx.execute(
        "UPDATE devices SET status = 'revoked' WHERE tenant = ?1 AND id = ?2",
        params![d.tenant.as_str(), d.device.as_str()],
    )
    .map_err(write_err("device"))?;
    Ok(out)
}

fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn random<const N: usize>() -> Result<[u8; N], BackendError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| BackendError::msg(format!("no randomness: {e}")))?;
    Ok(b)
}

// === impl SqliteStore ===

impl SqliteStore {
    /// Opens (creating if needed) the store file and migrates it to [`SCHEMA_VERSION`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let conn = Connection::open(path).map_err(backend)?;
        Self::setup(conn)
    }

    /// A private in-memory store, for tests.
    pub fn open_in_memory() -> Result<Self, OpenError> {
        let conn = Connection::open_in_memory().map_err(backend)?;
        Self::setup(conn)
    }

    fn setup(mut conn: Connection) -> Result<Self, OpenError> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        // `journal_mode` answers with a row; an in-memory database stays "memory".
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(backend)?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// The file's schema version.
    pub fn schema_version(&self) -> Result<u32, ReadError> {
        user_version(&self.conn.lock()).map_err(read_err)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, ReadError> {
        f(&self.conn.lock()).map_err(read_err)
    }

    fn write<T, E: From<BackendError>>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let out = f(&tx)?;
        tx.commit().map_err(backend)?;
        Ok(out)
    }

    fn list<T>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, ReadError> {
        self.read(|c| {
            let mut st = c.prepare(sql)?;
            let rows = st.query_map(p, f)?;
            rows.collect()
        })
    }
}

fn user_version(c: &Connection) -> rusqlite::Result<u32> {
    c.pragma_query_value(None, "user_version", |r| r.get(0))
}

fn migrate(conn: &mut Connection) -> Result<(), OpenError> {
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let v = user_version(&tx).map_err(backend)?;
        if v > SCHEMA_VERSION {
            return Err(OpenError::TooNew {
                found: v,
                supported: SCHEMA_VERSION,
            });
        }
        let Some(sql) = MIGRATIONS.get(v as usize) else {
            return Ok(());
        };
        let step = tx
            .execute_batch(sql)
            .and_then(|()| tx.pragma_update(None, "user_version", v + 1))
            .and_then(|()| tx.commit());
        step.map_err(|e| OpenError::Migration {
            from: v,
            source: backend(e),
        })?;
    }
}

impl AuditLog for SqliteStore {
    fn append(&self, entry: &AuditEntry) -> Result<AuditRecord, AuditError> {
        self.write(|tx| Ok(append_tx(tx, entry)?))
    }

    fn audit_records(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>, AuditError> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self.list(
            &format!("SELECT {AUDIT_COLS} FROM audit_log WHERE seq >= ?1 ORDER BY seq LIMIT ?2"),
            params![from, limit],
            audit_row,
        )?)
    }

    fn audit_head(&self) -> Result<Option<(u64, String)>, AuditError> {
        let head = self.read(|c| {
            c.query_row(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
        })?;
        head.map(|(s, h)| {
            u64::try_from(s)
                .map(|s| (s, h))
                .map_err(|_| AuditError::Corrupt {
                    what: "audit seq".to_owned(),
                })
        })
        .transpose()
    }

    fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<ChangeRecord>, AuditError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(i64, i64, i64, String, String)> = self.list(
            "SELECT seq, audit_seq, at, actor, change FROM changes WHERE seq > ?1 \
             ORDER BY seq LIMIT ?2",
            params![after, limit],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
        rows.into_iter()
            .map(|(seq, audit_seq, at, actor, change)| {
                let corrupt = |what: &str| AuditError::Corrupt {
                    what: format!("{what} of change {seq}"),
                };
                Ok(ChangeRecord {
                    seq: u64::try_from(seq).map_err(|_| corrupt("seq"))?,
                    audit_seq: u64::try_from(audit_seq).map_err(|_| corrupt("audit seq"))?,
                    at,
                    actor,
                    change: serde_json::from_str(&change).map_err(|_| corrupt("text"))?,
                })
            })
            .collect()
    }

    fn change_head(&self) -> Result<u64, AuditError> {
        let head: i64 = self.read(|c| {
            c.query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |r| {
                r.get(0)
            })
        })?;
        u64::try_from(head).map_err(|_| AuditError::Corrupt {
            what: "change seq".to_owned(),
        })
    }

    fn export_jsonl(&self, out: &mut dyn std::io::Write) -> Result<u64, AuditError> {
        // In pages, so a long log is not held in memory at once.
        let mut next = 1u64;
        let mut n = 0;
        loop {
            let page = self.audit_records(next, 1000)?;
            let Some(last) = page.last() else {
                return Ok(n);
            };
            next = last.seq.saturating_add(1);
            n += audit::write_jsonl(out, &page)?;
        }
    }

    fn verify(&self) -> Result<VerifyReport, VerifyError> {
        let all = self
            .list(
                &format!("SELECT {AUDIT_COLS} FROM audit_log ORDER BY seq"),
                [],
                audit_row,
            )
            .map_err(AuditError::from)?;
        audit::verify_records(&all)
    }
}

impl Registry for SqliteStore {
    fn create_tenant(
        &self,
        id: &TenantId,
        display_name: &str,
        audit: &AuditEntry,
    ) -> Result<Tenant, WriteError> {
        let t = Tenant {
            id: id.clone(),
            display_name: display_name.to_owned(),
            created_at: trunc(audit.at)?,
        };
        self.write(|tx| {
            tx.execute(
                "INSERT INTO tenants (id, display_name, created_at) VALUES (?1, ?2, ?3)",
                params![id.as_str(), display_name, secs(audit.at)],
            )
            .map_err(write_err(&format!("tenant {id}")))?;
            append_tx(tx, audit)?;
            Ok(t)
        })
    }

    fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, ReadError> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {TENANT_COLS} FROM tenants WHERE id = ?1"),
                [id.as_str()],
                tenant_row,
            )
            .optional()
        })
    }

    fn list_tenants(&self) -> Result<Vec<Tenant>, ReadError> {
        self.list(
            &format!("SELECT {TENANT_COLS} FROM tenants ORDER BY id"),
            [],
            tenant_row,
        )
    }

    fn add_manufacturer(
        &self,
        m: &NewManufacturer,
        audit: &AuditEntry,
    ) -> Result<Manufacturer, WriteError> {
        let pems = serde_json::to_string(&m.idevid_ca_pems).map_err(|_| WriteError::Invalid {
            what: "CA certificates".to_owned(),
        })?;
        let out = Manufacturer {
            id: m.id.clone(),
            display_name: m.display_name.clone(),
            idevid_ca_pems: m.idevid_ca_pems.clone(),
            model_mapping: m.model_mapping.clone(),
            created_at: trunc(audit.at)?,
        };
        self.write(|tx| {
            tx.execute(
                "INSERT INTO manufacturers (id, display_name, idevid_ca_pems, model_mapping, \
                 created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    m.id.as_str(),
                    m.display_name,
                    pems,
                    m.model_mapping,
                    secs(audit.at)
                ],
            )
            .map_err(write_err(&format!("manufacturer {}", m.id)))?;
            append_tx(tx, audit)?;
            Ok(out)
        })
    }

    fn set_manufacturer_cas(
        &self,
        id: &ManufacturerId,
        idevid_ca_pems: &[String],
        audit: &AuditEntry,
    ) -> Result<Manufacturer, WriteError> {
        let pems = serde_json::to_string(idevid_ca_pems).map_err(|_| WriteError::Invalid {
            what: "CA certificates".to_owned(),
        })?;
        self.write(|tx| {
            let n = tx
                .execute(
                    "UPDATE manufacturers SET idevid_ca_pems = ?2 WHERE id = ?1",
                    params![id.as_str(), pems],
                )
                .map_err(write_err("manufacturer"))?;
            if n == 0 {
                return Err(WriteError::NotFound {
                    what: format!("manufacturer {id}"),
                });
            }
            append_tx(tx, audit)?;
            tx.query_row(
                &format!("SELECT {MANUFACTURER_COLS} FROM manufacturers WHERE id = ?1"),
                [id.as_str()],
                manufacturer_row,
            )
            .map_err(write_err("manufacturer"))
        })
    }

    fn get_manufacturer(&self, id: &ManufacturerId) -> Result<Option<Manufacturer>, ReadError> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {MANUFACTURER_COLS} FROM manufacturers WHERE id = ?1"),
                [id.as_str()],
                manufacturer_row,
            )
            .optional()
        })
    }

    fn list_manufacturers(&self) -> Result<Vec<Manufacturer>, ReadError> {
        self.list(
            &format!("SELECT {MANUFACTURER_COLS} FROM manufacturers ORDER BY id"),
            [],
            manufacturer_row,
        )
    }

    fn add_model(&self, m: &NewModel, audit: &AuditEntry) -> Result<Model, WriteError> {
        let out = Model {
            id: m.id.clone(),
            manufacturer: m.manufacturer.clone(),
            display_name: m.display_name.clone(),
            created_at: trunc(audit.at)?,
        };
        self.write(|tx| {
            require(
                tx,
                "SELECT 1 FROM manufacturers WHERE id = ?1",
                [m.manufacturer.as_str()],
                || format!("manufacturer {}", m.manufacturer),
            )?;
            tx.execute(
                "INSERT INTO models (id, manufacturer, display_name, created_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    m.id.as_str(),
                    m.manufacturer.as_str(),
                    m.display_name,
                    secs(audit.at)
                ],
            )
            .map_err(write_err(&format!("model {}", m.id)))?;
            append_change_tx(
                tx,
                audit,
                Change::ModelProfile {
                    model: m.id.clone(),
                },
            )?;
            Ok(out)
        })
    }

    fn get_model(&self, id: &ModelId) -> Result<Option<Model>, ReadError> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {MODEL_COLS} FROM models WHERE id = ?1"),
                [id.as_str()],
                model_row,
            )
            .optional()
        })
    }

    fn list_models(&self) -> Result<Vec<Model>, ReadError> {
        self.list(
            &format!("SELECT {MODEL_COLS} FROM models ORDER BY id"),
            [],
            model_row,
        )
    }

    fn add_model_profile(
        &self,
        model: &ModelId,
        toml: &str,
        audit: &AuditEntry,
    ) -> Result<ModelProfile, WriteError> {
        self.write(|tx| {
            require(
                tx,
                "SELECT 1 FROM models WHERE id = ?1",
                [model.as_str()],
                || format!("model {model}"),
            )?;
            let last: i64 = tx
                .query_row(
                    "SELECT COALESCE(MAX(version), 0) FROM model_profiles WHERE model = ?1",
                    [model.as_str()],
                    |r| r.get(0),
                )
                .map_err(write_err("model profile"))?;
            let version = u32::try_from(last + 1).map_err(|_| WriteError::Corrupt {
                what: "model profile version".to_owned(),
            })?;
            tx.execute(
                "INSERT INTO model_profiles (model, version, toml, created_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![model.as_str(), i64::from(version), toml, secs(audit.at)],
            )
            .map_err(write_err("model profile"))?;
            append_change_tx(
                tx,
                audit,
                Change::ModelProfile {
                    model: model.clone(),
                },
            )?;
            Ok(ModelProfile {
                model: model.clone(),
                version,
                toml: toml.to_owned(),
                created_at: trunc(audit.at)?,
            })
        })
    }

    fn latest_model_profile(&self, model: &ModelId) -> Result<Option<ModelProfile>, ReadError> {
        self.read(|c| {
            c.query_row(
                &format!(
                    "SELECT {PROFILE_COLS} FROM model_profiles WHERE model = ?1 \
                     ORDER BY version DESC LIMIT 1"
                ),
                [model.as_str()],
                profile_row,
            )
            .optional()
        })
    }

    fn get_model_profile(
        &self,
        model: &ModelId,
        version: u32,
    ) -> Result<Option<ModelProfile>, ReadError> {
        self.read(|c| {
            c.query_row(
                &format!(
                    "SELECT {PROFILE_COLS} FROM model_profiles WHERE model = ?1 AND version = ?2"
                ),
                params![model.as_str(), i64::from(version)],
                profile_row,
            )
            .optional()
        })
    }

    fn add_claims(
        &self,
        tenant: &TenantId,
        manufacturer: &ManufacturerId,
        claims: &[NewClaim],
        audit: &AuditEntry,
    ) -> Result<usize, WriteError> {
        self.write(|tx| {
            require(
                tx,
                "SELECT 1 FROM tenants WHERE id = ?1",
                [tenant.as_str()],
                || format!("tenant {tenant}"),
            )?;
            require(
                tx,
                "SELECT 1 FROM manufacturers WHERE id = ?1",
                [manufacturer.as_str()],
                || format!("manufacturer {manufacturer}"),
            )?;
            let mut added = 0;
            {
                let mut owner = tx
                    .prepare("SELECT tenant FROM claims WHERE manufacturer = ?1 AND serial = ?2")
                    .map_err(write_err("claim"))?;
                let mut insert = tx
                    .prepare(
                        "INSERT INTO claims (manufacturer, serial, tenant, expected_model, \
                         claimed_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .map_err(write_err("claim"))?;
                for c in claims {
                    if c.serial.is_empty() {
                        return Err(WriteError::Invalid {
                            what: "claim serial (empty)".to_owned(),
                        });
                    }
                    let held: Option<String> = owner
                        .query_row(params![manufacturer.as_str(), c.serial], |r| r.get(0))
                        .optional()
                        .map_err(write_err("claim"))?;
                    match held {
                        Some(t) if t == tenant.as_str() => continue,
                        Some(_) => {
                            return Err(WriteError::AlreadyExists {
                                what: format!(
                                    "claim on {manufacturer} serial {} by another tenant",
                                    c.serial
                                ),
                            });
                        }
                        None => {}
                    }
                    insert
                        .execute(params![
                            manufacturer.as_str(),
                            c.serial,
                            tenant.as_str(),
                            c.expected_model.as_ref().map(|m| m.as_str()),
                            secs(audit.at)
                        ])
                        .map_err(write_err(&format!("claim on serial {}", c.serial)))?;
                    added += 1;
                }
            }
            append_tx(tx, audit)?;
            Ok(added)
        })
    }

    fn find_claim(
        &self,
        manufacturer: &ManufacturerId,
        serial: &str,
    ) -> Result<Option<Claim>, ReadError> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {CLAIM_COLS} FROM claims WHERE manufacturer = ?1 AND serial = ?2"),
                params![manufacturer.as_str(), serial],
                claim_row,
            )
            .optional()
        })
    }

    fn create_device(&self, d: &NewDevice, audit: &AuditEntry) -> Result<Device, WriteError> {
        self.write(|tx| {
            insert_device_tx(tx, d, secs(audit.at))?;
            append_tx(tx, audit)?;
            get_device_tx(tx, &d.device)
                .map_err(write_err("device"))?
                .ok_or_else(|| WriteError::NotFound {
                    what: format!("device {}", d.device),
                })
        })
    }

    fn get_device(&self, d: &DeviceRef) -> Result<Option<Device>, ReadError> {
        self.read(|c| get_device_tx(c, d))
    }

    fn find_device_by_serial(
        &self,
        tenant: &TenantId,
        manufacturer: &ManufacturerId,
        serial: &str,
    ) -> Result<Option<Device>, ReadError> {
        self.read(|c| {
            c.query_row(
                &format!(
                    "SELECT {DEVICE_COLS} FROM devices WHERE tenant = ?1 AND manufacturer = ?2 \
                     AND serial = ?3 ORDER BY created_at DESC LIMIT 1"
                ),
                params![tenant.as_str(), manufacturer.as_str(), serial],
                device_row,
            )
            .optional()
        })
    }

    fn list_devices(
        &self,
        filter: &DeviceFilter,
        limit: usize,
        cursor: Option<&Cursor>,
    ) -> Result<Page<Device>, ReadError> {
        let after = match cursor {
            Some(c) => Some(c.decode().ok_or(ReadError::BadCursor)?),
            None => None,
        };
        let limit = limit.clamp(1, MAX_PAGE);
        let (at, ad) = match &after {
            Some((t, d)) => (Some(t.as_str()), Some(d.as_str())),
            None => (None, None),
        };
        let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let mut items = self.list(
            &format!(
                "SELECT {DEVICE_COLS} FROM devices \
                 WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR status = ?2) \
                 AND (?3 IS NULL OR model = ?3) \
                 AND (?4 IS NULL OR tenant > ?4 OR (tenant = ?4 AND id > ?5)) \
                 ORDER BY tenant, id LIMIT ?6"
            ),
            params![
                filter.tenant.as_ref().map(|t| t.as_str()),
                filter.status.map(status_str),
                filter.model.as_ref().map(|m| m.as_str()),
                at,
                ad,
                fetch
            ],
            device_row,
        )?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items
                .last()
                .map(|d| Cursor::after(&d.device.tenant, &d.device.device))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    fn set_device_status(
        &self,
        d: &DeviceRef,
        status: DeviceStatus,
        audit: &AuditEntry,
    ) -> Result<Device, WriteError> {
        self.write(|tx| {
            let n = tx
                .execute(
                    "UPDATE devices SET status = ?3 WHERE tenant = ?1 AND id = ?2",
                    params![d.tenant.as_str(), d.device.as_str(), status_str(status)],
                )
                .map_err(write_err("device"))?;
            if n == 0 {
                return Err(WriteError::NotFound {
                    what: format!("device {d}"),
                });
            }
            append_change_tx(
                tx,
                audit,
                Change::DeviceStatus {
                    device: d.clone(),
                    status,
                },
            )?;
            get_device_tx(tx, d)
                .map_err(write_err("device"))?
                .ok_or_else(|| WriteError::NotFound {
                    what: format!("device {d}"),
                })
        })
    }

    fn enroll(
        &self,
        device: &NewDevice,
        cert: &NewCertificate,
        audit: &AuditEntry,
    ) -> Result<(Device, Certificate), WriteError> {
        if device.device != cert.device {
            return Err(WriteError::Invalid {
                what: "enrollment (the certificate names another device)".to_owned(),
            });
        }
        self.write(|tx| enroll_tx(tx, device, cert, audit))
    }

    fn record_certificate(
        &self,
        cert: &NewCertificate,
        audit: &AuditEntry,
    ) -> Result<Certificate, WriteError> {
        self.write(|tx| {
            let c = insert_cert_tx(tx, cert, secs(audit.at))?;
            append_tx(tx, audit)?;
            Ok(c)
        })
    }

    fn get_certificate(&self, serial: &CertSerial) -> Result<Option<Certificate>, ReadError> {
        self.read(|c| get_cert_tx(c, serial.as_str()))
    }

    fn list_certificates(&self, d: &DeviceRef) -> Result<Vec<Certificate>, ReadError> {
        self.list(
            &format!(
                "SELECT {CERT_COLS} FROM certificates WHERE tenant = ?1 AND device = ?2 \
                 ORDER BY not_before, serial"
            ),
            params![d.tenant.as_str(), d.device.as_str()],
            cert_row,
        )
    }

    fn list_revoked(&self, issuer: Option<&str>) -> Result<Vec<RevokedCertificate>, ReadError> {
        let certs = self.list(
            &format!(
                "SELECT {CERT_COLS} FROM certificates WHERE status = 'revoked' \
                 AND (?1 IS NULL OR issuer = ?1) ORDER BY serial"
            ),
            [issuer],
            cert_row,
        )?;
        certs
            .into_iter()
            .map(|c| match (c.revoked_at, c.revocation_reason) {
                (Some(revoked_at), Some(reason)) => Ok(RevokedCertificate {
                    serial: c.serial,
                    issuer: c.issuer,
                    revoked_at,
                    reason,
                }),
                _ => Err(ReadError::Corrupt {
                    what: format!("revocation of certificate {}", c.serial),
                }),
            })
            .collect()
    }

    fn revoke_certificate(
        &self,
        serial: &CertSerial,
        reason: RevocationReason,
        at: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<Certificate, WriteError> {
        self.write(|tx| {
            let c = get_cert_tx(tx, serial.as_str())
                .map_err(write_err("certificate"))?
                .ok_or_else(|| WriteError::NotFound {
                    what: format!("certificate {serial}"),
                })?;
            if c.status == CertStatus::Revoked {
                return Err(WriteError::AlreadyRevoked {
                    serial: serial.to_string(),
                });
            }
            tx.execute(
                "UPDATE certificates SET status = 'revoked', revoked_at = ?2, reason = ?3 \
                 WHERE serial = ?1",
                params![serial.as_str(), secs(at), i64::from(reason.code())],
            )
            .map_err(write_err("certificate"))?;
            append_change_tx(
                tx,
                audit,
                Change::CertificatesRevoked {
                    devices: vec![c.device.clone()],
                },
            )?;
            get_cert_tx(tx, serial.as_str())
                .map_err(write_err("certificate"))?
                .ok_or_else(|| WriteError::NotFound {
                    what: format!("certificate {serial}"),
                })
        })
    }

    fn revoke_device(
        &self,
        d: &DeviceRef,
        reason: RevocationReason,
        at: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<Vec<Certificate>, WriteError> {
        self.write(|tx| {
            require(
                tx,
                "SELECT 1 FROM devices WHERE tenant = ?1 AND id = ?2",
                params![d.tenant.as_str(), d.device.as_str()],
                || format!("device {d}"),
            )?;
            let out = revoke_device_certs_tx(tx, d, reason, secs(at))?;
            append_change_tx(
                tx,
                audit,
                Change::CertificatesRevoked {
                    devices: vec![d.clone()],
                },
            )?;
            Ok(out)
        })
    }

    fn revoke_batch(
        &self,
        scope: &BatchScope,
        reason: RevocationReason,
        at: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<BatchRevocation, WriteError> {
        let (m, range) = match scope {
            BatchScope::Manufacturer(m) => (m, None),
            BatchScope::SerialRange {
                manufacturer,
                first,
                last,
            } => {
                if first > last {
                    return Err(WriteError::Invalid {
                        what: "serial range (first is after last)".to_owned(),
                    });
                }
                (manufacturer, Some((first.as_str(), last.as_str())))
            }
        };
        self.write(|tx| {
            require(tx, "SELECT 1 FROM manufacturers WHERE id = ?1", [m.as_str()], || {
                format!("manufacturer {m}")
            })?;
            let devices: Vec<DeviceRef> = {
                let mut st = tx
                    .prepare(
                        "SELECT tenant, id FROM devices WHERE manufacturer = ?1 \
                         AND status != 'revoked' AND (?2 IS NULL OR (serial >= ?2 AND serial <= ?3)) \
                         ORDER BY tenant, id",
                    )
                    .map_err(write_err("device"))?;
                st.query_map(
                    params![m.as_str(), range.map(|r| r.0), range.map(|r| r.1)],
                    |r| {
                        Ok(DeviceRef::new(
                            parse::<TenantId>(r, 0)?,
                            parse::<DeviceId>(r, 1)?,
                        ))
                    },
                )
                .map_err(write_err("device"))?
                .collect::<rusqlite::Result<_>>()
                .map_err(write_err("device"))?
            };
            let mut out = BatchRevocation::default();
            for d in devices {
                out.certificates
                    .extend(revoke_device_certs_tx(tx, &d, reason, secs(at))?);
                out.devices.push(d);
            }
            append_change_tx(
                tx,
                audit,
                Change::CertificatesRevoked {
                    devices: out.devices.clone(),
                },
            )?;
            Ok(out)
        })
    }

    fn create_token(
        &self,
        t: &NewToken,
        audit: &AuditEntry,
    ) -> Result<(TokenRecord, TokenSecret), WriteError> {
        if t.max_uses == 0 {
            return Err(WriteError::Invalid {
                what: "max_uses (must be at least 1)".to_owned(),
            });
        }
        let id = TokenId::new(format!("tk-{}", hex::encode(&random::<8>()?))).map_err(|_| {
            WriteError::Invalid {
                what: "token id".to_owned(),
            }
        })?;
        let secret = TokenSecret::new(hex::encode(&random::<32>()?));
        let hash = hash_secret(secret.expose());
        let rec = self.write(|tx| {
            require(
                tx,
                "SELECT 1 FROM tenants WHERE id = ?1",
                [t.tenant.as_str()],
                || format!("tenant {}", t.tenant),
            )?;
            require(
                tx,
                "SELECT 1 FROM models WHERE id = ?1",
                [t.model.as_str()],
                || format!("model {}", t.model),
            )?;
            tx.execute(
                "INSERT INTO enrollment_tokens (id, tenant, model, secret_hash, max_uses, uses, \
                 expires_at, created_by, created_at, revoked) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8, 0)",
                params![
                    id.as_str(),
                    t.tenant.as_str(),
                    t.model.as_str(),
                    &hash[..],
                    i64::from(t.max_uses),
                    secs(t.expires_at),
                    t.created_by,
                    secs(audit.at)
                ],
            )
            .map_err(write_err("token"))?;
            append_tx(
                tx,
                &with_detail(audit, "token", serde_json::Value::from(id.as_str())),
            )?;
            tx.query_row(
                &format!("SELECT {TOKEN_COLS} FROM enrollment_tokens WHERE id = ?1"),
                [id.as_str()],
                token_row,
            )
            .map_err(write_err("token"))
        })?;
        Ok((rec, secret))
    }

    fn consume_token(
        &self,
        id: &TokenId,
        secret: &TokenSecret,
        now: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<TokenRecord, TokenError> {
        let presented = hash_secret(secret.expose());
        self.write(|tx| consume_token_tx(tx, id, &presented, now, audit))
    }

    fn enroll_with_token(
        &self,
        token: &TokenId,
        secret: &TokenSecret,
        now: OffsetDateTime,
        device: &NewDevice,
        cert: &NewCertificate,
        token_audit: &AuditEntry,
        audit: &AuditEntry,
    ) -> Result<(Device, Certificate, TokenRecord), TokenEnrollError> {
        if device.device != cert.device {
            return Err(WriteError::Invalid {
                what: "enrollment (the certificate names another device)".to_owned(),
            }
            .into());
        }
        let presented = hash_secret(secret.expose());
        self.write(|tx| {
            let rec = consume_token_tx(tx, token, &presented, now, token_audit)?;
            if rec.tenant != device.device.tenant || rec.model != device.model {
                return Err(WriteError::Invalid {
                    what: format!(
                        "enrollment (token {token} is for tenant {} and model {})",
                        rec.tenant, rec.model
                    ),
                }
                .into());
            }
            if get_device_tx(tx, &device.device)
                .map_err(write_err("device"))?
                .is_some()
            {
                return Err(WriteError::AlreadyExists {
                    what: format!("device {}", device.device),
                }
                .into());
            }
            let (d, c) = enroll_tx(tx, device, cert, audit)?;
            Ok((d, c, rec))
        })
    }

    fn revoke_token(&self, id: &TokenId, audit: &AuditEntry) -> Result<TokenRecord, WriteError> {
        self.write(|tx| {
            let n = tx
                .execute(
                    "UPDATE enrollment_tokens SET revoked = 1 WHERE id = ?1",
                    [id.as_str()],
                )
                .map_err(write_err("token"))?;
            if n == 0 {
                return Err(WriteError::NotFound {
                    what: format!("token {id}"),
                });
            }
            append_tx(tx, audit)?;
            tx.query_row(
                &format!("SELECT {TOKEN_COLS} FROM enrollment_tokens WHERE id = ?1"),
                [id.as_str()],
                token_row,
            )
            .map_err(write_err("token"))
        })
    }

    fn get_token(&self, id: &TokenId) -> Result<Option<TokenRecord>, ReadError> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {TOKEN_COLS} FROM enrollment_tokens WHERE id = ?1"),
                [id.as_str()],
                token_row,
            )
            .optional()
        })
    }

    fn list_tokens(&self, tenant: &TenantId) -> Result<Vec<TokenRecord>, ReadError> {
        self.list(
            &format!(
                "SELECT {TOKEN_COLS} FROM enrollment_tokens WHERE tenant = ?1 \
                 ORDER BY created_at DESC, id"
            ),
            [tenant.as_str()],
            token_row,
        )
    }

    fn get_device_trust(&self, d: &DeviceRef) -> Result<Option<DeviceTrust>, ReadError> {
        let c = self.conn.lock();
        get_trust_tx(&c, d).map_err(trust_read_err(d))
    }

    fn list_device_trust(&self, tenant: Option<&TenantId>) -> Result<Vec<DeviceTrust>, ReadError> {
        self.list(
            &format!(
                "SELECT {TRUST_COLS} FROM device_trust WHERE (?1 IS NULL OR tenant = ?1) \
                 ORDER BY tenant, device"
            ),
            [tenant.map(|t| t.as_str())],
            trust_row,
        )
        .map_err(|e| match e {
            ReadError::Corrupt { .. } => ReadError::Corrupt {
                what: "device trust state".to_owned(),
            },
            other => other,
        })
    }

    fn put_device_facts(
        &self,
        d: &DeviceRef,
        facts: &serde_json::Value,
        at: OffsetDateTime,
        audit: Option<&AuditEntry>,
    ) -> Result<DeviceTrust, WriteError> {
        let facts = trust_doc("facts", facts)?;
        self.write(|tx| {
            require_device(tx, d)?;
            tx.execute(
                "INSERT INTO device_trust (tenant, device, facts, facts_updated_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (tenant, device) DO UPDATE SET \
                 facts = excluded.facts, facts_updated_at = excluded.facts_updated_at",
                params![d.tenant.as_str(), d.device.as_str(), facts, secs(at)],
            )
            .map_err(write_err(&format!("trust state of device {d}")))?;
            if let Some(audit) = audit {
                append_tx(tx, audit)?;
            }
            trust_after_write(tx, d)
        })
    }

    fn set_device_pin(
        &self,
        d: &DeviceRef,
        pin: Option<&serde_json::Value>,
        audit: &AuditEntry,
    ) -> Result<DeviceTrust, WriteError> {
        let pin = pin.map(|p| trust_doc("pin", p)).transpose()?;
        self.write(|tx| {
            require_device(tx, d)?;
            tx.execute(
                "INSERT INTO device_trust (tenant, device, facts, facts_updated_at, pin) \
                 VALUES (?1, ?2, '{}', ?3, ?4) ON CONFLICT (tenant, device) DO UPDATE SET \
                 pin = excluded.pin",
                params![d.tenant.as_str(), d.device.as_str(), secs(audit.at), pin],
            )
            .map_err(write_err(&format!("trust state of device {d}")))?;
            append_change_tx(
                tx,
                audit,
                Change::DevicePin {
                    device: d.clone(),
                    pinned: pin.is_some(),
                },
            )?;
            trust_after_write(tx, d)
        })
    }

    fn record_assessment(
        &self,
        d: &DeviceRef,
        assessment: &serde_json::Value,
        at: OffsetDateTime,
        audit: Option<&AuditEntry>,
    ) -> Result<(), WriteError> {
        let assessment = trust_doc("assessment", assessment)?;
        self.write(|tx| {
            require_device(tx, d)?;
            tx.execute(
                "INSERT INTO device_trust (tenant, device, facts, facts_updated_at, assessment, \
                 assessed_at) VALUES (?1, ?2, '{}', ?3, ?4, ?3) \
                 ON CONFLICT (tenant, device) DO UPDATE SET \
                 assessment = excluded.assessment, assessed_at = excluded.assessed_at",
                params![d.tenant.as_str(), d.device.as_str(), secs(at), assessment],
            )
            .map_err(write_err(&format!("trust state of device {d}")))?;
            if let Some(audit) = audit {
                append_tx(tx, audit)?;
            }
            Ok(())
        })
    }

    fn record_assessments(
        &self,
        batch: &[AssessmentRecord],
        at: OffsetDateTime,
    ) -> Result<(), WriteError> {
        let docs = batch
            .iter()
            .map(|r| trust_doc("assessment", &r.assessment))
            .collect::<Result<Vec<_>, _>>()?;
        self.write(|tx| {
            for (r, doc) in batch.iter().zip(&docs) {
                let d = &r.device;
                require_device(tx, d)?;
                tx.execute(
                    "INSERT INTO device_trust (tenant, device, facts, facts_updated_at, \
                     assessment, assessed_at) VALUES (?1, ?2, '{}', ?3, ?4, ?3) \
                     ON CONFLICT (tenant, device) DO UPDATE SET \
                     assessment = excluded.assessment, assessed_at = excluded.assessed_at",
                    params![d.tenant.as_str(), d.device.as_str(), secs(at), doc],
                )
                .map_err(write_err(&format!("trust state of device {d}")))?;
                if let Some(audit) = &r.audit {
                    append_tx(tx, audit)?;
                }
            }
            Ok(())
        })
    }

    fn put_policy_set(
        &self,
        text: &str,
        created_by: &str,
        audit: &AuditEntry,
    ) -> Result<PolicySetRecord, WriteError> {
        if text.len() > PolicySetRecord::MAX_TEXT_BYTES {
            return Err(WriteError::Invalid {
                what: format!(
                    "policy text ({} bytes; at most {} are allowed)",
                    text.len(),
                    PolicySetRecord::MAX_TEXT_BYTES
                ),
            });
        }
        let created_at = trunc(audit.at)?;
        self.write(|tx| {
            let last: i64 = tx
                .query_row(
                    "SELECT COALESCE(MAX(version), 0) FROM policy_sets",
                    [],
                    |r| r.get(0),
                )
                .map_err(write_err("policy set"))?;
            let version = u32::try_from(last + 1).map_err(|_| WriteError::Corrupt {
                what: "policy set version".to_owned(),
            })?;
            tx.execute(
                "INSERT INTO policy_sets (version, text, created_at, created_by) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![i64::from(version), text, secs(audit.at), created_by],
            )
            .map_err(write_err(&format!("policy set version {version}")))?;
            append_change_tx(
                tx,
                &with_detail(audit, "version", serde_json::Value::from(version)),
                Change::PolicySet,
            )?;
            Ok(PolicySetRecord {
                version,
                text: text.to_owned(),
                created_at,
                created_by: created_by.to_owned(),
            })
        })
    }

    fn current_policy_set(&self) -> Result<Option<PolicySetRecord>, ReadError> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {POLICY_COLS} FROM policy_sets ORDER BY version DESC LIMIT 1"),
                [],
                policy_row,
            )
            .optional()
        })
    }

    fn list_policy_sets(&self) -> Result<Vec<PolicySetRecord>, ReadError> {
        self.list(
            &format!("SELECT {POLICY_COLS} FROM policy_sets ORDER BY version DESC"),
            [],
            policy_row,
        )
    }

    fn record_findings(
        &self,
        findings: &[Finding],
        at: OffsetDateTime,
        max_stored_per_incident: u32,
    ) -> Result<Vec<RecordedFinding>, WriteError> {
        self.write(|tx| respond::record_findings_tx(tx, findings, at, max_stored_per_incident))
    }

    fn list_incidents(&self, filter: &IncidentFilter) -> Result<Vec<Incident>, ReadError> {
        self.read(|c| respond::list_incidents(c, filter))
    }

    fn get_incident(&self, id: IncidentId) -> Result<Option<IncidentDetail>, ReadError> {
        respond::get_incident(&self.conn.lock(), id)
    }

    fn set_incident_state(
        &self,
        id: IncidentId,
        to: IncidentState,
        by: &str,
        note: Option<&str>,
        audit: &AuditEntry,
    ) -> Result<Incident, WriteError> {
        self.write(|tx| respond::set_incident_state_tx(tx, id, to, by, note, audit))
    }

    fn record_action(
        &self,
        action: &ActionRecord,
        audit: &AuditEntry,
    ) -> Result<ActionId, WriteError> {
        self.write(|tx| respond::record_action_tx(tx, action, audit))
    }

    fn set_action_state(
        &self,
        id: ActionId,
        state: ActionState,
        by: &str,
        note: Option<&str>,
        audit: &AuditEntry,
    ) -> Result<StoredAction, WriteError> {
        self.write(|tx| respond::set_action_state_tx(tx, id, state, by, note, audit))
    }

    fn list_actions(&self, filter: &ActionFilter) -> Result<Vec<StoredAction>, ReadError> {
        self.read(|c| respond::list_actions(c, filter))
    }

    fn get_action(&self, id: ActionId) -> Result<Option<StoredAction>, ReadError> {
        self.read(|c| respond::get_action_row(c, id))
    }

    fn put_ban(
        &self,
        addr: IpAddr,
        until: OffsetDateTime,
        reason: &str,
        audit: &AuditEntry,
    ) -> Result<Ban, WriteError> {
        self.write(|tx| respond::put_ban_tx(tx, addr, until, reason, audit))
    }

    fn remove_ban(&self, addr: IpAddr, audit: &AuditEntry) -> Result<Ban, WriteError> {
        self.write(|tx| respond::remove_ban_tx(tx, addr, audit))
    }

    fn list_bans(&self, now: OffsetDateTime) -> Result<Vec<Ban>, ReadError> {
        self.read(|c| respond::list_bans(c, now))
    }
}

/// A timestamp as stored (whole seconds).
fn trunc(t: OffsetDateTime) -> Result<OffsetDateTime, WriteError> {
    OffsetDateTime::from_unix_timestamp(t.unix_timestamp()).map_err(|_| WriteError::Invalid {
        what: "timestamp".to_owned(),
    })
}

/// The caller cannot know what the store assigns (a new token's id, a policy set's
/// version), so the store adds it to the audit record's detail as `key`. A detail that is
/// not an object (nor `null`) is kept under `"detail"`.
fn with_detail(audit: &AuditEntry, key: &str, value: serde_json::Value) -> AuditEntry {
    let mut entry = audit.clone();
    entry.detail = match entry.detail {
        serde_json::Value::Object(mut map) => {
            map.insert(key.to_owned(), value);
            serde_json::Value::Object(map)
        }
        serde_json::Value::Null => serde_json::json!({ key: value }),
        other => serde_json::json!({ key: value, "detail": other }),
    };
    entry
}

/// Checks a token's secret and state and counts one use, inside `tx`.
fn consume_token_tx(
    tx: &Transaction<'_>,
    id: &TokenId,
    presented: &[u8],
    now: OffsetDateTime,
    audit: &AuditEntry,
) -> Result<TokenRecord, TokenError> {
    let found = tx
        .query_row(
            &format!("SELECT {TOKEN_COLS}, secret_hash FROM enrollment_tokens WHERE id = ?1"),
            [id.as_str()],
            |r| Ok((token_row(r)?, r.get::<_, Vec<u8>>(9)?)),
        )
        .optional()
        .map_err(read_err)?;
    let Some((mut rec, stored)) = found else {
        return Err(TokenError::Unknown);
    };
    // The secret first: the token's state is told only to whoever holds it.
    if !bool::from(stored.as_slice().ct_eq(presented)) {
        return Err(TokenError::BadSecret);
    }
    if rec.revoked {
        return Err(TokenError::Revoked);
    }
    if now >= rec.expires_at {
        return Err(TokenError::Expired);
    }
    if rec.uses >= rec.max_uses {
        return Err(TokenError::Exhausted);
    }
    let n = tx
        .execute(
            "UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = ?1 AND uses < max_uses",
            [id.as_str()],
        )
        .map_err(read_err)?;
    if n != 1 {
        return Err(TokenError::Exhausted);
    }
    append_tx(tx, audit)?;
    rec.uses += 1;
    Ok(rec)
}

/// Registers the device if it is new, records its certificate and the audit record.
fn enroll_tx(
    tx: &Transaction<'_>,
    device: &NewDevice,
    cert: &NewCertificate,
    audit: &AuditEntry,
) -> Result<(Device, Certificate), WriteError> {
    let at = secs(audit.at);
    if get_device_tx(tx, &device.device)
        .map_err(write_err("device"))?
        .is_none()
    {
        insert_device_tx(tx, device, at)?;
    }
    let c = insert_cert_tx(tx, cert, at)?;
    append_tx(tx, audit)?;
    let d = get_device_tx(tx, &device.device)
        .map_err(write_err("device"))?
        .ok_or_else(|| WriteError::NotFound {
            what: format!("device {}", device.device),
        })?;
    Ok((d, c))
}
