//! Which secrets the daemon needs and where they come from (the
//! `[secrets]` section): signing key, encryption keys, provider secrets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use dashtam_domain::ports::{LiveSecret, SecretSource};
use dashtam_secrets::{AwsSource, EnvSource, SecretCache};
use dashtam_store::Cipher;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SecretSourceKind};

/// The process's secrets, live where a rotation can take effect without a
/// restart (signing secret, provider secrets). Encryption keys are read at
/// start-up: a new key is rolled out by restarting, then `dashtam keys
/// rotate` (docs/operations.md).
pub struct Secrets {
    /// The HS256 secret, if the api runs and allows HS256.
    pub jwt: Option<LiveSecret>,
    /// The RS256/ES256 public keyring (JSON), if the api runs and allows them.
    pub jwt_public_keys: Option<LiveSecret>,
    pub cipher: Arc<Cipher>,
    pub plaid: LiveSecret,
    pub schwab: LiveSecret,
    cache: Option<Arc<SecretCache>>,
}

/// The encryption-keys secret of the `env` and `aws` sources.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keyring {
    active: String,
    keys: HashMap<String, SecretString>,
}

impl Secrets {
    /// From the configuration's own values (`secrets.source = "config"`).
    pub fn from_config(config: &Config, api: bool) -> anyhow::Result<Self> {
        let (hs, public) = config.auth.needs();
        Ok(Self {
            jwt: (api && hs)
                .then(|| config.jwt_secret().map(LiveSecret::new))
                .transpose()?,
            jwt_public_keys: (api && public)
                .then(|| config.jwt_public_keys().map(LiveSecret::new))
                .transpose()?,
            cipher: Arc::new(config.cipher()?),
            plaid: LiveSecret::new(config.providers.plaid.secret.clone()),
            schwab: LiveSecret::new(config.providers.schwab.secret.clone()),
            cache: None,
        })
    }

    /// A random signing secret and encryption key, provider secrets from the
    /// configuration: for the demo, benchmarks and tests.
    pub fn ephemeral(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            jwt: Some(LiveSecret::new(Cipher::generate_key()?)),
            jwt_public_keys: Some(&config.auth.public_keys)
                .filter(|k| !k.is_empty())
                .map(|k| LiveSecret::new(k.as_str().into())),
            cipher: Arc::new(Cipher::ephemeral()?),
            plaid: LiveSecret::new(config.providers.plaid.secret.clone()),
            schwab: LiveSecret::new(config.providers.schwab.secret.clone()),
            cache: None,
        })
    }

    /// From the configured source; a missing secret is an error naming it.
    pub async fn load(config: &Config, api: bool) -> anyhow::Result<Self> {
        let s = &config.secrets;
        let source: Arc<dyn SecretSource> = match s.source {
            SecretSourceKind::Config => return Self::from_config(config, api),
            SecretSourceKind::Env => Arc::new(
                EnvSource::new(Some(&s.dotenv))
                    .with_context(|| format!("reading {}", s.dotenv.display()))?,
            ),
            SecretSourceKind::Aws => Arc::new(
                AwsSource::new(
                    &s.aws.region,
                    Some(s.aws.endpoint_url.as_str()).filter(|u| !u.is_empty()),
                )
                .await,
            ),
        };
        Self::from_source(config, source, api).await
    }

    async fn from_source(
        config: &Config,
        source: Arc<dyn SecretSource>,
        api: bool,
    ) -> anyhow::Result<Self> {
        let ids = &config.secrets.ids;
        let mut wanted = vec![
            ids.encryption_keys.as_str(),
            ids.plaid_secret.as_str(),
            ids.schwab_secret.as_str(),
        ];
        let (hs, public) = config.auth.needs();
        if api && hs {
            wanted.push(ids.jwt_secret.as_str());
        }
        if api && public {
            wanted.push(ids.jwt_public_keys.as_str());
        }
        let cache = SecretCache::load(
            source,
            config.secrets.ttl_secs.get().max(Duration::from_secs(1)),
            &wanted,
        )
        .await
        .context("cannot read the secrets the daemon needs")?;
        let get = |id: &str| cache.get(id).context("secret missing from the cache");
        let keyring: Keyring = serde_json::from_str(
            get(&ids.encryption_keys)?.current().expose_secret(),
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "secret {:?} must be JSON {{\"active\": id, \"keys\": {{id: base64}}}}: {e}",
                ids.encryption_keys
            )
        })?;
        let cipher = Cipher::new(&keyring.active, &keyring.keys)
            .with_context(|| format!("secret {:?}", ids.encryption_keys))?;
        let jwt_public_keys = if api && public {
            let keys = get(&ids.jwt_public_keys)?;
            dashtam_api::auth::parse_keyring(keys.current().expose_secret())
                .map_err(|e| anyhow::anyhow!("secret {:?}: {e}", ids.jwt_public_keys))?;
            Some(keys)
        } else {
            None
        };
        let jwt = if api && hs {
            let jwt = get(&ids.jwt_secret)?;
            if jwt.current().expose_secret().len() < 32 {
                bail!("secret {:?} must be at least 32 characters", ids.jwt_secret);
            }
            Some(jwt)
        } else {
            None
        };
        Ok(Self {
            jwt,
            jwt_public_keys,
            cipher: Arc::new(cipher),
            plaid: get(&ids.plaid_secret)?,
            schwab: get(&ids.schwab_secret)?,
            cache: Some(Arc::new(cache)),
        })
    }

    /// Re-reads the secrets every TTL until `cancel` fires (no-op for the
    /// `config` source).
    pub fn spawn_refresher(&self, cancel: CancellationToken) {
        if let Some(cache) = &self.cache {
            cache.clone().spawn_refresher(cancel);
        }
    }
}
