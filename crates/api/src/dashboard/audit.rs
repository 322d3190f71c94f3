//! The audit log, a page at a time, and the verification of its hash chain.

use axum::extract::{Query, State};
use gatehouse_store::{AuditRecord, Permission};
use maud::html;
use serde::Deserialize;

use super::layout::{self, Nav};
use super::{PageResult, Who, blocking};
use crate::{ApiState, Problem};

/// Records a page.
const PAGE: usize = 50;

#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    /// First sequence number shown; default: the latest page (operators of every tenant)
    /// or the first (operators of one tenant).
    from: Option<u64>,
}

/// The chain's verification.
enum Chain {
    Ok { records: u64, head: String },
    Broken(String),
}

/// `GET /ui/audit`: needs `read_audit`. An operator bound to a tenant sees the records
/// about that tenant only, as in the REST API.
pub(crate) async fn page(
    State(s): State<ApiState>,
    who: Who,
    Query(q): Query<PageQuery>,
) -> PageResult {
    who.require(Permission::ReadAudit)?;
    let registry = s.registry.clone();
    let own = who.p.tenant.clone();
    let (records, chain, head) = blocking(move || {
        let head = registry
            .audit_head()
            .map_err(Problem::internal)?
            .map_or(0, |(seq, _)| seq);
        let from = match (q.from, &own) {
            (Some(f), _) => f.max(1),
            (None, None) => head.saturating_sub(PAGE as u64 - 1).max(1),
            (None, Some(_)) => 1,
        };
        let records: Vec<AuditRecord> = match &own {
            None => registry
                .audit_records(from, PAGE)
                .map_err(Problem::internal)?,
            Some(t) => crate::audit_scope::records_of_tenant(&*registry, t, from, PAGE)?,
        };
        let chain = match registry.verify() {
            Ok(r) => Chain::Ok {
                records: r.records,
                head: r.head_hash,
            },
            Err(e) => Chain::Broken(e.to_string()),
        };
        Ok((records, chain, head))
    })
    .await?;
    let first = records.first().map(|r| r.seq);
    let next = records.last().map(|r| r.seq + 1).filter(|n| *n <= head);
    let body = html! {
        section aria-labelledby="chain-h" {
            h2 #chain-h { "Hash chain" }
            @match &chain {
                Chain::Ok { records, head } => p.notice role="status" {
                    "Verified: " (records) " records, unbroken. Head hash " code.hash { (head) } "."
                },
                Chain::Broken(e) => p.error role="alert" { "The chain does not verify: " (e) },
            }
        }
        section aria-labelledby="rec-h" {
            h2 #rec-h { "Records" }
            @if who.p.tenant.is_some() {
                p.muted { "Records about your tenant only." }
            }
            @if records.is_empty() {
                p.muted { "No record." }
            } @else {
                div.table-wrap {
                    table.responsive {
                        thead { tr {
                            th scope="col" { "#" }
                            th scope="col" { "When" }
                            th scope="col" { "Actor" }
                            th scope="col" { "Action" }
                            th scope="col" { "Subject" }
                            th scope="col" { "Outcome" }
                            th scope="col" { "Reason" }
                        } }
                        tbody {
                            @for r in &records {
                                tr {
                                    td data-label="#" { (r.seq) }
                                    td data-label="When" { (layout::when_unix(r.at)) }
                                    td data-label="Actor" { (r.actor) }
                                    td data-label="Action" { (r.action) }
                                    td data-label="Subject" { (r.subject) }
                                    td data-label="Outcome" { (r.outcome) }
                                    td data-label="Reason" {
                                        (r.reason)
                                        @if r.detail != "{}" && !r.detail.is_empty() {
                                            details { summary { "Detail" } pre { (r.detail) } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            nav.pager aria-label="Pages" {
                @if first.is_some_and(|f| f > 1) {
                    a href="/ui/audit?from=1" { "First page" }
                    @if who.p.tenant.is_none() {
                        @if let Some(f) = first {
                            a href={ "/ui/audit?from=" (f.saturating_sub(PAGE as u64).max(1)) } { "Previous page" }
                        }
                    }
                }
                @if let Some(n) = next {
                    a href={ "/ui/audit?from=" (n) } { "Next page" }
                }
                @if who.p.tenant.is_none() {
                    a href="/ui/audit" { "Latest" }
                }
            }
        }
    };
    Ok(layout::ok(layout::page(
        &who,
        Nav::Audit,
        "Audit log",
        body,
    )))
}
