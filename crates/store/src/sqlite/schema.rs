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
    // 4: the respond stage: incidents (findings grouped by subject and kind), their
    // stored findings, response actions, the incidents' event history, banned addresses.
    r#"
CREATE TABLE incidents (
    id              INTEGER PRIMARY KEY,
    tenant          TEXT,                         -- NULL for an address-only incident
    device          TEXT,
    peer            TEXT,
    kind            TEXT NOT NULL,
    group_key       TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('open', 'acknowledged', 'resolved')),
    max_severity    TEXT NOT NULL
                    CHECK (max_severity IN ('info', 'low', 'medium', 'high', 'critical')),
    finding_count   INTEGER NOT NULL CHECK (finding_count >= 0),
    stored_findings INTEGER NOT NULL CHECK (stored_findings >= 0),
    first_seen      INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL,
    opened_at       INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    resolved_at     INTEGER,
    summary         TEXT NOT NULL,
    technique       TEXT,
    CHECK ((tenant IS NULL) = (device IS NULL)),
    CHECK ((state = 'resolved') = (resolved_at IS NOT NULL))
) STRICT;
-- At most one open or acknowledged incident per group.
CREATE UNIQUE INDEX incidents_active_group ON incidents (group_key) WHERE state != 'resolved';
CREATE INDEX incidents_by_device ON incidents (tenant, device);
CREATE INDEX incidents_by_activity ON incidents (last_seen);

CREATE TABLE findings (
    id       INTEGER PRIMARY KEY,
    incident INTEGER NOT NULL REFERENCES incidents(id),
    at       INTEGER NOT NULL,
    body     TEXT NOT NULL                        -- the finding, JSON
) STRICT;
CREATE INDEX findings_by_incident ON findings (incident, id);

CREATE TABLE actions (
    id         INTEGER PRIMARY KEY,
    incident   INTEGER REFERENCES incidents(id),
    tenant     TEXT,
    device     TEXT,
    peer       TEXT,
    kind       TEXT NOT NULL,
    params     TEXT NOT NULL,                     -- JSON
    state      TEXT NOT NULL CHECK (state IN
               ('pending_approval', 'done', 'failed', 'reversed', 'rejected')),
    playbook   TEXT,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    note       TEXT,
    expires_at INTEGER,
    CHECK ((tenant IS NULL) = (device IS NULL))
) STRICT;
CREATE INDEX actions_by_incident ON actions (incident);
CREATE INDEX actions_by_state ON actions (state, expires_at);

-- An incident's history: its findings, state changes and actions, in order.
CREATE TABLE incident_events (
    id         INTEGER PRIMARY KEY,
    incident   INTEGER NOT NULL REFERENCES incidents(id),
    at         INTEGER NOT NULL,
    event      TEXT NOT NULL CHECK (event IN ('finding', 'state', 'action')),
    finding    INTEGER REFERENCES findings(id),
    action     INTEGER REFERENCES actions(id),
    from_state TEXT,
    to_state   TEXT,
    actor      TEXT,
    note       TEXT
) STRICT;
CREATE INDEX incident_events_by_incident ON incident_events (incident, at, id);

CREATE TABLE bans (
    addr       TEXT PRIMARY KEY,                  -- an IP address as Rust prints it
    until      INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
"#,
    // 5: operators, their API tokens and their dashboard sessions.
    r#"
CREATE TABLE operators (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'analyst', 'auditor')),
    tenant        TEXT REFERENCES tenants(id),      -- NULL: every tenant
    password_hash TEXT,                             -- argon2id PHC string; NULL: tokens only
    created_at    INTEGER NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until  INTEGER
) STRICT;

CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    operator    TEXT NOT NULL REFERENCES operators(name),
    label       TEXT NOT NULL,
    secret_hash BLOB NOT NULL,                      -- SHA-256 of the secret's text
    permissions TEXT NOT NULL,                      -- JSON array of permission names
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT;
CREATE INDEX api_tokens_by_operator ON api_tokens (operator);

CREATE TABLE web_sessions (
    key_hash   BLOB PRIMARY KEY,                    -- SHA-256 of the cookie's value
    operator   TEXT NOT NULL REFERENCES operators(name),
    csrf       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX web_sessions_by_expiry ON web_sessions (expires_at);
"#,
    // 6: the change feed, written beside the audit record it explains.
    r#"
CREATE TABLE changes (
    seq       INTEGER PRIMARY KEY,                -- the feed's order, from 1
    audit_seq INTEGER NOT NULL,                   -- the audit record written with it
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    change    TEXT NOT NULL                       -- the Change as tagged JSON
) STRICT;
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;
