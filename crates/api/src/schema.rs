//! Schemas of the OpenAPI document for the values the handlers check beyond their JSON
//! type: identifiers (their characters and lengths), names from closed sets, durations,
//! cursors. Each is built from the validator's own limits or name list, so the document
//! accepts what the server accepts and refuses what it refuses; a client (or a fuzzer)
//! generating values from the document gets no 422 for a value the document allows.
//!
//! Used with `schema_with` on body fields and query or path parameters.

use gatehouse_store::{ActionState, IncidentState, ManufacturerId, ModelId, Role, TokenId};
use gatehouse_types::{DeviceId, TenantId, Tier};
use utoipa::openapi::schema::{
    AnyOfBuilder, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::{KnownFormat, RefOr};

/// The characters of tenant, device, model and enrollment-token ids.
const ID_CHARS: &str = "[A-Za-z0-9._:-]";

/// The characters a manufacturer's slug may hold.
const SLUG_CHARS: &str = "[a-z0-9._-]";

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn pattern(pattern: String, description: &str) -> Schema {
    string()
        .pattern(Some(pattern))
        .description(Some(description))
        .into()
}

/// One of `names`.
fn names<'a>(names: impl IntoIterator<Item = &'a str>, description: &str) -> Schema {
    string()
        .enum_values(Some(names.into_iter().map(str::to_owned)))
        .description(Some(description))
        .into()
}

/// `schema`, or JSON `null` (an optional body field the handler reads as absent).
fn or_null(schema: Schema) -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(schema)
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .into()
}

fn id(max: usize, description: &str) -> Schema {
    pattern(format!("^{ID_CHARS}{{1,{max}}}$"), description)
}

/// A tenant id.
pub(crate) fn tenant_id() -> Schema {
    id(TenantId::MAX_LEN, "A tenant id")
}

/// A tenant id, or null.
pub(crate) fn tenant_id_or_null() -> RefOr<Schema> {
    or_null(tenant_id())
}

/// A device id.
pub(crate) fn device_id() -> Schema {
    id(DeviceId::MAX_LEN, "A device id")
}

/// A model id.
pub(crate) fn model_id() -> Schema {
    id(ModelId::MAX_LEN, "A model id")
}

/// A model id, or null.
pub(crate) fn model_id_or_null() -> RefOr<Schema> {
    or_null(model_id())
}

/// An enrollment token's id.
pub(crate) fn token_id() -> Schema {
    id(TokenId::MAX_LEN, "An enrollment token's id")
}

/// A manufacturer's slug.
pub(crate) fn manufacturer_id() -> Schema {
    pattern(
        format!("^{SLUG_CHARS}{{1,{}}}$", ManufacturerId::MAX_LEN),
        "A manufacturer's slug: lowercase letters, digits, `-`, `_`, `.`",
    )
}

/// `tenant/device`, or a device of tenant `default`.
pub(crate) fn device_ref() -> Schema {
    pattern(
        format!(
            "^({ID_CHARS}{{1,{}}}/)?{ID_CHARS}{{1,{}}}$",
            TenantId::MAX_LEN,
            DeviceId::MAX_LEN
        ),
        "`tenant/device` (`device` alone is in tenant `default`)",
    )
}

/// An operator's login name (see [`gatehouse_store::OperatorName`]).
pub(crate) fn operator_name() -> Schema {
    pattern(
        "^[a-z0-9][a-z0-9._@-]{0,63}$".to_owned(),
        "An operator's name: 1 to 64 of a-z, 0-9, `.`, `_`, `-`, `@`, starting with a letter or digit",
    )
}

/// An incident id: `inc-42` or `42`.
pub(crate) fn incident_id() -> Schema {
    pattern(
        "^(inc-)?[0-9]{1,19}$".to_owned(),
        "An incident id: `inc-42` or `42`",
    )
}

/// An action id: `act-7` or `7`.
pub(crate) fn action_id() -> Schema {
    pattern(
        "^(act-)?[0-9]{1,19}$".to_owned(),
        "An action id: `act-7` or `7`",
    )
}

/// An IPv4 or IPv6 address.
pub(crate) fn ip_addr() -> Schema {
    AnyOfBuilder::new()
        .item(string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv4))))
        .item(string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv6))))
        .description(Some("An IPv4 or IPv6 address"))
        .into()
}

/// A paging cursor: the `next` of the page before. It is the lowercase hex of the last
/// `tenant/device` listed; anything else is refused.
pub(crate) fn cursor() -> Schema {
    // The hex of one id character: `-` `.` `0-9` `:` `A-Z` `_` `a-z`.
    let c = "(2d|2e|3[0-9a]|4[1-9a-f]|5[0-9a]|5f|6[1-9a-f]|7[0-9a])";
    pattern(
        format!(
            "^{c}{{1,{}}}2f{c}{{1,{}}}$",
            TenantId::MAX_LEN,
            DeviceId::MAX_LEN
        ),
        "The `next` of the page before",
    )
}

/// Text with at least one character that is not white space (what `str::trim` removes),
/// of at most `max_chars` characters when given.
fn not_blank(max_chars: Option<usize>, description: &str) -> Schema {
    string()
        .pattern(Some(
            "[^\\t\\n\\x0B\\f\\r \\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]",
        ))
        .max_length(max_chars)
        .description(Some(description))
        .into()
}

/// The reason of a pin.
pub(crate) fn pin_reason() -> Schema {
    not_blank(
        Some(crate::trust::MAX_PIN_REASON),
        "Why, for the audit log and whoever reads the device's page",
    )
}

/// A claimed serial number.
pub(crate) fn serial() -> Schema {
    not_blank(
        None,
        "The manufacturer's serial number (surrounding white space is dropped)",
    )
}

/// How long a pin holds: a number and a unit, more than nothing and at most a year.
pub(crate) fn pin_duration() -> Schema {
    // Digits bounded per unit so that every value the pattern allows is within a year.
    pattern(
        "^([1-9][0-9]{0,6}(s|sec|secs|second|seconds)\
          |[1-9][0-9]{0,4}(m|min|mins|minute|minutes)\
          |[1-9][0-9]{0,2}(h|hr|hrs|hour|hours)\
          |[1-9][0-9]{0,1}(d|day|days)\
          |[1-9](w|wk|wks|week|weeks))$"
            .to_owned(),
        "How long the pin holds: `30m`, `2h`, `7days` (at most a year)",
    )
}

/// A trust tier.
pub(crate) fn tier() -> Schema {
    names(
        Tier::ALL.iter().map(|t| t.as_str()),
        "`trusted`, `restricted`, `quarantined` or `blocked`",
    )
}

/// An operator's role.
pub(crate) fn role() -> Schema {
    names(Role::ALL.iter().map(|r| r.as_str()), "The operator's role")
}

/// An API token's scope: some of the permissions.
pub(crate) fn permissions_or_null() -> RefOr<Schema> {
    or_null(
        ArrayBuilder::new()
            .items(RefOr::T(names(
                gatehouse_store::Permission::ALL.iter().map(|p| p.as_str()),
                "A permission",
            )))
            .min_items(Some(1))
            .description(Some(
                "Its scope, a subset of the caller's permissions; all of them when absent",
            ))
            .into(),
    )
}

/// An incident's state.
pub(crate) fn incident_state() -> Schema {
    names(
        IncidentState::ALL.iter().map(|s| s.as_str()),
        "`open`, `acknowledged` or `resolved`",
    )
}

/// An action's state.
pub(crate) fn action_state() -> Schema {
    names(
        ActionState::ALL.iter().map(|s| s.as_str()),
        "`pending_approval`, `done`, `failed`, `reversed` or `rejected`",
    )
}

/// The names of [`gatehouse_store::DeviceStatus`].
pub(crate) const DEVICE_STATUSES: [&str; 3] = ["active", "revoked", "blocked"];

/// A device's status.
pub(crate) fn device_status() -> Schema {
    names(DEVICE_STATUSES, "`active`, `revoked` or `blocked`")
}

/// The names of [`gatehouse_store::RevocationReason`] (RFC 5280 `CRLReason`).
pub(crate) const REVOCATION_REASONS: [&str; 10] = [
    "unspecified",
    "key_compromise",
    "ca_compromise",
    "affiliation_changed",
    "superseded",
    "cessation_of_operation",
    "certificate_hold",
    "remove_from_crl",
    "privilege_withdrawn",
    "aa_compromise",
];

/// A revocation reason, or null for `unspecified`.
pub(crate) fn revocation_reason_or_null() -> RefOr<Schema> {
    or_null(names(
        REVOCATION_REASONS,
        "RFC 5280 reason; `unspecified` when absent",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_store::{DeviceStatus, RevocationReason};
    use std::collections::BTreeSet;

    #[test]
    fn every_documented_name_is_one_the_server_accepts_and_none_is_missing() {
        let codes: BTreeSet<u8> = REVOCATION_REASONS
            .iter()
            .map(|r| {
                serde_json::from_value::<RevocationReason>(serde_json::json!(r))
                    .unwrap()
                    .code()
            })
            .collect();
        // Every CRLReason code RFC 5280 defines (7 is unused).
        assert_eq!(codes, BTreeSet::from([0, 1, 2, 3, 4, 5, 6, 8, 9, 10]));
        for s in DEVICE_STATUSES {
            serde_json::from_value::<DeviceStatus>(serde_json::json!(s)).unwrap();
        }
        for t in Tier::ALL {
            let back: Tier = serde_json::from_value(serde_json::json!(t.as_str())).unwrap();
            assert_eq!(back, t);
        }
    }

    #[test]
    fn id_patterns_follow_the_validators() {
        let json = |s: Schema| serde_json::to_value(s).unwrap();
        assert_eq!(
            json(tenant_id())["pattern"],
            format!("^[A-Za-z0-9._:-]{{1,{}}}$", TenantId::MAX_LEN)
        );
        assert!(
            json(pin_duration())["pattern"]
                .as_str()
                .unwrap()
                .contains("|[1-9]")
        );
    }
}
