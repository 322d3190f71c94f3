//! Versioned schema migrations, applied at open. `PRAGMA user_version` holds the version;
//! each step runs in its own transaction together with the version bump.

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the registry core and the audit log.
    r#"
CREATE TABLE tenants (
    id           TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    created_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE manufacturers (
    id             TEXT PRIMARY KEY,
    display_name   TEXT NOT NULL,
    idevid_ca_pems TEXT NOT NULL,          -- JSON array of PEM strings
    model_mapping  TEXT NOT NULL,
    created_at     INTEGER NOT NULL
) STRICT;

CREATE TABLE models (
    id           TEXT PRIMARY KEY,
    manufacturer TEXT NOT NULL REFERENCES manufacturers(id),
    display_name TEXT NOT NULL,
    created_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE devices (
    tenant           TEXT NOT NULL REFERENCES tenants(id),
    id               TEXT NOT NULL,
    model            TEXT NOT NULL REFERENCES models(id),
    manufacturer     TEXT REFERENCES manufacturers(id),
    serial           TEXT,
    assurance        TEXT NOT NULL CHECK (assurance IN ('idevid', 'token')),
    status           TEXT NOT NULL CHECK (status IN ('active', 'revoked', 'blocked')),
    created_at       INTEGER NOT NULL,
    last_enrolled_at INTEGER,
    tags             TEXT NOT NULL DEFAULT '[]',   -- JSON array of strings
    PRIMARY KEY (tenant, id)
) STRICT;
CREATE INDEX devices_by_serial ON devices (manufacturer, serial);

CREATE TABLE certificates (
    serial     TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    device     TEXT NOT NULL,
    issuer     TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    pem        TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('valid', 'revoked')),
    revoked_at INTEGER,
    reason     INTEGER,                          -- RFC 5280 CRLReason code
    FOREIGN KEY (tenant, device) REFERENCES devices (tenant, id)
) STRICT;
CREATE INDEX certificates_by_device ON certificates (tenant, device);
CREATE INDEX certificates_by_status ON certificates (status, issuer);

CREATE TABLE enrollment_tokens (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL REFERENCES tenants(id),
    model       TEXT NOT NULL REFERENCES models(id),
    secret_hash BLOB NOT NULL,                   -- SHA-256 of the secret's text
    max_uses    INTEGER NOT NULL CHECK (max_uses >= 1),
    uses        INTEGER NOT NULL DEFAULT 0,
    expires_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked     INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    reason    TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
) STRICT;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"#,
    // 2: claims (allowlists of manufacturer serials) and versioned model profiles.
    r#"
CREATE TABLE claims (
    manufacturer   TEXT NOT NULL REFERENCES manufacturers(id),
    serial         TEXT NOT NULL,
    tenant         TEXT NOT NULL REFERENCES tenants(id),
    expected_model TEXT REFERENCES models(id),
    claimed_at     INTEGER NOT NULL,
    PRIMARY KEY (manufacturer, serial)
) STRICT;

CREATE TABLE model_profiles (
    model      TEXT NOT NULL REFERENCES models(id),
    version    INTEGER NOT NULL,
    toml       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (model, version)
) STRICT;
"#,
    // 3: per-device trust state (JSON documents owned by the trust engine) and the
    // versioned Cedar policy sets.
    r#"
CREATE TABLE device_trust (
    tenant           TEXT NOT NULL,
    device           TEXT NOT NULL,
    facts            TEXT NOT NULL,                -- JSON
    facts_updated_at INTEGER NOT NULL,
    pin              TEXT,                         -- JSON
    assessment       TEXT,                         -- JSON
    assessed_at      INTEGER,
    CHECK ((assessment IS NULL) = (assessed_at IS NULL)),
    PRIMARY KEY (tenant, device),
    FOREIGN KEY (tenant, device) REFERENCES devices (tenant, id)
) STRICT;

CREATE TABLE policy_sets (
    version    INTEGER PRIMARY KEY CHECK (version >= 1),
    text       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL
) STRICT;
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;
