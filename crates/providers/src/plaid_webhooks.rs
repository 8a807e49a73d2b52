//! Plaid's webhooks: verification as Plaid documents it, and what each
//! says in domain terms.
//!
//! A webhook carries a `Plaid-Verification` header: a JWT signed ES256
//! whose header's `kid` names a key fetched from
//! `/webhook_verification_key/get` (cached here), whose `iat` must be
//! under five minutes old, and whose `request_body_sha256` must be the
//! SHA-256 of the body as received.

use crate::endpoints;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dashtam_domain::ports::{
    ProviderError, ProviderEvent, VerifiedWebhook, WebhookRejected, WebhookVerifier,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::PlaidClient;

/// How old a webhook's `iat` may be (Plaid: five minutes).
const MAX_AGE_SECS: i64 = 300;
/// How long a key id Plaid does not know is remembered, so forged
/// webhooks naming invented keys do not each cost a call to Plaid.
const UNKNOWN_KEY_TTL: Duration = Duration::from_secs(60);
/// Cached keys at most (Plaid rotates rarely; anything past this is noise).
const MAX_KEYS: usize = 64;
/// Key fetches from Plaid at most per minute. A forger naming a new key id
/// on every request would otherwise make each unauthenticated request cost
/// a call to Plaid; past this, an unknown key is "unavailable" (a 503: a
/// genuine webhook is delivered again by Plaid).
const MAX_FETCHES_PER_MINUTE: usize = 6;

enum CachedKey {
    Known(DecodingKey),
    Unknown(Instant),
}

/// Verifies Plaid's webhooks with keys fetched through `client`.
pub struct PlaidWebhooks {
    client: PlaidClient,
    keys: Mutex<HashMap<String, CachedKey>>,
    /// When the key fetches of the last minute started.
    fetches: Mutex<std::collections::VecDeque<Instant>>,
}

impl PlaidWebhooks {
    pub fn new(client: PlaidClient) -> Self {
        Self {
            client,
            keys: Mutex::new(HashMap::new()),
            fetches: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Takes one of the minute's key fetches, if any is left.
    fn may_fetch(&self) -> bool {
        let mut fetches = self.fetches.lock().unwrap_or_else(|e| e.into_inner());
        while fetches
            .front()
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(60))
        {
            fetches.pop_front();
        }
        if fetches.len() >= MAX_FETCHES_PER_MINUTE {
            return false;
        }
        fetches.push_back(Instant::now());
        true
    }

    fn cached(&self, kid: &str) -> Option<Result<DecodingKey, WebhookRejected>> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        match keys.get(kid)? {
            CachedKey::Known(key) => Some(Ok(key.clone())),
            CachedKey::Unknown(at) if at.elapsed() < UNKNOWN_KEY_TTL => Some(Err(unknown_key())),
            CachedKey::Unknown(_) => None,
        }
    }

    fn remember(&self, kid: &str, key: CachedKey) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.len() >= MAX_KEYS {
            keys.retain(|_, k| matches!(k, CachedKey::Known(_)));
        }
        if keys.len() < MAX_KEYS {
            keys.insert(kid.to_owned(), key);
        }
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, WebhookRejected> {
        if let Some(found) = self.cached(kid) {
            return found;
        }
        if !self.may_fetch() {
            return Err(WebhookRejected::KeyUnavailable(
                "too many unknown verification keys this minute".into(),
            ));
        }
        #[derive(Deserialize)]
        struct Jwk {
            alg: String,
            crv: String,
            x: String,
            y: String,
            expired_at: Option<i64>,
        }
        #[derive(Deserialize)]
        struct KeyResponse {
            key: Jwk,
        }
        let fetched = self
            .client
            .post(
                endpoints::plaid::VERIFICATION_KEY,
                &serde_json::json!({ "key_id": kid }),
            )
            .await;
        let bytes = match fetched {
            Ok(b) => b,
            // Plaid refuses a key id it never issued with a 400.
            Err(ProviderError::Permanent(_) | ProviderError::Unauthorized(_)) => {
                self.remember(kid, CachedKey::Unknown(Instant::now()));
                return Err(unknown_key());
            }
            Err(e) => return Err(WebhookRejected::KeyUnavailable(e.to_string())),
        };
        let r: KeyResponse = serde_json::from_slice(&bytes).map_err(|e| {
            WebhookRejected::KeyUnavailable(format!("verification key response: {e}"))
        })?;
        if r.key.alg != "ES256" || r.key.crv != "P-256" {
            return Err(WebhookRejected::Unsigned(format!(
                "key {kid} is {} on {}, not ES256 on P-256",
                r.key.alg, r.key.crv
            )));
        }
        if r.key.expired_at.is_some() {
            return Err(WebhookRejected::Unsigned(format!("key {kid} has expired")));
        }
        let key = DecodingKey::from_ec_components(&r.key.x, &r.key.y)
            .map_err(|e| WebhookRejected::KeyUnavailable(format!("verification key: {e}")))?;
        self.remember(kid, CachedKey::Known(key.clone()));
        Ok(key)
    }
}

fn unknown_key() -> WebhookRejected {
    WebhookRejected::Unsigned("the signing key is not one Plaid issued".into())
}

#[derive(Deserialize)]
struct Claims {
    iat: i64,
    request_body_sha256: String,
}

fn sha256_hex(body: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal without an early exit (the digest is not secret, but there is
/// no reason to leak how much of it matched).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

#[async_trait]
impl WebhookVerifier for PlaidWebhooks {
    async fn verify(
        &self,
        signature: Option<&str>,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<VerifiedWebhook, WebhookRejected> {
        let jwt = signature
            .ok_or_else(|| WebhookRejected::Unsigned("no Plaid-Verification header".into()))?;
        let header = jsonwebtoken::decode_header(jwt)
            .map_err(|e| WebhookRejected::Unsigned(format!("not a JWT: {e}")))?;
        if header.alg != Algorithm::ES256 {
            return Err(WebhookRejected::Unsigned(format!(
                "signed with {:?}; Plaid signs with ES256",
                header.alg
            )));
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty() && k.len() <= 128)
            .ok_or_else(|| WebhookRejected::Unsigned("the JWT names no key (kid)".into()))?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<Claims>(jwt, &key, &validation)
            .map_err(|e| WebhookRejected::Forged(e.to_string()))?
            .claims;
        let age = now.timestamp() - claims.iat;
        if !(-MAX_AGE_SECS..=MAX_AGE_SECS).contains(&age) {
            return Err(WebhookRejected::Stale(format!(
                "signed {age} s ago; at most {MAX_AGE_SECS} s is accepted"
            )));
        }
        if !same(&sha256_hex(body), &claims.request_body_sha256) {
            return Err(WebhookRejected::Forged(
                "the body is not the one that was signed".into(),
            ));
        }
        Ok(VerifiedWebhook {
            event: event(body)?,
            delivery: sha256_hex(jwt.as_bytes()),
        })
    }
}

#[derive(Deserialize)]
struct Body {
    webhook_type: String,
    webhook_code: String,
    #[serde(default)]
    item_id: Option<String>,
    #[serde(default)]
    error: Option<ErrorBody>,
    #[serde(default)]
    consent_expiration_time: Option<DateTime<Utc>>,
    #[serde(default)]
    disconnect_time: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error_code: String,
}

/// What a verified webhook says.
fn event(body: &[u8]) -> Result<ProviderEvent, WebhookRejected> {
    let b: Body =
        serde_json::from_slice(body).map_err(|e| WebhookRejected::Malformed(e.to_string()))?;
    let item = || {
        b.item_id.clone().ok_or_else(|| {
            WebhookRejected::Malformed(format!(
                "{} {} without item_id",
                b.webhook_type, b.webhook_code
            ))
        })
    };
    Ok(match (b.webhook_type.as_str(), b.webhook_code.as_str()) {
        ("TRANSACTIONS", "SYNC_UPDATES_AVAILABLE") => {
            ProviderEvent::SyncUpdatesAvailable { item_id: item()? }
        }
        ("ITEM", "ERROR" | "ITEM_LOGIN_REQUIRED") => ProviderEvent::LoginRequired {
            item_id: item()?,
            error_code: b
                .error
                .as_ref()
                .map(|e| e.error_code.clone())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "ITEM_LOGIN_REQUIRED".into()),
        },
        ("ITEM", "PENDING_EXPIRATION") => ProviderEvent::ReauthSoon {
            item_id: item()?,
            at: b.consent_expiration_time,
        },
        ("ITEM", "PENDING_DISCONNECT") => ProviderEvent::ReauthSoon {
            item_id: item()?,
            at: b.disconnect_time,
        },
        ("ITEM", "USER_PERMISSION_REVOKED") => {
            ProviderEvent::PermissionRevoked { item_id: item()? }
        }
        ("ITEM", "LOGIN_REPAIRED") => ProviderEvent::LoginRepaired { item_id: item()? },
        _ => ProviderEvent::Other {
            item_id: b.item_id.clone(),
            webhook_type: b.webhook_type.clone(),
            webhook_code: b.webhook_code.clone(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_say_what_plaid_means() {
        let e = |s: &str| event(s.as_bytes()).unwrap();
        assert_eq!(
            e(
                r#"{"webhook_type":"TRANSACTIONS","webhook_code":"SYNC_UPDATES_AVAILABLE","item_id":"i","initial_update_complete":true,"historical_update_complete":true,"environment":"production"}"#
            ),
            ProviderEvent::SyncUpdatesAvailable {
                item_id: "i".into()
            }
        );
        assert_eq!(
            e(
                r#"{"webhook_type":"ITEM","webhook_code":"ERROR","item_id":"i","error":{"error_code":"ITEM_LOGIN_REQUIRED"}}"#
            ),
            ProviderEvent::LoginRequired {
                item_id: "i".into(),
                error_code: "ITEM_LOGIN_REQUIRED".into()
            }
        );
        assert!(matches!(
            e(
                r#"{"webhook_type":"ITEM","webhook_code":"PENDING_EXPIRATION","item_id":"i","consent_expiration_time":"2026-12-12T00:00:00Z"}"#
            ),
            ProviderEvent::ReauthSoon { at: Some(_), .. }
        ));
        assert_eq!(
            e(r#"{"webhook_type":"HOLDINGS","webhook_code":"DEFAULT_UPDATE","item_id":"i"}"#)
                .kind(),
            "other"
        );
        assert!(matches!(
            event(br#"{"webhook_type":"ITEM","webhook_code":"ERROR"}"#),
            Err(WebhookRejected::Malformed(_))
        ));
    }

    #[test]
    fn digests_compare_whole() {
        let d = sha256_hex(b"{}");
        assert_eq!(
            d,
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert!(same(&d, &d.clone()));
        assert!(!same(&d, &d[..63]));
        assert!(!same(&d, &d.replace('4', "5")));
    }
}
