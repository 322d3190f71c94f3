//! Operators, API tokens and dashboard sessions in the SQLite store.

use std::time::Duration;

use gatehouse_store::*;
use gatehouse_types::TenantId;
use time::OffsetDateTime;

fn t(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).expect("time")
}

fn entry(at: i64, action: &str, subject: &str) -> AuditEntry {
    AuditEntry::new(t(at), "operator:root", action, subject)
}

fn name(s: &str) -> OperatorName {
    OperatorName::new(s).expect("name")
}

fn store_with(role: Role, tenant: Option<&str>) -> SqliteStore {
    let s = SqliteStore::open_in_memory().expect("open");
    if let Some(tn) = tenant {
        let id = TenantId::new(tn).expect("tenant");
        s.create_tenant(&id, tn, &entry(0, "create_tenant", tn))
            .expect("tenant");
    }
    s.create_operator(
        &NewOperator {
            name: name("alice"),
            role,
            tenant: tenant.map(|t| TenantId::new(t).expect("tenant")),
            password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned()),
        },
        &entry(0, "create_operator", "alice"),
    )
    .expect("operator");
    s
}

fn token(s: &SqliteStore, perms: &[Permission], expires: i64) -> ApiTokenText {
    s.create_api_token(
        &NewApiToken {
            operator: name("alice"),
            label: "ci".to_owned(),
            permissions: perms.to_vec(),
            expires_at: t(expires),
        },
        &entry(1, "create_api_token", "alice"),
    )
    .expect("token")
    .1
}

#[test]
fn api_token_is_stored_hashed_and_checked_with_its_secret() {
    let s = store_with(Role::Operator, None);
    let text = token(&s, &[Permission::Read], 3600);
    let (tok, op) = s
        .check_api_token(&text, t(10))
        .expect("read")
        .expect("accepted");
    assert_eq!(op.name, name("alice"));
    assert_eq!(tok.permissions, [Permission::Read]);
    let (id, secret) = text.parts().expect("parts");
    let forged = ApiTokenText::from_client(format!("gha_{id}_{}", "0".repeat(secret.len())));
    assert_eq!(
        s.check_api_token(&forged, t(10)).expect("read"),
        Err(ApiTokenRefusal::Unknown)
    );
    // The secret is nowhere in the audit log.
    let mut log = Vec::new();
    s.export_jsonl(&mut log).expect("export");
    assert!(!String::from_utf8_lossy(&log).contains(secret));
}

#[test]
fn api_token_expires_and_revoked_token_is_refused() {
    let s = store_with(Role::Admin, None);
    let text = token(&s, &[Permission::Read], 100);
    assert_eq!(
        s.check_api_token(&text, t(100)).expect("read"),
        Err(ApiTokenRefusal::Expired)
    );
    let text = token(&s, &[Permission::Read], 3600);
    let id = text.parts().expect("parts").0.to_owned();
    s.revoke_api_token(&id, &entry(2, "revoke_api_token", &id))
        .expect("revoke");
    assert_eq!(
        s.check_api_token(&text, t(10)).expect("read"),
        Err(ApiTokenRefusal::Revoked)
    );
}

#[test]
fn api_token_scope_cannot_exceed_the_role() {
    let s = store_with(Role::Analyst, None);
    let err = s
        .create_api_token(
            &NewApiToken {
                operator: name("alice"),
                label: String::new(),
                permissions: vec![Permission::Read, Permission::Act],
                expires_at: t(3600),
            },
            &entry(1, "create_api_token", "alice"),
        )
        .expect_err("beyond the role");
    assert!(matches!(err, WriteError::Invalid { .. }), "{err:?}");
}

#[test]
fn disabled_operator_tokens_and_sessions_stop_working() {
    let s = store_with(Role::Operator, Some("acme"));
    let text = token(&s, &[Permission::Read, Permission::Act], 3600);
    let (key, _) = s
        .login_succeeded(
            &name("alice"),
            Duration::from_secs(600),
            &entry(1, "login", "alice"),
        )
        .expect("login");
    assert!(s.session(&key, t(5)).expect("read").is_some());
    s.set_operator_disabled(&name("alice"), true, &entry(2, "disable_operator", "alice"))
        .expect("disable");
    assert!(s.session(&key, t(5)).expect("read").is_none());
    assert_eq!(
        s.check_api_token(&text, t(5)).expect("read"),
        Err(ApiTokenRefusal::OperatorDisabled)
    );
}

#[test]
fn failed_logins_lock_the_account_and_success_clears_the_count() {
    let s = store_with(Role::Operator, None);
    let lockout = Duration::from_secs(900);
    for i in 0..2 {
        let op = s
            .login_failed(&name("alice"), 3, lockout, &entry(i, "login", "alice"))
            .expect("failed");
        assert!(!op.is_locked(t(i)));
    }
    s.login_succeeded(
        &name("alice"),
        Duration::from_secs(60),
        &entry(3, "login", "alice"),
    )
    .expect("login");
    assert_eq!(
        s.get_operator(&name("alice"))
            .expect("read")
            .expect("there")
            .failed_logins,
        0
    );
    let mut last = None;
    for i in 0..3 {
        last = Some(
            s.login_failed(&name("alice"), 3, lockout, &entry(10 + i, "login", "alice"))
                .expect("failed"),
        );
    }
    let op = last.expect("ran");
    assert!(op.is_locked(t(13)));
    assert!(!op.is_locked(t(12 + 900)));
}

#[test]
fn session_expires() {
    let s = store_with(Role::Auditor, None);
    let (key, session) = s
        .login_succeeded(
            &name("alice"),
            Duration::from_secs(60),
            &entry(0, "login", "alice"),
        )
        .expect("login");
    assert_eq!(session.csrf.len(), 64);
    assert!(s.session(&key, t(59)).expect("read").is_some());
    assert!(s.session(&key, t(60)).expect("read").is_none());
    assert!(
        s.session(&SessionKey::from_client("nope"), t(1))
            .expect("read")
            .is_none()
    );
    s.end_session(&key, &entry(1, "logout", "alice"))
        .expect("logout");
    assert!(s.session(&key, t(2)).expect("read").is_none());
}

#[test]
fn operator_of_unknown_tenant_is_refused_and_names_are_unique() {
    let s = store_with(Role::Operator, Some("acme"));
    let err = s
        .create_operator(
            &NewOperator {
                name: name("bob"),
                role: Role::Operator,
                tenant: Some(TenantId::new("nowhere").expect("tenant")),
                password_hash: None,
            },
            &entry(1, "create_operator", "bob"),
        )
        .expect_err("unknown tenant");
    assert!(matches!(err, WriteError::NotFound { .. }), "{err:?}");
    let err = s
        .create_operator(
            &NewOperator {
                name: name("alice"),
                role: Role::Admin,
                tenant: None,
                password_hash: None,
            },
            &entry(1, "create_operator", "alice"),
        )
        .expect_err("duplicate");
    assert!(matches!(err, WriteError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(s.count_operators().expect("count"), 1);
    assert_eq!(
        s.list_operators(Some(&TenantId::new("acme").expect("t")))
            .expect("list")
            .len(),
        1
    );
    assert!(s.verify().is_ok());
}
