//! JWT bearer authentication (HS256 with a shared secret for now).

use std::collections::HashMap;
use std::sync::Arc;
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

/// Verifies access tokens: HS256 with a shared secret (development), and
/// RS256 / ES256 with public keys chosen by the token's `kid` (production;
/// several at once, for rotation). Only the algorithms in the allow-list are
/// accepted, and each key only with its own algorithm.
pub struct Auth {
    allowed: Vec<Algorithm>,
    /// Live: a rotated secret is used from its next refresh on.
    hs256: Option<LiveSecret>,
    /// Live JSON `{"keys": [{"kid", "alg", "pem"}]}`; parsed once per value.
    public_keys: Option<LiveSecret>,
    parsed: std::sync::RwLock<(String, Arc<PublicKeys>)>,
    issuer: String,
    audience: String,
}

/// kid → (the key's algorithm, the key).
pub type PublicKeys = HashMap<String, (Algorithm, DecodingKey)>;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Keyring {
    keys: Vec<PublicKey>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKey {
    kid: String,
    alg: String,
    pem: String,
}

/// The algorithms a deployment may allow.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        _ => None,
    }
}

/// Parses a public keyring (see [`Auth`]); errors name the bad key.
pub fn parse_keyring(json: &str) -> Result<PublicKeys, String> {
    let ring: Keyring =
        serde_json::from_str(json).map_err(|e| format!("public keys are not valid JSON: {e}"))?;
    ring.keys
        .into_iter()
        .map(|k| {
            let key = match k.alg.as_str() {
                "RS256" => DecodingKey::from_rsa_pem(k.pem.as_bytes()),
                "ES256" => DecodingKey::from_ec_pem(k.pem.as_bytes()),
                other => {
                    return Err(format!(
                        "key {:?}: algorithm {other:?} is not RS256 or ES256",
                        k.kid
                    ));
                }
            }
            .map_err(|e| format!("key {:?}: {e}", k.kid))?;
            let alg = parse_algorithm(&k.alg).unwrap_or(Algorithm::RS256);
            Ok((k.kid, (alg, key)))
        })
        .collect()
}

impl Auth {
    pub fn new(
        allowed: Vec<Algorithm>,
        hs256: Option<LiveSecret>,
        public_keys: Option<LiveSecret>,
        issuer: &str,
        audience: &str,
    ) -> Self {
        Self {
            allowed,
            hs256,
            public_keys,
            parsed: std::sync::RwLock::new((String::new(), Arc::new(HashMap::new()))),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        }
    }

    /// HS256 only (development, tests).
    pub fn hs256(secret: LiveSecret, issuer: &str, audience: &str) -> Self {
        Self::new(vec![Algorithm::HS256], Some(secret), None, issuer, audience)
    }

    /// The current public keys, re-parsed only when the secret changed.
    fn public_keys(&self) -> Arc<PublicKeys> {
        let Some(live) = &self.public_keys else {
            return Arc::default();
        };
        let text = live.current();
        {
            let cached = self.parsed.read().unwrap_or_else(|e| e.into_inner());
            if cached.0 == text.expose_secret() {
                return cached.1.clone();
            }
        }
        match parse_keyring(text.expose_secret()) {
            Ok(keys) => {
                let keys = Arc::new(keys);
                *self.parsed.write().unwrap_or_else(|e| e.into_inner()) =
                    (text.expose_secret().to_owned(), keys.clone());
                keys
            }
            Err(e) => {
                // Keep verifying with the last good keys.
                tracing::warn!(error = %e, "the JWT public keys changed but do not parse");
                self.parsed
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .1
                    .clone()
            }
        }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ApiError::unauthorized("the access token is malformed"))?;
        if !self.allowed.contains(&header.alg) {
            return Err(ApiError::unauthorized(
                "the access token's algorithm is not allowed",
            ));
        }
        let keys;
        let key = match header.alg {
            Algorithm::HS256 => {
                let secret = self.hs256.as_ref().ok_or_else(|| {
                    ApiError::unauthorized("the access token's algorithm is not allowed")
                })?;
                DecodingKey::from_secret(secret.current().expose_secret().as_bytes())
            }
            alg => {
                let kid = header
                    .kid
                    .ok_or_else(|| ApiError::unauthorized("the access token names no key (kid)"))?;
                keys = self.public_keys();
                match keys.get(&kid) {
                    // A key is only ever used with its own algorithm.
                    Some((key_alg, key)) if *key_alg == alg => key.clone(),
                    Some(_) => {
                        return Err(ApiError::unauthorized(
                            "the access token's algorithm does not match its key",
                        ));
                    }
                    None => {
                        return Err(ApiError::unauthorized(
                            "the access token's key (kid) is not known",
                        ));
                    }
                }
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        jsonwebtoken::decode::<Claims>(token, &key, &validation)
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

/// An authenticated caller with the operator role; anyone else is a 403.
#[derive(Clone, Debug)]
pub struct Operator(pub Caller);

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.role == Role::Operator {
            Ok(Self(caller))
        } else {
            Err(ApiError::forbidden("this endpoint is for operators"))
        }
    }
}

/// The bearer token of `Authorization`, whatever the case of the scheme
/// (RFC 9110 §11.1: authentication schemes are case-insensitive).
pub(crate) fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Verified once per request: the rate limiter may have done it.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Err(ApiError::unauthorized(
                "an Authorization: Bearer token is required",
            ));
        }
        let token = bearer_token(&parts.headers)
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
