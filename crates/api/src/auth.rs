//! Operator authentication and authorization for the REST API and the dashboard.
//!
//! Every route under `/api/v1` except the login itself needs a [`Principal`]: an API token
//! (`Authorization: Bearer gha_…`) or a dashboard session (the `__Host-gh_session` cookie,
//! with the session's CSRF token in `X-CSRF-Token` on every request that changes state).
//! The [`authenticate`] layer finds the principal, checks the permission the route needs
//! ([`required_permission`], deny by default) and hands the principal to the handler, which
//! checks tenants: an object of a tenant the principal may not see is "not found" (404),
//! the same answer as for an object that does not exist.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gatehouse_pki::password::{self, Admission, PasswordChecks, Shed};
use gatehouse_store::{
    ApiToken, ApiTokenText, AuditEntry, Operator, OperatorName, OperatorStore, Permission, Role,
    SessionKey, WebSession,
};
use gatehouse_types::TenantId;
use parking_lot::Mutex;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::{ApiState, ConnInfo, Problem};

/// The session cookie's name. The `__Host-` prefix makes browsers insist on `Secure`,
/// `Path=/` and no `Domain`.
pub const SESSION_COOKIE: &str = "__Host-gh_session";

/// The header that carries a session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Login and session limits, from `[api]` in the configuration.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AuthSettings {
    /// How long a dashboard session lasts.
    pub session_ttl: Duration,
    /// Failed logins in a row that lock an account.
    pub max_failed_logins: u32,
    /// How long a locked account stays locked.
    pub lockout: Duration,
    /// Login attempts one client address may make a minute.
    pub logins_per_minute: u32,
    /// The longest lifetime an API token may be given.
    pub max_token_ttl: Duration,
}

impl Default for AuthSettings {
    /// Sessions of 12 hours; 5 failures lock an account for 15 minutes; 10 login attempts a
    /// minute from one address; tokens live at most 365 days.
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
            max_failed_logins: 5,
            lockout: Duration::from_secs(15 * 60),
            logins_per_minute: 10,
            max_token_ttl: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

impl AuthSettings {
    /// Settings with these values.
    pub fn new(
        session_ttl: Duration,
        max_failed_logins: u32,
        lockout: Duration,
        logins_per_minute: u32,
        max_token_ttl: Duration,
    ) -> Self {
        Self {
            session_ttl,
            max_failed_logins,
            lockout,
            logins_per_minute,
            max_token_ttl,
        }
    }
}

/// Most client addresses the login limiter remembers; beyond, the oldest windows go.
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// The operators' store, the limits, and the login rate limiter.
pub struct Auth {
    store: Arc<dyn OperatorStore>,
    settings: AuthSettings,
    attempts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// The process-wide budget of password checks (shared with the legacy listener).
    checks: Arc<PasswordChecks>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// An API token, by id.
    Token(String),
    /// A dashboard session, with its CSRF token.
    Session {
        /// The token forms and unsafe requests must carry.
        csrf: String,
    },
}

/// The authenticated operator of one request.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Who.
    pub operator: OperatorName,
    /// Their role.
    pub role: Role,
    /// The one tenant they may see, or `None` for all.
    pub tenant: Option<TenantId>,
    /// What this request may do: the role's permissions, narrowed by a token's scope.
    pub permissions: Vec<Permission>,
    /// How.
    pub via: Via,
}

impl Principal {
    fn from_token(op: &Operator, token: &ApiToken) -> Self {
        Self {
            operator: op.name.clone(),
            role: op.role,
            tenant: op.tenant.clone(),
            permissions: token
                .permissions
                .iter()
                .copied()
                .filter(|p| op.role.allows(*p))
                .collect(),
            via: Via::Token(token.id.clone()),
        }
    }

    fn from_session(op: &Operator, session: &WebSession) -> Self {
        Self {
            operator: op.name.clone(),
            role: op.role,
            tenant: op.tenant.clone(),
            permissions: op.role.permissions().to_vec(),
            via: Via::Session {
                csrf: session.csrf.clone(),
            },
        }
    }

    /// The audit actor: `operator:<name>`.
    pub fn actor(&self) -> String {
        format!("operator:{}", self.operator)
    }

    /// Whether this request may do `p`.
    pub fn can(&self, p: Permission) -> bool {
        self.permissions.contains(&p)
    }

    /// 403 unless this request may do `p`.
    pub fn require(&self, p: Permission) -> Result<(), Problem> {
        if self.can(p) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "operator {} ({}) may not do this: it needs the {p} permission{}",
                self.operator,
                self.role,
                match self.via {
                    Via::Token(_) if self.role.allows(p) => ", which this token's scope leaves out",
                    _ => "",
                }
            )))
        }
    }

    /// Whether the operator may see `tenant`'s objects.
    pub fn sees(&self, tenant: &TenantId) -> bool {
        self.tenant.as_ref().is_none_or(|t| t == tenant)
    }

    /// 404 "`what` not found" unless the operator may see `tenant`: to an operator of
    /// another tenant, another tenant's object does not exist.
    pub fn check_tenant(
        &self,
        tenant: &TenantId,
        what: impl FnOnce() -> String,
    ) -> Result<(), Problem> {
        if self.sees(tenant) {
            Ok(())
        } else {
            Err(Problem::not_found(format!("{} not found", what())))
        }
    }

    /// 404 unless the operator sees every tenant, for objects that belong to none (bans
    /// of addresses, findings about bare addresses).
    pub fn check_unscoped(&self, what: impl FnOnce() -> String) -> Result<(), Problem> {
        match &self.tenant {
            None => Ok(()),
            Some(_) => Err(Problem::not_found(format!("{} not found", what()))),
        }
    }

    /// 403 unless the operator sees every tenant: for changes to what all tenants share
    /// (manufacturers, models, policies, tenants).
    pub fn require_unscoped(&self) -> Result<(), Problem> {
        match &self.tenant {
            None => Ok(()),
            Some(t) => Err(Problem::forbidden(format!(
                "operator {} is bound to tenant {t}; this changes what every tenant shares",
                self.operator
            ))),
        }
    }

    /// The tenant a list must be narrowed to: the operator's own, or the one asked for if
    /// the operator sees it (404 otherwise), or none.
    pub fn narrow(&self, asked: Option<TenantId>) -> Result<Option<TenantId>, Problem> {
        match (&self.tenant, asked) {
            (None, asked) => Ok(asked),
            (Some(own), None) => Ok(Some(own.clone())),
            (Some(own), Some(asked)) if *own == asked => Ok(Some(asked)),
            (Some(_), Some(asked)) => Err(Problem::not_found(format!("tenant {asked} not found"))),
        }
    }
}

/// Why a login was refused. The client is told only "wrong name or password"; the audit
/// log and the server's log say which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginRefusal {
    /// Too many attempts from this address.
    RateLimited,
    /// Shed before any hashing: the server's budget of password checks is spent for now.
    Shed(Shed),
    /// Wrong name or password, locked or disabled account.
    Refused,
}

impl Auth {
    /// The service over `store`.
    ///
    /// `checks` bounds the password checks logins may run at once and per second; the
    /// server shares one with its legacy MQTT listener.
    pub fn new(
        store: Arc<dyn OperatorStore>,
        settings: AuthSettings,
        checks: Arc<PasswordChecks>,
    ) -> Self {
        Self {
            store,
            settings,
            attempts: Mutex::new(HashMap::new()),
            checks,
        }
    }

    /// The password-check budget logins draw on.
    pub fn password_checks(&self) -> &Arc<PasswordChecks> {
        &self.checks
    }

    /// Lets a login from `peer` go ahead, or refuses it before any work: the address's own
    /// rate first, then the server's budget of password checks. Never blocks; call it on
    /// the async side and hand the admission to [`Auth::login`] on a blocking thread.
    pub fn admit_login(&self, peer: IpAddr) -> Result<Admission, LoginRefusal> {
        if !self.allow_attempt(peer) {
            tracing::warn!(%peer, "login rate limit reached");
            return Err(LoginRefusal::RateLimited);
        }
        self.checks.admit().map_err(|shed| {
            tracing::warn!(%peer, %shed, "login shed before the password check");
            LoginRefusal::Shed(shed)
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn OperatorStore> {
        &self.store
    }

    /// The limits.
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// Counts a login attempt from `addr`; `false` once the address is over its rate.
    fn allow_attempt(&self, addr: IpAddr) -> bool {
        let now = Instant::now();
        let mut map = self.attempts.lock();
        if map.len() >= MAX_TRACKED_ADDRESSES {
            map.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
            if map.len() >= MAX_TRACKED_ADDRESSES {
                // Every window is live: a distributed guess. Refuse new addresses until
                // some windows end rather than forget the ones we count.
                return map.contains_key(&addr) && self.bump(&mut map, addr, now);
            }
        }
        self.bump(&mut map, addr, now)
    }

    fn bump(&self, map: &mut HashMap<IpAddr, (Instant, u32)>, addr: IpAddr, now: Instant) -> bool {
        let entry = map.entry(addr).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 <= self.settings.logins_per_minute
    }

    /// Checks a name and password and, when they are right and the account is usable,
    /// starts a session. Blocking (Argon2 and the store): call it off the async threads.
    /// `admission` is the place [`Auth::admit_login`] gave this attempt in the budget.
    pub fn login(
        &self,
        name: &str,
        password: &str,
        peer: IpAddr,
        admission: Admission,
    ) -> Result<Result<(SessionKey, WebSession, Operator), LoginRefusal>, Problem> {
        let now = OffsetDateTime::now_utc();
        let subject: String = name.chars().take(64).collect();
        let refused = |reason: &str| {
            AuditEntry::new(now, format!("login:{peer}"), "login", subject.clone())
                .outcome("refused")
                .reason(reason.to_owned())
        };
        let Ok(op_name) = OperatorName::new(name) else {
            admission.verify_decoy(password.as_bytes());
            self.store
                .append(&refused("no such operator"))
                .map_err(Problem::internal)?;
            return Ok(Err(LoginRefusal::Refused));
        };
        let op = self.store.get_operator(&op_name)?;
        let hash = self.store.password_hash(&op_name)?;
        let (Some(op), Some(hash)) = (op, hash) else {
            admission.verify_decoy(password.as_bytes());
            self.store
                .append(&refused("no such operator, or it has no password"))
                .map_err(Problem::internal)?;
            return Ok(Err(LoginRefusal::Refused));
        };
        let right = admission.verify(&hash, password.as_bytes());
        if op.disabled {
            self.store
                .append(&refused("operator disabled"))
                .map_err(Problem::internal)?;
            return Ok(Err(LoginRefusal::Refused));
        }
        if op.is_locked(now) {
            self.store
                .append(&refused("account locked after failed logins"))
                .map_err(Problem::internal)?;
            return Ok(Err(LoginRefusal::Refused));
        }
        if !right {
            self.store.login_failed(
                &op_name,
                self.settings.max_failed_logins,
                self.settings.lockout,
                &refused("wrong password"),
            )?;
            return Ok(Err(LoginRefusal::Refused));
        }
        let audit = AuditEntry::new(
            now,
            format!("operator:{op_name}"),
            "login",
            op_name.to_string(),
        )
        .detail(serde_json::json!({ "from": peer.to_string() }));
        let (key, session) =
            self.store
                .login_succeeded(&op_name, self.settings.session_ttl, &audit)?;
        Ok(Ok((key, session, op)))
    }

    /// The principal a request's headers prove, if any. Blocking (the store).
    pub fn principal(&self, headers: &HeaderMap) -> Result<Option<Principal>, Problem> {
        let now = OffsetDateTime::now_utc();
        if let Some(token) = bearer(headers) {
            return match self
                .store
                .check_api_token(&ApiTokenText::from_client(token), now)?
            {
                Ok((token, op)) => Ok(Some(Principal::from_token(&op, &token))),
                Err(refusal) => Err(Problem::unauthorized(format!(
                    "the bearer token was not accepted ({refusal})"
                ))),
            };
        }
        let Some(key) = session_cookie(headers) else {
            return Ok(None);
        };
        let Some(session) = self.store.session(&SessionKey::from_client(key), now)? else {
            return Ok(None);
        };
        match self.store.get_operator(&session.operator)? {
            Some(op) if !op.disabled => Ok(Some(Principal::from_session(&op, &session))),
            _ => Ok(None),
        }
    }
}

/// The bearer token in `Authorization`, if any.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim().to_owned())
}

/// The session cookie's value, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// The `Set-Cookie` value that starts a session lasting `ttl`.
pub fn session_set_cookie(key: &SessionKey, ttl: Duration) -> String {
    format!(
        "{SESSION_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        key.expose(),
        ttl.as_secs()
    )
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn session_clear_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether `given` is the session's CSRF token (constant time).
pub fn csrf_matches(expected: &str, given: &str) -> bool {
    !given.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// Hashes an operator's password: Argon2id with the crate's default cost, random salt,
/// PHC string.
pub fn hash_password(password: &str) -> Result<String, Problem> {
    password::hash_password(password.as_bytes())
        .map_err(|e| Problem::internal(format!("hashing a password: {e}")))
}

/// Shortest password accepted for an operator.
pub const MIN_PASSWORD_LEN: usize = 12;

/// A new random password: 24 characters from a 32-letter alphabet (120 bits).
pub fn random_password() -> Result<String, Problem> {
    const ALPHABET: &[u8; 32] = b"abcdefghjkmnpqrstuvwxyz23456789A";
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| Problem::internal(format!("no randomness: {e}")))?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b & 31)] as char)
        .collect())
}

/// The permission a route needs, by method and matched path. Reads need `read` (the audit
/// log `read_audit`); every change is listed; a change not listed needs `administer`.
pub fn required_permission(method: &Method, path: &str) -> Option<Permission> {
    use Permission::*;
    let segments: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
    if path == "/api/v1/session" || path == "/api/v1/session/login" {
        // Who am I, log out: any authenticated principal.
        return None;
    }
    if *method == Method::GET || *method == Method::HEAD {
        return Some(match segments.first() {
            Some(&"audit") => ReadAudit,
            Some(&"operators") => Administer,
            _ => Read,
        });
    }
    Some(match segments.as_slice() {
        // Dry runs and one's own tokens.
        ["policies", "validate"] => Read,
        ["api-tokens"] | ["api-tokens", _, "revoke"] => Read,
        ["incidents", _, "acknowledge"] => Acknowledge,
        ["incidents", _, "resolve"]
        | ["actions", _, "approve" | "reject" | "reverse"]
        | ["bans", _]
        | ["devices", _, _, "revoke" | "reinstate" | "pin" | "release"]
        | ["tenants", _, "claims"]
        | ["tokens"]
        | ["tokens", _, "revoke"] => Act,
        _ => Administer,
    })
}

/// The layer in front of `/api/v1`: finds the principal (401 without one), checks CSRF for
/// session requests that change state (403), checks the route's permission (403), and
/// hands the principal to the handler.
pub async fn authenticate(State(s): State<ApiState>, mut req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    if path == "/api/v1/session/login" {
        return next.run(req).await;
    }
    let auth = s.auth.clone();
    let headers = req.headers().clone();
    let found = tokio::task::spawn_blocking(move || auth.principal(&headers)).await;
    let principal = match found {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => {
            return unauthorized(Problem::unauthorized(
                "log in, or send an API token as Authorization: Bearer <token>",
            ));
        }
        Ok(Err(p)) => return unauthorized(p),
        Err(e) => return Problem::internal(e).into_response(),
    };
    let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if let Via::Session { csrf } = &principal.via
        && unsafe_method
    {
        let given = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !csrf_matches(csrf, given) {
            return Problem::forbidden(format!(
                "a session request that changes state must carry the session's CSRF token in {CSRF_HEADER}"
            ))
            .into_response();
        }
    }
    if let Some(p) = required_permission(req.method(), &path)
        && let Err(problem) = principal.require(p)
    {
        return problem.into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

fn unauthorized(p: Problem) -> Response {
    let mut r = p.into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"gatehouse\""),
    );
    r
}

/// The peer of a request, for the login limiter.
pub(crate) fn peer(conn: &ConnInfo) -> IpAddr {
    conn.peer.ip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_read_and_the_audit_log_read_audit() {
        let get = Method::GET;
        assert_eq!(
            required_permission(&get, "/api/v1/devices"),
            Some(Permission::Read)
        );
        assert_eq!(
            required_permission(&get, "/api/v1/audit/verify"),
            Some(Permission::ReadAudit)
        );
        assert_eq!(
            required_permission(&get, "/api/v1/operators"),
            Some(Permission::Administer)
        );
    }

    #[test]
    fn unlisted_changes_need_administer() {
        let post = Method::POST;
        assert_eq!(
            required_permission(&post, "/api/v1/devices/{tenant}/{device}/revoke"),
            Some(Permission::Act)
        );
        assert_eq!(
            required_permission(&post, "/api/v1/incidents/{id}/acknowledge"),
            Some(Permission::Acknowledge)
        );
        for path in [
            "/api/v1/tenants",
            "/api/v1/manufacturers",
            "/api/v1/models/{model}/profiles",
            "/api/v1/revocations/batch",
            "/api/v1/operators",
            "/api/v1/something/new",
        ] {
            assert_eq!(
                required_permission(&post, path),
                Some(Permission::Administer),
                "{path}"
            );
        }
        assert_eq!(
            required_permission(&Method::PUT, "/api/v1/policies"),
            Some(Permission::Administer)
        );
    }

    #[test]
    fn cookie_and_bearer_are_read() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("a=b; {SESSION_COOKIE}=k123; c=d").parse().unwrap(),
        );
        h.insert(header::AUTHORIZATION, "bearer gha_x_y".parse().unwrap());
        assert_eq!(session_cookie(&h).as_deref(), Some("k123"));
        assert_eq!(bearer(&h).as_deref(), Some("gha_x_y"));
        assert!(
            session_set_cookie(&SessionKey::from_client("k"), Duration::from_secs(60))
                .contains("HttpOnly; SameSite=Strict")
        );
    }

    #[test]
    fn csrf_compare() {
        assert!(csrf_matches("abc", "abc"));
        assert!(!csrf_matches("abc", "abd"));
        assert!(!csrf_matches("abc", ""));
    }

    #[test]
    fn passwords_hash_and_verify() {
        let p = random_password().unwrap();
        assert_eq!(p.len(), 24);
        let h = hash_password(&p).unwrap();
        let checks = PasswordChecks::new(password::PasswordBudget::default());
        assert!(checks.admit().unwrap().verify(&h, p.as_bytes()));
        assert!(!checks.admit().unwrap().verify(&h, b"wrong"));
    }

    #[test]
    fn narrowing_to_a_tenant() {
        let acme = TenantId::new("acme").unwrap();
        let other = TenantId::new("other").unwrap();
        let p = Principal {
            operator: OperatorName::new("o").unwrap(),
            role: Role::Operator,
            tenant: Some(acme.clone()),
            permissions: Role::Operator.permissions().to_vec(),
            via: Via::Token("at-1".into()),
        };
        assert_eq!(p.narrow(None).unwrap(), Some(acme.clone()));
        assert_eq!(p.narrow(Some(acme.clone())).unwrap(), Some(acme.clone()));
        assert_eq!(p.narrow(Some(other.clone())).unwrap_err().status, 404);
        assert!(p.check_tenant(&other, || "device other/x".into()).is_err());
        assert!(p.require(Permission::Administer).is_err());
    }
}
