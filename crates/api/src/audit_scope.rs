//! Which tenant an audit record is about, so that an operator bound to a tenant reads that
//! tenant's records only.
//!
//! The tenant is derived from what the record itself says (and so is covered by its hash):
//! a subject that is a device (`tenant/device`); a `tenant` in the detail; the subject of
//! the actions whose subject is a tenant; an incident's, action's or enrollment token's
//! tenant looked up by the id in the subject. A record about none of these (a manufacturer,
//! a model, the policy set, a ban of an address) belongs to no tenant and is shown only to
//! operators who see every tenant.

use std::collections::HashMap;

use gatehouse_store::{ActionId, AuditRecord, IncidentId, Registry, TokenId};
use gatehouse_types::{DeviceRef, TenantId};

use crate::Problem;

/// Actions whose subject is a tenant id.
const TENANT_SUBJECT: &[&str] = &["create_tenant", "add_claims", "create_token"];

/// Looks tenants up by the ids records name, remembering the answers.
pub(crate) struct Attributor<'a> {
    registry: &'a dyn Registry,
    cache: HashMap<String, Option<TenantId>>,
}

impl<'a> Attributor<'a> {
    pub(crate) fn new(registry: &'a dyn Registry) -> Self {
        Self {
            registry,
            cache: HashMap::new(),
        }
    }

    /// The tenant `r` is about, if any.
    pub(crate) fn tenant_of(&mut self, r: &AuditRecord) -> Result<Option<TenantId>, Problem> {
        if let Ok(d) = r.subject.parse::<DeviceRef>() {
            return Ok(Some(d.tenant));
        }
        let detail: Option<serde_json::Value> = serde_json::from_str(&r.detail).ok();
        if let Some(t) = detail
            .as_ref()
            .and_then(|d| d.get("tenant"))
            .and_then(|t| t.as_str())
            .and_then(|t| TenantId::new(t).ok())
        {
            return Ok(Some(t));
        }
        if TENANT_SUBJECT.contains(&r.action.as_str()) {
            return Ok(TenantId::new(r.subject.as_str()).ok());
        }
        if let Some(cached) = self.cache.get(&r.subject) {
            return Ok(cached.clone());
        }
        let found = self.look_up(r)?;
        self.cache.insert(r.subject.clone(), found.clone());
        Ok(found)
    }

    fn look_up(&self, r: &AuditRecord) -> Result<Option<TenantId>, Problem> {
        if let Some(id) = r.subject.strip_prefix("incident:") {
            let Ok(id) = id.parse::<IncidentId>() else {
                return Ok(None);
            };
            return Ok(self
                .registry
                .get_incident(id)?
                .and_then(|d| d.incident.tenant));
        }
        if let Some(id) = r.subject.strip_prefix("action:") {
            let Ok(id) = id.parse::<ActionId>() else {
                return Ok(None);
            };
            return Ok(self
                .registry
                .get_action(id)?
                .and_then(|a| a.device.map(|d| d.tenant)));
        }
        if matches!(r.action.as_str(), "revoke_token" | "use_token")
            && let Ok(id) = TokenId::new(r.subject.clone())
        {
            return Ok(self.registry.get_token(&id)?.map(|t| t.tenant));
        }
        Ok(None)
    }
}

/// Up to `limit` records about `tenant` with `seq >= from`, in order. Scans the log from
/// `from` in pages until it has them or reaches the end.
pub(crate) fn records_of_tenant(
    registry: &dyn Registry,
    tenant: &TenantId,
    from: u64,
    limit: usize,
) -> Result<Vec<AuditRecord>, Problem> {
    let mut out = Vec::new();
    let mut next = from;
    let mut who = Attributor::new(registry);
    loop {
        let page = registry
            .audit_records(next, 1000)
            .map_err(Problem::internal)?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        next = last.seq.saturating_add(1);
        for r in page {
            if who.tenant_of(&r)?.as_ref() == Some(tenant) {
                out.push(r);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
    }
}
