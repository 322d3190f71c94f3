//! The backend conformance suites, run against the SQLite backend.

use gatehouse_store::{SqliteStore, conformance};

fn make() -> SqliteStore {
    SqliteStore::open_in_memory().expect("in-memory store")
}

macro_rules! suites {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { conformance::$name(make) })*
    };
}

suites!(
    tenants,
    manufacturers_models_profiles,
    claims,
    devices,
    certificates,
    batch_revocation,
    tokens,
    reused_single_use_token_is_refused,
    token_enrollment_is_one_transaction,
    changes_are_audited,
    device_trust,
    oversize_trust_documents_are_refused,
    assessment_batches_are_all_or_nothing,
    policy_sets,
    incidents_group_findings,
    incident_lifecycle,
    actions,
    bans,
    respond_changes_keep_the_audit_chain,
    change_feed_follows_the_writes_the_loop_acts_on,
);
