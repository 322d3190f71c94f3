//! The Cedar policy set in force, and the form that validates or replaces it.

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::{Extension, Form};
use gatehouse_store::Permission;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{self, Call};
use super::layout::{self, Nav};
use super::{PageError, PageResult, Who, see_other};
use crate::{ApiState, ConnInfo, Problem};

/// Largest policy text accepted from the form.
const MAX_TEXT: usize = 60 * 1024;

/// Whether the operator may replace the set: `administer`, and every tenant.
fn may_replace(who: &Who) -> bool {
    who.can(Permission::Administer) && who.p.tenant.is_none()
}

async fn current(s: &ApiState, who: &Who, conn: Option<ConnInfo>) -> Result<Value, PageError> {
    let c = Call {
        method: Method::GET,
        template: "/api/v1/policies",
        path: "/api/v1/policies".to_owned(),
        body: None,
    };
    api::call(s, who, conn, c).await?.map_err(PageError)
}

/// What the form shows after a submission.
enum Checked {
    None,
    Valid(Vec<String>),
    Invalid(String),
}

fn render(who: &Who, set: &Value, text: &str, result: &Checked, done: Option<&str>) -> Markup {
    let ids: Vec<&str> = set["policies"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let version = set["version"].as_u64().unwrap_or(0);
    html! {
        (layout::notice(done))
        p {
            @if version == 0 { "The shipped default policy set is in force" }
            @else { "Version " (version) " of the policy set is in force" }
            ", with " (ids.len()) " policies: "
            @for (n, id) in ids.iter().enumerate() {
                @if n > 0 { ", " }
                code { (id) }
            }
            "."
        }
        @match result {
            Checked::None => {},
            Checked::Valid(ids) => p.notice role="status" {
                "Valid: " (ids.len()) " policies (" (ids.join(", ")) ")."
            },
            Checked::Invalid(e) => div.error role="alert" #policy-error {
                p { "Not valid:" }
                pre { (e) }
            },
        }
        form.stack method="post" action="/ui/policies" {
            (layout::csrf_field(who))
            label for="policy-text" { "Policy set (Cedar)" }
            textarea #policy-text name="text" rows="24" required spellcheck="false"
                aria-describedby=[matches!(result, Checked::Invalid(_)).then_some("policy-error")] { (text) }
            div.buttons {
                button type="submit" name="op" value="validate" { "Validate" }
                @if may_replace(who) {
                    button.primary type="submit" name="op" value="replace" { "Validate and replace" }
                }
            }
        }
        @if !may_replace(who) {
            p.muted { "Replacing the policy set needs the administer permission and an operator of every tenant." }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    done: Option<String>,
}

/// `GET /ui/policies`.
pub(crate) async fn page(
    State(s): State<ApiState>,
    who: Who,
    conn: Option<Extension<ConnInfo>>,
    Query(q): Query<PageQuery>,
) -> PageResult {
    let set = current(&s, &who, conn.map(|Extension(c)| c)).await?;
    let text = set["text"].as_str().unwrap_or("").to_owned();
    let body = render(&who, &set, &text, &Checked::None, q.done.as_deref());
    Ok(layout::ok(layout::page(
        &who,
        Nav::Policies,
        "Policies",
        body,
    )))
}

#[derive(Debug, Deserialize)]
pub(crate) struct PolicyForm {
    csrf: Option<String>,
    op: Option<String>,
    text: Option<String>,
}

/// `POST /ui/policies`: `op=validate` is the REST API's `POST /api/v1/policies/validate`,
/// `op=replace` its `PUT /api/v1/policies` (administer).
pub(crate) async fn submit(
    State(s): State<ApiState>,
    who: Who,
    conn: Option<Extension<ConnInfo>>,
    Form(f): Form<PolicyForm>,
) -> PageResult {
    who.check_csrf(f.csrf.as_deref())?;
    let conn = conn.map(|Extension(c)| c);
    let text = f.text.unwrap_or_default().replace("\r\n", "\n");
    let replace = match f.op.as_deref() {
        Some("replace") => true,
        Some("validate") | None => false,
        Some(_) => return Err(PageError(Problem::bad_request("unknown operation"))),
    };
    if replace {
        who.require(Permission::Administer)?;
    }
    let outcome = if text.len() > MAX_TEXT {
        Err(Problem::invalid("the policy set is too long"))
    } else {
        let body = json!({ "text": text });
        let call = if replace {
            Call {
                method: Method::PUT,
                template: "/api/v1/policies",
                path: "/api/v1/policies".to_owned(),
                body: Some(("application/json", body.to_string())),
            }
        } else {
            Call::post_json(
                "/api/v1/policies/validate",
                "/api/v1/policies/validate".to_owned(),
                &body,
            )
        };
        api::call(&s, &who, conn.clone(), call).await?
    };
    let (status, result) = match outcome {
        Ok(_) if replace => return Ok(see_other("/ui/policies?done=replaced")),
        Ok(v) => (
            StatusCode::OK,
            Checked::Valid(
                v["policies"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
        ),
        Err(p) if p.status == 403 || p.status == 404 => return Err(p.into()),
        Err(p) => (
            StatusCode::from_u16(p.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
            Checked::Invalid(p.message),
        ),
    };
    let set = current(&s, &who, conn).await?;
    let body = render(&who, &set, &text, &result, None);
    Ok(layout::html(
        status,
        layout::page(&who, Nav::Policies, "Policies", body),
    ))
}
