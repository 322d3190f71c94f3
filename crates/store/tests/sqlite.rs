//! SQLite-specific properties: durability across reopen, migrations, several connections
//! on one file, and tampering with the audit table behind Gatehouse's back.

use gatehouse_store::sqlite::{MIGRATIONS, SCHEMA_VERSION};
use gatehouse_store::*;
use gatehouse_types::{DeviceId, DeviceRef, Finding, Severity, TenantId};
use proptest::prelude::*;
use rusqlite::Connection;
use time::{Duration, OffsetDateTime};

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time")
}

fn entry(action: &str, subject: &str) -> AuditEntry {
    AuditEntry::new(t0(), "operator:test", action, subject)
}

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).expect("tenant")
}

/// A file store with `n` audit records.
fn store_with_records(n: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gatehouse.db");
    let s = SqliteStore::open(&path).expect("open");
    for i in 0..n {
        s.append(&entry("test", &format!("s{i}")).detail(serde_json::json!({"i": i})))
            .expect("append");
    }
    (dir, path)
}

/// Raw access to the file, as an attacker with the data directory has it.
fn tamper(path: &std::path::Path, sql: &str) {
    let c = Connection::open(path).expect("raw open");
    c.execute_batch("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;")
        .expect("drop triggers");
    c.execute_batch(sql).expect("tamper");
}

fn tampered(path: &std::path::Path) -> (u64, Tamper) {
    let s = SqliteStore::open(path).expect("reopen");
    match s.verify() {
        Err(VerifyError::Tampered { seq, kind }) => (seq, kind),
        other => panic!("expected tamper, got {other:?}"),
    }
}

#[test]
fn acknowledged_writes_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gatehouse.db");
    {
        let s = SqliteStore::open(&path).expect("open");
        s.create_tenant(&tenant("acme"), "Acme", &entry("tenant_create", "acme"))
            .expect("tenant");
    }
    let s = SqliteStore::open(&path).expect("reopen");
    assert_eq!(
        s.get_tenant(&tenant("acme"))
            .expect("get")
            .expect("there")
            .display_name,
        "Acme"
    );
    assert_eq!(s.verify().expect("verify").head_seq, 1);
    assert_eq!(s.schema_version().expect("version"), SCHEMA_VERSION);
}

#[test]
fn store_file_is_in_wal_mode() {
    let (_dir, path) = store_with_records(0);
    let c = Connection::open(&path).expect("raw open");
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
}

#[test]
fn older_schema_is_migrated_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    {
        let c = Connection::open(&path).expect("raw open");
        c.execute_batch(MIGRATIONS[0]).expect("v1 schema");
        c.pragma_update(None, "user_version", 1).expect("version");
        c.execute(
            "INSERT INTO tenants (id, display_name, created_at) VALUES ('acme', 'Acme', 0)",
            [],
        )
        .expect("row");
    }
    let s = SqliteStore::open(&path).expect("open migrates");
    assert_eq!(s.schema_version().expect("version"), SCHEMA_VERSION);
    assert!(s.get_tenant(&tenant("acme")).expect("get").is_some());
    // The version-2 tables work.
    assert!(
        s.find_claim(&ManufacturerId::new("m").expect("id"), "x")
            .expect("claims")
            .is_none()
    );
    drop(s);
    // Opening again is a no-op.
    let s = SqliteStore::open(&path).expect("open twice");
    assert_eq!(s.schema_version().expect("version"), SCHEMA_VERSION);
}

#[test]
fn newer_schema_is_refused() {
    let (_dir, path) = store_with_records(0);
    Connection::open(&path)
        .expect("raw")
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .expect("bump");
    assert!(matches!(
        SqliteStore::open(&path),
        Err(OpenError::TooNew { .. })
    ));
}

#[test]
fn single_use_token_across_connections_is_used_once() {
    let (_dir, path) = store_with_records(0);
    let s = SqliteStore::open(&path).expect("open");
    s.create_tenant(&tenant("acme"), "Acme", &entry("t", "acme"))
        .expect("tenant");
    let maker = ManufacturerId::new("maker").expect("id");
    s.add_manufacturer(
        &NewManufacturer {
            id: maker.clone(),
            display_name: "M".into(),
            idevid_ca_pems: vec![],
            model_mapping: String::new(),
        },
        &entry("m", "maker"),
    )
    .expect("maker");
    let pump = ModelId::new("pump").expect("id");
    s.add_model(
        &NewModel {
            id: pump.clone(),
            manufacturer: maker,
            display_name: "P".into(),
        },
        &entry("model", "pump"),
    )
    .expect("model");
    let (rec, secret) = s
        .create_token(
            &NewToken {
                tenant: tenant("acme"),
                model: pump,
                max_uses: 1,
                expires_at: t0() + Duration::hours(1),
                created_by: "operator:a".into(),
            },
            &entry("token_create", "x"),
        )
        .expect("token");
    let stores: Vec<SqliteStore> = (0..8)
        .map(|_| SqliteStore::open(&path).expect("open"))
        .collect();
    let ok = std::thread::scope(|sc| {
        let hs: Vec<_> = stores
            .iter()
            .map(|st| {
                let (rec, secret) = (&rec, &secret);
                sc.spawn(move || {
                    st.consume_token(&rec.id, secret, t0(), &entry("token_use", "x"))
                        .is_ok()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("join"))
            .filter(|ok| *ok)
            .count()
    });
    assert_eq!(ok, 1);
    assert!(s.verify().is_ok());
}

#[test]
fn audit_table_refuses_update_and_delete() {
    let (_dir, path) = store_with_records(2);
    let c = Connection::open(&path).expect("raw");
    assert!(c.execute("UPDATE audit_log SET reason = 'x'", []).is_err());
    assert!(c.execute("DELETE FROM audit_log", []).is_err());
}

#[test]
fn edited_audit_record_is_detected() {
    let (_dir, path) = store_with_records(5);
    tamper(
        &path,
        "UPDATE audit_log SET actor = 'operator:mallory' WHERE seq = 3",
    );
    assert_eq!(tampered(&path), (3, Tamper::Edited));
}

#[test]
fn deleted_audit_record_is_detected() {
    let (_dir, path) = store_with_records(5);
    tamper(&path, "DELETE FROM audit_log WHERE seq = 2");
    assert_eq!(tampered(&path), (3, Tamper::Deleted));
}

#[test]
fn inserted_audit_record_is_detected() {
    let (_dir, path) = store_with_records(5);
    // A forged record put between 2 and 3, later ones renumbered to make room.
    let c = Connection::open(&path).expect("raw");
    let (prev_seq, prev_hash): (i64, String) = c
        .query_row("SELECT seq, hash FROM audit_log WHERE seq = 2", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("row 2");
    let mut prev = [0u8; 32];
    for (i, b) in prev.iter_mut().enumerate() {
        *b = u8::from_str_radix(&prev_hash[2 * i..2 * i + 2], 16).expect("hex");
    }
    let forged = AuditEntry::new(t0(), "operator:mallory", "release", "acme/pump-1")
        .seal(Some((prev_seq as u64, prev)));
    tamper(
        &path,
        &format!(
            "UPDATE audit_log SET seq = -seq WHERE seq >= 3; \
             UPDATE audit_log SET seq = -seq + 1 WHERE seq < 0; \
             INSERT INTO audit_log VALUES (3, {}, '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');",
            forged.at,
            forged.actor,
            forged.action,
            forged.subject,
            forged.outcome,
            forged.reason,
            forged.detail,
            forged.prev_hash,
            forged.hash
        ),
    );
    assert_eq!(tampered(&path), (3, Tamper::Inserted));
}

#[test]
fn appended_forged_audit_record_is_detected() {
    let (_dir, path) = store_with_records(3);
    tamper(
        &path,
        "INSERT INTO audit_log SELECT 4, at, actor, action, 'forged', outcome, reason, detail, \
         prev_hash, hash FROM audit_log WHERE seq = 3",
    );
    let (seq, _) = tampered(&path);
    assert_eq!(seq, 4);
}

#[test]
fn reordered_audit_records_are_detected() {
    let (_dir, path) = store_with_records(5);
    tamper(
        &path,
        "UPDATE audit_log SET seq = -1 WHERE seq = 2; \
         UPDATE audit_log SET seq = 2 WHERE seq = 3; \
         UPDATE audit_log SET seq = 3 WHERE seq = -1;",
    );
    assert_eq!(tampered(&path), (2, Tamper::Reordered));
}

#[test]
fn audit_file_edited_on_disk_is_caught() {
    let (_dir, path) = store_with_records(4);
    let s = SqliteStore::open(&path).expect("open");
    let mut out = Vec::new();
    s.export_jsonl(&mut out).expect("export");
    let text = String::from_utf8(out).expect("utf8");
    assert!(audit::verify_jsonl(text.as_bytes()).is_ok());
    let edited = text.replacen("\"s2\"", "\"s9\"", 1);
    assert!(matches!(
        audit::verify_jsonl(edited.as_bytes()),
        Err(VerifyError::Tampered {
            seq: 3,
            kind: Tamper::Edited
        })
    ));
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(1);
    assert!(matches!(
        audit::verify_jsonl(lines.join("\n").as_bytes()),
        Err(VerifyError::Tampered {
            seq: 3,
            kind: Tamper::Deleted
        })
    ));
}

/// A file store with device `acme/pump-1` (model `pump` of `maker`) and its trust state
/// (facts, a pin and an assessment), and a policy set.
fn store_with_trust() -> (tempfile::TempDir, std::path::PathBuf, DeviceRef) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gatehouse.db");
    let s = SqliteStore::open(&path).expect("open");
    s.create_tenant(&tenant("acme"), "Acme", &entry("t", "acme"))
        .expect("tenant");
    let maker = ManufacturerId::new("maker").expect("id");
    s.add_manufacturer(
        &NewManufacturer {
            id: maker.clone(),
            display_name: "M".into(),
            idevid_ca_pems: vec![],
            model_mapping: String::new(),
        },
        &entry("m", "maker"),
    )
    .expect("maker");
    let pump = ModelId::new("pump").expect("id");
    s.add_model(
        &NewModel {
            id: pump.clone(),
            manufacturer: maker,
            display_name: "P".into(),
        },
        &entry("model", "pump"),
    )
    .expect("model");
    let d = DeviceRef::new(tenant("acme"), DeviceId::new("pump-1").expect("id"));
    s.create_device(
        &NewDevice {
            device: d.clone(),
            model: pump,
            manufacturer: None,
            serial: None,
            assurance: Assurance::Token,
            tags: vec![],
        },
        &entry("device_create", "acme/pump-1"),
    )
    .expect("device");
    s.put_device_facts(&d, &serde_json::json!({"key_bits": 2048}), t0(), None)
        .expect("facts");
    s.set_device_pin(
        &d,
        Some(&serde_json::json!({"tier": "trusted"})),
        &entry("pin", "x"),
    )
    .expect("pin");
    s.record_assessment(&d, &serde_json::json!({"score": 90}), t0(), None)
        .expect("assessment");
    s.put_policy_set(
        "permit (principal, action, resource);",
        "system",
        &entry("p", "x"),
    )
    .expect("policy");
    (dir, path, d)
}

#[test]
fn trust_state_survives_reopen() {
    let (_dir, path, d) = store_with_trust();
    let s = SqliteStore::open(&path).expect("reopen");
    let t = s.get_device_trust(&d).expect("read").expect("there");
    assert_eq!(t.facts, serde_json::json!({"key_bits": 2048}));
    assert_eq!(t.pin, Some(serde_json::json!({"tier": "trusted"})));
    assert_eq!(t.assessment, Some(serde_json::json!({"score": 90})));
    assert_eq!(t.assessed_at, Some(t0()));
    assert_eq!(
        s.current_policy_set()
            .expect("read")
            .expect("there")
            .version,
        1
    );
}

#[test]
fn corrupt_trust_documents_are_read_errors() {
    for (column, value) in [
        ("facts", "'{\"key_bits\": '"),
        ("pin", "'not json'"),
        ("assessment", "'[1, 2'"),
        ("assessed_at", "NULL"),
        ("facts_updated_at", "9223372036854775807"),
    ] {
        let (_dir, path, d) = store_with_trust();
        Connection::open(&path)
            .expect("raw")
            .execute_batch(&format!(
                "PRAGMA ignore_check_constraints = ON; UPDATE device_trust SET {column} = {value};"
            ))
            .expect("corrupt");
        let s = SqliteStore::open(&path).expect("reopen");
        assert!(
            matches!(
                s.get_device_trust(&d),
                Err(ReadError::Corrupt { what }) if what.contains("acme/pump-1")
            ),
            "{column}"
        );
        assert!(
            matches!(s.list_device_trust(None), Err(ReadError::Corrupt { .. })),
            "{column}"
        );
        // A write that reads the corrupt row back fails and leaves everything as it was.
        if column != "facts" && column != "facts_updated_at" {
            let head = s.audit_head().expect("head");
            assert!(
                matches!(
                    s.put_device_facts(&d, &serde_json::json!({}), t0(), Some(&entry("f", "x"))),
                    Err(WriteError::Corrupt { .. })
                ),
                "{column}"
            );
            assert_eq!(s.audit_head().expect("head"), head, "{column}");
        }
    }
}

#[test]
fn corrupt_policy_set_is_a_read_error() {
    let (_dir, path, _) = store_with_trust();
    Connection::open(&path)
        .expect("raw")
        .execute(
            "UPDATE policy_sets SET created_at = 9223372036854775807",
            [],
        )
        .expect("corrupt");
    let s = SqliteStore::open(&path).expect("reopen");
    assert!(matches!(
        s.current_policy_set(),
        Err(ReadError::Corrupt { .. })
    ));
    assert!(matches!(
        s.list_policy_sets(),
        Err(ReadError::Corrupt { .. })
    ));
}

#[test]
fn trust_rows_must_name_a_device() {
    let (_dir, path, _) = store_with_trust();
    let c = Connection::open(&path).expect("raw");
    c.pragma_update(None, "foreign_keys", "ON").expect("fk");
    assert!(
        c.execute(
            "INSERT INTO device_trust (tenant, device, facts, facts_updated_at) \
             VALUES ('acme', 'ghost', '{}', 0)",
            [],
        )
        .is_err()
    );
    assert!(
        c.execute(
            "UPDATE device_trust SET assessment = NULL WHERE device = 'pump-1'",
            [],
        )
        .is_err(),
        "an assessment time without an assessment is refused"
    );
}

#[test]
fn version_2_store_gains_trust_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v2.db");
    {
        let c = Connection::open(&path).expect("raw open");
        c.execute_batch(MIGRATIONS[0]).expect("v1 schema");
        c.execute_batch(MIGRATIONS[1]).expect("v2 schema");
        c.pragma_update(None, "user_version", 2).expect("version");
        c.execute_batch(
            "INSERT INTO tenants VALUES ('acme', 'Acme', 0); \
             INSERT INTO manufacturers VALUES ('maker', 'M', '[]', '', 0); \
             INSERT INTO models VALUES ('pump', 'maker', 'P', 0); \
             INSERT INTO devices (tenant, id, model, assurance, status, created_at) \
                 VALUES ('acme', 'pump-1', 'pump', 'token', 'active', 0);",
        )
        .expect("rows");
    }
    let s = SqliteStore::open(&path).expect("open migrates");
    assert_eq!(s.schema_version().expect("version"), SCHEMA_VERSION);
    let d = DeviceRef::new(tenant("acme"), DeviceId::new("pump-1").expect("id"));
    assert!(s.get_device_trust(&d).expect("read").is_none());
    let t = s
        .put_device_facts(&d, &serde_json::json!({"a": 1}), t0(), None)
        .expect("facts");
    assert_eq!(s.list_device_trust(None).expect("list"), vec![t]);
    assert_eq!(
        s.put_policy_set("", "system", &entry("p", "x"))
            .expect("policy")
            .version,
        1
    );
}

#[test]
fn version_3_store_gains_respond_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v3.db");
    {
        let c = Connection::open(&path).expect("raw open");
        for m in &MIGRATIONS[..3] {
            c.execute_batch(m).expect("old schema");
        }
        c.pragma_update(None, "user_version", 3).expect("version");
        c.execute_batch("INSERT INTO tenants VALUES ('acme', 'Acme', 0);")
            .expect("rows");
    }
    let s = SqliteStore::open(&path).expect("open migrates");
    assert_eq!(s.schema_version().expect("version"), SCHEMA_VERSION);
    assert!(s.get_tenant(&tenant("acme")).expect("read").is_some());
    let f = Finding {
        at: std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
        device: None,
        peer: Some("192.0.2.1".parse().expect("ip")),
        kind: "connect_flood".into(),
        severity: Severity::High,
        confidence: 0.9,
        technique: None,
        summary: "flood".into(),
        evidence: Default::default(),
    };
    let r = s.record_findings(&[f], t0(), 10).expect("findings");
    assert!(r[0].new_incident);
    let addr = "192.0.2.1".parse().expect("ip");
    s.put_ban(
        addr,
        t0() + Duration::minutes(5),
        "flood",
        &entry("ban", "192.0.2.1"),
    )
    .expect("ban");
    assert_eq!(s.list_bans(t0()).expect("bans").len(), 1);
    assert_eq!(s.verify().expect("verify").records, 2);
}

/// Two open incidents of one group cannot exist, even written behind the store's back.
#[test]
fn one_active_incident_per_group_is_enforced_by_the_schema() {
    let (_dir, path) = store_with_records(0);
    let c = Connection::open(&path).expect("raw open");
    let row = "INSERT INTO incidents (kind, group_key, state, max_severity, finding_count, \
               stored_findings, first_seen, last_seen, opened_at, updated_at, resolved_at, summary) \
               VALUES ('k', 'addr:1.2.3.4|k', ?1, 'low', 1, 1, 0, 0, 0, 0, ?2, '')";
    c.execute(row, rusqlite::params!["resolved", 1])
        .expect("a resolved one");
    c.execute(row, rusqlite::params!["open", None::<i64>])
        .expect("an open one");
    assert!(
        c.execute(row, rusqlite::params!["acknowledged", None::<i64>])
            .is_err(),
        "a second active incident of the group is refused"
    );
    assert!(
        c.execute(row, rusqlite::params!["resolved", None::<i64>])
            .is_err(),
        "a resolved incident without its time is refused"
    );
}

fn arb_entry() -> impl Strategy<Value = AuditEntry> {
    (
        0i64..4_000_000_000,
        "[a-z:/]{0,12}",
        "[a-z_]{1,10}",
        "\\PC{0,16}",
        "ok|refused|failed",
        "\\PC{0,24}",
        proptest::option::of(any::<i32>()),
    )
        .prop_map(|(at, actor, action, subject, outcome, reason, n)| {
            AuditEntry::new(
                OffsetDateTime::from_unix_timestamp(at).expect("in range"),
                actor,
                action,
                subject,
            )
            .outcome(outcome)
            .reason(reason)
            .detail(n.map_or(serde_json::Value::Null, |n| serde_json::json!({ "n": n })))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn appended_chains_always_verify(entries in proptest::collection::vec(arb_entry(), 0..20)) {
        let s = SqliteStore::open_in_memory().expect("store");
        for e in &entries {
            s.append(e).expect("append");
        }
        let rep = s.verify().expect("verifies");
        prop_assert_eq!(rep.records, entries.len() as u64);
    }

    #[test]
    fn any_single_byte_change_is_detected(
        entries in proptest::collection::vec(arb_entry(), 1..8),
        which in any::<prop::sample::Index>(),
        field in 0usize..10,
        pos in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let s = SqliteStore::open_in_memory().expect("store");
        for e in &entries {
            s.append(e).expect("append");
        }
        let mut recs = s.audit_records(1, 100).expect("records");
        let r = &mut recs[which.index(entries.len())];
        let changed = match field {
            0 => { let mut b = r.seq.to_be_bytes(); let i = pos.index(8); b[i] = b[i].wrapping_add(delta); r.seq = u64::from_be_bytes(b); true }
            1 => { let mut b = r.at.to_be_bytes(); let i = pos.index(8); b[i] = b[i].wrapping_add(delta); r.at = i64::from_be_bytes(b); true }
            _ => {
                let f = match field {
                    2 => &mut r.actor, 3 => &mut r.action, 4 => &mut r.subject,
                    5 => &mut r.outcome, 6 => &mut r.reason, 7 => &mut r.detail,
                    8 => &mut r.prev_hash, _ => &mut r.hash,
                };
                let mut bytes = f.clone().into_bytes();
                if bytes.is_empty() {
                    false
                } else {
                    let i = pos.index(bytes.len());
                    bytes[i] = bytes[i].wrapping_add(delta);
                    // A stored text field is UTF-8; a change that breaks it cannot be stored.
                    match String::from_utf8(bytes) { Ok(t) => { *f = t; true } Err(_) => false }
                }
            }
        };
        prop_assume!(changed);
        prop_assert!(audit::verify_records(&recs).is_err());
    }
}

/// One step of the grouping model: a finding of subject `subject` and kind `kind`, or the
/// resolution of the incident of a group.
#[derive(Debug, Clone)]
enum Step {
    Finding { subject: u8, kind: u8, severity: u8 },
    Resolve { subject: u8, kind: u8 },
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..3, 0u8..2, 0u8..5).prop_map(|(subject, kind, severity)| Step::Finding { subject, kind, severity }),
        1 => (0u8..3, 0u8..2).prop_map(|(subject, kind)| Step::Resolve { subject, kind }),
    ]
}

fn model_finding(subject: u8, kind: u8, severity: u8, i: usize) -> Finding {
    // Subjects 0 and 1 are devices; 2 is an address alone.
    let device = (subject < 2).then(|| {
        DeviceRef::new(
            tenant("acme"),
            DeviceId::new(format!("d{subject}")).expect("id"),
        )
    });
    Finding {
        at: std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(1_700_000_000 + i as u64),
        device,
        peer: Some("192.0.2.1".parse().expect("ip")),
        kind: format!("k{kind}"),
        severity: Severity::ALL[usize::from(severity)],
        confidence: 0.5,
        technique: None,
        summary: String::new(),
        evidence: Default::default(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Grouping against a naive model: each group has at most one active incident, which
    /// counts exactly the findings recorded since it opened, stores at most the bound and
    /// keeps the worst severity; a finding after resolution opens a new incident.
    #[test]
    fn grouping_matches_a_naive_model(steps in proptest::collection::vec(arb_step(), 1..40), bound in 0u32..4) {
        use std::collections::HashMap;
        let s = SqliteStore::open_in_memory().expect("store");
        // group -> (incident, count, worst severity)
        let mut active: HashMap<(u8, u8), (IncidentId, u32, Severity)> = HashMap::new();
        let mut incidents = 0usize;
        let mut resolves = 0usize;
        for (i, step) in steps.iter().enumerate() {
            match *step {
                Step::Finding { subject, kind, severity } => {
                    let f = model_finding(subject, kind, severity, i);
                    let r = s.record_findings(std::slice::from_ref(&f), t0(), bound).expect("record")[0];
                    let entry = active.entry((subject, kind));
                    match entry {
                        std::collections::hash_map::Entry::Occupied(mut o) => {
                            let (id, n, worst) = o.get_mut();
                            prop_assert!(!r.new_incident);
                            prop_assert_eq!(r.incident_id, *id);
                            *n += 1;
                            *worst = (*worst).max(f.severity);
                            prop_assert_eq!(r.findings_in_incident, *n);
                            prop_assert_eq!(r.finding_id.is_some(), *n <= bound);
                        }
                        std::collections::hash_map::Entry::Vacant(v) => {
                            prop_assert!(r.new_incident);
                            prop_assert_eq!(r.findings_in_incident, 1);
                            prop_assert_eq!(r.finding_id.is_some(), bound >= 1);
                            v.insert((r.incident_id, 1, f.severity));
                            incidents += 1;
                        }
                    }
                }
                Step::Resolve { subject, kind } => {
                    let Some((id, _, _)) = active.remove(&(subject, kind)) else { continue };
                    s.set_incident_state(id, IncidentState::Resolved, "operator:test", None, &entry("resolve", "x"))
                        .expect("resolve");
                    resolves += 1;
                }
            }
        }
        let listed = s.list_incidents(&IncidentFilter { limit: 1000, ..Default::default() }).expect("list");
        prop_assert_eq!(listed.len(), incidents);
        for (id, n, worst) in active.values() {
            let d = s.get_incident(*id).expect("read").expect("there");
            prop_assert_eq!(d.incident.finding_count, *n);
            prop_assert_eq!(d.incident.stored_findings, (*n).min(bound));
            prop_assert_eq!(d.findings.len() as u32, (*n).min(bound));
            prop_assert_eq!(d.incident.max_severity, *worst);
            prop_assert!(d.incident.state.is_active());
        }
        // One open_incident record per incident, one record per resolution; the chain holds.
        prop_assert_eq!(s.verify().expect("verify").records as usize, incidents + resolves);
    }
}
