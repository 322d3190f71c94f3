//! The page shell (header, navigation, main), the error page, and small pieces shared by
//! the pages: times, tier badges, POST buttons with the CSRF token.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use gatehouse_store::Permission;
use maud::{DOCTYPE, Markup, html};
use time::OffsetDateTime;

use super::Who;

/// The sections of the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Devices,
    Incidents,
    Models,
    Policies,
    Audit,
}

/// A rendered page with its status.
pub(crate) fn html(status: StatusCode, body: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body.into_string(),
    )
        .into_response()
}

/// A 200 page.
pub(crate) fn ok(body: Markup) -> Response {
    html(StatusCode::OK, body)
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="no-referrer";
            title { (title) " · Gatehouse" }
            link rel="stylesheet" href="/ui/static/style.css";
            script src="/ui/static/app.js" defer {}
        }
    }
}

/// The shell of every page of a logged-in operator.
pub(crate) fn page(who: &Who, nav: Nav, title: &str, body: Markup) -> Markup {
    let items: [(Nav, &str, &str, bool); 6] = [
        (Nav::Overview, "/ui/", "Overview", true),
        (Nav::Devices, "/ui/devices", "Devices", true),
        (Nav::Incidents, "/ui/incidents", "Incidents", true),
        (Nav::Models, "/ui/models", "Models", true),
        (Nav::Policies, "/ui/policies", "Policies", true),
        (
            Nav::Audit,
            "/ui/audit",
            "Audit log",
            who.can(Permission::ReadAudit),
        ),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/" { "Gatehouse" }
                    nav aria-label="Main" {
                        ul {
                            @for (n, href, label, shown) in items {
                                @if shown {
                                    li {
                                        @if n == nav {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    div.me {
                        span {
                            (who.p.operator) " · " (who.p.role)
                            @if let Some(t) = &who.p.tenant { " · tenant " (t) }
                        }
                        form method="post" action="/ui/logout" {
                            (csrf_field(who))
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page for people not logged in (the login form).
pub(crate) fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/ui/" { "Gatehouse" }
                }
                main #main.narrow tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The page of an error: what went wrong, and a way back.
pub(crate) fn error_page(status: StatusCode, message: &str) -> Markup {
    let title = match status.as_u16() {
        403 => "Not allowed",
        404 => "Not found",
        409 => "Could not be done",
        422 => "Not valid",
        429 => "Too many attempts",
        s if s >= 500 => "Something went wrong",
        _ => "Could not be done",
    };
    bare(
        title,
        html! {
            p.error role="alert" { (message) }
            p.muted { "HTTP status " (status.as_u16()) }
            p { a href="/ui/" { "Back to the overview" } }
        },
    )
}

/// The hidden CSRF field every form of a session carries.
pub(crate) fn csrf_field(who: &Who) -> Markup {
    html! { input type="hidden" name="csrf" value=(who.csrf); }
}

/// A form with one button that POSTs to `action`, with the CSRF token; `note` adds an
/// optional labelled note field (its `id` must be unique on the page).
pub(crate) fn button(
    who: &Who,
    action: &str,
    label: &str,
    class: &str,
    note: Option<&str>,
) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf_field(who))
            @if let Some(id) = note {
                label for=(id) { "Note for " (label.to_lowercase()) " (optional)" }
                input id=(id) name="note" type="text" maxlength="2048";
            }
            button type="submit" class=(class) { (label) }
        }
    }
}

/// `2026-01-02 03:04:05 UTC` in a `<time>` element.
pub(crate) fn when(t: OffsetDateTime) -> Markup {
    let t = t.to_offset(time::UtcOffset::UTC);
    let text = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let iso = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    html! { time datetime=(iso) { (text) } }
}

/// [`when`] for unix seconds.
pub(crate) fn when_unix(secs: i64) -> Markup {
    match OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => when(t),
        Err(_) => html! { (secs) },
    }
}

/// [`when`] for a `SystemTime`.
pub(crate) fn when_system(t: std::time::SystemTime) -> Markup {
    when(OffsetDateTime::from(t))
}

/// A tier as a badge (colour and text).
pub(crate) fn tier_badge(tier: &str) -> Markup {
    let class = match tier {
        "trusted" => "badge tier-trusted",
        "restricted" => "badge tier-restricted",
        "quarantined" => "badge tier-quarantined",
        "blocked" => "badge tier-blocked",
        _ => "badge",
    };
    html! { span class=(class) { (tier) } }
}

/// A state or severity as a neutral badge.
pub(crate) fn badge(text: &str) -> Markup {
    let class = match text {
        "open" | "critical" | "high" | "failed" | "pending_approval" => "badge warn",
        "resolved" | "done" | "reversed" | "active" | "valid" => "badge good",
        _ => "badge",
    };
    html! { span class=(class) { (text) } }
}

/// A notice at the top of a page, after a change (from `?done=`).
pub(crate) fn notice(done: Option<&str>) -> Markup {
    let text = match done {
        Some("released") => "Released: the quarantine was reversed.",
        Some("acknowledged") => "The incident was acknowledged.",
        Some("resolved") => "The incident was resolved.",
        Some("approved") => "The action was approved and carried out.",
        Some("rejected") => "The action was rejected.",
        Some("reversed") => "The action was reversed.",
        Some("uploaded") => "The profile was uploaded.",
        Some("replaced") => "The policy set was replaced.",
        _ => return html! {},
    };
    html! { p.notice role="status" { (text) } }
}
