//! JWT bearer authentication (HS256 with a shared secret for now).

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use dashtam_domain::UserId;
use dashtam_domain::ports::LiveSecret;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Operator,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub iat: u64,
    pub iss: String,
    pub aud: String,
    pub role: Role,
}

/// Verifies access tokens.
#[derive(Clone)]
pub struct Auth {
    /// Live: a rotated secret is used from its next refresh on.
    key: LiveSecret,
    validation: Validation,
}

impl Auth {
    pub fn hs256(secret: LiveSecret, issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        Self {
            key: secret,
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let key = DecodingKey::from_secret(self.key.current().expose_secret().as_bytes());
        jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                ApiError::unauthorized(match e.kind() {
                    K::ExpiredSignature => "the access token has expired",
                    K::ImmatureSignature => "the access token is not valid yet",
                    K::InvalidSignature => "the access token's signature is invalid",
                    K::InvalidAlgorithm => "the access token's algorithm is not allowed",
                    K::InvalidIssuer => "the access token's issuer is not accepted",
                    K::InvalidAudience => "the access token's audience is not accepted",
                    K::MissingRequiredClaim(_) => "the access token lacks a required claim",
                    _ => "the access token is malformed",
                })
            })
    }
}

/// Signs a token (development tokens, the demo, benchmarks).
pub fn issue_token(
    secret: &SecretString,
    issuer: &str,
    audience: &str,
    sub: &str,
    role: Role,
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        sub: sub.to_owned(),
        exp: now + ttl.as_secs(),
        nbf: Some(now),
        iat: now,
        iss: issuer.to_owned(),
        aud: audience.to_owned(),
        role,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )
}

/// The authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: UserId,
    pub role: Role,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("an Authorization: Bearer token is required"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be \"Bearer <token>\"")
            })?;
        let claims = state.auth.verify(token)?;
        let user = UserId::parse(&claims.sub)
            .map_err(|e| ApiError::unauthorized(format!("the token's subject is invalid: {e}")))?;
        Ok(Caller {
            user,
            role: claims.role,
        })
    }
}
