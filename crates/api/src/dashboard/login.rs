//! Logging in and out.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use gatehouse_store::{AuditEntry, SessionKey};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout;
use super::{PageResult, Who, blocking, see_other};
use crate::auth::{self, LoginRefusal};
use crate::{ApiState, ConnInfo};

fn login_form(error: Option<&str>, name: &str) -> Markup {
    layout::bare(
        "Log in",
        html! {
            @if let Some(e) = error {
                p.error role="alert" #login-error { (e) }
            }
            form.stack method="post" action="/ui/login" {
                label for="name" { "Name" }
                input #name name="name" type="text" autocomplete="username" required
                    autofocus maxlength="256" value=(name);
                label for="password" { "Password" }
                input #password name="password" type="password"
                    autocomplete="current-password" required maxlength="1024";
                button type="submit" { "Log in" }
            }
        },
    )
}

/// `GET /ui/login`: the form, or the overview for an operator already logged in.
pub(crate) async fn form(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Ok(Some(_)) = super::session(&s, &headers).await {
        return see_other("/ui/");
    }
    layout::ok(login_form(None, ""))
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
}

/// `POST /ui/login`: checks the name and password; on success sets the session cookie and
/// goes to the overview. Failures say only that the name or password was wrong.
pub(crate) async fn submit(
    State(s): State<ApiState>,
    Extension(conn): Extension<ConnInfo>,
    Form(f): Form<LoginForm>,
) -> PageResult {
    const WRONG: &str = "Wrong name or password, or the account is locked or disabled.";
    if f.password.len() > 1024 || f.name.len() > 256 {
        return Ok(layout::html(
            StatusCode::UNAUTHORIZED,
            login_form(Some(WRONG), ""),
        ));
    }
    let auth = s.auth.clone();
    let peer = auth::peer(&conn);
    let name = f.name.clone();
    let outcome = match auth.admit_login(peer) {
        Ok(admission) => blocking(move || auth.login(&name, &f.password, peer, admission)).await?,
        Err(refusal) => Err(refusal),
    };
    Ok(match outcome {
        Ok((key, _session, _op)) => {
            let cookie = auth::session_set_cookie(&key, s.auth.settings().session_ttl);
            let mut res = see_other("/ui/");
            if let Ok(v) = header::HeaderValue::from_str(&cookie) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Err(LoginRefusal::RateLimited) => layout::html(
            StatusCode::TOO_MANY_REQUESTS,
            login_form(
                Some("Too many login attempts from this address. Wait a minute and try again."),
                &f.name,
            ),
        ),
        Err(LoginRefusal::Refused) => {
            layout::html(StatusCode::UNAUTHORIZED, login_form(Some(WRONG), &f.name))
        }
        Err(LoginRefusal::Shed(shed)) => layout::html(
            match shed {
                gatehouse_pki::password::Shed::Rate => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            },
            login_form(
                Some("The server is busy checking logins. Try again in a moment."),
                &f.name,
            ),
        ),
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub(crate) csrf: Option<String>,
}

/// `POST /ui/logout`: ends the session (audited as the REST API's logout is) and clears
/// the cookie.
pub(crate) async fn logout(
    State(s): State<ApiState>,
    who: Who,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> PageResult {
    who.check_csrf(f.csrf.as_deref())?;
    if let Some(key) = auth::session_cookie(&headers) {
        let audit = AuditEntry::new(
            time::OffsetDateTime::now_utc(),
            who.p.actor(),
            "logout",
            who.p.operator.to_string(),
        );
        let store = s.auth.store().clone();
        blocking(move || {
            store.end_session(&SessionKey::from_client(key), &audit)?;
            Ok(())
        })
        .await?;
    }
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/ui/login".to_owned()),
            (header::SET_COOKIE, auth::session_clear_cookie()),
        ],
    )
        .into_response())
}
