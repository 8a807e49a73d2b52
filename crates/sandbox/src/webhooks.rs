//! Plaid-style webhooks: the sandbox signs each one as Plaid does (an
//! ES256 JWT in `Plaid-Verification` whose `kid` names a key served by
//! `/webhook_verification_key/get`, carrying `iat` and the SHA-256 of the
//! body) and posts it to the URL registered on the item.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::Sandbox;

/// The sandbox's signing key (made at start, never stored).
pub(crate) struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    /// The public point's coordinates, base64url.
    x: String,
    y: String,
    created_at: u64,
}

/// A public key as `/webhook_verification_key/get` serves it (a JWK).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Jwk {
    alg: &'static str,
    crv: &'static str,
    kid: String,
    kty: &'static str,
    #[serde(rename = "use")]
    use_: &'static str,
    x: String,
    y: String,
    created_at: u64,
    expired_at: Option<u64>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SigningKey {
    pub(crate) fn generate() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("P-256 key generation");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("a key just generated parses");
        // Uncompressed point: 0x04 || x (32 bytes) || y (32 bytes).
        let point = pair.public_key().as_ref();
        Self {
            kid: uuid::Uuid::new_v4().to_string(),
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            x: URL_SAFE_NO_PAD.encode(&point[1..33]),
            y: URL_SAFE_NO_PAD.encode(&point[33..65]),
            created_at: unix_now(),
        }
    }

    pub(crate) fn jwk(&self) -> Jwk {
        Jwk {
            alg: "ES256",
            crv: "P-256",
            kid: self.kid.clone(),
            kty: "EC",
            use_: "sig",
            x: self.x.clone(),
            y: self.y.clone(),
            created_at: self.created_at,
            expired_at: None,
        }
    }

    /// The `Plaid-Verification` value for `body`, issued at `iat`.
    pub(crate) fn sign(&self, body: &[u8], iat: u64) -> String {
        #[derive(Serialize)]
        struct Claims {
            iat: u64,
            request_body_sha256: String,
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body);
        let claims = Claims {
            iat,
            request_body_sha256: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("ES256 signing")
    }
}

impl Sandbox {
    /// Signs `body` as a webhook sent `age` ago (tests use it to make stale
    /// ones).
    pub fn sign_webhook(&self, body: &[u8], age: Duration) -> String {
        self.key
            .sign(body, unix_now().saturating_sub(age.as_secs()))
    }

    /// Posts a webhook to `url` in the background, signed now; retried a
    /// few times (after 0.5, 1, 2 s) if the receiver does not answer 2xx.
    pub(crate) fn deliver(&self, url: String, body: serde_json::Value) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime to deliver a webhook on");
            return;
        };
        let sandbox = self.clone();
        handle.spawn(async move {
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            let client = reqwest::Client::new();
            for attempt in 0..4u32 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                }
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("plaid-verification", sandbox.key.sign(&bytes, unix_now()))
                    .timeout(Duration::from_secs(10))
                    .body(bytes.clone())
                    .send()
                    .await;
                match sent {
                    Ok(resp) if resp.status().is_success() => {
                        sandbox.lock().stats.webhooks_delivered += 1;
                        return;
                    }
                    Ok(resp) => tracing::info!(status = %resp.status(), %url, "webhook refused"),
                    Err(e) => tracing::info!(error = %e, %url, "webhook not delivered"),
                }
            }
            sandbox.lock().stats.webhooks_failed += 1;
        });
    }
}
