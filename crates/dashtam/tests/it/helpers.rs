use std::time::Duration;

use dashtam_testkit::wait_for;

use dashtam::app::{Daemon, Role, Running};
use dashtam::config::Config;
use dashtam::secrets::Secrets;
use dashtam_queue::JobState;
use dashtam_sandbox::{Sandbox, SandboxConfig};
use dashtam_store::Cipher;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub api: String,
    pub sandbox: Sandbox,
    pub sandbox_url: String,
    pub pool: PgPool,
    pub http: reqwest::Client,
    jwt_secret: SecretString,
    config: Config,
    shutdown: CancellationToken,
    running: Option<Running>,
}

/// The value of the sample `name{labels}` (labels in Prometheus's sorted
/// order) in a scrape, or 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Serves `sandbox` on an ephemeral port until `shutdown`; returns its URL.
pub async fn serve_sandbox(sandbox: &Sandbox, shutdown: &CancellationToken) -> String {
    let stop = shutdown.clone();
    let addr = sandbox
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap(), async move {
            stop.cancelled().await
        })
        .await
        .unwrap();
    format!("http://{addr}")
}

/// The sandbox's link step with its default keys and item size: a
/// one-time public token for a new item.
pub async fn sandbox_public_token(http: &reqwest::Client, sandbox_url: &str) -> String {
    link(http, sandbox_url, &SandboxConfig::default(), None).await
}

/// The sandbox's link step (`POST /sandbox/public_token/create`) with the
/// keys of `sc` and, if given, the item's `options`.
async fn link(
    http: &reqwest::Client,
    sandbox_url: &str,
    sc: &SandboxConfig,
    options: Option<Value>,
) -> String {
    let mut body = json!({
        "client_id": sc.client_id, "secret": sc.secret,
        "institution_id": "ins_1", "initial_products": ["transactions"],
    });
    if let Some(o) = options {
        body["options"] = o;
    }
    let linked: Value = http
        .post(format!("{sandbox_url}/sandbox/public_token/create"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    linked["public_token"].as_str().unwrap().to_owned()
}

/// Goes through the sandbox's OAuth consent step (no redirects followed)
/// and returns the code from the `Location` it answers with.
pub async fn authorization_code(
    sandbox_url: &str,
    redirect_uri: &str,
    accounts: u32,
    per_account: u32,
) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .get(format!("{sandbox_url}/v1/oauth/authorize"))
        .query(&[
            ("client_id", "dashtam-sandbox-client"),
            ("redirect_uri", redirect_uri),
            ("response_type", "code"),
            ("state", "xyz"),
            ("accounts", &accounts.to_string()),
            ("transactions_per_account", &per_account.to_string()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let location = resp.headers()["location"].to_str().unwrap();
    let url = reqwest::Url::parse(location).unwrap();
    assert!(location.starts_with(redirect_uri), "{location}");
    let code = url
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    assert!(url.query_pairs().any(|(k, v)| k == "state" && v == "xyz"));
    code
}

pub fn test_config() -> Config {
    let mut config = Config::load(None).expect("default configuration");
    config.worker.poll_interval_ms = 50.into();
    config.metrics.refresh_secs = 1.into();
    // Buckets of its own (the Redis server is shared), and roomy: tests of
    // the limits themselves set them tight.
    config.rate_limit.key_prefix = format!("test-{}", uuid::Uuid::new_v4());
    config.rate_limit.enqueue_burst = 10_000;
    // A loaded CI box can take longer than 50 ms to hear from a live Redis;
    // tests of Redis being away use a dead port or stop it.
    config.rate_limit.timeout_ms = 1_000.into();
    config.rate_limit.write_burst = 10_000;
    config.worker.backoff_base_ms = 10.into();
    config.worker.backoff_max_secs = 1.into();
    config.worker.shutdown_timeout_secs = 5.into();
    config.sync.page_size = 100;
    config.jobs.sync_max_attempts = 4;
    config.database.max_connections = 8;
    // Roomy provider budgets (their own keys, under the prefix above):
    // tests of the budgets set them tight.
    for budget in config.budgets.providers.values_mut() {
        budget.requests_per_sec = 10_000.0;
        budget.burst = 10_000;
    }
    config
}

/// Starts the sandbox and the daemon (`roles`) on the database at `url`,
/// through the daemon's own pool (with its connection checks).
pub async fn spawn_app_on(url: &str, roles: &[Role], config: Config) -> TestApp {
    let pool = dashtam::app::connect(&config, url).await.unwrap();
    spawn_app_with(pool, roles, config).await
}

/// Set as `providers.plaid.webhook_url` to register the test daemon's own
/// webhook endpoint (its address is known only once it listens).
pub const OWN_WEBHOOK: &str = "own";

/// Starts the sandbox and the daemon (`roles`) against `pool`'s database.
pub async fn spawn_app_with(
    pool: impl Into<dashtam_db::Db>,
    roles: &[Role],
    mut config: Config,
) -> TestApp {
    let db: dashtam_db::Db = pool.into();
    // The test's own statements: on a direct connection when there is one
    // (through a transaction pooler a bare statement is not safe).
    let pool = db.session().unwrap_or(db.pool()).clone();
    let shutdown = CancellationToken::new();
    let sandbox = Sandbox::new(SandboxConfig {
        accounts_per_item: 2,
        transactions_per_account: 150,
        // `+`, `/` and `=` must survive HTTP Basic (RFC 6749 §2.3.1).
        secret: "dashtam+sandbox/secret==".into(),
        ..SandboxConfig::default()
    });
    let sandbox_url = serve_sandbox(&sandbox, &shutdown).await;
    config.use_sandbox(&sandbox_url, &sandbox.config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    if config.providers.plaid.webhook_url.as_deref() == Some(OWN_WEBHOOK) {
        config.providers.plaid.webhook_url = Some(format!(
            "http://{}/api/v1/webhooks/plaid",
            listener.local_addr().unwrap()
        ));
    }
    let secrets = Secrets::ephemeral(&config).unwrap();
    let jwt_secret = secrets.jwt.clone().unwrap().current();
    let daemon = Daemon::new(config.clone(), db, &secrets).unwrap();
    let running = daemon
        .start(roles, Some(listener), shutdown.clone())
        .await
        .unwrap();
    TestApp {
        api: format!("http://{}", running.api_addr.unwrap()),
        sandbox,
        sandbox_url,
        pool,
        http: reqwest::Client::new(),
        jwt_secret,
        config,
        shutdown,
        running: Some(running),
    }
}

/// Finishes, as `state`, the pending or running jobs `ids` (all of them
/// when `None`) behind the queue's back: moved from the hot table to
/// jobs_done, as the queue's own completions do.
pub async fn force_finish(pool: &PgPool, state: &str, ids: Option<&[uuid::Uuid]>) {
    sqlx::query(
        "WITH moved AS (DELETE FROM jobs WHERE $2::uuid[] IS NULL OR id = ANY($2) RETURNING *)
         INSERT INTO jobs_done (id, queue, kind, payload, state, priority, attempt, max_attempts,
                                run_at, unique_key, owner, progress, errors, created_at,
                                started_at, finished_at, cancel_requested, watched, throttle_key,
                                waiting, subject, trace_parent)
         SELECT id, queue, kind, payload, $1, priority, attempt, max_attempts, run_at,
                unique_key, owner, progress, errors, created_at, started_at, now(),
                cancel_requested, watched, throttle_key, waiting, subject, trace_parent
         FROM moved",
    )
    .bind(state)
    .bind(ids)
    .execute(pool)
    .await
    .expect("finishing jobs");
}

pub async fn spawn_app(pool: PgPool) -> TestApp {
    spawn_app_with(pool, &[Role::Api, Role::Worker], test_config()).await
}

impl TestApp {
    pub fn token(&self, sub: &str) -> String {
        self.token_with_secret(sub, &self.jwt_secret)
    }

    pub fn token_with_secret(&self, sub: &str, secret: &SecretString) -> String {
        self.token_as(sub, secret, dashtam_api::Role::Client)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn operator_token(&self, sub: &str) -> String {
        self.token_as(sub, &self.jwt_secret, dashtam_api::Role::Operator)
    }

    fn token_as(&self, sub: &str, secret: &SecretString, role: dashtam_api::Role) -> String {
        dashtam_api::issue_token(
            secret,
            &self.config.auth.issuer,
            &self.config.auth.audience,
            sub,
            role,
            Duration::from_secs(600),
        )
        .unwrap()
    }

    /// POST with a bearer token, no body.
    pub async fn post_as(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.api))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// The entry of an operator listing (`/api/v1/admin/{list}`) whose
    /// `field` is `value`, read with the operator token `op`.
    pub async fn admin_entry(&self, op: &str, list: &str, field: &str, value: &str) -> Value {
        let v: Value = self
            .http
            .get(format!("{}/api/v1/admin/{list}", self.api))
            .bearer_auth(op)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e[field] == value)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The provider's link step: a one-time public token for a new item.
    pub async fn public_token(&self, accounts: u32, per_account: u32) -> String {
        let options = json!({ "accounts": accounts, "transactions_per_account": per_account });
        link(
            &self.http,
            &self.sandbox_url,
            &self.sandbox.config(),
            Some(options),
        )
        .await
    }

    /// Polls the job through the API until it has fetched `pages` pages.
    pub async fn wait_pages(&self, user: &str, job: &str, pages: u64) {
        wait_for(
            &format!("the sync to get to page {pages}"),
            Duration::from_secs(30),
            || async {
                let j: Value = self
                    .get(user, &format!("/api/v1/jobs/{job}"))
                    .await
                    .json()
                    .await
                    .unwrap();
                if j["progress"]["pages"].as_u64().unwrap_or(0) >= pages {
                    Ok(())
                } else {
                    Err(j)
                }
            },
        )
        .await
    }

    /// Runs the provider's link flow and creates a connection through the API.
    pub async fn connect(&self, user: &str, accounts: u32, per_account: u32) -> String {
        let public_token = self.public_token(accounts, per_account).await;
        let body = json!({ "provider": "plaid", "public_token": public_token });
        self.create_connection(user, body).await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `POST /api/v1/connections` that must succeed: returns the new
    /// connection (active, with `Location` pointing at it).
    async fn create_connection(&self, user: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(format!("{}/api/v1/connections", self.api))
            .bearer_auth(self.token(user))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let created: Value = resp.json().await.unwrap();
        assert_eq!(
            location,
            format!("/api/v1/connections/{}", created["id"].as_str().unwrap())
        );
        assert_eq!(created["status"], "active");
        assert_eq!(created["provider"], body["provider"]);
        created
    }

    /// The OAuth consent step at the sandbox: returns the authorization code
    /// it redirects back with.
    pub async fn authorization_code(&self, accounts: u32, per_account: u32) -> String {
        authorization_code(
            &self.sandbox_url,
            &self.config.providers.schwab.redirect_uri,
            accounts,
            per_account,
        )
        .await
    }

    /// Connects `user` to a new Schwab-style grant; returns the connection
    /// id and the sandbox's grant id.
    pub async fn connect_schwab(
        &self,
        user: &str,
        accounts: u32,
        per_account: u32,
    ) -> (String, u64) {
        let code = self.authorization_code(accounts, per_account).await;
        let body = json!({ "provider": "schwab", "authorization_code": code });
        let body = self.create_connection(user, body).await;
        let grant = self.sandbox.oauth_grants().last().unwrap().id;
        (body["id"].as_str().unwrap().to_owned(), grant)
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn scrape(&self) -> String {
        let resp = self
            .http
            .get(format!("{}/metrics", self.api))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        resp.text().await.unwrap()
    }

    /// A sandbox control call (`POST /sandbox/dashtam/...`).
    pub async fn control(&self, path: &str, body: Value) {
        let resp = self
            .http
            .post(format!("{}/sandbox/dashtam/{path}", self.sandbox_url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
    }

    pub async fn enqueue_sync(&self, user: &str, connection: &str) -> reqwest::Response {
        self.http
            .post(format!(
                "{}/api/v1/connections/{connection}/syncs",
                self.api
            ))
            .bearer_auth(self.token(user))
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, user: &str, path: &str) -> reqwest::Response {
        self.http
            .delete(format!("{}{path}", self.api))
            .bearer_auth(self.token(user))
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, user: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.api))
            .bearer_auth(self.token(user))
            .send()
            .await
            .unwrap()
    }

    /// Polls the job through the API until it finishes.
    pub async fn wait_job(&self, user: &str, job: &str) -> Value {
        wait_for("the job to finish", Duration::from_secs(60), || async {
            let j: Value = self
                .get(user, &format!("/api/v1/jobs/{job}"))
                .await
                .json()
                .await
                .unwrap();
            if j["state"]
                .as_str()
                .and_then(JobState::parse)
                .is_some_and(JobState::is_finished)
            {
                Ok(j)
            } else {
                Err(j)
            }
        })
        .await
    }

    /// Enqueues a sync and waits for it; returns the finished job.
    pub async fn sync(&self, user: &str, connection: &str) -> Value {
        let resp = self.enqueue_sync(user, connection).await;
        assert_eq!(resp.status(), 202);
        let job: Value = resp.json().await.unwrap();
        self.wait_job(user, job["id"].as_str().unwrap()).await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// The access token the sandbox issued for the only item it has.
    pub fn only_item(&self) -> String {
        let tokens = self.sandbox.access_tokens();
        assert_eq!(tokens.len(), 1);
        tokens[0].clone()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            r.wait().await.unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A real `dashtam serve` process (every role) with its JSON logs captured,
/// against `database_url` and the sandbox at `sandbox_url`.
pub struct DaemonProcess {
    child: std::process::Child,
    pub api: String,
    pub jwt: SecretString,
    pub key: SecretString,
    dir: std::path::PathBuf,
}

impl DaemonProcess {
    pub async fn start(database_url: &str, sandbox_url: &str, log_filter: &str) -> Self {
        Self::start_with(database_url, sandbox_url, log_filter, &[]).await
    }

    /// [`DaemonProcess::start`] with more environment (configuration).
    pub async fn start_with(
        database_url: &str,
        sandbox_url: &str,
        log_filter: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let key = Cipher::generate_key().unwrap();
        let jwt = Cipher::generate_key().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("dashtam-daemon-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_dashtam"))
            .args(["serve", "--database-url", database_url])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env_remove("RUST_LOG")
            .env("DASHTAM__LOG__FILTER", log_filter)
            .env("DASHTAM__LOG__FORMAT", "json")
            .env("DASHTAM__AUTH__JWT_SECRET", jwt.expose_secret())
            .env("DASHTAM__CRYPTO__ACTIVE_KEY", "k1")
            .env("DASHTAM__CRYPTO__KEYS__K1", key.expose_secret())
            .env("DASHTAM__PROVIDERS__SCHWAB__BASE_URL", sandbox_url)
            .env("DASHTAM__PROVIDERS__PLAID__BASE_URL", sandbox_url)
            .env("DASHTAM__WORKER__POLL_INTERVAL_MS", "50")
            .env(
                "DASHTAM__RATE_LIMIT__KEY_PREFIX",
                format!("test-{}", uuid::Uuid::new_v4()),
            )
            .envs(env.iter().copied())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let api = format!("http://127.0.0.1:{port}");
        wait_for("the daemon to start", Duration::from_secs(30), || {
            reqwest::get(format!("{api}/readyz"))
        })
        .await;
        Self {
            child,
            api,
            jwt,
            key,
            dir,
        }
    }

    /// A client token for `sub`, signed with this daemon's secret.
    pub fn token(&self, sub: &str) -> String {
        self.token_as(sub, dashtam_api::Role::Client)
    }

    /// An operator token for `sub`.
    pub fn operator_token(&self, sub: &str) -> String {
        self.token_as(sub, dashtam_api::Role::Operator)
    }

    fn token_as(&self, sub: &str, role: dashtam_api::Role) -> String {
        let config = test_config();
        dashtam_api::issue_token(
            &self.jwt,
            &config.auth.issuer,
            &config.auth.audience,
            sub,
            role,
            Duration::from_secs(600),
        )
        .unwrap()
    }

    /// Links a new sandbox item (Plaid style) as `token`'s user; returns
    /// the connection id.
    pub async fn connect(&self, token: &str, sandbox_url: &str) -> String {
        let http = reqwest::Client::new();
        let public_token = sandbox_public_token(&http, sandbox_url).await;
        let conn: Value = http
            .post(format!("{}/api/v1/connections", self.api))
            .bearer_auth(token)
            .json(&json!({ "provider": "plaid", "public_token": public_token }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        conn["id"].as_str().unwrap().to_owned()
    }

    /// Enqueues a sync of `connection` as `token`'s user and waits for it to
    /// succeed; returns the finished job's body as served.
    pub async fn sync(&self, token: &str, connection: &str) -> String {
        let http = reqwest::Client::new();
        let job: Value = http
            .post(format!(
                "{}/api/v1/connections/{connection}/syncs",
                self.api
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = format!("{}/api/v1/jobs/{}", self.api, job["id"].as_str().unwrap());
        let body = wait_for("the sync to finish", Duration::from_secs(60), || async {
            let body = http
                .get(&url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let j: Value = serde_json::from_str(&body).unwrap();
            if j["state"] != "running" && j["state"] != "available" {
                Ok(body)
            } else {
                Err(j)
            }
        })
        .await;
        let j: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(j["state"], "succeeded", "{j}");
        body
    }

    /// SIGTERM, a clean exit, and everything it logged.
    pub fn terminate(mut self) -> String {
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        assert!(self.child.wait().unwrap().success());
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
