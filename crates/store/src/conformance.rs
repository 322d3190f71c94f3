//! Backend-independent test suites: every [`Registry`] backend runs each of these
//! (the SQLite backend in `tests/sqlite.rs`). `make` returns a fresh, empty store.
//! These functions panic on failure, like any test.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use gatehouse_types::{DeviceId, DeviceRef, Finding, Severity, TenantId};
use time::{Duration, OffsetDateTime};

use crate::*;

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
}

fn entry(action: &str, subject: &str) -> AuditEntry {
    AuditEntry::new(t0(), "operator:test", action, subject)
}

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn dref(t: &str, d: &str) -> DeviceRef {
    DeviceRef::new(tenant(t), DeviceId::new(d).unwrap())
}

fn mfr(s: &str) -> ManufacturerId {
    ManufacturerId::new(s).unwrap()
}

fn model(s: &str) -> ModelId {
    ModelId::new(s).unwrap()
}

/// Two tenants (`acme`, `globex`), manufacturer `maker` with model `pump`.
fn seed<S: Registry>(s: &S) {
    for t in ["acme", "globex"] {
        s.create_tenant(&tenant(t), t, &entry("tenant_create", t))
            .unwrap();
    }
    s.add_manufacturer(
        &NewManufacturer {
            id: mfr("maker"),
            display_name: "Maker Inc".into(),
            idevid_ca_pems: vec!["-----BEGIN CERTIFICATE-----\n...".into()],
            model_mapping: r#"{"san_oid":"1.2.3"}"#.into(),
        },
        &entry("manufacturer_add", "maker"),
    )
    .unwrap();
    s.add_model(
        &NewModel {
            id: model("pump"),
            manufacturer: mfr("maker"),
            display_name: "Pump".into(),
        },
        &entry("model_add", "pump"),
    )
    .unwrap();
}

fn new_device(t: &str, d: &str, serial: Option<&str>) -> NewDevice {
    NewDevice {
        device: dref(t, d),
        model: model("pump"),
        manufacturer: serial.map(|_| mfr("maker")),
        serial: serial.map(str::to_owned),
        assurance: if serial.is_some() {
            Assurance::Idevid
        } else {
            Assurance::Token
        },
        tags: vec!["line-1".into()],
    }
}

fn new_cert(serial: &str, d: &DeviceRef) -> NewCertificate {
    NewCertificate {
        serial: CertSerial::new(serial).unwrap(),
        device: d.clone(),
        issuer: "issuing-1".into(),
        not_before: t0(),
        not_after: t0() + Duration::days(30),
        pem: "-----BEGIN CERTIFICATE-----\nMII...".into(),
    }
}

fn audit_len<S: AuditLog>(s: &S) -> u64 {
    s.audit_head().unwrap().map_or(0, |h| h.0)
}

/// Tenants: create, get, list, duplicate.
pub fn tenants<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    assert!(s.get_tenant(&tenant("acme")).unwrap().is_none());
    let t = s
        .create_tenant(&tenant("acme"), "Acme", &entry("tenant_create", "acme"))
        .unwrap();
    assert_eq!(t.created_at, t0());
    assert_eq!(s.get_tenant(&tenant("acme")).unwrap(), Some(t.clone()));
    assert!(matches!(
        s.create_tenant(&tenant("acme"), "again", &entry("tenant_create", "acme")),
        Err(WriteError::AlreadyExists { .. })
    ));
    s.create_tenant(&tenant("beta"), "Beta", &entry("tenant_create", "beta"))
        .unwrap();
    let ids: Vec<_> = s
        .list_tenants()
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, vec![tenant("acme"), tenant("beta")]);
}

/// Manufacturers, models and versioned model profiles.
pub fn manufacturers_models_profiles<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    seed(&s);
    let m = s.get_manufacturer(&mfr("maker")).unwrap().unwrap();
    assert_eq!(m.idevid_ca_pems.len(), 1);
    assert_eq!(m.model_mapping, r#"{"san_oid":"1.2.3"}"#);
    let m2 = s
        .set_manufacturer_cas(
            &mfr("maker"),
            &["a".into(), "b".into()],
            &entry("ca", "maker"),
        )
        .unwrap();
    assert_eq!(m2.idevid_ca_pems, vec!["a".to_owned(), "b".to_owned()]);
    assert!(matches!(
        s.set_manufacturer_cas(&mfr("nobody"), &[], &entry("ca", "nobody")),
        Err(WriteError::NotFound { .. })
    ));
    assert_eq!(s.list_manufacturers().unwrap().len(), 1);
    assert!(matches!(
        s.add_model(
            &NewModel {
                id: model("x"),
                manufacturer: mfr("nobody"),
                display_name: "X".into()
            },
            &entry("model_add", "x")
        ),
        Err(WriteError::NotFound { .. })
    ));
    assert!(matches!(
        s.add_model(
            &NewModel {
                id: model("pump"),
                manufacturer: mfr("maker"),
                display_name: "dup".into()
            },
            &entry("model_add", "pump")
        ),
        Err(WriteError::AlreadyExists { .. })
    ));
    assert_eq!(
        s.get_model(&model("pump")).unwrap().unwrap().display_name,
        "Pump"
    );
    assert_eq!(s.list_models().unwrap().len(), 1);

    assert!(s.latest_model_profile(&model("pump")).unwrap().is_none());
    let p1 = s
        .add_model_profile(&model("pump"), "v = 1", &entry("profile", "pump"))
        .unwrap();
    let p2 = s
        .add_model_profile(&model("pump"), "v = 2", &entry("profile", "pump"))
        .unwrap();
    assert_eq!((p1.version, p2.version), (1, 2));
    assert_eq!(s.latest_model_profile(&model("pump")).unwrap(), Some(p2));
    assert_eq!(s.get_model_profile(&model("pump"), 1).unwrap(), Some(p1));
    assert!(s.get_model_profile(&model("pump"), 3).unwrap().is_none());
    assert!(matches!(
        s.add_model_profile(&model("nope"), "", &entry("profile", "nope")),
        Err(WriteError::NotFound { .. })
    ));
}

/// Claims: bulk insert, lookup, re-upload, conflicts roll back the whole batch.
pub fn claims<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    seed(&s);
    let batch: Vec<NewClaim> = (0..500)
        .map(|i| NewClaim {
            serial: format!("SN{i:05}"),
            expected_model: (i % 2 == 0).then(|| model("pump")),
        })
        .collect();
    let n = s
        .add_claims(
            &tenant("acme"),
            &mfr("maker"),
            &batch,
            &entry("claim", "acme"),
        )
        .unwrap();
    assert_eq!(n, 500);
    let c = s.find_claim(&mfr("maker"), "SN00002").unwrap().unwrap();
    assert_eq!(c.tenant, tenant("acme"));
    assert_eq!(c.expected_model, Some(model("pump")));
    assert!(s.find_claim(&mfr("maker"), "SN99999").unwrap().is_none());
    // Re-uploading overlapping serials adds only the new ones.
    let again = vec![
        NewClaim {
            serial: "SN00001".into(),
            expected_model: None,
        },
        NewClaim {
            serial: "SN10000".into(),
            expected_model: None,
        },
    ];
    assert_eq!(
        s.add_claims(
            &tenant("acme"),
            &mfr("maker"),
            &again,
            &entry("claim", "acme")
        )
        .unwrap(),
        1
    );
    // Another tenant claiming one of them: nothing of its batch is stored.
    let before = audit_len(&s);
    let theirs = vec![
        NewClaim {
            serial: "OTHER-1".into(),
            expected_model: None,
        },
        NewClaim {
            serial: "SN00003".into(),
            expected_model: None,
        },
    ];
    assert!(matches!(
        s.add_claims(
            &tenant("globex"),
            &mfr("maker"),
            &theirs,
            &entry("claim", "globex")
        ),
        Err(WriteError::AlreadyExists { .. })
    ));
    assert!(s.find_claim(&mfr("maker"), "OTHER-1").unwrap().is_none());
    assert_eq!(audit_len(&s), before);
    assert!(matches!(
        s.add_claims(&tenant("nobody"), &mfr("maker"), &[], &entry("claim", "x")),
        Err(WriteError::NotFound { .. })
    ));
}

/// Devices: create, typed errors, get, status, listing with filters and cursors.
pub fn devices<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    seed(&s);
    let d = s
        .create_device(
            &new_device("acme", "pump-1", Some("SN1")),
            &entry("device_create", "x"),
        )
        .unwrap();
    assert_eq!(d.status, DeviceStatus::Active);
    assert_eq!(d.assurance, Assurance::Idevid);
    assert_eq!(d.tags, vec!["line-1".to_owned()]);
    assert!(d.last_enrolled_at.is_none());
    assert!(matches!(
        s.create_device(
            &new_device("acme", "pump-1", None),
            &entry("device_create", "x")
        ),
        Err(WriteError::AlreadyExists { .. })
    ));
    assert!(matches!(
        s.create_device(&new_device("nobody", "pump-1", None), &entry("device_create", "x")),
        Err(WriteError::NotFound { what }) if what.contains("tenant")
    ));
    let mut bad_model = new_device("acme", "pump-9", None);
    bad_model.model = model("nope");
    assert!(matches!(
        s.create_device(&bad_model, &entry("device_create", "x")),
        Err(WriteError::NotFound { what }) if what.contains("model")
    ));
    // Same device id in another tenant is another device.
    s.create_device(
        &new_device("globex", "pump-1", None),
        &entry("device_create", "x"),
    )
    .unwrap();
    assert_eq!(s.get_device(&dref("acme", "pump-1")).unwrap(), Some(d));
    assert!(s.get_device(&dref("acme", "pump-404")).unwrap().is_none());
    let found = s
        .find_device_by_serial(&tenant("acme"), &mfr("maker"), "SN1")
        .unwrap()
        .unwrap();
    assert_eq!(found.device, dref("acme", "pump-1"));
    assert!(
        s.find_device_by_serial(&tenant("globex"), &mfr("maker"), "SN1")
            .unwrap()
            .is_none()
    );

    let b = s
        .set_device_status(
            &dref("acme", "pump-1"),
            DeviceStatus::Blocked,
            &entry("block", "x"),
        )
        .unwrap();
    assert_eq!(b.status, DeviceStatus::Blocked);
    assert!(matches!(
        s.set_device_status(
            &dref("acme", "ghost"),
            DeviceStatus::Active,
            &entry("x", "x")
        ),
        Err(WriteError::NotFound { .. })
    ));

    for i in 0..23 {
        s.create_device(
            &new_device("acme", &format!("d-{i:02}"), None),
            &entry("device_create", "x"),
        )
        .unwrap();
    }
    let filter = DeviceFilter {
        tenant: Some(tenant("acme")),
        status: Some(DeviceStatus::Active),
        model: Some(model("pump")),
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.list_devices(&filter, 10, cursor.as_ref()).unwrap();
        assert!(page.items.len() <= 10);
        seen.extend(page.items.into_iter().map(|d| d.device.device.to_string()));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let want: Vec<String> = (0..23).map(|i| format!("d-{i:02}")).collect();
    assert_eq!(seen, want, "active acme devices, in order, each once");
    let all = s
        .list_devices(&DeviceFilter::default(), 1000, None)
        .unwrap();
    assert_eq!(all.items.len(), 25);
    assert!(all.next.is_none());
    let blocked = DeviceFilter {
        status: Some(DeviceStatus::Blocked),
        ..DeviceFilter::default()
    };
    assert_eq!(s.list_devices(&blocked, 10, None).unwrap().items.len(), 1);
    assert!(matches!(
        s.list_devices(&filter, 10, Some(&Cursor::from_client("zz-not-a-cursor"))),
        Err(ReadError::BadCursor)
    ));
}

/// Enrollment, renewal, certificate listing, single revocation and CRL listing.
pub fn certificates<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    seed(&s);
    let d = dref("acme", "pump-1");
    let (dev, c1) = s
        .enroll(
            &new_device("acme", "pump-1", Some("SN1")),
            &new_cert("0a01", &d),
            &entry("enroll", "acme/pump-1"),
        )
        .unwrap();
    assert_eq!(dev.last_enrolled_at, Some(t0()));
    assert_eq!(c1.status, CertStatus::Valid);
    // A renewal.
    let mut renew = AuditEntry::new(
        t0() + Duration::days(20),
        "device:acme/pump-1",
        "renew",
        "x",
    );
    renew.reason = "two thirds of the lifetime".into();
    let mut nc = new_cert("0a02", &d);
    nc.not_before = t0() + Duration::days(20);
    nc.not_after = t0() + Duration::days(50);
    s.record_certificate(&nc, &renew).unwrap();
    assert_eq!(
        s.get_device(&d).unwrap().unwrap().last_enrolled_at,
        Some(t0() + Duration::days(20))
    );
    let serials: Vec<_> = s
        .list_certificates(&d)
        .unwrap()
        .into_iter()
        .map(|c| c.serial.to_string())
        .collect();
    assert_eq!(serials, vec!["0a01", "0a02"]);
    assert!(matches!(
        s.record_certificate(&new_cert("0a01", &d), &entry("renew", "x")),
        Err(WriteError::AlreadyExists { .. })
    ));
    assert!(matches!(
        s.record_certificate(
            &new_cert("0b01", &dref("acme", "ghost")),
            &entry("renew", "x")
        ),
        Err(WriteError::NotFound { .. })
    ));
    let mut backwards = new_cert("0c01", &d);
    backwards.not_after = backwards.not_before;
    assert!(matches!(
        s.record_certificate(&backwards, &entry("renew", "x")),
        Err(WriteError::Invalid { .. })
    ));
    // Enroll with a certificate for another device is refused.
    assert!(matches!(
        s.enroll(
            &new_device("acme", "pump-2", None),
            &new_cert("0d01", &d),
            &entry("enroll", "x")
        ),
        Err(WriteError::Invalid { .. })
    ));

    let serial = CertSerial::new("0a01").unwrap();
    let at = t0() + Duration::days(21);
    let r = s
        .revoke_certificate(
            &serial,
            RevocationReason::Superseded,
            at,
            &entry("revoke", "0a01"),
        )
        .unwrap();
    assert_eq!(r.status, CertStatus::Revoked);
    assert_eq!(r.revoked_at, Some(at));
    assert_eq!(r.revocation_reason, Some(RevocationReason::Superseded));
    assert!(matches!(
        s.revoke_certificate(
            &serial,
            RevocationReason::Superseded,
            at,
            &entry("revoke", "x")
        ),
        Err(WriteError::AlreadyRevoked { .. })
    ));
    assert!(matches!(
        s.revoke_certificate(
            &CertSerial::new("ffff").unwrap(),
            RevocationReason::Unspecified,
            at,
            &entry("revoke", "x")
        ),
        Err(WriteError::NotFound { .. })
    ));
    let crl = s.list_revoked(Some("issuing-1")).unwrap();
    assert_eq!(crl.len(), 1);
    assert_eq!(crl[0].reason.code(), 4);
    assert!(s.list_revoked(Some("other-ca")).unwrap().is_empty());

    // Revoking the device revokes what is left and refuses new certificates.
    let revoked = s
        .revoke_device(
            &d,
            RevocationReason::KeyCompromise,
            at,
            &entry("revoke", "acme/pump-1"),
        )
        .unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].serial.as_str(), "0a02");
    assert_eq!(
        s.get_device(&d).unwrap().unwrap().status,
        DeviceStatus::Revoked
    );
    assert!(matches!(
        s.record_certificate(&new_cert("0e01", &d), &entry("renew", "x")),
        Err(WriteError::DeviceNotActive { .. })
    ));
    assert_eq!(s.list_revoked(None).unwrap().len(), 2);
}

/// Batch revocation by manufacturer and by serial range, across tenants.
pub fn batch_revocation<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    seed(&s);
    s.add_manufacturer(
        &NewManufacturer {
            id: mfr("other"),
            display_name: "Other".into(),
            idevid_ca_pems: vec![],
            model_mapping: String::new(),
        },
        &entry("manufacturer_add", "other"),
    )
    .unwrap();
    for (i, t) in [
        (1, "acme"),
        (2, "acme"),
        (3, "globex"),
        (4, "globex"),
        (5, "acme"),
    ] {
        let d = dref(t, &format!("dev-{i}"));
        s.enroll(
            &new_device(t, &format!("dev-{i}"), Some(&format!("B{i:03}"))),
            &new_cert(&format!("c{i}"), &d),
            &entry("enroll", "x"),
        )
        .unwrap();
    }
    // A token device and another maker's device are never touched.
    let tok = dref("acme", "tok");
    s.enroll(
        &new_device("acme", "tok", None),
        &new_cert("cc", &tok),
        &entry("enroll", "x"),
    )
    .unwrap();
    let mut o = new_device("acme", "oth", Some("B002"));
    o.manufacturer = Some(mfr("other"));
    s.enroll(
        &o,
        &new_cert("dd", &dref("acme", "oth")),
        &entry("enroll", "x"),
    )
    .unwrap();

    let at = t0() + Duration::days(1);
    let range = BatchScope::SerialRange {
        manufacturer: mfr("maker"),
        first: "B002".into(),
        last: "B003".into(),
    };
    let r = s
        .revoke_batch(
            &range,
            RevocationReason::KeyCompromise,
            at,
            &entry("revoke_batch", "x"),
        )
        .unwrap();
    assert_eq!(
        r.devices,
        vec![dref("acme", "dev-2"), dref("globex", "dev-3")]
    );
    assert_eq!(r.certificates.len(), 2);
    let all = BatchScope::Manufacturer(mfr("maker"));
    let r2 = s
        .revoke_batch(
            &all,
            RevocationReason::CaCompromise,
            at,
            &entry("revoke_batch", "x"),
        )
        .unwrap();
    assert_eq!(r2.devices.len(), 3, "only those not revoked already");
    assert_eq!(
        s.get_device(&tok).unwrap().unwrap().status,
        DeviceStatus::Active
    );
    assert_eq!(
        s.get_device(&dref("acme", "oth")).unwrap().unwrap().status,
        DeviceStatus::Active
    );
    assert_eq!(s.list_revoked(None).unwrap().len(), 5);
    let backwards = BatchScope::SerialRange {
        manufacturer: mfr("maker"),
        first: "B9".into(),
        last: "B1".into(),
    };
    assert!(matches!(
        s.revoke_batch(
            &backwards,
            RevocationReason::Unspecified,
            at,
            &entry("x", "x")
        ),
        Err(WriteError::Invalid { .. })
    ));
    assert!(matches!(
        s.revoke_batch(
            &BatchScope::Manufacturer(mfr("ghost")),
            RevocationReason::Unspecified,
            at,
            &entry("x", "x")
        ),
        Err(WriteError::NotFound { .. })
    ));
}

/// Enrollment tokens: hashed secret shown once, every refusal variant, use counting.
pub fn tokens<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    seed(&s);
    let nt = |max_uses| NewToken {
        tenant: tenant("acme"),
        model: model("pump"),
        max_uses,
        expires_at: t0() + Duration::hours(1),
        created_by: "operator:alice".into(),
    };
    let (rec, secret) = s.create_token(&nt(2), &entry("token_create", "x")).unwrap();
    assert_eq!(format!("{secret:?}"), "<redacted>");
    assert!(secret.expose().len() >= 43, "256 bits of secret");
    assert_eq!((rec.uses, rec.max_uses, rec.revoked), (0, 2, false));
    assert_eq!(s.get_token(&rec.id).unwrap(), Some(rec.clone()));
    let (head, _) = s.audit_head().unwrap().unwrap();
    let created = s.audit_records(head, 1).unwrap();
    let detail: serde_json::Value = serde_json::from_str(&created[0].detail).unwrap();
    assert_eq!(
        detail["token"],
        serde_json::json!(rec.id.as_str()),
        "the creation record names the new token"
    );
    let use_ = entry("token_use", rec.id.as_str());
    let now = t0() + Duration::minutes(1);

    let unknown = TokenId::new("tk-unknown").unwrap();
    assert!(matches!(
        s.consume_token(&unknown, &secret, now, &use_),
        Err(TokenError::Unknown)
    ));
    let wrong = TokenSecret::from_client("not-the-secret");
    assert!(matches!(
        s.consume_token(&rec.id, &wrong, now, &use_),
        Err(TokenError::BadSecret)
    ));
    assert!(matches!(
        s.consume_token(&rec.id, &secret, t0() + Duration::hours(1), &use_),
        Err(TokenError::Expired)
    ));
    assert_eq!(
        s.consume_token(&rec.id, &secret, now, &use_).unwrap().uses,
        1
    );
    assert_eq!(
        s.consume_token(&rec.id, &secret, now, &use_).unwrap().uses,
        2
    );
    assert!(matches!(
        s.consume_token(&rec.id, &secret, now, &use_),
        Err(TokenError::Exhausted)
    ));
    let (r2, s2) = s.create_token(&nt(1), &entry("token_create", "x")).unwrap();
    assert_ne!(r2.id, rec.id);
    assert_ne!(s2, secret);
    assert!(
        s.revoke_token(&r2.id, &entry("token_revoke", "x"))
            .unwrap()
            .revoked
    );
    assert!(matches!(
        s.consume_token(&r2.id, &s2, now, &use_),
        Err(TokenError::Revoked)
    ));
    assert!(matches!(
        s.revoke_token(&unknown, &entry("token_revoke", "x")),
        Err(WriteError::NotFound { .. })
    ));
    assert!(matches!(
        s.create_token(&nt(0), &entry("token_create", "x")),
        Err(WriteError::Invalid { .. })
    ));
    let mut other = nt(1);
    other.model = model("nope");
    assert!(matches!(
        s.create_token(&other, &entry("token_create", "x")),
        Err(WriteError::NotFound { .. })
    ));
    assert_eq!(s.list_tokens(&tenant("acme")).unwrap().len(), 2);
    assert!(s.list_tokens(&tenant("globex")).unwrap().is_empty());
}

/// A single-use token consumed from many threads at once succeeds exactly once.
pub fn reused_single_use_token_is_refused<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    seed(&s);
    let (rec, secret) = s
        .create_token(
            &NewToken {
                tenant: tenant("acme"),
                model: model("pump"),
                max_uses: 1,
                expires_at: t0() + Duration::hours(1),
                created_by: "operator:alice".into(),
            },
            &entry("token_create", "x"),
        )
        .unwrap();
    let now = t0() + Duration::minutes(1);
    let results: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|_| sc.spawn(|| s.consume_token(&rec.id, &secret, now, &entry("token_use", "x"))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, TokenError::Exhausted))
    );
    assert_eq!(s.get_token(&rec.id).unwrap().unwrap().uses, 1);
}

/// Every successful change adds exactly one audit record; a refused one adds none; the
/// chain verifies and exports.
pub fn changes_are_audited<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    assert_eq!(s.verify().unwrap().head_seq, 0);
    seed(&s);
    assert_eq!(audit_len(&s), 4);
    let _ = s.create_tenant(&tenant("acme"), "dup", &entry("tenant_create", "acme"));
    assert_eq!(audit_len(&s), 4, "a refused change writes no audit record");
    let refusal = AuditEntry::new(t0(), "device:acme/x", "refuse_enrollment", "maker/SN9")
        .outcome("refused")
        .reason("unclaimed serial")
        .detail(serde_json::json!({"manufacturer": "maker", "serial": "SN9"}));
    let rec = s.append(&refusal).unwrap();
    assert_eq!(rec.seq, 5);
    assert_eq!(rec.outcome, "refused");
    let recs = s.audit_records(1, 100).unwrap();
    assert_eq!(recs.len(), 5);
    assert_eq!(recs[0].action, "tenant_create");
    assert_eq!(recs[4], rec);
    assert_eq!(s.audit_records(5, 1).unwrap(), vec![rec.clone()]);
    let report = s.verify().unwrap();
    assert_eq!((report.records, report.head_seq), (5, 5));
    assert_eq!(report.head_hash, rec.hash);
    let mut out = Vec::new();
    assert_eq!(s.export_jsonl(&mut out).unwrap(), 5);
    assert_eq!(audit::verify_jsonl(&out[..]).unwrap(), report);
}

/// Token enrollment in one transaction: the use, the device and its certificate together,
/// or nothing.
pub fn token_enrollment_is_one_transaction<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    seed(&s);
    let (rec, secret) = s
        .create_token(
            &NewToken {
                tenant: tenant("acme"),
                model: model("pump"),
                max_uses: 2,
                expires_at: t0() + Duration::hours(1),
                created_by: "operator:alice".into(),
            },
            &entry("create_token", "acme"),
        )
        .unwrap();
    let now = t0() + Duration::minutes(1);
    let d1 = dref("acme", "t-1");
    let ok = s
        .enroll_with_token(
            &rec.id,
            &secret,
            now,
            &new_device("acme", "t-1", None),
            &new_cert("a1", &d1),
            &entry("use_token", rec.id.as_str()),
            &entry("enroll", "acme/t-1"),
        )
        .unwrap();
    assert_eq!((ok.0.device.clone(), ok.2.uses), (d1.clone(), 1));
    assert_eq!(s.list_certificates(&d1).unwrap().len(), 1);
    let before = audit_len(&s);

    // Refusals leave everything as it was: a wrong secret, an existing device, another
    // tenant's device, another model.
    let wrong = TokenSecret::from_client("not-the-secret");
    let attempts: Vec<(&TokenSecret, NewDevice, &str)> = vec![
        (&wrong, new_device("acme", "t-2", None), "a2"),
        (&secret, new_device("acme", "t-1", None), "a3"),
        (&secret, new_device("globex", "t-4", None), "a4"),
        (
            &secret,
            NewDevice {
                model: model("other"),
                ..new_device("acme", "t-5", None)
            },
            "a5",
        ),
    ];
    for (secret, device, serial) in attempts {
        let cert = new_cert(serial, &device.device);
        let r = s.enroll_with_token(
            &rec.id,
            secret,
            now,
            &device,
            &cert,
            &entry("use_token", rec.id.as_str()),
            &entry("enroll", "x"),
        );
        assert!(r.is_err(), "{device:?} must be refused");
        assert!(s.get_certificate(&cert.serial).unwrap().is_none());
    }
    assert!(s.get_device(&dref("acme", "t-2")).unwrap().is_none());
    assert!(s.get_device(&dref("globex", "t-4")).unwrap().is_none());
    assert_eq!(s.get_token(&rec.id).unwrap().unwrap().uses, 1);
    assert_eq!(
        audit_len(&s),
        before,
        "a refusal writes no audit record here"
    );
}

/// The last audit record, which must exist.
fn last_record<S: AuditLog>(s: &S) -> AuditRecord {
    let (head, _) = s.audit_head().unwrap().unwrap();
    s.audit_records(head, 1).unwrap().pop().unwrap()
}

/// Devices' trust state: facts, pins and assessments round-trip, upserts keep the other
/// documents, audit records are written exactly when asked for, unknown devices and
/// oversize documents are refused with nothing written, listing filters by tenant.
pub fn device_trust<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    seed(&s);
    let d1 = dref("acme", "pump-1");
    let d2 = dref("acme", "pump-2");
    let g1 = dref("globex", "pump-1");
    for d in [&d1, &d2, &g1] {
        s.create_device(
            &new_device(d.tenant.as_str(), d.device.as_str(), None),
            &entry("device_create", "x"),
        )
        .unwrap();
    }
    assert!(s.get_device_trust(&d1).unwrap().is_none());
    assert!(s.list_device_trust(None).unwrap().is_empty());

    // Facts round-trip; the time is stored as whole seconds.
    let facts = serde_json::json!({
        "firmware": {"version": "1.2.3", "signed": true},
        "services": ["mqtt", "ssh"],
        "key_bits": 2048,
        "posture": null,
    });
    let before = audit_len(&s);
    let at = t0() + Duration::milliseconds(1500);
    let t = s
        .put_device_facts(
            &d1,
            &facts,
            at,
            Some(&entry("facts", "acme/pump-1").detail(serde_json::json!({"source": "scan"}))),
        )
        .unwrap();
    assert_eq!(t.device, d1);
    assert_eq!(t.facts, facts);
    assert_eq!(t.facts_updated_at, t0() + Duration::seconds(1));
    assert_eq!(
        (t.pin.clone(), t.assessment.clone(), t.assessed_at),
        (None, None, None)
    );
    assert_eq!(s.get_device_trust(&d1).unwrap(), Some(t.clone()));
    assert_eq!(
        audit_len(&s),
        before + 1,
        "facts with an audit entry are audited"
    );
    let rec = last_record(&s);
    assert_eq!(
        (rec.action.as_str(), rec.subject.as_str()),
        ("facts", "acme/pump-1")
    );

    // Facts without an audit entry write no audit record.
    let quiet = serde_json::json!({"key_bits": 4096});
    let t = s
        .put_device_facts(&d1, &quiet, t0() + Duration::seconds(5), None)
        .unwrap();
    assert_eq!(t.facts, quiet, "an upsert replaces the facts");
    assert_eq!(t.facts_updated_at, t0() + Duration::seconds(5));
    assert_eq!(audit_len(&s), before + 1);

    // A pin is set (audited), kept by a facts upsert, and cleared (audited).
    let pin = serde_json::json!({
        "tier": "quarantine",
        "expires_at": 1_700_086_400,
        "reason": "suspicious traffic",
        "by": "operator:alice",
    });
    let before = audit_len(&s);
    let t = s
        .set_device_pin(&d1, Some(&pin), &entry("pin", "acme/pump-1"))
        .unwrap();
    assert_eq!(t.pin.as_ref(), Some(&pin));
    assert_eq!(t.facts, quiet, "a pin keeps the facts");
    assert_eq!(audit_len(&s), before + 1, "setting a pin is audited");
    assert_eq!(last_record(&s).action, "pin");
    let newer = serde_json::json!({"key_bits": 3072, "services": []});
    let t = s
        .put_device_facts(&d1, &newer, t0() + Duration::seconds(9), None)
        .unwrap();
    assert_eq!(t.facts, newer);
    assert_eq!(t.pin.as_ref(), Some(&pin), "a facts upsert keeps the pin");
    assert_eq!(
        s.get_device_trust(&d1).unwrap().unwrap().pin,
        Some(pin.clone())
    );
    let t = s
        .set_device_pin(&d1, None, &entry("unpin", "acme/pump-1"))
        .unwrap();
    assert!(t.pin.is_none());
    assert_eq!(t.facts, newer, "clearing a pin keeps the facts");
    assert_eq!(audit_len(&s), before + 2, "clearing a pin is audited");
    assert_eq!(last_record(&s).action, "unpin");
    assert!(s.get_device_trust(&d1).unwrap().unwrap().pin.is_none());

    // A pin on a device with no trust state yet starts it with facts `{}`.
    let pin_at = t0() + Duration::minutes(3);
    let t = s
        .set_device_pin(
            &d2,
            Some(&pin),
            &AuditEntry::new(pin_at, "operator:bob", "pin", "acme/pump-2"),
        )
        .unwrap();
    assert_eq!(t.facts, serde_json::json!({}));
    assert_eq!(t.facts_updated_at, pin_at);
    assert_eq!(t.pin, Some(pin.clone()));

    // Assessments: recorded with or without an audit record; only the latest is kept; the
    // facts and the pin stay.
    let a1 = serde_json::json!({"score": 72, "tier": "standard", "factors": [{"name": "key", "weight": -8}]});
    let before = audit_len(&s);
    s.record_assessment(&d2, &a1, t0() + Duration::minutes(4), None)
        .unwrap();
    assert_eq!(
        audit_len(&s),
        before,
        "an assessment without an entry is not audited"
    );
    let t = s.get_device_trust(&d2).unwrap().unwrap();
    assert_eq!(t.assessment, Some(a1.clone()));
    assert_eq!(t.assessed_at, Some(t0() + Duration::minutes(4)));
    assert_eq!(t.pin, Some(pin.clone()), "an assessment keeps the pin");
    assert_eq!(t.facts, serde_json::json!({}));
    let a2 = serde_json::json!({"score": 31, "tier": "restricted", "factors": []});
    s.record_assessment(
        &d2,
        &a2,
        t0() + Duration::minutes(5),
        Some(&entry("tier_change", "acme/pump-2")),
    )
    .unwrap();
    assert_eq!(
        audit_len(&s),
        before + 1,
        "an assessment with an entry is audited"
    );
    assert_eq!(last_record(&s).action, "tier_change");
    let t = s.get_device_trust(&d2).unwrap().unwrap();
    assert_eq!(
        t.assessment,
        Some(a2.clone()),
        "the latest assessment replaces the last"
    );
    assert_eq!(t.assessed_at, Some(t0() + Duration::minutes(5)));
    let t = s
        .put_device_facts(&d2, &facts, t0() + Duration::minutes(6), None)
        .unwrap();
    assert_eq!(
        t.assessment,
        Some(a2.clone()),
        "a facts upsert keeps the assessment"
    );
    assert_eq!(t.pin, Some(pin.clone()));
    // An assessment on a device with no trust state yet starts it with facts `{}`.
    s.record_assessment(&g1, &a1, t0() + Duration::minutes(7), None)
        .unwrap();
    let t = s.get_device_trust(&g1).unwrap().unwrap();
    assert_eq!(t.facts, serde_json::json!({}));
    assert_eq!(t.facts_updated_at, t0() + Duration::minutes(7));
    assert_eq!(t.assessment, Some(a1.clone()));
    assert!(t.pin.is_none());

    // Listing: ordered by (tenant, device), filtered by tenant.
    let all: Vec<DeviceRef> = s
        .list_device_trust(None)
        .unwrap()
        .into_iter()
        .map(|t| t.device)
        .collect();
    assert_eq!(all, vec![d1.clone(), d2.clone(), g1.clone()]);
    let acme = s.list_device_trust(Some(&tenant("acme"))).unwrap();
    assert_eq!(
        acme.iter().map(|t| t.device.clone()).collect::<Vec<_>>(),
        vec![d1.clone(), d2.clone()]
    );
    assert_eq!(acme[1], s.get_device_trust(&d2).unwrap().unwrap());
    let globex = s.list_device_trust(Some(&tenant("globex"))).unwrap();
    assert_eq!(globex.len(), 1);
    assert_eq!(globex[0].device, g1);
    assert!(
        s.list_device_trust(Some(&tenant("nobody")))
            .unwrap()
            .is_empty()
    );

    // Writes for a device that does not exist (here or only in another tenant) are
    // refused and write nothing, not even their audit record.
    let before = audit_len(&s);
    for ghost in [dref("acme", "ghost"), dref("globex", "pump-2")] {
        assert!(matches!(
            s.put_device_facts(&ghost, &facts, t0(), Some(&entry("facts", "x"))),
            Err(WriteError::NotFound { .. })
        ));
        assert!(matches!(
            s.put_device_facts(&ghost, &facts, t0(), None),
            Err(WriteError::NotFound { .. })
        ));
        assert!(matches!(
            s.set_device_pin(&ghost, Some(&pin), &entry("pin", "x")),
            Err(WriteError::NotFound { .. })
        ));
        assert!(matches!(
            s.set_device_pin(&ghost, None, &entry("unpin", "x")),
            Err(WriteError::NotFound { .. })
        ));
        assert!(matches!(
            s.record_assessment(&ghost, &a1, t0(), Some(&entry("tier_change", "x"))),
            Err(WriteError::NotFound { .. })
        ));
        assert!(s.get_device_trust(&ghost).unwrap().is_none());
    }
    assert_eq!(
        audit_len(&s),
        before,
        "a refused trust write writes no audit record"
    );
    assert_eq!(s.list_device_trust(None).unwrap().len(), 3);
}

/// Oversize trust documents and policy texts are refused with `Invalid`, and nothing of
/// them is written; documents at the limit are accepted.
pub fn oversize_trust_documents_are_refused<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    seed(&s);
    let d = dref("acme", "pump-1");
    s.create_device(
        &new_device("acme", "pump-1", None),
        &entry("device_create", "x"),
    )
    .unwrap();
    let max = DeviceTrust::MAX_DOCUMENT_BYTES;
    // A JSON string of n characters is n + 2 bytes of JSON.
    let at_limit = serde_json::Value::from("x".repeat(max - 2));
    let over = serde_json::Value::from("x".repeat(max - 1));
    let big_object = serde_json::json!({"services": vec!["telnet"; max / 8]});
    let before = audit_len(&s);
    for doc in [&over, &big_object] {
        assert!(matches!(
            s.put_device_facts(&d, doc, t0(), Some(&entry("facts", "x"))),
            Err(WriteError::Invalid { what }) if what.contains("facts")
        ));
        assert!(matches!(
            s.set_device_pin(&d, Some(doc), &entry("pin", "x")),
            Err(WriteError::Invalid { what }) if what.contains("pin")
        ));
        assert!(matches!(
            s.record_assessment(&d, doc, t0(), Some(&entry("tier_change", "x"))),
            Err(WriteError::Invalid { what }) if what.contains("assessment")
        ));
    }
    assert!(s.get_device_trust(&d).unwrap().is_none());
    assert_eq!(
        audit_len(&s),
        before,
        "a refused document writes no audit record"
    );
    let t = s.put_device_facts(&d, &at_limit, t0(), None).unwrap();
    assert_eq!(t.facts, at_limit);
    let t = s
        .set_device_pin(&d, Some(&at_limit), &entry("pin", "x"))
        .unwrap();
    assert_eq!(t.pin.as_ref(), Some(&at_limit));
    s.record_assessment(&d, &at_limit, t0(), None).unwrap();
    assert_eq!(
        s.get_device_trust(&d).unwrap().unwrap().assessment,
        Some(at_limit.clone())
    );
    // A refused document leaves the stored one as it was.
    assert!(s.put_device_facts(&d, &over, t0(), None).is_err());
    assert_eq!(s.get_device_trust(&d).unwrap().unwrap().facts, at_limit);

    let max = PolicySetRecord::MAX_TEXT_BYTES;
    let before = audit_len(&s);
    assert!(matches!(
        s.put_policy_set(&"p".repeat(max + 1), "operator:alice", &entry("policy_set", "x")),
        Err(WriteError::Invalid { what }) if what.contains("policy")
    ));
    assert!(s.current_policy_set().unwrap().is_none());
    assert_eq!(audit_len(&s), before);
    let p = s
        .put_policy_set(
            &"p".repeat(max),
            "operator:alice",
            &entry("policy_set", "x"),
        )
        .unwrap();
    assert_eq!((p.version, p.text.len()), (1, max));
}

/// A batch of assessments is one transaction: all recorded with their audit records, or,
/// when one device is unknown, none of them.
pub fn assessment_batches_are_all_or_nothing<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    seed(&s);
    let d1 = dref("acme", "pump-1");
    let d2 = dref("acme", "pump-2");
    for d in [&d1, &d2] {
        s.create_device(
            &new_device(d.tenant.as_str(), d.device.as_str(), None),
            &entry("device_create", "x"),
        )
        .unwrap();
    }
    let record = |d: &DeviceRef, tier: &str, audited: bool| AssessmentRecord {
        device: d.clone(),
        assessment: serde_json::json!({ "tier": tier }),
        audit: audited.then(|| entry("verdict", &d.to_string())),
    };
    let before = audit_len(&s);
    s.record_assessments(
        &[
            record(&d1, "trusted", true),
            record(&d2, "restricted", false),
        ],
        t0(),
    )
    .unwrap();
    assert_eq!(audit_len(&s), before + 1);
    let a1 = s.get_device_trust(&d1).unwrap().unwrap();
    assert_eq!(
        a1.assessment,
        Some(serde_json::json!({ "tier": "trusted" }))
    );
    assert_eq!(a1.assessed_at, Some(t0()));
    let a2 = s.get_device_trust(&d2).unwrap().unwrap();
    assert_eq!(
        a2.assessment,
        Some(serde_json::json!({ "tier": "restricted" }))
    );

    // An unknown device refuses the whole batch: nothing changes, nothing is audited.
    let ghost = dref("acme", "ghost");
    let err = s
        .record_assessments(
            &[
                record(&d1, "blocked", true),
                record(&ghost, "blocked", true),
            ],
            t0(),
        )
        .unwrap_err();
    assert!(matches!(err, WriteError::NotFound { .. }), "{err:?}");
    assert_eq!(audit_len(&s), before + 1);
    assert_eq!(
        s.get_device_trust(&d1).unwrap().unwrap().assessment,
        Some(serde_json::json!({ "tier": "trusted" }))
    );
    s.record_assessments(&[], t0()).unwrap();
}

/// Policy sets: versions 1, 2, 3, ...; the newest is current; listed newest first; each is
/// audited with its version in the record's detail.
pub fn policy_sets<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    assert!(s.current_policy_set().unwrap().is_none());
    assert!(s.list_policy_sets().unwrap().is_empty());
    let texts = [
        "permit (principal, action, resource);",
        "forbid (principal, action, resource) when { principal.tier == \"quarantine\" };",
        "",
    ];
    let mut made = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let at = t0() + Duration::minutes(i as i64);
        let detail = match i {
            0 => serde_json::Value::Null,
            1 => serde_json::json!({"diff_lines": 3}),
            _ => serde_json::json!("a note"),
        };
        let by = if i == 1 { "system" } else { "operator:alice" };
        let before = audit_len(&s);
        let p = s
            .put_policy_set(
                text,
                by,
                &AuditEntry::new(at, by, "policy_set", "policies").detail(detail),
            )
            .unwrap();
        assert_eq!(p.version, i as u32 + 1, "versions count up from 1");
        assert_eq!((p.text.as_str(), p.created_by.as_str()), (*text, by));
        assert_eq!(p.created_at, at);
        assert_eq!(
            s.current_policy_set().unwrap(),
            Some(p.clone()),
            "the newest is current"
        );
        assert_eq!(audit_len(&s), before + 1);
        let rec = last_record(&s);
        assert_eq!(rec.action, "policy_set");
        let detail: serde_json::Value = serde_json::from_str(&rec.detail).unwrap();
        assert_eq!(detail["version"], serde_json::json!(p.version), "{detail}");
        match i {
            1 => assert_eq!(
                detail["diff_lines"],
                serde_json::json!(3),
                "the caller's detail is kept"
            ),
            2 => assert_eq!(detail["detail"], serde_json::json!("a note")),
            _ => {}
        }
        made.push(p);
    }
    made.reverse();
    assert_eq!(s.list_policy_sets().unwrap(), made, "newest first");
    assert!(s.verify().is_ok());
}

/// Runs every suite.
pub fn all<S: Registry>(make: impl Fn() -> S) {
    tenants(&make);
    manufacturers_models_profiles(&make);
    claims(&make);
    devices(&make);
    certificates(&make);
    batch_revocation(&make);
    tokens(&make);
    reused_single_use_token_is_refused(&make);
    token_enrollment_is_one_transaction(&make);
    changes_are_audited(&make);
    device_trust(&make);
    oversize_trust_documents_are_refused(&make);
    assessment_batches_are_all_or_nothing(&make);
    policy_sets(&make);
    incidents_group_findings(&make);
    incident_lifecycle(&make);
    actions(&make);
    bans(&make);
    respond_changes_keep_the_audit_chain(&make);
    change_feed_follows_the_writes_the_loop_acts_on(&make);
}

// --- the respond stage

fn finding_at(secs: i64, device: Option<&DeviceRef>, peer: Option<&str>, kind: &str) -> Finding {
    Finding {
        at: std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(u64::try_from(secs).unwrap()),
        device: device.cloned(),
        peer: peer.map(|p| p.parse().unwrap()),
        kind: kind.to_owned(),
        severity: Severity::Medium,
        confidence: 0.8,
        technique: None,
        summary: format!("{kind} seen"),
        evidence: std::collections::BTreeMap::from([("n".to_owned(), secs.to_string())]),
    }
}

fn secs0() -> i64 {
    t0().unix_timestamp()
}

/// Findings are grouped by subject and kind into one open incident per group, which
/// counts them, keeps first/last seen and the worst severity, stores at most the bound and
/// is audited once, when it opens; a bad finding refuses the whole batch.
pub fn incidents_group_findings<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    let d1 = dref("acme", "cam-1");
    let g1 = dref("globex", "cam-1");
    let before = audit_len(&s);
    let mut high = finding_at(secs0() + 5, Some(&d1), Some("10.0.0.1"), "publish_flood");
    high.severity = Severity::High;
    high.technique = Some("T0814".into());
    let batch = vec![
        finding_at(secs0() + 10, Some(&d1), Some("10.0.0.1"), "publish_flood"),
        high,
        finding_at(secs0() + 20, Some(&d1), None, "topic_scanning"),
        finding_at(secs0() + 30, None, Some("192.0.2.9"), "publish_flood"),
        finding_at(secs0() + 40, Some(&g1), None, "publish_flood"),
        finding_at(secs0() + 50, Some(&d1), Some("10.0.0.2"), "publish_flood"),
    ];
    let rec = s
        .record_findings(&batch, t0() + Duration::minutes(1), 2)
        .unwrap();
    assert_eq!(rec.len(), batch.len());
    let flood = rec[0].incident_id;
    assert!(rec[0].new_incident && rec[0].finding_id.is_some());
    assert_eq!(rec[0].findings_in_incident, 1);
    assert_eq!(
        (
            rec[1].incident_id,
            rec[1].new_incident,
            rec[1].findings_in_incident
        ),
        (flood, false, 2)
    );
    assert!(rec[1].finding_id.is_some());
    for (i, r) in rec.iter().enumerate().skip(2).take(3) {
        assert!(r.new_incident, "finding {i} opens its own incident");
        assert_ne!(r.incident_id, flood);
    }
    assert_eq!(
        (rec[5].incident_id, rec[5].findings_in_incident),
        (flood, 3)
    );
    assert_eq!(
        rec[5].finding_id, None,
        "over the bound: counted, not stored"
    );
    assert_eq!(
        audit_len(&s),
        before + 4,
        "one open_incident record per new incident"
    );
    let opened = s.audit_records(before + 1, 1).unwrap().pop().unwrap();
    assert_eq!(
        (opened.actor.as_str(), opened.action.as_str()),
        ("system", "open_incident")
    );
    assert_eq!(opened.subject, flood.to_string());
    let detail: serde_json::Value = serde_json::from_str(&opened.detail).unwrap();
    assert_eq!(detail["incident"], serde_json::json!(flood.0));
    assert_eq!(detail["group_key"], "acme/cam-1|publish_flood");

    let d = s.get_incident(flood).unwrap().unwrap();
    let inc = &d.incident;
    assert_eq!(inc.device.as_ref(), Some(&d1));
    assert_eq!(inc.tenant.as_ref(), Some(&tenant("acme")));
    assert_eq!(inc.peer, Some("10.0.0.1".parse().unwrap()));
    assert_eq!(inc.kind, "publish_flood");
    assert_eq!(inc.state, IncidentState::Open);
    assert_eq!(inc.max_severity, Severity::High);
    assert_eq!((inc.finding_count, inc.stored_findings), (3, 2));
    assert_eq!(
        inc.first_seen,
        t0() + Duration::seconds(5),
        "the earliest finding, not the first recorded"
    );
    assert_eq!(inc.last_seen, t0() + Duration::seconds(50));
    assert_eq!(inc.opened_at, t0() + Duration::minutes(1));
    assert_eq!(inc.technique.as_deref(), Some("T0814"));
    assert_eq!(inc.summary, "publish_flood seen");
    assert_eq!(d.findings.len(), 2);
    assert_eq!(
        d.findings[0].finding, batch[0],
        "a stored finding round-trips exactly"
    );
    assert_eq!(d.findings[1].finding, batch[1]);
    assert_eq!(Some(d.findings[0].id), rec[0].finding_id);
    // The timeline: opening and the stored findings, by time.
    let events: Vec<String> = d
        .timeline
        .iter()
        .map(|e| match &e.event {
            TimelineEvent::Finding { severity, .. } => format!("finding:{severity}"),
            TimelineEvent::State { from, to, .. } => format!("state:{from:?}->{to}"),
            TimelineEvent::Action { kind, state, .. } => format!("action:{kind}:{state}"),
        })
        .collect();
    assert_eq!(
        events,
        ["finding:high", "finding:medium", "state:None->open"]
    );
    assert!(d.timeline.windows(2).all(|w| w[0].at <= w[1].at));

    // A second batch joins the open incident.
    let more = s
        .record_findings(
            &[finding_at(secs0() + 90, Some(&d1), None, "publish_flood")],
            t0() + Duration::minutes(2),
            2,
        )
        .unwrap();
    assert_eq!(
        (
            more[0].incident_id,
            more[0].new_incident,
            more[0].findings_in_incident
        ),
        (flood, false, 4)
    );
    let inc = s.get_incident(flood).unwrap().unwrap().incident;
    assert_eq!(inc.updated_at, t0() + Duration::minutes(2));
    assert_eq!(inc.max_severity, Severity::High, "the worst severity stays");

    // Address-only incidents have no tenant.
    let addr = s
        .get_incident(rec[3].incident_id)
        .unwrap()
        .unwrap()
        .incident;
    assert_eq!((addr.tenant, addr.device), (None, None));
    assert_eq!(addr.group_key, "addr:192.0.2.9|publish_flood");

    // Listing: newest activity first, filtered by tenant, device, state.
    let all = s.list_incidents(&IncidentFilter::default()).unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].id, flood, "the most recent activity first");
    let acme = s
        .list_incidents(&IncidentFilter {
            tenant: Some(tenant("acme")),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(acme.len(), 2);
    let globex = s
        .list_incidents(&IncidentFilter {
            device: Some(g1.clone()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(globex.len(), 1);
    assert_eq!(globex[0].id, rec[4].incident_id);
    assert_eq!(
        s.list_incidents(&IncidentFilter {
            limit: 1,
            ..Default::default()
        })
        .unwrap()
        .len(),
        1
    );
    assert!(
        s.list_incidents(&IncidentFilter {
            state: Some(IncidentState::Resolved),
            ..Default::default()
        })
        .unwrap()
        .is_empty()
    );
    assert!(s.get_incident(IncidentId(9999)).unwrap().is_none());

    // A bad finding refuses the whole batch: nothing counted, nothing audited.
    let len = audit_len(&s);
    let anonymous = finding_at(secs0(), None, None, "publish_flood");
    let no_kind = finding_at(secs0(), Some(&d1), None, "");
    let mut huge = finding_at(secs0(), Some(&d1), None, "publish_flood");
    huge.summary = "x".repeat(StoredFinding::MAX_BYTES);
    for bad in [anonymous, no_kind, huge] {
        let r = s.record_findings(
            &[
                finding_at(secs0(), None, Some("198.51.100.1"), "connect_flood"),
                bad,
            ],
            t0(),
            10,
        );
        assert!(matches!(r, Err(WriteError::Invalid { .. })), "{r:?}");
    }
    assert_eq!(audit_len(&s), len);
    assert_eq!(
        s.list_incidents(&IncidentFilter::default()).unwrap().len(),
        4
    );
    assert_eq!(
        s.get_incident(flood)
            .unwrap()
            .unwrap()
            .incident
            .finding_count,
        4
    );
    assert!(s.record_findings(&[], t0(), 10).unwrap().is_empty());
}

/// Incidents move open → acknowledged → resolved (or open → resolved), audited, on the
/// timeline; illegal moves are refused and write nothing; a finding after resolution
/// opens a new incident.
pub fn incident_lifecycle<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    let d1 = dref("acme", "cam-1");
    let f = finding_at(secs0(), Some(&d1), None, "publish_flood");
    let id = s
        .record_findings(std::slice::from_ref(&f), t0(), 10)
        .unwrap()[0]
        .incident_id;
    let at = |m: i64| t0() + Duration::minutes(m);
    let change = |to: IncidentState, m: i64, note: Option<&str>| {
        s.set_incident_state(
            id,
            to,
            "operator:alice",
            note,
            &AuditEntry::new(at(m), "operator:alice", "incident_state", id.to_string()),
        )
    };

    let before = audit_len(&s);
    let e = change(IncidentState::Open, 1, None).unwrap_err();
    assert!(matches!(e, WriteError::IllegalTransition(_)), "{e:?}");
    assert_eq!(audit_len(&s), before, "a refused move is not audited");
    let inc = change(IncidentState::Acknowledged, 1, Some("looking")).unwrap();
    assert_eq!(
        (inc.state, inc.updated_at, inc.resolved_at),
        (IncidentState::Acknowledged, at(1), None)
    );
    // Still grouping while acknowledged.
    let r = s
        .record_findings(std::slice::from_ref(&f), at(2), 10)
        .unwrap();
    assert_eq!(
        (
            r[0].incident_id,
            r[0].new_incident,
            r[0].findings_in_incident
        ),
        (id, false, 2)
    );
    for refused in [IncidentState::Open, IncidentState::Acknowledged] {
        let e = change(refused, 3, None).unwrap_err();
        assert!(
            e.to_string().contains("cannot go from acknowledged to"),
            "a clear error: {e}"
        );
    }
    let inc = change(IncidentState::Resolved, 4, Some("firmware fixed")).unwrap();
    assert_eq!(
        (inc.state, inc.resolved_at),
        (IncidentState::Resolved, Some(at(4)))
    );
    for refused in IncidentState::ALL {
        assert!(
            change(refused, 5, None).is_err(),
            "resolved is final ({refused})"
        );
    }
    assert_eq!(audit_len(&s), before + 2);
    assert_eq!(last_record(&s).action, "incident_state");
    assert!(matches!(
        s.set_incident_state(
            IncidentId(424242),
            IncidentState::Resolved,
            "x",
            None,
            &entry("incident_state", "x")
        ),
        Err(WriteError::NotFound { .. })
    ));

    // The timeline shows every move with who and why.
    let states: Vec<_> = s
        .get_incident(id)
        .unwrap()
        .unwrap()
        .timeline
        .into_iter()
        .filter_map(|e| match e.event {
            TimelineEvent::State { from, to, by, note } => Some((from, to, by, note)),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        [
            (None, IncidentState::Open, "system".to_owned(), None),
            (
                Some(IncidentState::Open),
                IncidentState::Acknowledged,
                "operator:alice".to_owned(),
                Some("looking".to_owned())
            ),
            (
                Some(IncidentState::Acknowledged),
                IncidentState::Resolved,
                "operator:alice".to_owned(),
                Some("firmware fixed".to_owned())
            ),
        ]
    );

    // After resolution the same group opens a new incident.
    let r = s
        .record_findings(std::slice::from_ref(&f), at(6), 10)
        .unwrap();
    assert!(r[0].new_incident);
    assert_ne!(r[0].incident_id, id);
    assert_eq!(r[0].findings_in_incident, 1);
    let resolved = s
        .list_incidents(&IncidentFilter {
            state: Some(IncidentState::Resolved),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(resolved.iter().map(|i| i.id).collect::<Vec<_>>(), [id]);
    // open -> resolved directly.
    let inc = s
        .set_incident_state(
            r[0].incident_id,
            IncidentState::Resolved,
            "system",
            None,
            &entry("incident_state", "x"),
        )
        .unwrap();
    assert_eq!(inc.state, IncidentState::Resolved);
}

/// Actions: recorded in an initial state with their audit record (the id in its detail),
/// moved along their lifecycle, listed by incident, state, device and expiry, and shown
/// on their incident's timeline.
pub fn actions<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    let d1 = dref("acme", "cam-1");
    let inc = s
        .record_findings(
            &[finding_at(secs0(), Some(&d1), None, "publish_flood")],
            t0(),
            10,
        )
        .unwrap()[0]
        .incident_id;
    let at = |m: i64| t0() + Duration::minutes(m);
    let quarantine = ActionRecord {
        incident: Some(inc),
        device: Some(d1.clone()),
        peer: None,
        kind: "quarantine".into(),
        params: serde_json::json!({"for": "1h", "for_secs": 3600}),
        state: ActionState::Done,
        playbook: Some("quarantine-attacking-devices".into()),
        by: "system".into(),
        expires_at: Some(at(61)),
    };
    let before = audit_len(&s);
    let q = s
        .record_action(
            &quarantine,
            &AuditEntry::new(at(1), "system", "quarantine", d1.to_string()),
        )
        .unwrap();
    assert_eq!(audit_len(&s), before + 1);
    let rec = last_record(&s);
    assert_eq!(rec.action, "quarantine");
    let detail: serde_json::Value = serde_json::from_str(&rec.detail).unwrap();
    assert_eq!(
        detail["action"],
        serde_json::json!(q.0),
        "the new id is in the audit detail"
    );
    let got = s.get_action(q).unwrap().unwrap();
    assert_eq!(
        (
            got.incident,
            got.device.as_ref(),
            got.kind.as_str(),
            got.state
        ),
        (Some(inc), Some(&d1), "quarantine", ActionState::Done)
    );
    assert_eq!(got.params, quarantine.params);
    assert_eq!(
        got.playbook.as_deref(),
        Some("quarantine-attacking-devices")
    );
    assert_eq!((got.created_by.as_str(), got.created_at), ("system", at(1)));
    assert_eq!(
        (got.updated_by.as_str(), got.updated_at, got.note),
        ("system", at(1), None)
    );
    assert_eq!(got.expires_at, Some(at(61)));

    let revoke = s
        .record_action(
            &ActionRecord {
                kind: "revoke".into(),
                params: serde_json::json!({"reason": "cloned identity"}),
                state: ActionState::PendingApproval,
                playbook: Some("revoke-cloned-identity".into()),
                expires_at: None,
                ..quarantine.clone()
            },
            &AuditEntry::new(at(2), "system", "plan_revoke", d1.to_string()),
        )
        .unwrap();
    let ban = s
        .record_action(
            &ActionRecord {
                incident: None,
                device: None,
                peer: Some("192.0.2.1".parse().unwrap()),
                kind: "ban".into(),
                params: serde_json::json!({"for_secs": 900}),
                state: ActionState::Done,
                playbook: None,
                by: "operator:bob".into(),
                expires_at: Some(at(17)),
            },
            &AuditEntry::new(at(2), "operator:bob", "ban", "192.0.2.1"),
        )
        .unwrap();
    assert!(q < revoke && revoke < ban);

    // Refusals write nothing.
    let len = audit_len(&s);
    for (bad, what) in [
        (
            ActionRecord {
                state: ActionState::Reversed,
                ..quarantine.clone()
            },
            "a final state",
        ),
        (
            ActionRecord {
                state: ActionState::Rejected,
                ..quarantine.clone()
            },
            "a final state",
        ),
        (
            ActionRecord {
                kind: String::new(),
                ..quarantine.clone()
            },
            "an empty kind",
        ),
        (
            ActionRecord {
                params: serde_json::Value::from("p".repeat(StoredAction::MAX_PARAMS_BYTES)),
                ..quarantine.clone()
            },
            "oversize params",
        ),
    ] {
        assert!(
            matches!(
                s.record_action(&bad, &entry("quarantine", "x")),
                Err(WriteError::Invalid { .. })
            ),
            "{what}"
        );
    }
    assert!(matches!(
        s.record_action(
            &ActionRecord {
                incident: Some(IncidentId(777)),
                ..quarantine.clone()
            },
            &entry("quarantine", "x")
        ),
        Err(WriteError::NotFound { .. })
    ));
    assert_eq!(audit_len(&s), len);

    // Lifecycle: approval, reversal; illegal moves refused without a trace.
    let approved = s
        .set_action_state(
            revoke,
            ActionState::Done,
            "operator:alice",
            Some("confirmed clone"),
            &AuditEntry::new(at(3), "operator:alice", "approve", revoke.to_string()),
        )
        .unwrap();
    assert_eq!(
        (
            approved.state,
            approved.updated_by.as_str(),
            approved.updated_at,
            approved.note.as_deref()
        ),
        (
            ActionState::Done,
            "operator:alice",
            at(3),
            Some("confirmed clone")
        )
    );
    assert_eq!(approved.created_by, "system", "the creator is kept");
    let released = s
        .set_action_state(
            q,
            ActionState::Reversed,
            "operator:alice",
            None,
            &AuditEntry::new(at(4), "operator:alice", "release", q.to_string()),
        )
        .unwrap();
    assert_eq!(released.state, ActionState::Reversed);
    let len = audit_len(&s);
    for (id, to) in [
        (q, ActionState::Done),
        (q, ActionState::Reversed),
        (revoke, ActionState::PendingApproval),
        (revoke, ActionState::Rejected),
    ] {
        let e = s
            .set_action_state(id, to, "x", None, &entry("x", "x"))
            .unwrap_err();
        assert!(
            matches!(e, WriteError::IllegalTransition(_)),
            "{id} -> {to}: {e:?}"
        );
    }
    assert!(matches!(
        s.set_action_state(
            ActionId(999),
            ActionState::Done,
            "x",
            None,
            &entry("x", "x")
        ),
        Err(WriteError::NotFound { .. })
    ));
    assert_eq!(audit_len(&s), len);
    assert_eq!(
        s.get_action(q).unwrap().unwrap().state,
        ActionState::Reversed
    );

    // Listing.
    let ids = |f: ActionFilter| {
        s.list_actions(&f)
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(ActionFilter::default()), [q, revoke, ban]);
    assert_eq!(
        ids(ActionFilter {
            incident: Some(inc),
            ..Default::default()
        }),
        [q, revoke]
    );
    assert_eq!(
        ids(ActionFilter {
            device: Some(d1.clone()),
            ..Default::default()
        }),
        [q, revoke]
    );
    assert_eq!(
        ids(ActionFilter {
            state: Some(ActionState::Done),
            ..Default::default()
        }),
        [revoke, ban]
    );
    assert_eq!(
        ids(ActionFilter {
            state: Some(ActionState::Done),
            expires_by: Some(at(20)),
            ..Default::default()
        }),
        [ban],
        "timed actions due for reversal"
    );
    assert_eq!(
        ids(ActionFilter {
            state: Some(ActionState::Done),
            expires_after: Some(at(0)),
            ..Default::default()
        }),
        [ban],
        "timed actions still in force"
    );
    assert!(
        ids(ActionFilter {
            state: Some(ActionState::Done),
            expires_after: Some(at(1_000_000)),
            ..Default::default()
        })
        .is_empty(),
        "nothing is in force after every expiry"
    );
    assert_eq!(
        ids(ActionFilter {
            kind: Some("revoke".to_owned()),
            ..Default::default()
        }),
        [revoke]
    );
    assert_eq!(
        ids(ActionFilter {
            limit: 1,
            ..Default::default()
        }),
        [q]
    );
    assert!(s.get_action(ActionId(12345)).unwrap().is_none());

    // The incident's timeline carries each action event in order.
    let acts: Vec<_> = s
        .get_incident(inc)
        .unwrap()
        .unwrap()
        .timeline
        .into_iter()
        .filter_map(|e| match e.event {
            TimelineEvent::Action {
                action,
                kind,
                state,
                ..
            } => Some((action, kind, state)),
            _ => None,
        })
        .collect();
    assert_eq!(
        acts,
        [
            (q, "quarantine".to_owned(), ActionState::Done),
            (revoke, "revoke".to_owned(), ActionState::PendingApproval),
            (revoke, "revoke".to_owned(), ActionState::Done),
            (q, "quarantine".to_owned(), ActionState::Reversed),
        ]
    );
}

/// Bans: put (replacing), listed while in force, removed; audited; nonsense refused.
pub fn bans<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    let b: std::net::IpAddr = "2001:db8::1".parse().unwrap();
    let at = |m: i64| t0() + Duration::minutes(m);
    let before = audit_len(&s);
    let ban = s
        .put_ban(
            a,
            at(15),
            "credential_brute_force",
            &entry("ban", "192.0.2.1"),
        )
        .unwrap();
    assert_eq!((ban.addr, ban.until, ban.created_at), (a, at(15), t0()));
    s.put_ban(b, at(5), "connect_flood", &entry("ban", "2001:db8::1"))
        .unwrap();
    assert_eq!(audit_len(&s), before + 2);
    assert_eq!(s.list_bans(t0()).unwrap().len(), 2);
    let live = s.list_bans(at(5)).unwrap();
    assert_eq!(
        live.iter().map(|b| b.addr).collect::<Vec<_>>(),
        [a],
        "expired bans are not listed"
    );
    assert_eq!(live[0].reason, "credential_brute_force");
    // A second ban of an address replaces the first.
    s.put_ban(
        a,
        at(60),
        "again",
        &AuditEntry::new(at(1), "system", "ban", "192.0.2.1"),
    )
    .unwrap();
    let live = s.list_bans(at(30)).unwrap();
    assert_eq!(
        (
            live.len(),
            live[0].until,
            live[0].reason.as_str(),
            live[0].created_at
        ),
        (1, at(60), "again", at(1))
    );
    // A ban that ends before it starts is refused.
    let len = audit_len(&s);
    assert!(matches!(
        s.put_ban(a, t0(), "x", &entry("ban", "x")),
        Err(WriteError::Invalid { .. })
    ));
    assert_eq!(audit_len(&s), len);
    // Removal, also of an expired ban; an address not banned is NotFound.
    let removed = s.remove_ban(a, &entry("unban", "192.0.2.1")).unwrap();
    assert_eq!(removed.until, at(60));
    assert!(s.list_bans(t0()).unwrap().iter().all(|x| x.addr != a));
    s.remove_ban(b, &entry("unban", "2001:db8::1")).unwrap();
    assert!(matches!(
        s.remove_ban(a, &entry("unban", "x")),
        Err(WriteError::NotFound { .. })
    ));
    assert_eq!(audit_len(&s), len + 2);
    assert!(s.list_bans(t0()).unwrap().is_empty());
}

/// After findings, incidents, actions and bans the audit chain still verifies and
/// exports.
pub fn respond_changes_keep_the_audit_chain<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    seed(&s);
    let d1 = dref("acme", "cam-1");
    let r = s
        .record_findings(
            &[
                finding_at(secs0(), Some(&d1), None, "publish_flood"),
                finding_at(secs0(), None, Some("192.0.2.5"), "connect_flood"),
            ],
            t0(),
            10,
        )
        .unwrap();
    let act = s
        .record_action(
            &ActionRecord {
                incident: Some(r[0].incident_id),
                device: Some(d1.clone()),
                peer: None,
                kind: "throttle".into(),
                params: serde_json::json!({"rate": 1.0}),
                state: ActionState::Done,
                playbook: None,
                by: "operator:alice".into(),
                expires_at: None,
            },
            &entry("throttle", "acme/cam-1"),
        )
        .unwrap();
    s.set_action_state(
        act,
        ActionState::Reversed,
        "operator:alice",
        None,
        &entry("unthrottle", "acme/cam-1"),
    )
    .unwrap();
    s.put_ban(
        "192.0.2.5".parse().unwrap(),
        t0() + Duration::hours(1),
        "flood",
        &entry("ban", "192.0.2.5"),
    )
    .unwrap();
    s.remove_ban("192.0.2.5".parse().unwrap(), &entry("unban", "192.0.2.5"))
        .unwrap();
    s.set_incident_state(
        r[1].incident_id,
        IncidentState::Resolved,
        "operator:alice",
        None,
        &entry("incident_state", "x"),
    )
    .unwrap();
    let report = s.verify().unwrap();
    assert_eq!(report.records, 4 + 2 + 5);
    let mut out = Vec::new();
    s.export_jsonl(&mut out).unwrap();
    assert_eq!(audit::verify_jsonl(&out[..]).unwrap(), report);
}

/// The writes a running server must act on leave a typed change beside their audit record,
/// in the same transaction; a write that fails leaves none; an entry can carry a request
/// of its own; the feed reads forward from any point, in order, in pages.
pub fn change_feed_follows_the_writes_the_loop_acts_on<S: Registry>(make: impl Fn() -> S) {
    let s = make();
    assert_eq!(s.change_head().unwrap(), 0);
    seed(&s);
    let seeded = s.changes_after(0, 100).unwrap();
    assert_eq!(
        seeded.iter().map(|c| &c.change).collect::<Vec<_>>(),
        [&Change::ModelProfile {
            model: model("pump")
        }],
        "tenants and manufacturers are not the loop's business; a model is"
    );
    let from = s.change_head().unwrap();
    let d = dref("acme", "pump-1");
    s.create_device(
        &new_device("acme", "pump-1", None),
        &entry("create", "acme/pump-1"),
    )
    .unwrap();
    let pin = serde_json::json!({ "tier": "restricted" });
    s.set_device_pin(&d, Some(&pin), &entry("pin", "acme/pump-1"))
        .unwrap();
    s.set_device_pin(&d, None, &entry("unpin", "acme/pump-1"))
        .unwrap();
    assert!(
        s.set_device_pin(
            &dref("acme", "nobody"),
            None,
            &entry("unpin", "acme/nobody")
        )
        .is_err()
    );
    s.set_device_status(&d, DeviceStatus::Blocked, &entry("block", "acme/pump-1"))
        .unwrap();
    s.put_policy_set(
        "permit(principal, action, resource);",
        "operator:alice",
        &entry("set_policy", "policies"),
    )
    .unwrap();
    s.append(&entry("login", "operator:alice")).unwrap();
    s.append(
        &entry("request_approval", "action:9").change(Change::ActionApproved {
            action: ActionId(9),
        }),
    )
    .unwrap();
    s.revoke_device(
        &d,
        RevocationReason::KeyCompromise,
        t0(),
        &entry("revoke", "acme/pump-1"),
    )
    .unwrap();
    let addr: std::net::IpAddr = "192.0.2.9".parse().unwrap();
    s.put_ban(
        addr,
        t0() + Duration::hours(1),
        "connect_flood",
        &entry("ban", "192.0.2.9"),
    )
    .unwrap();
    s.remove_ban(addr, &entry("unban", "192.0.2.9")).unwrap();

    let feed = s.changes_after(from, 100).unwrap();
    let expected = [
        Change::DevicePin {
            device: d.clone(),
            pinned: true,
        },
        Change::DevicePin {
            device: d.clone(),
            pinned: false,
        },
        Change::DeviceStatus {
            device: d.clone(),
            status: DeviceStatus::Blocked,
        },
        Change::PolicySet,
        Change::ActionApproved {
            action: ActionId(9),
        },
        Change::CertificatesRevoked {
            devices: vec![d.clone()],
        },
        Change::BanLifted { addr },
    ];
    assert_eq!(
        feed.iter().map(|c| c.change.clone()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(s.change_head().unwrap(), feed.last().unwrap().seq);
    let actions = [
        "pin",
        "unpin",
        "block",
        "set_policy",
        "request_approval",
        "revoke",
        "unban",
    ];
    for (c, action) in feed.iter().zip(actions) {
        assert!(c.seq > from);
        let audit = s.audit_records(c.audit_seq, 1).unwrap();
        assert_eq!(
            audit[0].action, action,
            "change {} explains audit {}",
            c.seq, c.audit_seq
        );
        assert_eq!(c.actor, "operator:test");
        assert_eq!(c.at, audit[0].at);
    }
    for w in feed.windows(2) {
        assert!(w[0].seq < w[1].seq);
    }
    let page = s.changes_after(from, 2).unwrap();
    assert_eq!(page, feed[..2]);
    let rest = s.changes_after(page[1].seq, 100).unwrap();
    assert_eq!(rest, feed[2..]);
    assert!(
        s.changes_after(s.change_head().unwrap(), 100)
            .unwrap()
            .is_empty()
    );
}
