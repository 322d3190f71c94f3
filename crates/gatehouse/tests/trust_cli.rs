//! The trust commands, run as the real binary against a registry in a temporary data
//! directory (no server): `device show` with the device's score, tier, factors and
//! verdict; `device pin` and `device unpin`; and `policy show|validate|set|reset|history`.
//! Every change must be audited, every refusal must change nothing, and the audit log must
//! still verify at the end.
//!
//! Devices are enrolled through the store API, as the enrollment service would.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use gatehouse_pki::ManufacturerCa;
use gatehouse_store::{
    Assurance, AuditEntry, CertSerial, ManufacturerId, ModelId, NewCertificate, NewDevice,
    Registry, SqliteStore,
};
use gatehouse_trust::policy::DEFAULT_POLICIES;
use gatehouse_trust::score::Pin;
use gatehouse_types::{DeviceRef, Tier};
use serde_json::Value;
use time::OffsetDateTime;

mod support;

use support::cli_env::{Env, audit_records};

fn actions(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| r["action"].as_str().map(str::to_owned))
        .collect()
}

/// An audit record's detail, which the log keeps as JSON text.
fn detail(record: &Value) -> Value {
    match &record["detail"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
        other => other.clone(),
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Enrolls a device with one certificate through the store, as the enrollment service does.
fn enroll(
    store: &SqliteStore,
    device: &str,
    serial: Option<&str>,
    cert_serial: &str,
) -> Result<()> {
    let d: DeviceRef = device.parse()?;
    let now = OffsetDateTime::now_utc();
    let nd = NewDevice {
        device: d.clone(),
        model: ModelId::new("pump-2")?,
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

/// A tenant, a manufacturer with its CA, a model with a profile (telemetry to publish,
/// commands to subscribe to), and two freshly enrolled devices: `acme/pump-a` with its
/// manufacturer certificate, `acme/tok-1` with a token.
fn set_up(env: &Env) -> Result<()> {
    env.ok(&["tenant", "add", "acme"])?;
    let ca = ManufacturerCa::new("Acme")?;
    let pem = env.write("acme-ca.pem", ca.cert_pem())?;
    env.ok(&["manufacturer", "add", "acme", "--ca", path(&pem)])?;
    let profile = env.write(
        "pump.toml",
        "manufacturer = \"acme\"\nmodel = \"pump-2\"\n\n[firmware]\ncurrent = \"1.2.0\"\n\
         supported = [\"1.1.0\", \"1.2.0\"]\n\n[[topics]]\n\
         pattern = \"devices/{device}/telemetry/#\"\ndirection = \"publish\"\n\
         kind = \"telemetry\"\nrate = \"10/s\"\nburst = 20\n\n[[topics]]\n\
         pattern = \"devices/{device}/commands/+\"\ndirection = \"subscribe\"\n\
         kind = \"command\"\n",
    )?;
    env.ok(&[
        "model",
        "add",
        "pump-2",
        "--manufacturer",
        "acme",
        "--profile",
        path(&profile),
    ])?;
    let store = SqliteStore::open(env.db())?;
    enroll(&store, "acme/pump-a", Some("SN0001"), "0a01")?;
    enroll(&store, "acme/tok-1", None, "0b01")?;
    Ok(())
}

/// The factor names of a `device show --json` trust object.
fn factor_names(show: &Value) -> Vec<String> {
    show["trust"]["assessment"]["factors"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .filter_map(|f| f["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn device_show_scores_a_fresh_device_on_what_is_known() -> Result<()> {
    let env = Env::new()?;
    set_up(&env)?;

    let j = env.json(&["device", "show", "acme/tok-1"])?;
    assert!(j["trust_error"].is_null(), "{j}");
    let trust = &j["trust"];
    let score = trust["assessment"]["score"].as_u64().context("a score")?;
    let tier = trust["assessment"]["tier"].as_str().context("a tier")?;
    assert!(
        score < 100,
        "a device that told nothing is not fully trusted: {j}"
    );
    assert_eq!(trust["facts"]["posture_reported"], false, "{j}");
    assert_eq!(trust["facts"]["identity"], "token", "{j}");
    let names = factor_names(&j);
    assert!(
        names.iter().any(|n| n == "posture never reported"),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "enrollment token"), "{names:?}");
    assert!(trust["assessment"]["pin"].is_null());
    // The verdict is the defaults' for that tier, and says why, naming the policies.
    assert_eq!(trust["verdict"]["tier"], tier, "{j}");
    let explanation: Vec<&str> = trust["verdict"]["explanation"]
        .as_array()
        .context("an explanation")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        explanation
            .first()
            .is_some_and(|l| l.starts_with(&format!("tier {tier}, score {score}"))),
        "{explanation:?}"
    );
    assert!(
        explanation.iter().any(|l| l.contains("`connect`")),
        "{explanation:?}"
    );
    // The device part is still there.
    assert_eq!(j["device"]["device"]["device"], "tok-1", "{j}");

    // The same, for people: score and tier, each factor with its evidence, the verdict.
    let show = env.ok(&["device", "show", "acme/tok-1"])?;
    assert!(show.contains("assurance      token"), "{show}");
    assert!(
        show.contains(&format!("score {score}/100, tier {tier}")),
        "{show}"
    );
    assert!(show.contains("posture never reported"), "{show}");
    assert!(
        show.contains("the device has never reported its posture; scored on what is known"),
        "{show}"
    );
    assert!(show.contains("enrollment token"), "{show}");
    assert!(show.contains("verdict        may connect"), "{show}");
    for line in &explanation {
        assert!(show.contains(line), "{line:?} missing from {show}");
    }
    assert!(!show.contains("pinned to"), "{show}");

    // A manufacturer-certified device scores higher than a token-enrolled one.
    let a = env.json(&["device", "show", "acme/pump-a"])?;
    let a_score = a["trust"]["assessment"]["score"]
        .as_u64()
        .context("score")?;
    assert!(a_score > score, "idevid {a_score} vs token {score}");
    let a_names = factor_names(&a);
    assert!(a_names.iter().any(|n| n == "posture never reported"));
    assert!(
        !a_names.iter().any(|n| n == "enrollment token"),
        "{a_names:?}"
    );

    // A revoked device is blocked whatever its score, and may not connect.
    env.ok(&["device", "revoke", "acme/pump-a"])?;
    let a = env.json(&["device", "show", "acme/pump-a"])?;
    assert_eq!(a["trust"]["assessment"]["tier"], "blocked", "{a}");
    assert_eq!(a["trust"]["verdict"]["connect"], false, "{a}");
    let show = env.ok(&["device", "show", "acme/pump-a"])?;
    assert!(show.contains("verdict        may not connect"), "{show}");

    // Showing changes nothing.
    let acts = actions(&audit_records(&env)?);
    assert_eq!(acts.last().map(String::as_str), Some("revoke"), "{acts:?}");
    env.ok(&["audit", "verify"])?;
    Ok(())
}

#[test]
fn pin_sets_the_tier_until_unpinned_and_both_are_audited() -> Result<()> {
    let env = Env::new()?;
    set_up(&env)?;
    let before = env.json(&["device", "show", "acme/pump-a"])?;
    let scored = before["trust"]["assessment"]["tier"]
        .as_str()
        .context("tier")?
        .to_owned();
    assert_ne!(
        scored, "quarantined",
        "the pin must change something: {before}"
    );
    let publish_before = before["trust"]["verdict"]["publish"]
        .as_array()
        .map(Vec::len);

    let out = env.ok(&[
        "device",
        "pin",
        "acme/pump-a",
        "--tier",
        "quarantined",
        "--for",
        "2h",
        "--reason",
        "port scan seen from it",
    ])?;
    assert!(
        out.contains("pinned acme/pump-a to quarantined until"),
        "{out}"
    );
    assert!(out.contains("port scan seen from it"), "{out}");
    assert!(
        out.contains(&format!("the score alone gives {scored}")),
        "{out}"
    );

    // Shown: the pinned tier, who, until when, why, and the tier the score gives.
    let show = env.ok(&["device", "show", "acme/pump-a"])?;
    assert!(show.contains("tier quarantined"), "{show}");
    assert!(
        show.contains("pinned to quarantined by operator:tester until"),
        "{show}"
    );
    assert!(
        show.contains(&format!(
            "port scan seen from it (the score alone gives {scored})"
        )),
        "{show}"
    );
    let j = env.json(&["device", "show", "acme/pump-a"])?;
    let a = &j["trust"]["assessment"];
    assert_eq!(a["tier"], "quarantined", "{j}");
    assert_eq!(a["scored_tier"], scored.as_str(), "{j}");
    assert_eq!(a["score"], before["trust"]["assessment"]["score"], "{j}");
    assert_eq!(a["pin"]["reason"], "port scan seen from it", "{j}");
    assert_eq!(a["pin"]["by"], "operator:tester", "{j}");
    // The verdict follows the pin: quarantined devices keep only reserved topics.
    assert_eq!(j["trust"]["verdict"]["tier"], "quarantined", "{j}");
    let publish = j["trust"]["verdict"]["publish"]
        .as_array()
        .context("publish")?;
    assert!(
        publish.iter().all(|t| t["kind"] == "reserved"),
        "{publish:?}"
    );
    assert!(Some(publish.len()) < publish_before, "{publish:?}");

    // Stored as the trust crate's Pin, expiring in two hours.
    let stored = SqliteStore::open(env.db())?
        .get_device_trust(&"acme/pump-a".parse()?)?
        .and_then(|t| t.pin)
        .context("a stored pin")?;
    let pin: Pin = serde_json::from_value(stored)?;
    assert_eq!(pin.tier, Tier::Quarantined);
    let left = pin.expires_at.duration_since(SystemTime::now())?;
    assert!(
        left > Duration::from_secs(7000) && left <= Duration::from_secs(7200),
        "{left:?}"
    );

    // Audited: action pin, the device as subject, the reason, the pin as detail.
    let records = audit_records(&env)?;
    let r = records
        .iter()
        .find(|r| r["action"] == "pin")
        .context("pin audited")?;
    assert_eq!(r["actor"], "operator:tester");
    assert_eq!(r["subject"], "acme/pump-a");
    assert_eq!(r["reason"], "port scan seen from it");
    let d = detail(r);
    assert_eq!(d["pin"]["tier"], "quarantined", "{r}");
    assert_eq!(d["pin"]["by"], "operator:tester", "{r}");
    assert_eq!(d["pin"]["reason"], "port scan seen from it", "{r}");

    // A device in the default tenant is named without its tenant; pins there too.
    let err = env.fails(&[
        "device", "pin", "tok-9", "--tier", "blocked", "--for", "1h", "--reason", "x",
    ])?;
    assert!(err.contains("device default/tok-9 not found"), "{err}");

    // Unpinned: the score sets the tier again, audited as unpin.
    let out = env.ok(&["device", "unpin", "acme/pump-a", "--why", "scan explained"])?;
    assert!(
        out.contains(&format!("unpinned acme/pump-a: tier {scored}")),
        "{out}"
    );
    let show = env.ok(&["device", "show", "acme/pump-a"])?;
    assert!(!show.contains("pinned to"), "{show}");
    let j = env.json(&["device", "show", "acme/pump-a"])?;
    assert_eq!(j["trust"]["assessment"]["tier"], scored.as_str(), "{j}");
    assert!(j["trust"]["assessment"]["pin"].is_null(), "{j}");
    assert!(
        SqliteStore::open(env.db())?
            .get_device_trust(&"acme/pump-a".parse()?)?
            .and_then(|t| t.pin)
            .is_none()
    );
    let records = audit_records(&env)?;
    let r = records.last().context("records")?;
    assert_eq!(r["action"], "unpin");
    assert_eq!(r["subject"], "acme/pump-a");
    assert_eq!(r["actor"], "operator:tester");
    assert_eq!(r["reason"], "scan explained");

    // Nothing left to unpin: refused, and nothing written.
    let n = records.len();
    let err = env.fails(&["device", "unpin", "acme/pump-a"])?;
    assert!(err.contains("device acme/pump-a is not pinned"), "{err}");
    assert_eq!(audit_records(&env)?.len(), n);
    env.ok(&["audit", "verify"])?;
    Ok(())
}

#[test]
fn bad_pin_inputs_get_one_line_errors_and_change_nothing() -> Result<()> {
    let env = Env::new()?;
    set_up(&env)?;
    let n = audit_records(&env)?.len();
    let pin = |tier: &str, for_: &str, reason: &str| -> Result<String> {
        env.fails(&[
            "device",
            "pin",
            "acme/tok-1",
            "--tier",
            tier,
            "--for",
            for_,
            "--reason",
            reason,
        ])
    };

    let err = pin("superb", "2h", "testing")?;
    assert!(err.contains("unknown tier \"superb\""), "{err}");
    assert!(err.contains("quarantined"), "{err}");
    let err = pin("blocked", "forever", "testing")?;
    assert!(err.contains("--for \"forever\""), "{err}");
    let err = pin("blocked", "2years", "testing")?;
    assert!(err.contains("at most 1 year"), "{err}");
    let err = pin("blocked", "10s", "testing")?;
    assert!(err.contains("at least 1 minute"), "{err}");
    let err = pin("blocked", "2h", "   ")?;
    assert!(err.contains("--reason"), "{err}");
    let err = pin("blocked", "2h", "line one\nline two")?;
    assert!(err.contains("--reason"), "{err}");
    let err = env.fails(&[
        "device",
        "pin",
        "acme/ghost",
        "--tier",
        "blocked",
        "--for",
        "2h",
        "--reason",
        "testing",
    ])?;
    assert!(err.contains("device acme/ghost not found"), "{err}");
    let err = env.fails(&["device", "unpin", "acme/ghost"])?;
    assert!(err.contains("device acme/ghost not found"), "{err}");
    let err = env.fails(&["device", "unpin", "acme/tok-1"])?;
    assert!(err.contains("is not pinned"), "{err}");
    let err = env.fails(&["device", "show", "acme/ghost"])?;
    assert!(err.contains("device acme/ghost not found"), "{err}");

    // None of it wrote anything.
    assert_eq!(audit_records(&env)?.len(), n);
    assert!(
        SqliteStore::open(env.db())?
            .get_device_trust(&"acme/tok-1".parse()?)?
            .and_then(|t| t.pin)
            .is_none()
    );
    let j = env.json(&["device", "show", "acme/tok-1"])?;
    assert!(j["trust"]["assessment"]["pin"].is_null(), "{j}");

    // A valid pin at the bounds is accepted (the refusals above were about the values).
    env.ok(&[
        "device",
        "pin",
        "acme/tok-1",
        "--tier",
        "Blocked",
        "--for",
        "1year",
        "--reason",
        "decommissioned",
    ])?;
    assert_eq!(audit_records(&env)?.len(), n + 1);
    env.ok(&["audit", "verify"])?;
    Ok(())
}

/// The defaults with one more rule: devices tagged `line-3` may not connect.
fn line_3_offline() -> String {
    format!(
        "{DEFAULT_POLICIES}\n@id(\"line-3-offline\")\nforbid (principal, action == \
         Action::\"connect\", resource)\nwhen {{ principal.tags.contains(\"line-3\") }};\n"
    )
}

#[test]
fn policy_sets_are_validated_stored_and_reset() -> Result<()> {
    let env = Env::new()?;
    set_up(&env)?;

    // Nothing stored: the shipped defaults, version 0.
    let show = env.json(&["policy", "show"])?;
    assert_eq!(show["version"], 0, "{show}");
    assert_eq!(show["defaults"], true, "{show}");
    assert_eq!(show["text"], DEFAULT_POLICIES);
    let ids = show["policies"].as_array().context("ids")?;
    assert!(ids.iter().any(|i| i == "connect"), "{show}");
    // The text alone on standard output, which set it is on standard error.
    let (text, about) = env.ok_split(&["policy", "show"])?;
    assert!(about.starts_with("policy set version 0"), "{about}");
    assert_eq!(text, DEFAULT_POLICIES);
    let (hist, note) = env.ok_split(&["policy", "history"])?;
    assert!(
        hist.is_empty() && note.contains("no policy set stored"),
        "{note}"
    );
    let audited = audit_records(&env)?.len();

    // An invalid set: an attribute the schema does not have, and a type error.
    let invalid = env.write(
        "invalid.cedar",
        "@id(\"by-colour\")\npermit (principal, action, resource)\n\
         when { principal.colour == \"red\" };\n\
         @id(\"score-text\")\nforbid (principal, action, resource)\n\
         when { principal.score == \"high\" };\n",
    )?;
    let err = env.refused(&["policy", "validate", path(&invalid)])?;
    assert!(err.contains("2 problem(s)"), "{err}");
    assert!(err.contains("colour"), "{err}");
    assert!(err.contains("not compatible"), "{err}");
    let out = env.run(&["policy", "validate", path(&invalid), "--json"])?;
    assert!(!out.status.success());
    let j: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(j["ok"], false, "{j}");
    assert_eq!(j["problems"].as_array().map(Vec::len), Some(2), "{j}");
    // A set that does not parse, and an empty one.
    let broken = env.write("broken.cedar", "permit (principal, action resource);\n")?;
    let err = env.refused(&["policy", "validate", path(&broken)])?;
    assert!(err.contains("broken.cedar"), "{err}");
    let empty = env.write("empty.cedar", "// nothing here\n")?;
    let err = env.refused(&["policy", "validate", path(&empty)])?;
    assert!(err.contains("no policy"), "{err}");
    let err = env.fails(&["policy", "validate", "missing.cedar"])?;
    assert!(err.contains("missing.cedar"), "{err}");

    // Refused sets are not stored.
    for file in [&invalid, &broken, &empty] {
        let err = env.refused(&["policy", "set", path(file)])?;
        assert!(err.contains("refused"), "{err}");
    }
    assert_eq!(env.json(&["policy", "show"])?["version"], 0);
    assert_eq!(audit_records(&env)?.len(), audited);
    assert!(
        env.ok_split(&["policy", "history"])?
            .1
            .contains("no policy set stored")
    );

    // A valid set: validated with its ids, stored as version 1, audited.
    let custom = env.write("line-3.cedar", &line_3_offline())?;
    let ok = env.ok(&["policy", "validate", path(&custom)])?;
    assert!(ok.starts_with("OK"), "{ok}");
    assert!(
        ok.contains("line-3-offline") && ok.contains("connect"),
        "{ok}"
    );
    assert_eq!(
        audit_records(&env)?.len(),
        audited,
        "validate stores nothing"
    );
    let set = env.json(&["policy", "set", path(&custom)])?;
    assert_eq!(set["version"], 1, "{set}");
    let show = env.json(&["policy", "show"])?;
    assert_eq!(show["version"], 1, "{show}");
    assert_eq!(show["defaults"], false, "{show}");
    assert_eq!(show["created_by"], "operator:tester", "{show}");
    assert_eq!(show["text"].as_str(), Some(line_3_offline().as_str()));
    let records = audit_records(&env)?;
    let r = records.last().context("records")?;
    assert_eq!(r["action"], "set_policy");
    assert_eq!(r["subject"], "policy-set");
    assert_eq!(r["actor"], "operator:tester");
    let d = detail(r);
    let policies = d["policies"].as_array().context("policies")?;
    assert!(policies.iter().any(|p| p == "line-3-offline"), "{r}");
    assert_eq!(policies.len(), ids.len() + 1, "{r}");
    let hist = env.ok(&["policy", "history"])?;
    let row = hist
        .lines()
        .find(|l| l.starts_with('1'))
        .context(format!("version 1 in {hist}"))?;
    assert!(
        row.contains("operator:tester") && row.contains("in force"),
        "{hist}"
    );

    // `device show` judges with the stored set: line-3 devices may not connect now.
    let j = env.json(&["device", "show", "acme/tok-1"])?;
    assert_eq!(j["trust"]["verdict"]["connect"], false, "{j}");
    let why = j["trust"]["verdict"]["explanation"].to_string();
    assert!(why.contains("line-3-offline"), "{why}");

    // Reset: the shipped defaults again, as version 2.
    let out = env.ok(&["policy", "reset"])?;
    assert!(out.contains("policy set version 2 stored"), "{out}");
    let show = env.json(&["policy", "show"])?;
    assert_eq!(show["version"], 2, "{show}");
    assert_eq!(show["defaults"], true, "{show}");
    assert_eq!(show["text"], DEFAULT_POLICIES);
    let hist = env.json(&["policy", "history"])?;
    let versions: Vec<u64> = hist
        .as_array()
        .context("versions")?
        .iter()
        .filter_map(|v| v["version"].as_u64())
        .collect();
    assert_eq!(versions, [2, 1]);
    assert_eq!(hist[0]["in_force"], true);
    assert_eq!(hist[0]["defaults"], true);
    assert_eq!(hist[1]["in_force"], false);
    let j = env.json(&["device", "show", "acme/tok-1"])?;
    assert_eq!(j["trust"]["verdict"]["connect"], true, "{j}");
    let records = audit_records(&env)?;
    let sets: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "set_policy")
        .collect();
    assert_eq!(sets.len(), 2);
    assert_eq!(detail(sets[1])["version"], 2, "{}", sets[1]);
    assert_eq!(records.len(), audited + 2);
    env.ok(&["audit", "verify"])?;
    Ok(())
}

#[test]
fn a_stored_set_this_build_refuses_is_reported_not_fatal() -> Result<()> {
    let env = Env::new()?;
    set_up(&env)?;
    // As if stored by an older build whose schema had a `colour` attribute: the store
    // itself does not validate.
    {
        let store = SqliteStore::open(env.db())?;
        let now = OffsetDateTime::now_utc();
        let text = "@id(\"red\")\npermit (principal, action, resource)\n\
                    when { principal.colour == \"red\" };\n";
        store.put_policy_set(
            text,
            "operator:old",
            &AuditEntry::new(now, "operator:old", "set_policy", "policy-set"),
        )?;
    }
    // `device show` still shows the device, with why its trust cannot be computed.
    let show = env.ok(&["device", "show", "acme/tok-1"])?;
    assert!(show.contains("device         acme/tok-1"), "{show}");
    let line = show
        .lines()
        .find(|l| l.starts_with("trust"))
        .context(format!("a trust line in {show}"))?;
    assert!(
        line.contains("unavailable") && line.contains("colour"),
        "{show}"
    );
    let j = env.json(&["device", "show", "acme/tok-1"])?;
    assert!(j["trust"].is_null(), "{j}");
    assert!(
        j["trust_error"]
            .as_str()
            .is_some_and(|e| e.contains("colour")),
        "{j}"
    );
    // `policy show` prints it, warning that it no longer validates.
    let (_, about) = env.ok_split(&["policy", "show"])?;
    assert!(about.starts_with("policy set version 1"), "{about}");
    assert!(about.contains("no longer validates"), "{about}");
    let j = env.json(&["policy", "show"])?;
    assert!(j["policies"].is_null(), "{j}");
    assert_eq!(j["problems"].as_array().map(Vec::len), Some(1), "{j}");
    assert!(env.ok(&["policy", "history"])?.contains("invalid"));
    // Reset repairs it.
    env.ok(&["policy", "reset"])?;
    let j = env.json(&["device", "show", "acme/tok-1"])?;
    assert!(j["trust_error"].is_null(), "{j}");
    assert!(j["trust"]["assessment"]["score"].is_u64(), "{j}");
    env.ok(&["audit", "verify"])?;
    Ok(())
}
