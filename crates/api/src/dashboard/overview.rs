//! The fleet overview: devices by tier, the score distribution, open incidents, and the
//! live figures the page's script refreshes from `/ui/live.json`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use gatehouse_store::{Incident, IncidentFilter, IncidentState, Registry};
use gatehouse_types::{TenantId, Tier};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::layout::{self, Nav};
use super::{PageResult, Who, blocking, enc};
use crate::{ApiState, Problem};

/// How many devices are in each tier, and their scores.
#[derive(Debug, Default)]
pub(crate) struct Fleet {
    /// Devices in each tier, in [`Tier::ALL`] order (blocked first).
    pub(crate) tiers: [usize; 4],
    /// Devices with no recorded assessment.
    pub(crate) unassessed: usize,
    /// Devices in each score band: 0–9, 10–19, ..., 90–100.
    pub(crate) bands: [usize; 10],
}

impl Fleet {
    pub(crate) fn total(&self) -> usize {
        self.tiers.iter().sum::<usize>() + self.unassessed
    }

    fn of(&self, tier: Tier) -> usize {
        Tier::ALL
            .iter()
            .position(|t| *t == tier)
            .map_or(0, |i| self.tiers[i])
    }
}

/// The fleet the operator sees, from every device's stored assessment.
pub(crate) fn fleet(registry: &dyn Registry, tenant: Option<&TenantId>) -> Result<Fleet, Problem> {
    let mut f = Fleet::default();
    for t in registry.list_device_trust(tenant)? {
        let a = t.assessment.as_ref();
        let tier = a
            .and_then(|a| a.get("tier"))
            .and_then(Value::as_str)
            .and_then(|name| Tier::ALL.iter().position(|t| t.as_str() == name));
        match tier {
            Some(i) => f.tiers[i] += 1,
            None => f.unassessed += 1,
        }
        if let Some(score) = a.and_then(|a| a.get("score")).and_then(Value::as_u64) {
            let band = usize::try_from(score / 10).unwrap_or(9).min(9);
            f.bands[band] += 1;
        }
    }
    Ok(f)
}

/// Open incidents the operator sees, newest activity first (at most 1000).
fn open_incidents(
    registry: &dyn Registry,
    tenant: Option<&TenantId>,
) -> Result<Vec<Incident>, Problem> {
    Ok(registry.list_incidents(&IncidentFilter {
        tenant: tenant.cloned(),
        state: Some(IncidentState::Open),
        limit: IncidentFilter::MAX_LIMIT,
        ..IncidentFilter::default()
    })?)
}

/// Messages a second in and out over the last sample interval, as shown: broker-wide, so
/// only to operators who see every tenant.
fn rates(s: &ApiState, who: &Who) -> (String, String) {
    let rate = who
        .p
        .tenant
        .is_none()
        .then(|| s.history.as_ref().and_then(|h| h.message_rate()))
        .flatten();
    match rate {
        Some((i, o)) => (format!("{i:.1}"), format!("{o:.1}")),
        None => ("—".to_owned(), "—".to_owned()),
    }
}

fn live_value(f: &Fleet, open: usize, rates: (String, String)) -> Value {
    json!({
        "messages_in": rates.0,
        "messages_out": rates.1,
        "devices": f.total(),
        "trusted": f.of(Tier::Trusted),
        "restricted": f.of(Tier::Restricted),
        "quarantined": f.of(Tier::Quarantined),
        "blocked": f.of(Tier::Blocked),
        "unassessed": f.unassessed,
        "open_incidents": open,
        "at": time::OffsetDateTime::now_utc().unix_timestamp(),
    })
}

/// `GET /ui/live.json`: the overview's figures, for the page's script. 401 without a
/// session (no redirect: a script reads it).
pub(crate) async fn live(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let who = match super::session(&s, &headers).await {
        Ok(Some(w)) => w,
        Ok(None) => return Problem::unauthorized("log in").into_response(),
        Err(p) => return p.into_response(),
    };
    let tenant = who.p.tenant.clone();
    let registry = s.registry.clone();
    let rates = rates(&s, &who);
    let r = tokio::task::spawn_blocking(move || {
        let f = fleet(&*registry, tenant.as_ref())?;
        let open = open_incidents(&*registry, tenant.as_ref())?.len();
        Ok::<_, Problem>(live_value(&f, open, rates))
    })
    .await;
    match r {
        Ok(Ok(v)) => (StatusCode::OK, Json(v)).into_response(),
        Ok(Err(p)) => p.into_response(),
        Err(e) => Problem::internal(e).into_response(),
    }
}

/// `GET /ui/`: the overview.
pub(crate) async fn page(State(s): State<ApiState>, who: Who) -> PageResult {
    let tenant = who.p.tenant.clone();
    let registry = s.registry.clone();
    let (f, open) = blocking(move || {
        let f = fleet(&*registry, tenant.as_ref())?;
        let open = open_incidents(&*registry, tenant.as_ref())?;
        Ok((f, open))
    })
    .await?;
    let msg_rates = rates(&s, &who);
    let trend = s
        .history
        .as_ref()
        .map(|h| h.score_trend(who.p.tenant.as_ref()))
        .unwrap_or_default();
    let every = s.history.as_ref().map_or(0, |h| h.every().as_secs());
    let body = html! {
        section aria-labelledby="tiers-h" {
            h2 #tiers-h { "Devices by tier" }
            p.muted {
                span data-live="devices" { (f.total()) } " devices"
                @if let Some(t) = &who.p.tenant { " in tenant " (t) }
                ". Live figures refresh every few seconds. "
                span.muted data-live-status { "" }
            }
            ul.cards {
                @for tier in [Tier::Trusted, Tier::Restricted, Tier::Quarantined, Tier::Blocked] {
                    li class={ "card card-" (tier.as_str()) } {
                        a href={ "/ui/devices?tier=" (tier.as_str()) } {
                            span.count data-live=(tier.as_str()) id={ "count-" (tier.as_str()) } {
                                (f.of(tier))
                            }
                            span.label { (tier.as_str()) }
                        }
                    }
                }
                li.card {
                    span.count data-live="unassessed" { (f.unassessed) }
                    span.label { "not yet assessed" }
                }
            }
        }
        section aria-labelledby="hist-h" {
            h2 #hist-h { "Trust score distribution" }
            (histogram(&f.bands))
        }
        section aria-labelledby="trend-h" {
            h2 #trend-h { "Score trend" }
            (trend_chart(&trend))
            @if who.p.tenant.is_none() {
                p {
                    "Messages: "
                    span.big data-live="messages_in" { (msg_rates.0) } " /s in, "
                    span.big data-live="messages_out" { (msg_rates.1) } " /s out"
                    span.muted { " (the whole broker, over the last " (every) " s)" }
                }
            }
        }
        section aria-labelledby="inc-h" {
            h2 #inc-h { "Open incidents" }
            p {
                span.big data-live="open_incidents" id="open-incidents" { (open.len()) }
                " open. "
                a href="/ui/incidents?state=open" { "All open incidents" }
            }
            @if open.is_empty() {
                p.muted { "No open incident." }
            } @else {
                (incident_table(&open[..open.len().min(5)]))
            }
        }
    };
    Ok(layout::ok(layout::page(
        &who,
        Nav::Overview,
        "Fleet overview",
        body,
    )))
}

/// A table of incidents, linking each.
pub(crate) fn incident_table(list: &[Incident]) -> Markup {
    html! {
        div.table-wrap {
            table.responsive {
                thead { tr {
                    th scope="col" { "Incident" }
                    th scope="col" { "Kind" }
                    th scope="col" { "Subject" }
                    th scope="col" { "Severity" }
                    th scope="col" { "State" }
                    th scope="col" { "Last seen" }
                    th scope="col" { "Summary" }
                } }
                tbody {
                    @for i in list {
                        tr {
                            td data-label="Incident" {
                                a href={ "/ui/incidents/" (i.id.get()) } { (i.id) }
                            }
                            td data-label="Kind" { (i.kind) }
                            td data-label="Subject" {
                                @if let Some(d) = &i.device {
                                    a href={ "/ui/devices/" (enc(d.tenant.as_str())) "/" (enc(d.device.as_str())) } { (d) }
                                } @else if let Some(p) = &i.peer {
                                    "address " (p)
                                } @else { "—" }
                            }
                            td data-label="Severity" { (layout::badge(&i.max_severity.to_string())) }
                            td data-label="State" { (layout::badge(i.state.as_str())) }
                            td data-label="Last seen" { (layout::when(i.last_seen)) }
                            td data-label="Summary" { (i.summary) }
                        }
                    }
                }
            }
        }
    }
}

/// The mean trust score over the last day as an inline SVG line, with a text alternative.
fn trend_chart(points: &[(i64, f64)]) -> Markup {
    const W: f64 = 460.0;
    const H: f64 = 160.0;
    const LEFT: f64 = 40.0;
    const BOTTOM: f64 = 24.0;
    const TOP: f64 = 10.0;
    if points.len() < 2 {
        return html! {
            p.muted { "The trend of the fleet's mean score appears once it has been sampled twice (every few seconds since the server started)." }
        };
    }
    let (t0, t1) = (points[0].0, points[points.len() - 1].0);
    let span = (t1 - t0).max(1) as f64;
    let x = |t: i64| LEFT + (t - t0) as f64 / span * (W - LEFT);
    let y = |v: f64| TOP + (100.0 - v.clamp(0.0, 100.0)) / 100.0 * (H - TOP - BOTTOM);
    let path = points
        .iter()
        .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
        .collect::<Vec<_>>()
        .join(" ");
    let (lo, hi) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), (_, v)| {
            (lo.min(*v), hi.max(*v))
        });
    let now = points[points.len() - 1].1;
    let secs = t1 - t0;
    let over = match secs {
        0..120 => format!("{secs} seconds"),
        120..7200 => format!("{} minutes", secs / 60),
        _ => format!("{} hours", secs / 3600),
    };
    let desc = format!(
        "Mean trust score over the last {over}: between {lo:.1} and {hi:.1}, now {now:.1}."
    );

    html! {
        figure.chart {
            svg role="img" aria-labelledby="trend-title trend-desc"
                viewBox={ "0 0 " (W) " " (H) } width="100%" preserveAspectRatio="xMidYMid meet" {
                title #trend-title { "Mean trust score over time" }
                desc #trend-desc { (desc) }
                line.axis x1=(LEFT) y1=(H - BOTTOM) x2=(W) y2=(H - BOTTOM) {}
                line.axis x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(H - BOTTOM) {}
                text.tick x=(LEFT - 6.0) y=(TOP + 4.0) text-anchor="end" { "100" }
                text.tick x=(LEFT - 6.0) y=(H - BOTTOM) text-anchor="end" { "0" }
                polyline.trend points=(path) {}
            }
            figcaption { (desc) }
        }
    }
}

/// An inline SVG histogram of the score bands, with the same figures as a table.
fn histogram(bands: &[usize; 10]) -> Markup {
    const W: usize = 460;
    const H: usize = 220;
    const LEFT: usize = 40;
    const BOTTOM: usize = 30;
    const TOP: usize = 20;
    let max = bands.iter().copied().max().unwrap_or(0).max(1);
    let plot_h = H - BOTTOM - TOP;
    let slot = (W - LEFT) / 10;
    let label = |i: usize| {
        if i == 9 {
            "90–100".to_owned()
        } else {
            format!("{}–{}", i * 10, i * 10 + 9)
        }
    };
    let summary = bands
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| format!("{n} with a score of {}", label(i)))
        .collect::<Vec<_>>()
        .join(", ");
    let desc = if summary.is_empty() {
        "No device has a score yet.".to_owned()
    } else {
        format!("Devices by trust score: {summary}.")
    };
    html! {
        figure.chart {
            svg role="img" aria-labelledby="hist-title hist-desc"
                viewBox={ "0 0 " (W) " " (H) } width="100%" preserveAspectRatio="xMidYMid meet" {
                title #hist-title { "Trust score distribution" }
                desc #hist-desc { (desc) }
                line.axis x1=(LEFT) y1=(H - BOTTOM) x2=(W) y2=(H - BOTTOM) {}
                line.axis x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(H - BOTTOM) {}
                text.tick x=(LEFT - 6) y=(TOP + 4) text-anchor="end" { (max) }
                text.tick x=(LEFT - 6) y=(H - BOTTOM) text-anchor="end" { "0" }
                @for (i, n) in bands.iter().enumerate() {
                    @let h = n * plot_h / max;
                    @let x = LEFT + i * slot + 4;
                    @let class = match i { 0..=3 => "bar low", 4..=6 => "bar mid", _ => "bar high" };
                    rect class=(class) x=(x) y=(H - BOTTOM - h) width=(slot - 8) height=(h) {}
                    @if *n > 0 {
                        text.value x=(x + (slot - 8) / 2) y=(H - BOTTOM - h - 3) text-anchor="middle" { (n) }
                    }
                    text.tick x=(x + (slot - 8) / 2) y=(H - BOTTOM + 16) text-anchor="middle" {
                        (i * 10)
                    }
                }
            }
            figcaption { (desc) }
        }
        details {
            summary { "Score distribution as a table" }
            div.table-wrap {
                table {
                    thead { tr { th scope="col" { "Score" } th scope="col" { "Devices" } } }
                    tbody {
                        @for (i, n) in bands.iter().enumerate() {
                            tr { td { (label(i)) } td { (n) } }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trend_has_a_text_alternative() {
        let s = trend_chart(&[(0, 90.0), (600, 70.0), (1200, 80.0)]).into_string();
        assert!(
            s.contains("last 20 minutes: between 70.0 and 90.0, now 80.0"),
            "{s}"
        );
        assert!(s.contains("<polyline"), "{s}");
        assert!(!s.contains("style="), "{s}");
        assert!(
            trend_chart(&[(0, 90.0)])
                .into_string()
                .contains("appears once")
        );
    }

    #[test]
    fn histogram_has_a_text_alternative() {
        let mut bands = [0; 10];
        bands[9] = 3;
        bands[2] = 1;
        let s = histogram(&bands).into_string();
        assert!(s.contains("3 with a score of 90–100"), "{s}");
        assert!(s.contains("<title id=\"hist-title\">"), "{s}");
        assert!(!s.contains("style="), "{s}");
    }
}
