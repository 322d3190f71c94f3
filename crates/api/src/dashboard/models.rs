//! Models and their latest profiles, and the profile upload form.

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::{Extension, Form};
use gatehouse_store::{Model, ModelProfile, Permission};
use maud::{Markup, html};
use serde::Deserialize;

use super::api::{self, Call};
use super::layout::{self, Nav};
use super::{PageResult, Who, blocking, enc, see_other};
use crate::{ApiState, ConnInfo, Problem};

/// Largest profile accepted from the form.
const MAX_PROFILE: usize = 60 * 1024;

async fn load(s: &ApiState) -> Result<Vec<(Model, Option<ModelProfile>)>, super::PageError> {
    let registry = s.registry.clone();
    blocking(move || {
        let mut out = Vec::new();
        for m in registry.list_models()? {
            let p = registry.latest_model_profile(&m.id)?;
            out.push((m, p));
        }
        Ok(out)
    })
    .await
}

/// Whether the operator may upload profiles: `administer`, and every tenant (a profile is
/// shared by all).
fn may_upload(who: &Who) -> bool {
    who.can(Permission::Administer) && who.p.tenant.is_none()
}

fn render(
    who: &Who,
    models: &[(Model, Option<ModelProfile>)],
    form: Option<(&str, &str, &str)>,
    done: Option<&str>,
) -> Markup {
    let (sel, text, error) = form.unwrap_or(("", "", ""));
    html! {
        (layout::notice(done))
        @if models.is_empty() { p.muted { "No model is registered." } }
        @for (m, p) in models {
            section.model aria-labelledby={ "m-" (enc(m.id.as_str())) } {
                h2 id={ "m-" (enc(m.id.as_str())) } { (m.display_name) " " span.muted { "(" (m.id) ")" } }
                p { "Made by " (m.manufacturer) "; registered " (layout::when(m.created_at)) "." }
                @match p {
                    None => p.muted { "No profile uploaded: its devices get the fallback topics." },
                    Some(p) => details {
                        summary { "Profile version " (p.version) ", uploaded " (layout::when(p.created_at)) }
                        pre.code { code { (p.toml) } }
                    },
                }
            }
        }
        @if may_upload(who) && !models.is_empty() {
            section aria-labelledby="up-h" {
                h2 #up-h { "Upload a profile" }
                @if !error.is_empty() {
                    p.error role="alert" #upload-error { (error) }
                }
                form.stack method="post" action="/ui/models" {
                    (layout::csrf_field(who))
                    label for="up-model" { "Model" }
                    select #up-model name="model" required {
                        @for (m, _) in models {
                            option value=(m.id) selected[m.id.as_str() == sel] { (m.id) }
                        }
                    }
                    label for="up-toml" { "Profile (TOML)" }
                    textarea #up-toml name="toml" rows="18" required spellcheck="false"
                        aria-describedby=[(!error.is_empty()).then_some("upload-error")] { (text) }
                    button.primary type="submit" { "Validate and upload" }
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    done: Option<String>,
}

/// `GET /ui/models`.
pub(crate) async fn page(
    State(s): State<ApiState>,
    who: Who,
    Query(q): Query<PageQuery>,
) -> PageResult {
    let models = load(&s).await?;
    let body = render(&who, &models, None, q.done.as_deref());
    Ok(layout::ok(layout::page(&who, Nav::Models, "Models", body)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct UploadForm {
    csrf: Option<String>,
    model: Option<String>,
    toml: Option<String>,
}

/// `POST /ui/models`: the REST API's `POST /api/v1/models/{model}/profiles`; a profile
/// that does not validate is shown again with the reason (422).
pub(crate) async fn upload(
    State(s): State<ApiState>,
    who: Who,
    conn: Option<Extension<ConnInfo>>,
    Form(f): Form<UploadForm>,
) -> PageResult {
    who.check_csrf(f.csrf.as_deref())?;
    let model = f.model.unwrap_or_default();
    let text = f.toml.unwrap_or_default().replace("\r\n", "\n");
    let result = if model.is_empty() {
        Err(Problem::invalid("choose a model"))
    } else if text.len() > MAX_PROFILE {
        Err(Problem::invalid("the profile is too long"))
    } else {
        api::call(
            &s,
            &who,
            conn.map(|Extension(c)| c),
            Call {
                method: Method::POST,
                template: "/api/v1/models/{model}/profiles",
                path: format!("/api/v1/models/{}/profiles", enc(&model)),
                body: Some(("application/toml", text.clone())),
            },
        )
        .await?
    };
    match result {
        Ok(_) => Ok(see_other("/ui/models?done=uploaded")),
        Err(p) if p.status == 403 => Err(p.into()),
        Err(p) => {
            let models = load(&s).await?;
            let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
            let body = render(&who, &models, Some((&model, &text, &p.message)), None);
            Ok(layout::html(
                status,
                layout::page(&who, Nav::Models, "Models", body),
            ))
        }
    }
}
