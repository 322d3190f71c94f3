//! The registry commands, run as the real binary against a registry in a temporary data
//! directory: tenants, manufacturers with real CA certificates, models, claims, tokens,
//! devices and their revocation, and the audit log that records all of it — and that
//! `audit verify` catches when it is tampered with.
//!
//! Devices are enrolled through the store API, as the enrollment service would.

use std::path::Path;

use anyhow::{Context, Result};
use gatehouse_pki::{IdevidParams, ManufacturerCa};
use gatehouse_store::{
    Assurance, AuditEntry, CertSerial, ManufacturerId, ModelId, NewCertificate, NewDevice,
    Registry, SqliteStore, TokenId, TokenSecret,
};
use gatehouse_types::DeviceRef;
use serde_json::Value;
use time::OffsetDateTime;

mod support;

use support::cli_env::{Env, audit_records};

fn find_action<'a>(records: &'a [Value], action: &str) -> Option<&'a Value> {
    records.iter().find(|r| r["action"] == action)
}

/// Enrolls a device with one certificate through the store, as the enrollment service does.
fn enroll(
    store: &SqliteStore,
    device: &str,
    model: &str,
    serial: Option<&str>,
    cert_serial: &str,
) -> Result<()> {
    let d: DeviceRef = device.parse()?;
    let now = OffsetDateTime::now_utc();
    let nd = NewDevice {
        device: d.clone(),
        model: ModelId::new(model)?,
        manufacturer: serial.map(|_| ManufacturerId::new("acme")).transpose()?,
        serial: serial.map(str::to_owned),
        assurance: if serial.is_some() {
            Assurance::Idevid
        } else {
            Assurance::Token
        },
        tags: vec!["line-3".to_owned()],
    };
    let cert = NewCertificate {
        serial: CertSerial::new(cert_serial)?,
        device: d.clone(),
        issuer: "gatehouse-issuing-1".to_owned(),
        not_before: now - time::Duration::minutes(1),
        not_after: now + time::Duration::days(30),
        pem: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".to_owned(),
    };
    let audit = AuditEntry::new(now, format!("device:{d}"), "enroll", d.to_string());
    store.enroll(&nd, &cert, &audit)?;
    Ok(())
}

/// Tenant, manufacturer with its CA, model with a profile and claims, as an owner sets up.
fn set_up_acme(env: &Env) -> Result<ManufacturerCa> {
    env.ok(&["tenant", "add", "acme", "--name", "Acme Water"])?;
    let ca = ManufacturerCa::new("Acme")?;
    let pem = env.write("acme-ca.pem", ca.cert_pem())?;
    env.ok(&[
        "manufacturer",
        "add",
        "acme",
        "--ca",
        path(&pem),
        "--name",
        "Acme Devices",
        "--model-from",
        "san-uri-prefix:urn:acme:model:",
        "--model-from",
        "extension:1.3.6.1.4.1.55555.1",
    ])?;
    let profile = env.write(
        "pump.toml",
        "manufacturer = \"acme\"\nmodel = \"pump-2\"\n\n[firmware]\ncurrent = \"1.2.0\"\n\
         supported = [\"1.1.0\", \"1.2.0\"]\n\n[[topics]]\n\
         pattern = \"devices/{device}/telemetry/#\"\ndirection = \"publish\"\n\
         kind = \"telemetry\"\n",
    )?;
    env.ok(&[
        "model",
        "add",
        "pump-2",
        "--manufacturer",
        "acme",
        "--name",
        "Pump 2",
        "--profile",
        path(&profile),
    ])?;
    Ok(ca)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

#[test]
fn registry_walk_from_tenant_to_batch_revocation_is_audited() -> Result<()> {
    let env = Env::new()?;
    let ca = set_up_acme(&env)?;

    // Tenants: a second add is refused clearly, or accepted with --exists-ok.
    let err = env.fails(&["tenant", "add", "acme"])?;
    assert!(err.contains("tenant acme already exists"), "{err}");
    env.ok(&["tenant", "add", "acme", "--exists-ok"])?;
    let list = env.ok(&["tenant", "list"])?;
    assert!(
        list.contains("acme") && list.contains("Acme Water"),
        "{list}"
    );

    // The manufacturer shows its CA as openssl would fingerprint it, and its rules.
    let show = env.ok(&["manufacturer", "show", "acme"])?;
    assert!(show.contains("CN=Acme IDevID CA"), "{show}");
    assert!(show.contains("1. san-uri-prefix:urn:acme:model:"), "{show}");
    assert!(show.contains("2. extension:1.3.6.1.4.1.55555.1"), "{show}");
    let m = env.json(&["manufacturer", "show", "acme"])?;
    let fp = m["cas"][0]["sha256"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(fp.len(), 95, "{m}");
    assert!(show.contains(&fp));
    // The stored rules read back with the PKI crate's parser.
    let stored = SqliteStore::open(env.db())?
        .get_manufacturer(&ManufacturerId::new("acme")?)?
        .context("stored")?;
    assert_eq!(
        gatehouse_pki::ModelRule::parse_list(&stored.model_mapping)
            .map_err(anyhow::Error::msg)?
            .len(),
        2
    );
    assert_eq!(
        gatehouse_pki::load_certs_pem(&stored.idevid_ca_pems[0])?[0].as_ref(),
        ca.cert_der().as_ref()
    );

    // A CA roll-over replaces the set.
    let next = ManufacturerCa::new("Acme")?;
    let both = env.write("both.pem", &format!("{}{}", ca.cert_pem(), next.cert_pem()))?;
    let rolled = env.ok(&["manufacturer", "set-ca", "acme", "--ca", path(&both)])?;
    assert!(rolled.contains("2 CA certificate(s), was 1"), "{rolled}");
    assert!(rolled.contains("added"), "{rolled}");

    let models = env.ok(&["model", "list"])?;
    assert!(
        models.contains("pump-2") && models.contains("Pump 2"),
        "{models}"
    );

    // Claims from a file: comments, blanks and a header are skipped.
    let claims = env.write(
        "serials.csv",
        "serial,model\n# production batch 7\nSN0001,pump-2\n\nSN0002\nSN0003\nSN0004\n",
    )?;
    let added = env.ok(&[
        "claim",
        "add",
        "--tenant",
        "acme",
        "--manufacturer",
        "acme",
        "--file",
        path(&claims),
    ])?;
    assert!(added.contains("claimed 4 new serial(s)"), "{added}");
    let again = env.json(&[
        "claim",
        "add",
        "--tenant",
        "acme",
        "--manufacturer",
        "acme",
        "--serial",
        "SN0001",
        "--serial",
        "SN0005",
    ])?;
    assert_eq!(again["new"], 1);
    assert_eq!(again["already_claimed"], 1);
    let claim = env.ok(&["claim", "show", "--manufacturer", "acme", "SN0001"])?;
    assert!(claim.contains("tenant          acme"), "{claim}");
    assert!(claim.contains("expected model  pump-2"), "{claim}");
    assert!(claim.contains("not enrolled yet"), "{claim}");

    // Devices enroll (through the store, as the enrollment service does).
    {
        let store = SqliteStore::open(env.db())?;
        enroll(&store, "acme/pump-a", "pump-2", Some("SN0001"), "0a01")?;
        enroll(&store, "acme/pump-b", "pump-2", Some("SN0002"), "0a02")?;
        enroll(&store, "acme/pump-c", "pump-2", Some("SN0003"), "0a03")?;
        enroll(&store, "acme/pump-d", "pump-2", Some("SN0004"), "0a04")?;
        enroll(&store, "acme/tok-1", "pump-2", None, "0b01")?;
    }
    let claim = env.ok(&["claim", "show", "--manufacturer", "acme", "SN0001"])?;
    assert!(claim.contains("acme/pump-a (pump-2, active)"), "{claim}");

    let list = env.ok(&["device", "list", "--tenant", "acme"])?;
    for d in ["acme/pump-a", "acme/pump-d", "acme/tok-1"] {
        assert!(list.contains(d), "{list}");
    }
    assert!(list.contains("idevid") && list.contains("token"), "{list}");
    // Paging: two, then the rest from the cursor.
    // The JSON is the page's array; where the next page starts is said on standard error.
    let (page, more) = env.ok_split(&["device", "list", "--limit", "2", "--json"])?;
    let page: Value = serde_json::from_str(&page)?;
    assert_eq!(page.as_array().map(Vec::len), Some(2), "{page}");
    let cursor = more
        .trim()
        .strip_prefix("more: --cursor ")
        .context(format!("a cursor in {more:?}"))?
        .to_owned();
    let (rest, more) = env.ok_split(&[
        "device", "list", "--limit", "10", "--cursor", &cursor, "--json",
    ])?;
    let rest: Value = serde_json::from_str(&rest)?;
    assert_eq!(rest.as_array().map(Vec::len), Some(3), "{rest}");
    assert!(more.trim().is_empty(), "{more}");

    let show = env.ok(&["device", "show", "acme/pump-a"])?;
    assert!(show.contains("serial         SN0001"), "{show}");
    assert!(show.contains("assurance      idevid"), "{show}");
    assert!(
        show.contains("0a01") && show.contains("gatehouse-issuing-1"),
        "{show}"
    );
    assert!(show.contains("valid"), "{show}");

    // One device, with the reason in the CRL and the why in the audit log.
    let revoked = env.ok(&[
        "device",
        "revoke",
        "acme/pump-a",
        "--reason",
        "key-compromise",
        "--why",
        "key found on a forum",
    ])?;
    assert!(revoked.contains("1 certificate(s) revoked"), "{revoked}");
    assert!(revoked.contains("0a01"), "{revoked}");
    let show = env.json(&["device", "show", "acme/pump-a"])?;
    assert_eq!(show["device"]["status"], "revoked");
    assert_eq!(show["certificates"][0]["status"], "revoked");
    assert_eq!(
        show["certificates"][0]["revocation_reason"],
        "key_compromise"
    );
    let err = env.fails(&["device", "revoke", "acme/pump-a"])?;
    assert!(err.contains("already revoked"), "{err}");
    let active = env.json(&["device", "list", "--status", "active"])?;
    assert_eq!(active.as_array().map(Vec::len), Some(4));

    // A batch: counted and refused without --yes, nothing changes.
    let batch = [
        "device",
        "revoke",
        "--manufacturer",
        "acme",
        "--serial-from",
        "SN0002",
        "--serial-to",
        "SN0003",
        "--reason",
        "key-compromise",
        "--why",
        "batch 7 keys leaked",
    ];
    let out = env.run(&batch)?;
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 device(s) would be revoked"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    let b = env.json(&["device", "show", "acme/pump-b"])?;
    assert_eq!(b["device"]["status"], "active");

    let mut yes = batch.to_vec();
    yes.push("--yes");
    let done = env.ok(&yes)?;
    assert!(done.contains("revoked 2 device(s)"), "{done}");
    assert!(done.contains("0a02") && done.contains("0a03"), "{done}");
    assert!(!done.contains("0a04"), "{done}");
    let d = env.json(&["device", "show", "acme/pump-d"])?;
    assert_eq!(d["device"]["status"], "active");

    // Every change is in the audit log, by this operator, with its why.
    let records = audit_records(&env)?;
    for action in [
        "create_tenant",
        "add_manufacturer",
        "set_manufacturer_cas",
        "add_model",
        "add_model_profile",
        "add_claims",
        "enroll",
    ] {
        assert!(find_action(&records, action).is_some(), "no {action}");
    }
    let r = find_action(&records, "revoke").context("revoke audited")?;
    assert_eq!(r["actor"], "operator:tester");
    assert_eq!(r["subject"], "acme/pump-a");
    assert_eq!(r["reason"], "key found on a forum");
    let r = find_action(&records, "revoke_batch").context("batch audited")?;
    assert_eq!(r["subject"], "acme");
    assert_eq!(r["reason"], "batch 7 keys leaked");
    let tail = env.ok(&["audit", "tail", "--limit", "3"])?;
    assert_eq!(tail.lines().count(), 4, "{tail}");
    assert!(tail.contains("revoke_batch"), "{tail}");

    let verified = env.ok(&["audit", "verify"])?;
    assert!(verified.contains("audit log intact"), "{verified}");
    let export = env.path("audit.jsonl");
    env.ok(&["audit", "export", "--out", path(&export)])?;
    let lines = std::fs::read_to_string(&export)?.lines().count();
    assert_eq!(lines, records.len());
    env.ok(&["audit", "verify", path(&export)])?;
    Ok(())
}

#[test]
fn token_secret_is_shown_once_and_never_listed() -> Result<()> {
    let env = Env::new()?;
    set_up_acme(&env)?;
    let created = env.ok(&[
        "token",
        "create",
        "--tenant",
        "acme",
        "--model",
        "pump-2",
        "--uses",
        "2",
        "--expires",
        "2h",
    ])?;
    assert!(created.contains("shown only this once"), "{created}");
    let field = |name: &str| {
        created
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .map(str::to_owned)
            .context(format!("no {name} line in {created}"))
    };
    let id = field("id:")?;
    let secret = field("secret:")?;
    assert_eq!(field("agent:")?, format!("{id}:{secret}"));
    assert_eq!(secret.len(), 64);

    for listing in [
        env.ok(&["token", "list", "--tenant", "acme"])?,
        env.ok(&["token", "list", "--tenant", "acme", "--json"])?,
    ] {
        assert!(listing.contains(&id), "{listing}");
        assert!(!listing.contains(&secret), "secret leaked: {listing}");
    }
    let audit = env.ok(&["audit", "export"])?;
    assert!(audit.contains("create_token"), "{audit}");
    assert!(!audit.contains(&secret), "secret in the audit log: {audit}");
    let list = env.ok(&["token", "list", "--tenant", "acme"])?;
    assert!(list.contains("0/2") && list.contains("active"), "{list}");

    // The secret printed is the one the store accepts.
    {
        let store = SqliteStore::open(env.db())?;
        let now = OffsetDateTime::now_utc();
        store.consume_token(
            &TokenId::new(id.as_str())?,
            &TokenSecret::from_client(secret.as_str()),
            now,
            &AuditEntry::new(now, "device:acme/t1", "enroll", "acme/t1"),
        )?;
    }
    let list = env.ok(&["token", "list", "--tenant", "acme"])?;
    assert!(list.contains("1/2"), "{list}");

    // JSON creation carries the agent form too.
    let j = env.json(&["token", "create", "--tenant", "acme", "--model", "pump-2"])?;
    let agent = j["agent_token"].as_str().unwrap_or_default();
    assert_eq!(
        agent,
        format!(
            "{}:{}",
            j["token"]["id"].as_str().unwrap_or_default(),
            j["secret"].as_str().unwrap_or_default()
        )
    );
    assert_eq!(j["token"]["max_uses"], 1);

    env.ok(&["token", "revoke", &id])?;
    let list = env.ok(&["token", "list", "--tenant", "acme"])?;
    assert!(list.contains("revoked"), "{list}");
    let err = env.fails(&["token", "revoke", &id])?;
    assert!(err.contains("already revoked"), "{err}");
    let records = audit_records(&env)?;
    let r = find_action(&records, "revoke_token").context("token revoke audited")?;
    assert_eq!(r["subject"], id);
    Ok(())
}

#[test]
fn edited_audit_record_fails_verify_naming_it() -> Result<()> {
    let env = Env::new()?;
    set_up_acme(&env)?;
    env.ok(&["audit", "verify"])?;
    let export = env.path("before.jsonl");
    env.ok(&["audit", "export", "--out", path(&export)])?;
    {
        // What someone with the file would do: drop the append-only trigger and edit.
        let db = rusqlite::Connection::open(env.db())?;
        db.execute_batch(
            "DROP TRIGGER audit_log_no_update;
             UPDATE audit_log SET actor = 'operator:nobody' WHERE seq = 2;",
        )?;
    }
    let err = env.fails(&["audit", "verify"])?;
    assert!(err.contains("record 2 was edited"), "{err}");
    // The export taken before still verifies.
    env.ok(&["audit", "verify", path(&export)])?;
    Ok(())
}

#[test]
fn records_removed_from_the_end_fail_verify_against_a_kept_head() -> Result<()> {
    let env = Env::new()?;
    set_up_acme(&env)?;
    let v = env.json(&["audit", "verify"])?;
    let head = v["head_hash"].as_str().context("head")?.to_owned();
    env.ok(&["audit", "verify", "--head", &head])?;
    {
        let db = rusqlite::Connection::open(env.db())?;
        db.execute_batch(
            "DROP TRIGGER audit_log_no_delete;
             DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log);",
        )?;
    }
    // The chain alone is still consistent; the kept head is not in it.
    env.ok(&["audit", "verify"])?;
    let err = env.fails(&["audit", "verify", "--head", &head])?;
    assert!(err.contains("removed from its end"), "{err}");
    Ok(())
}

#[test]
fn bad_inputs_get_one_line_errors_and_change_nothing() -> Result<()> {
    let env = Env::new()?;
    env.ok(&["tenant", "add", "acme"])?;
    let ca = ManufacturerCa::new("Acme")?;
    let good = env.write("ca.pem", ca.cert_pem())?;
    let leaf = ca.issue_idevid(&IdevidParams::new("SN1", "device"))?;
    let leaf = env.write("leaf.pem", &leaf.cert_pem)?;
    let garbage = env.write("garbage.pem", "this is not a certificate\n")?;
    let broken = env.write(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n",
    )?;

    let err = env.fails(&["manufacturer", "add", "acme", "--ca", path(&leaf)])?;
    assert!(err.contains("is not a CA certificate"), "{err}");
    let err = env.fails(&["manufacturer", "add", "acme", "--ca", path(&garbage)])?;
    assert!(err.contains("no certificate found"), "{err}");
    let err = env.fails(&["manufacturer", "add", "acme", "--ca", path(&broken)])?;
    assert!(err.contains("broken.pem"), "{err}");
    assert!(
        err.contains("not an X.509 certificate") || err.contains("malformed certificate"),
        "{err}"
    );
    let err = env.fails(&["manufacturer", "add", "acme", "--ca", "missing.pem"])?;
    assert!(err.contains("missing.pem"), "{err}");
    let err = env.fails(&[
        "manufacturer",
        "add",
        "acme",
        "--ca",
        path(&good),
        "--model-from",
        "serial-prefix:ACME",
    ])?;
    assert!(err.contains("unknown kind"), "{err}");
    let err = env.fails(&[
        "manufacturer",
        "add",
        "acme",
        "--ca",
        path(&good),
        "--model-from",
        "extension:not-an-oid",
    ])?;
    assert!(err.contains("not a dotted OID"), "{err}");
    let (rows, note) = env.ok_split(&["manufacturer", "list"])?;
    assert!(
        rows.is_empty() && note.contains("no manufacturers"),
        "{note}"
    );

    env.ok(&["manufacturer", "add", "acme", "--ca", path(&good)])?;
    let err = env.fails(&["manufacturer", "add", "acme", "--ca", path(&good)])?;
    assert!(err.contains("already exists"), "{err}");
    let err = env.fails(&["manufacturer", "set-ca", "acme", "--ca", path(&leaf)])?;
    assert!(err.contains("is not a CA certificate"), "{err}");
    let err = env.fails(&["manufacturer", "show", "nope"])?;
    assert!(err.contains("manufacturer nope not found"), "{err}");

    let bad_toml = env.write("bad.toml", "[topics\n")?;
    let err = env.fails(&[
        "model",
        "add",
        "m1",
        "--manufacturer",
        "acme",
        "--profile",
        path(&bad_toml),
    ])?;
    assert!(err.contains("line 1"), "{err}");
    // A profile that parses but says something impossible is refused too, naming the field.
    let bad_profile = env.write(
        "bad-profile.toml",
        "manufacturer = \"acme\"\nmodel = \"m1\"\n[firmware]\ncurrent = \"2.0.0\"\n\
         supported = [\"1.0.0\"]\n",
    )?;
    let err = env.fails(&[
        "model",
        "add",
        "m1",
        "--manufacturer",
        "acme",
        "--profile",
        path(&bad_profile),
    ])?;
    assert!(err.contains("firmware"), "{err}");
    let err = env.fails(&["model", "add", "m1", "--manufacturer", "nope"])?;
    assert!(err.contains("manufacturer nope not found"), "{err}");
    let (rows, note) = env.ok_split(&["model", "list"])?;
    assert!(rows.is_empty() && note.contains("no models"), "{note}");

    let err = env.fails(&[
        "claim",
        "add",
        "--tenant",
        "ghost",
        "--manufacturer",
        "acme",
        "--serial",
        "SN1",
    ])?;
    assert!(err.contains("tenant ghost not found"), "{err}");
    let claims = env.write("claims.csv", "SN1\nSN2,m1,extra\n")?;
    let err = env.fails(&[
        "claim",
        "add",
        "--tenant",
        "acme",
        "--manufacturer",
        "acme",
        "--file",
        path(&claims),
    ])?;
    assert!(err.contains("line 2"), "{err}");
    let claims = env.write("claims2.csv", "SN1,no-such-model\n")?;
    let err = env.fails(&[
        "claim",
        "add",
        "--tenant",
        "acme",
        "--manufacturer",
        "acme",
        "--file",
        path(&claims),
    ])?;
    assert!(err.contains("model no-such-model not found"), "{err}");
    let err = env.fails(&["claim", "show", "--manufacturer", "acme", "SN1"])?;
    assert!(err.contains("not claimed"), "{err}");

    let err = env.fails(&["token", "create", "--tenant", "ghost", "--model", "m1"])?;
    assert!(err.contains("tenant ghost not found"), "{err}");
    let err = env.fails(&["token", "create", "--tenant", "acme", "--model", "m1"])?;
    assert!(err.contains("model m1 not found"), "{err}");
    let err = env.fails(&["token", "list", "--tenant", "ghost"])?;
    assert!(err.contains("tenant ghost not found"), "{err}");

    let err = env.fails(&["device", "list", "--tenant", "ghost"])?;
    assert!(err.contains("tenant ghost not found"), "{err}");
    let err = env.fails(&["device", "list", "--cursor", "zz"])?;
    assert!(err.contains("invalid --cursor"), "{err}");
    let err = env.fails(&["device", "show", "acme/nope"])?;
    assert!(err.contains("device acme/nope not found"), "{err}");
    let err = env.fails(&["device", "revoke", "nope"])?;
    assert!(err.contains("device default/nope not found"), "{err}");
    let err = env.fails(&["device", "revoke", "--manufacturer", "acme"])?;
    assert!(err.contains("--reason"), "{err}");
    let err = env.fails(&[
        "device",
        "revoke",
        "--manufacturer",
        "acme",
        "--serial-from",
        "9",
        "--serial-to",
        "10",
        "--reason",
        "superseded",
        "--yes",
    ])?;
    assert!(err.contains("same length"), "{err}");

    // None of the refusals wrote anything: `init`'s default tenant, acme and one
    // manufacturer.
    let records = audit_records(&env)?;
    let actions: Vec<&str> = records
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["create_tenant", "create_tenant", "add_manufacturer"]
    );
    env.ok(&["audit", "verify"])?;
    Ok(())
}
