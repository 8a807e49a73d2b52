//! What a client sends to link a provider connection, parsed at the edge:
//! the body as sent ([`LinkFields`]) becomes a [`Link`], which names its
//! provider and carries exactly the one credential that provider's link
//! flow gives, already checked; or a [`LinkError`] naming the wrong field.

use std::fmt;

use serde::Deserialize;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};

use crate::model::ProviderKind;

/// A one-time credential from a provider's link or consent flow (Plaid's
/// `public_token`, an OAuth authorization code): 1 to 512 characters, not
/// all blank. Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct OneTimeCode(String);

impl OneTimeCode {
    pub fn parse(s: impl Into<String>) -> Result<Self, &'static str> {
        let s = s.into();
        if s.trim().is_empty() || s.len() > 512 {
            return Err("must be 1 to 512 characters, not all blank");
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OneTimeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OneTimeCode(…)")
    }
}

/// Links a provider connection: the provider, and the one credential its
/// link flow gives. (Its OpenAPI schema, `CreateConnection`, is written out
/// below: each variant an object that refuses other properties, as
/// [`LinkFields`] does.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// A cursor-style connection (Plaid): the one-time token from the link
    /// flow.
    Plaid { public_token: OneTimeCode },
    /// An OAuth (date-window) connection (Schwab): the code the consent
    /// step redirected with.
    Schwab { authorization_code: OneTimeCode },
}

/// The schema of one way to link (`LinkPlaid`, `LinkSchwab`): the provider
/// and its one credential, nothing else.
fn variant(provider: &str, doc: &str, field: &str, field_doc: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .description(Some(doc))
        .property(
            "provider",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([provider])),
        )
        .property(
            field,
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(field_doc))
                .min_length(Some(1))
                .max_length(Some(512))
                .pattern(Some("\\S")),
        )
        .required("provider")
        .required(field)
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .into()
}

impl utoipa::PartialSchema for Link {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .description(Some(
                "Links a provider connection: the provider, and the one credential its link flow gives.",
            ))
            .item(Ref::from_schema_name("LinkPlaid"))
            .item(Ref::from_schema_name("LinkSchwab"))
            .into()
    }
}

impl utoipa::ToSchema for Link {
    fn name() -> std::borrow::Cow<'static, str> {
        "CreateConnection".into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((
            "LinkPlaid".into(),
            variant(
                "plaid",
                "A cursor-style connection (Plaid).",
                "public_token",
                "The one-time token from the link flow.",
            ),
        ));
        schemas.push((
            "LinkSchwab".into(),
            variant(
                "schwab",
                "An OAuth (date-window) connection (Schwab).",
                "authorization_code",
                "The code the consent step redirected with.",
            ),
        ));
    }
}

impl Link {
    pub fn provider(&self) -> ProviderKind {
        match self {
            Self::Plaid { .. } => ProviderKind::Plaid,
            Self::Schwab { .. } => ProviderKind::Schwab,
        }
    }
}

/// The body as sent, before it is a [`Link`]: every field a link may
/// carry, so a wrong combination gets a message naming the field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkFields {
    provider: ProviderKind,
    #[serde(default)]
    public_token: Option<String>,
    #[serde(default)]
    authorization_code: Option<String>,
}

/// Why a body is not a [`Link`]: the field, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkError {
    pub field: &'static str,
    pub message: String,
}

impl TryFrom<LinkFields> for Link {
    type Error = LinkError;

    fn try_from(f: LinkFields) -> Result<Self, LinkError> {
        let provider = f.provider.as_str();
        let (needed, other) = match f.provider {
            ProviderKind::Plaid => (
                ("public_token", f.public_token),
                ("authorization_code", f.authorization_code),
            ),
            ProviderKind::Schwab => (
                ("authorization_code", f.authorization_code),
                ("public_token", f.public_token),
            ),
        };
        let refuse = |field, message| LinkError { field, message };
        if other.1.is_some() {
            return Err(refuse(
                other.0,
                format!("is not used by provider {provider}; send {}", needed.0),
            ));
        }
        let code = needed
            .1
            .ok_or_else(|| refuse(needed.0, format!("is required for provider {provider}")))
            .and_then(|v| OneTimeCode::parse(v).map_err(|m| refuse(needed.0, m.to_owned())))?;
        Ok(match f.provider {
            ProviderKind::Plaid => Self::Plaid { public_token: code },
            ProviderKind::Schwab => Self::Schwab {
                authorization_code: code,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn link(v: serde_json::Value) -> Result<Link, String> {
        let fields: LinkFields = serde_json::from_value(v).map_err(|e| e.to_string())?;
        Link::try_from(fields).map_err(|e| format!("{}: {}", e.field, e.message))
    }

    #[test]
    fn a_link_carries_exactly_its_providers_credential() {
        let l = link(json!({"provider": "plaid", "public_token": "public-x"})).unwrap();
        assert_eq!(l.provider(), ProviderKind::Plaid);
        let l = link(json!({"provider": "schwab", "authorization_code": "c"})).unwrap();
        assert_eq!(l.provider(), ProviderKind::Schwab);
        for (body, says) in [
            (
                json!({"provider": "schwab", "public_token": "x"}),
                "public_token: is not used",
            ),
            (json!({"provider": "plaid"}), "public_token: is required"),
            (
                json!({"provider": "plaid", "public_token": "  "}),
                "public_token: must be 1 to 512",
            ),
            (
                json!({"provider": "plaid", "public_token": "x".repeat(513)}),
                "must be 1 to 512",
            ),
            (
                json!({"provider": "mint", "public_token": "x"}),
                "unknown variant",
            ),
            (
                json!({"provider": "plaid", "public_token": "x", "extra": 1}),
                "extra",
            ),
        ] {
            let e = link(body.clone()).unwrap_err();
            assert!(e.contains(says), "{body}: {e}");
        }
        let secret = link(json!({"provider": "plaid", "public_token": "secret-x"})).unwrap();
        assert!(!format!("{secret:?}").contains("secret-x"));
    }
}
