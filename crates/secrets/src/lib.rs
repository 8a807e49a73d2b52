//! The secrets tier: adapters of the domain's [`SecretSource`] port and a
//! cache that keeps [`LiveSecret`]s fresh.
//!
//! - [`EnvSource`]: environment variables, then a `.env` file (development).
//! - [`AwsSource`]: AWS Secrets Manager (production; `endpoint_url` points it
//!   at a local moto server in tests).
//! - [`StaticSource`]: values given in the configuration file.
//!
//! [`SecretCache`] reads every secret the process needs at start-up (a
//! missing one stops start-up, naming it), then re-reads them every TTL in
//! the background; a failed refresh keeps the last good value and logs.
//!
//! Architecture invariant: secret values leave this crate only as
//! `SecretString`/`LiveSecret`, which never print their contents.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashtam_domain::ports::{LiveSecret, SecretError, SecretSource};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Secrets from environment variables, falling back to a `.env` file. The
/// variable for secret id `dashtam/jwt-secret` is `DASHTAM_JWT_SECRET`
/// (upper case, every other character `_`).
pub struct EnvSource {
    dotenv: HashMap<String, String>,
}

impl EnvSource {
    /// Reads `dotenv` if it exists (`KEY=value` lines, `#` comments,
    /// optional quotes).
    pub fn new(dotenv: Option<&Path>) -> std::io::Result<Self> {
        let mut vars = HashMap::new();
        if let Some(path) = dotenv.filter(|p| p.exists()) {
            for line in std::fs::read_to_string(path)?.lines() {
                let line = line.trim();
                let line = line.strip_prefix("export ").unwrap_or(line);
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                if let Some((k, v)) = line.split_once('=') {
                    let v = v.trim();
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                        .unwrap_or(v);
                    vars.insert(k.trim().to_owned(), v.to_owned());
                }
            }
        }
        Ok(Self { dotenv: vars })
    }

    pub fn var_name(id: &str) -> String {
        id.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    }
}

#[async_trait]
impl SecretSource for EnvSource {
    async fn fetch(&self, id: &str) -> Result<SecretString, SecretError> {
        let var = Self::var_name(id);
        std::env::var(&var)
            .ok()
            .or_else(|| self.dotenv.get(&var).cloned())
            .filter(|v| !v.is_empty())
            .map(SecretString::from)
            .ok_or_else(|| SecretError::NotFound(format!("{id} (environment variable {var})")))
    }
}

/// Secrets given directly (the configuration file's values).
#[derive(Default)]
pub struct StaticSource(HashMap<String, SecretString>);

impl StaticSource {
    pub fn with(mut self, id: &str, value: SecretString) -> Self {
        self.0.insert(id.to_owned(), value);
        self
    }
}

#[async_trait]
impl SecretSource for StaticSource {
    async fn fetch(&self, id: &str) -> Result<SecretString, SecretError> {
        self.0
            .get(id)
            .filter(|v| !v.expose_secret().is_empty())
            .cloned()
            .ok_or_else(|| SecretError::NotFound(id.to_owned()))
    }
}

/// AWS Secrets Manager: `GetSecretValue` by id, reading `SecretString`.
pub struct AwsSource {
    client: aws_sdk_secretsmanager::Client,
}

impl AwsSource {
    /// Credentials come from the default AWS chain (environment, profile,
    /// web identity, instance metadata).
    pub async fn new(region: &str, endpoint_url: Option<&str>) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()));
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        Self::from_client(aws_sdk_secretsmanager::Client::new(&config))
    }

    /// Over a client configured by the caller (tests: static credentials).
    pub fn from_client(client: aws_sdk_secretsmanager::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl SecretSource for AwsSource {
    async fn fetch(&self, id: &str) -> Result<SecretString, SecretError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| {
                let e = e.into_service_error();
                if e.is_resource_not_found_exception() {
                    SecretError::NotFound(id.to_owned())
                } else {
                    SecretError::Unavailable {
                        id: id.to_owned(),
                        reason: aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
                    }
                }
            })?;
        out.secret_string
            .map(SecretString::from)
            .ok_or_else(|| SecretError::Unavailable {
                id: id.to_owned(),
                reason: "the secret has no string value (binary secrets are not supported)".into(),
            })
    }
}

/// The secrets a process uses, read once at start-up and refreshed every
/// `ttl` in the background.
pub struct SecretCache {
    source: Arc<dyn SecretSource>,
    ttl: Duration,
    secrets: Vec<(String, LiveSecret)>,
}

impl SecretCache {
    /// Reads every id in `ids`; the first one missing or unreadable is the
    /// error (it names the secret).
    pub async fn load(
        source: Arc<dyn SecretSource>,
        ttl: Duration,
        ids: &[&str],
    ) -> Result<Self, SecretError> {
        let mut secrets = Vec::with_capacity(ids.len());
        for id in ids {
            let value = source.fetch(id).await?;
            secrets.push(((*id).to_owned(), LiveSecret::new(value)));
        }
        Ok(Self {
            source,
            ttl,
            secrets,
        })
    }

    /// The live handle of `id` (one of the ids given to [`SecretCache::load`]).
    pub fn get(&self, id: &str) -> Option<LiveSecret> {
        self.secrets
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, s)| s.clone())
    }

    /// Re-reads every secret once; a failure keeps the old value. Returns
    /// how many changed.
    pub async fn refresh(&self) -> usize {
        let mut changed = 0;
        for (id, live) in &self.secrets {
            match self.source.fetch(id).await {
                Ok(v) if v.expose_secret() != live.current().expose_secret() => {
                    live.set(v);
                    changed += 1;
                    info!(secret = %id, "secret changed; using the new value");
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "could not refresh a secret; keeping its last value"),
            }
        }
        changed
    }

    /// Refreshes every TTL until `cancel` fires.
    pub fn spawn_refresher(
        self: Arc<Self>,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.ttl);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => { self.refresh().await; }
                    _ = cancel.cancelled() => return,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_are_derived_from_ids() {
        assert_eq!(
            EnvSource::var_name("dashtam/jwt-secret"),
            "DASHTAM_JWT_SECRET"
        );
    }

    #[tokio::test]
    async fn dotenv_is_read_and_missing_secrets_are_named() {
        let dir = std::env::temp_dir().join(format!("dashtam-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(".env");
        std::fs::write(
            &file,
            "# dev secrets\nexport DASHTAM_TEST_ONE=\"first value\"\nDASHTAM_TEST_TWO='2'\n",
        )
        .unwrap();
        let source = EnvSource::new(Some(&file)).unwrap();
        let one = source.fetch("dashtam/test-one").await.unwrap();
        assert_eq!(one.expose_secret(), "first value");
        let err = source.fetch("dashtam/test-three").await.unwrap_err();
        assert!(err.to_string().contains("DASHTAM_TEST_THREE"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn the_cache_keeps_the_last_value_when_a_refresh_fails() {
        let source = Arc::new(StaticSource::default().with("a", "1".into()));
        let cache = SecretCache::load(source, Duration::from_secs(60), &["a"])
            .await
            .unwrap();
        assert_eq!(cache.refresh().await, 0);
        assert_eq!(cache.get("a").unwrap().current().expose_secret(), "1");
        let missing = SecretCache::load(
            Arc::new(StaticSource::default()),
            Duration::from_secs(1),
            &["b"],
        )
        .await
        .err()
        .unwrap();
        assert!(missing.to_string().contains("\"b\""), "{missing}");
    }
}
