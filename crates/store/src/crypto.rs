//! Credentials at rest: AES-256-GCM with a fresh random 96-bit nonce per
//! write and the connection id as associated data.
//!
//! Blob layout: `0x01 | key_id_len (u8) | key_id | nonce (12) | ciphertext+tag`.
//! The key id lets old blobs be read after the active key rotates.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("encryption key {0:?} must be 32 bytes of base64")]
    BadKey(String),
    #[error("no encryption key with id {0:?} is configured")]
    UnknownKey(String),
    #[error("active encryption key {0:?} is not among the configured keys")]
    NoActiveKey(String),
    #[error("credential blob is malformed")]
    Malformed,
    #[error("credential blob failed authentication (wrong key or tampered)")]
    Unauthentic,
    #[error("system random number generator failed")]
    Rng,
}

/// The keyring: every key that may have written a blob, and the one used
/// for new writes.
pub struct Cipher {
    active: String,
    keys: HashMap<String, Aes256Gcm>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cipher")
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl Cipher {
    /// `keys`: key id → base64 of 32 random bytes.
    pub fn new(active: &str, keys: &HashMap<String, SecretString>) -> Result<Self, CryptoError> {
        let mut ring = HashMap::new();
        for (id, b64) in keys {
            if id.is_empty() || id.len() > 255 {
                return Err(CryptoError::BadKey(id.clone()));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.expose_secret().trim())
                .map_err(|_| CryptoError::BadKey(id.clone()))?;
            let cipher =
                Aes256Gcm::new_from_slice(&raw).map_err(|_| CryptoError::BadKey(id.clone()))?;
            ring.insert(id.clone(), cipher);
        }
        if !ring.contains_key(active) {
            return Err(CryptoError::NoActiveKey(active.to_owned()));
        }
        Ok(Self {
            active: active.to_owned(),
            keys: ring,
        })
    }

    /// A keyring with one fresh random key (demo and tests).
    pub fn ephemeral() -> Result<Self, CryptoError> {
        let keys = HashMap::from([("ephemeral".to_owned(), Self::generate_key()?)]);
        Self::new("ephemeral", &keys)
    }

    /// 32 random bytes, base64: a new key for the configuration.
    pub fn generate_key() -> Result<SecretString, CryptoError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|_| CryptoError::Rng)?;
        Ok(SecretString::from(
            base64::engine::general_purpose::STANDARD.encode(key),
        ))
    }

    /// The id of the key new blobs are written under.
    pub fn active_key(&self) -> &str {
        &self.active
    }

    pub fn encrypt(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let cipher = &self.keys[&self.active];
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| CryptoError::Rng)?;
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Malformed)?;
        let id = self.active.as_bytes();
        let mut blob = Vec::with_capacity(2 + id.len() + NONCE_LEN + ct.len());
        blob.push(VERSION);
        blob.push(u8::try_from(id.len()).map_err(|_| CryptoError::Malformed)?);
        blob.extend_from_slice(id);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        Ok(blob)
    }

    pub fn decrypt(&self, aad: &[u8], blob: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (&version, rest) = blob.split_first().ok_or(CryptoError::Malformed)?;
        if version != VERSION {
            return Err(CryptoError::Malformed);
        }
        let (&id_len, rest) = rest.split_first().ok_or(CryptoError::Malformed)?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + NONCE_LEN {
            return Err(CryptoError::Malformed);
        }
        let (id, rest) = rest.split_at(id_len);
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let id = std::str::from_utf8(id).map_err(|_| CryptoError::Malformed)?;
        let cipher = self
            .keys
            .get(id)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_owned()))?;
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| CryptoError::Unauthentic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        let c = Cipher::ephemeral().unwrap();
        let blob = c.encrypt(b"conn-1", b"secret token").unwrap();
        assert_eq!(c.decrypt(b"conn-1", &blob).unwrap(), b"secret token");
        // Same plaintext twice: different nonces, different blobs.
        assert_ne!(blob, c.encrypt(b"conn-1", b"secret token").unwrap());
        // Blob moved to another connection does not decrypt.
        assert!(matches!(
            c.decrypt(b"conn-2", &blob),
            Err(CryptoError::Unauthentic)
        ));
        let mut bad = blob.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(
            c.decrypt(b"conn-1", &bad),
            Err(CryptoError::Unauthentic)
        ));
        assert!(matches!(
            c.decrypt(b"conn-1", &[]),
            Err(CryptoError::Malformed)
        ));
        // The plaintext is nowhere in the blob.
        assert!(!blob.windows(12).any(|w| w == b"secret token"));
    }

    #[test]
    fn old_keys_still_decrypt_after_rotation() {
        let k1 = Cipher::generate_key().unwrap();
        let k2 = Cipher::generate_key().unwrap();
        let old = Cipher::new("k1", &HashMap::from([("k1".into(), k1.clone())])).unwrap();
        let blob = old.encrypt(b"a", b"x").unwrap();
        let new =
            Cipher::new("k2", &HashMap::from([("k1".into(), k1), ("k2".into(), k2)])).unwrap();
        assert_eq!(new.decrypt(b"a", &blob).unwrap(), b"x");
        let only_k2 = Cipher::new(
            "k2",
            &HashMap::from([("k2".into(), Cipher::generate_key().unwrap())]),
        )
        .unwrap();
        assert!(matches!(
            only_k2.decrypt(b"a", &blob),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn bad_keys_are_refused() {
        let short = HashMap::from([("k".into(), SecretString::from("c2hvcnQ="))]);
        assert!(matches!(
            Cipher::new("k", &short),
            Err(CryptoError::BadKey(_))
        ));
        let good = HashMap::from([("k".into(), Cipher::generate_key().unwrap())]);
        assert!(matches!(
            Cipher::new("other", &good),
            Err(CryptoError::NoActiveKey(_))
        ));
    }
}
