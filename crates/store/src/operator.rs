//! Operators (the people and programs that administer Gatehouse), their roles, their API
//! tokens and their dashboard sessions.
//!
//! A role is a fixed set of [`Permission`]s; an API token carries a subset of its owner's
//! (its scope), and a request made with it has the permissions both still hold. An operator
//! bound to a tenant sees and acts on that tenant only; one without a tenant sees every
//! tenant.

use std::fmt;
use std::str::FromStr;

use gatehouse_types::TenantId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What an operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read devices, models, policies, incidents, actions.
    Read,
    /// Read the audit log.
    ReadAudit,
    /// Acknowledge incidents.
    Acknowledge,
    /// Act on devices, incidents and actions: revoke, reinstate, pin, resolve, approve,
    /// release; claims and enrollment tokens.
    Act,
    /// Tenants, manufacturers, models, profiles, policies, operators.
    Administer,
}

impl Permission {
    /// Every permission, in order.
    pub const ALL: [Permission; 5] = [
        Self::Read,
        Self::ReadAudit,
        Self::Acknowledge,
        Self::Act,
        Self::Administer,
    ];

    /// The name used in scopes and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::ReadAudit => "read_audit",
            Self::Acknowledge => "acknowledge",
            Self::Act => "act",
            Self::Administer => "administer",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Not a permission's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} (expected one of: {expected})")]
pub struct UnknownName {
    what: &'static str,
    value: String,
    expected: &'static str,
}

impl FromStr for Permission {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "permission",
                value: s.to_owned(),
                expected: "read, read_audit, acknowledge, act, administer",
            })
    }
}

/// An operator's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Reads and acts on devices, incidents and playbook actions.
    Operator,
    /// Reads, and acknowledges incidents.
    Analyst,
    /// Reads everything, the audit log included; changes nothing.
    Auditor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Self::Admin, Self::Operator, Self::Analyst, Self::Auditor];

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Analyst => "analyst",
            Self::Auditor => "auditor",
        }
    }

    /// What the role may do.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Self::Admin => &[Read, ReadAudit, Acknowledge, Act, Administer],
            Self::Operator => &[Read, Acknowledge, Act],
            Self::Analyst => &[Read, Acknowledge],
            Self::Auditor => &[Read, ReadAudit],
        }
    }

    /// Whether the role holds `p`.
    pub fn allows(self, p: Permission) -> bool {
        self.permissions().contains(&p)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "role",
                value: s.to_owned(),
                expected: "admin, operator, analyst, auditor",
            })
    }
}

/// An operator's login name: 1–64 characters of `a-z`, `0-9`, `.`, `_`, `-`, `@`, starting
/// with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OperatorName(String);

/// Not a valid operator name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid operator name {0:?}: 1-64 characters of a-z, 0-9, '.', '_', '-', '@', starting with a letter or digit"
)]
pub struct BadOperatorName(String);

impl OperatorName {
    /// Checks and wraps `s`.
    pub fn new(s: impl Into<String>) -> Result<Self, BadOperatorName> {
        let s = s.into();
        let ok = (1..=64).contains(&s.len())
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'.' | b'_' | b'-' | b'@')
            });
        if ok {
            Ok(Self(s))
        } else {
            Err(BadOperatorName(s))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OperatorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for OperatorName {
    type Err = BadOperatorName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for OperatorName {
    type Error = BadOperatorName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<OperatorName> for String {
    fn from(n: OperatorName) -> Self {
        n.0
    }
}

/// An operator account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// Login name.
    pub name: OperatorName,
    /// Role.
    pub role: Role,
    /// The one tenant the operator may see, or `None` for all.
    pub tenant: Option<TenantId>,
    /// When created.
    pub created_at: OffsetDateTime,
    /// A disabled operator can neither log in nor use its tokens.
    pub disabled: bool,
    /// Failed logins since the last success.
    pub failed_logins: u32,
    /// Logins are refused until then.
    pub locked_until: Option<OffsetDateTime>,
    /// Whether a password is set (an operator without one uses API tokens only).
    pub has_password: bool,
}

impl Operator {
    /// Whether logins are refused at `now` because of failed attempts.
    pub fn is_locked(&self, now: OffsetDateTime) -> bool {
        self.locked_until.is_some_and(|t| t > now)
    }
}

/// A new operator.
#[derive(Debug, Clone)]
pub struct NewOperator {
    /// Login name.
    pub name: OperatorName,
    /// Role.
    pub role: Role,
    /// Tenant, or `None` for all.
    pub tenant: Option<TenantId>,
    /// PHC string of the password's hash (argon2id), or `None` for token-only operators.
    pub password_hash: Option<String>,
}

/// An API token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Public id, `at-<hex>`; the first part of the token's text.
    pub id: String,
    /// Whose token it is.
    pub operator: OperatorName,
    /// What it is for, for people.
    pub label: String,
    /// Its scope: a subset of the owner's permissions.
    pub permissions: Vec<Permission>,
    /// When created.
    pub created_at: OffsetDateTime,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<OffsetDateTime>,
}

impl ApiToken {
    /// Whether the token may be used at `now`.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// A new API token.
#[derive(Debug, Clone)]
pub struct NewApiToken {
    /// Owner.
    pub operator: OperatorName,
    /// Label.
    pub label: String,
    /// Scope.
    pub permissions: Vec<Permission>,
    /// Expiry.
    pub expires_at: OffsetDateTime,
}

/// An API token's full text, `gha_<id>_<secret>`, shown once at creation.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiTokenText(String);

impl ApiTokenText {
    /// The prefix of every API token.
    pub const PREFIX: &'static str = "gha_";

    pub(crate) fn new(id: &str, secret: &str) -> Self {
        Self(format!("{}{id}_{secret}", Self::PREFIX))
    }

    /// Wraps a token text a client sent.
    pub fn from_client(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The text, for showing once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its id and secret parts, if it has the token shape.
    pub fn parts(&self) -> Option<(&str, &str)> {
        let rest = self.0.strip_prefix(Self::PREFIX)?;
        let (id, secret) = rest.rsplit_once('_')?;
        (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
    }
}

impl fmt::Debug for ApiTokenText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiTokenText(..)")
    }
}

/// A dashboard session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    /// Whose session.
    pub operator: OperatorName,
    /// The session's CSRF token: every state-changing request made with the session's
    /// cookie must carry it.
    pub csrf: String,
    /// When it started.
    pub created_at: OffsetDateTime,
    /// When it ends.
    pub expires_at: OffsetDateTime,
}

/// A new session's cookie value, shown once; the store keeps only its hash.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey(String);

impl SessionKey {
    pub(crate) fn new(s: String) -> Self {
        Self(s)
    }

    /// Wraps a cookie value a client sent.
    pub fn from_client(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// Why an API token was not accepted. Deliberately not more precise towards the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiTokenRefusal {
    /// Not the shape of a token, unknown id, or wrong secret.
    #[error("unknown token")]
    Unknown,
    /// Revoked.
    #[error("token revoked")]
    Revoked,
    /// Expired.
    #[error("token expired")]
    Expired,
    /// Its operator is disabled or gone.
    #[error("the token's operator is disabled")]
    OperatorDisabled,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>().unwrap(), p);
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn auditor_reads_the_audit_log_but_changes_nothing() {
        let a = Role::Auditor;
        assert!(a.allows(Permission::ReadAudit));
        for p in [
            Permission::Acknowledge,
            Permission::Act,
            Permission::Administer,
        ] {
            assert!(!a.allows(p), "{p}");
        }
        assert!(!Role::Operator.allows(Permission::Administer));
        assert!(!Role::Analyst.allows(Permission::Act));
        assert!(Role::Analyst.allows(Permission::Acknowledge));
    }

    #[test]
    fn operator_names() {
        assert!(OperatorName::new("alice").is_ok());
        assert!(OperatorName::new("ops.bot-1@acme").is_ok());
        for bad in ["", "Alice", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(OperatorName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_text_parts() {
        let t = ApiTokenText::new("at-0011", "secret");
        assert_eq!(t.parts(), Some(("at-0011", "secret")));
        assert_eq!(ApiTokenText::from_client("nope").parts(), None);
        assert_eq!(ApiTokenText::from_client("gha__x").parts(), None);
        assert!(!format!("{t:?}").contains("secret"));
    }
}
