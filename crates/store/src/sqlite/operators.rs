//! Operators, API tokens and dashboard sessions on SQLite.

use std::time::Duration;

use gatehouse_types::TenantId;
use rusqlite::{Connection, OptionalExtension, Row, params};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use super::{
    SqliteStore, append_tx, conv, hash_secret, parse, parse_opt, random, secs, ts, ts_opt, u32_col,
    with_detail, write_err,
};
use crate::audit::AuditEntry;
use crate::error::{ReadError, WriteError};
use crate::hex;
use crate::operator::*;
use crate::traits::OperatorStore;

/// Longest API token label, in characters.
const MAX_LABEL: usize = 200;

const OPERATOR_COLS: &str = "name, role, tenant, created_at, disabled, failed_logins, \
                             locked_until, password_hash IS NOT NULL";

fn operator_row(r: &Row<'_>) -> rusqlite::Result<Operator> {
    Ok(Operator {
        name: parse(r, 0)?,
        role: parse(r, 1)?,
        tenant: parse_opt(r, 2)?,
        created_at: ts(r, 3)?,
        disabled: r.get::<_, i64>(4)? != 0,
        failed_logins: u32_col(r, 5)?,
        locked_until: ts_opt(r, 6)?,
        has_password: r.get(7)?,
    })
}

const TOKEN_COLS: &str = "id, operator, label, permissions, created_at, expires_at, revoked_at";

fn token_row(r: &Row<'_>) -> rusqlite::Result<ApiToken> {
    let perms: String = r.get(3)?;
    let names: Vec<String> = serde_json::from_str(&perms).map_err(|e| conv(3, e))?;
    let permissions = names
        .iter()
        .map(|n| n.parse::<Permission>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| conv(3, e))?;
    Ok(ApiToken {
        id: r.get(0)?,
        operator: parse(r, 1)?,
        label: r.get(2)?,
        permissions,
        created_at: ts(r, 4)?,
        expires_at: ts(r, 5)?,
        revoked_at: ts_opt(r, 6)?,
    })
}

fn get_operator_tx(c: &Connection, name: &OperatorName) -> Result<Operator, WriteError> {
    c.query_row(
        &format!("SELECT {OPERATOR_COLS} FROM operators WHERE name = ?1"),
        [name.as_str()],
        operator_row,
    )
    .optional()
    .map_err(write_err("operator"))?
    .ok_or_else(|| WriteError::NotFound {
        what: format!("operator {name}"),
    })
}

fn add(t: OffsetDateTime, d: Duration) -> OffsetDateTime {
    t.checked_add(time::Duration::try_from(d).unwrap_or(time::Duration::MAX))
        .unwrap_or(OffsetDateTime::new_utc(
            time::Date::MAX,
            time::Time::MIDNIGHT,
        ))
}

impl OperatorStore for SqliteStore {
    fn create_operator(&self, o: &NewOperator, audit: &AuditEntry) -> Result<Operator, WriteError> {
        self.write(|tx| {
            if let Some(t) = &o.tenant {
                super::require(
                    tx,
                    "SELECT 1 FROM tenants WHERE id = ?1",
                    [t.as_str()],
                    || format!("tenant {t}"),
                )?;
            }
            tx.execute(
                "INSERT INTO operators (name, role, tenant, password_hash, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    o.name.as_str(),
                    o.role.as_str(),
                    o.tenant.as_ref().map(TenantId::as_str),
                    o.password_hash,
                    secs(audit.at)
                ],
            )
            .map_err(write_err(&format!("operator {}", o.name)))?;
            append_tx(tx, audit)?;
            get_operator_tx(tx, &o.name)
        })
    }

    fn get_operator(&self, name: &OperatorName) -> Result<Option<Operator>, ReadError> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {OPERATOR_COLS} FROM operators WHERE name = ?1"),
                [name.as_str()],
                operator_row,
            )
            .optional()
        })
    }

    fn list_operators(&self, tenant: Option<&TenantId>) -> Result<Vec<Operator>, ReadError> {
        match tenant {
            Some(t) => self.list(
                &format!("SELECT {OPERATOR_COLS} FROM operators WHERE tenant = ?1 ORDER BY name"),
                [t.as_str()],
                operator_row,
            ),
            None => self.list(
                &format!("SELECT {OPERATOR_COLS} FROM operators ORDER BY name"),
                [],
                operator_row,
            ),
        }
    }

    fn count_operators(&self) -> Result<u64, ReadError> {
        self.read(|c| {
            c.query_row("SELECT COUNT(*) FROM operators", [], |r| {
                let n: i64 = r.get(0)?;
                u64::try_from(n).map_err(|e| conv(0, e))
            })
        })
    }

    fn password_hash(&self, name: &OperatorName) -> Result<Option<String>, ReadError> {
        self.read(|c| {
            c.query_row(
                "SELECT password_hash FROM operators WHERE name = ?1",
                [name.as_str()],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
        })
    }

    fn set_password(
        &self,
        name: &OperatorName,
        hash: &str,
        audit: &AuditEntry,
    ) -> Result<Operator, WriteError> {
        self.write(|tx| {
            get_operator_tx(tx, name)?;
            tx.execute(
                "UPDATE operators SET password_hash = ?2, failed_logins = 0, \
                 locked_until = NULL WHERE name = ?1",
                params![name.as_str(), hash],
            )
            .map_err(write_err("operator"))?;
            tx.execute(
                "DELETE FROM web_sessions WHERE operator = ?1",
                [name.as_str()],
            )
            .map_err(write_err("session"))?;
            append_tx(tx, audit)?;
            get_operator_tx(tx, name)
        })
    }

    fn set_operator_disabled(
        &self,
        name: &OperatorName,
        disabled: bool,
        audit: &AuditEntry,
    ) -> Result<Operator, WriteError> {
        self.write(|tx| {
            get_operator_tx(tx, name)?;
            tx.execute(
                "UPDATE operators SET disabled = ?2 WHERE name = ?1",
                params![name.as_str(), i64::from(disabled)],
            )
            .map_err(write_err("operator"))?;
            if disabled {
                tx.execute(
                    "DELETE FROM web_sessions WHERE operator = ?1",
                    [name.as_str()],
                )
                .map_err(write_err("session"))?;
            }
            append_tx(tx, audit)?;
            get_operator_tx(tx, name)
        })
    }

    fn login_failed(
        &self,
        name: &OperatorName,
        max_failures: u32,
        lockout: Duration,
        audit: &AuditEntry,
    ) -> Result<Operator, WriteError> {
        self.write(|tx| {
            let op = get_operator_tx(tx, name)?;
            let failures = op.failed_logins.saturating_add(1);
            let lock = (max_failures > 0 && failures >= max_failures)
                .then(|| secs(add(audit.at, lockout)));
            // The count starts again once a lockout is imposed.
            let stored = if lock.is_some() { 0 } else { failures };
            tx.execute(
                "UPDATE operators SET failed_logins = ?2, \
                 locked_until = COALESCE(?3, locked_until) WHERE name = ?1",
                params![name.as_str(), i64::from(stored), lock],
            )
            .map_err(write_err("operator"))?;
            let audit = match lock {
                Some(until) => with_detail(audit, "locked_until", until.into()),
                None => audit.clone(),
            };
            append_tx(tx, &audit)?;
            get_operator_tx(tx, name)
        })
    }

    fn login_succeeded(
        &self,
        name: &OperatorName,
        ttl: Duration,
        audit: &AuditEntry,
    ) -> Result<(SessionKey, WebSession), WriteError> {
        let key = SessionKey::new(hex::encode(&random::<32>()?));
        let csrf = hex::encode(&random::<32>()?);
        let hash = hash_secret(key.expose());
        let expires_at = add(audit.at, ttl);
        self.write(|tx| {
            get_operator_tx(tx, name)?;
            tx.execute(
                "UPDATE operators SET failed_logins = 0, locked_until = NULL WHERE name = ?1",
                [name.as_str()],
            )
            .map_err(write_err("operator"))?;
            tx.execute(
                "DELETE FROM web_sessions WHERE expires_at <= ?1",
                [secs(audit.at)],
            )
            .map_err(write_err("session"))?;
            tx.execute(
                "INSERT INTO web_sessions (key_hash, operator, csrf, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    &hash[..],
                    name.as_str(),
                    csrf,
                    secs(audit.at),
                    secs(expires_at)
                ],
            )
            .map_err(write_err("session"))?;
            append_tx(tx, audit)?;
            Ok::<_, WriteError>(())
        })?;
        let session = WebSession {
            operator: name.clone(),
            csrf,
            created_at: super::trunc(audit.at)?,
            expires_at: super::trunc(expires_at)?,
        };
        Ok((key, session))
    }

    fn session(
        &self,
        key: &SessionKey,
        now: OffsetDateTime,
    ) -> Result<Option<WebSession>, ReadError> {
        let hash = hash_secret(key.expose());
        self.read(|c| {
            c.query_row(
                "SELECT operator, csrf, created_at, expires_at FROM web_sessions \
                 WHERE key_hash = ?1 AND expires_at > ?2",
                params![&hash[..], secs(now)],
                |r| {
                    Ok(WebSession {
                        operator: parse(r, 0)?,
                        csrf: r.get(1)?,
                        created_at: ts(r, 2)?,
                        expires_at: ts(r, 3)?,
                    })
                },
            )
            .optional()
        })
    }

    fn end_session(&self, key: &SessionKey, audit: &AuditEntry) -> Result<(), WriteError> {
        let hash = hash_secret(key.expose());
        self.write(|tx| {
            tx.execute("DELETE FROM web_sessions WHERE key_hash = ?1", [&hash[..]])
                .map_err(write_err("session"))?;
            append_tx(tx, audit)?;
            Ok(())
        })
    }

    fn create_api_token(
        &self,
        t: &NewApiToken,
        audit: &AuditEntry,
    ) -> Result<(ApiToken, ApiTokenText), WriteError> {
        if t.label.chars().count() > MAX_LABEL || t.label.chars().any(char::is_control) {
            return Err(WriteError::Invalid {
                what: format!("label (at most {MAX_LABEL} characters, no control characters)"),
            });
        }
        if t.permissions.is_empty() {
            return Err(WriteError::Invalid {
                what: "scope (give at least one permission)".to_owned(),
            });
        }
        if t.expires_at <= audit.at {
            return Err(WriteError::Invalid {
                what: "expiry (must be in the future)".to_owned(),
            });
        }
        let id = format!("at-{}", hex::encode(&random::<8>()?));
        let secret = hex::encode(&random::<32>()?);
        let text = ApiTokenText::new(&id, &secret);
        let hash = hash_secret(&secret);
        let mut perms = t.permissions.clone();
        perms.sort();
        perms.dedup();
        let names: Vec<&str> = perms.iter().map(|p| p.as_str()).collect();
        let rec = self.write(|tx| {
            let owner = get_operator_tx(tx, &t.operator)?;
            if let Some(p) = perms.iter().find(|p| !owner.role.allows(**p)) {
                return Err(WriteError::Invalid {
                    what: format!(
                        "scope: {p} is beyond the {} role of operator {}",
                        owner.role, owner.name
                    ),
                });
            }
            tx.execute(
                "INSERT INTO api_tokens (id, operator, label, secret_hash, permissions, \
                 created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    t.operator.as_str(),
                    t.label,
                    &hash[..],
                    serde_json::to_string(&names).unwrap_or_else(|_| "[]".to_owned()),
                    secs(audit.at),
                    secs(t.expires_at)
                ],
            )
            .map_err(write_err("API token"))?;
            append_tx(tx, &with_detail(audit, "api_token", id.clone().into()))?;
            tx.query_row(
                &format!("SELECT {TOKEN_COLS} FROM api_tokens WHERE id = ?1"),
                [&id],
                token_row,
            )
            .map_err(write_err("API token"))
        })?;
        Ok((rec, text))
    }

    fn check_api_token(
        &self,
        text: &ApiTokenText,
        now: OffsetDateTime,
    ) -> Result<Result<(ApiToken, Operator), ApiTokenRefusal>, ReadError> {
        let Some((id, secret)) = text.parts() else {
            return Ok(Err(ApiTokenRefusal::Unknown));
        };
        let row = self.read(|c| {
            c.query_row(
                &format!("SELECT {TOKEN_COLS}, secret_hash FROM api_tokens WHERE id = ?1"),
                [id],
                |r| Ok((token_row(r)?, r.get::<_, Vec<u8>>(7)?)),
            )
            .optional()
        })?;
        let Some((token, stored)) = row else {
            return Ok(Err(ApiTokenRefusal::Unknown));
        };
        if !bool::from(hash_secret(secret).ct_eq(&stored[..])) {
            return Ok(Err(ApiTokenRefusal::Unknown));
        }
        if token.revoked_at.is_some() {
            return Ok(Err(ApiTokenRefusal::Revoked));
        }
        if token.expires_at <= now {
            return Ok(Err(ApiTokenRefusal::Expired));
        }
        match self.get_operator(&token.operator)? {
            Some(op) if !op.disabled => Ok(Ok((token, op))),
            _ => Ok(Err(ApiTokenRefusal::OperatorDisabled)),
        }
    }

    fn get_api_token(&self, id: &str) -> Result<Option<ApiToken>, ReadError> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {TOKEN_COLS} FROM api_tokens WHERE id = ?1"),
                [id],
                token_row,
            )
            .optional()
        })
    }

    fn list_api_tokens(&self, operator: Option<&OperatorName>) -> Result<Vec<ApiToken>, ReadError> {
        match operator {
            Some(o) => self.list(
                &format!(
                    "SELECT {TOKEN_COLS} FROM api_tokens WHERE operator = ?1 \
                     ORDER BY created_at DESC, id"
                ),
                [o.as_str()],
                token_row,
            ),
            None => self.list(
                &format!("SELECT {TOKEN_COLS} FROM api_tokens ORDER BY created_at DESC, id"),
                [],
                token_row,
            ),
        }
    }

    fn revoke_api_token(&self, id: &str, audit: &AuditEntry) -> Result<ApiToken, WriteError> {
        self.write(|tx| {
            let n = tx
                .execute(
                    "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                    params![id, secs(audit.at)],
                )
                .map_err(write_err("API token"))?;
            if n == 0 {
                return Err(WriteError::NotFound {
                    what: format!("API token {id}"),
                });
            }
            append_tx(tx, audit)?;
            tx.query_row(
                &format!("SELECT {TOKEN_COLS} FROM api_tokens WHERE id = ?1"),
                [id],
                token_row,
            )
            .map_err(write_err("API token"))
        })
    }
}
