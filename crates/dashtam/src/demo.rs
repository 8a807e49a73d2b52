//! `dashtam demo`: the whole product in one process against the local
//! Postgres and the sandbox provider, driven through the real HTTP API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dashtam_api::{Role as TokenRole, issue_token};
use dashtam_domain::UserId;
use dashtam_queue::JobState;
use dashtam_sandbox::{Advance, Sandbox, SandboxConfig};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::localpg::LocalPostgres;
use dashtam::app::{self, Daemon, Role};
use dashtam::config::Config;
use dashtam::secrets::Secrets;

pub struct DemoOptions {
    pub database_url: String,
    pub listen: SocketAddr,
    pub connections: u32,
    pub oauth_connections: u32,
    pub accounts: u32,
    pub transactions_per_account: u32,
    /// Leave the daemon running after the demo, until Ctrl-C.
    pub keep: bool,
}

/// Whether a PostgreSQL server answers at `url` (a refusal of the login is
/// an answer; only a connection that cannot be made, or hangs, is not).
async fn answers(url: &str) -> bool {
    use sqlx::ConnectOptions;
    let Ok(opts) = url.parse::<sqlx::postgres::PgConnectOptions>() else {
        // Not a URL sqlx reads: let the connection say why.
        return true;
    };
    let opts = opts.database("postgres");
    match tokio::time::timeout(Duration::from_secs(5), opts.connect()).await {
        Ok(Ok(_)) => true,
        Ok(Err(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)) | Err(_) => false,
        Ok(Err(_)) => true,
    }
}

pub async fn run(mut config: Config, mut opts: DemoOptions) -> anyhow::Result<bool> {
    let started = Instant::now();
    // No server running: a throwaway cluster, removed when the demo ends.
    let _local = if answers(&opts.database_url).await {
        None
    } else {
        println!(
            "postgres   nothing answers at {}: starting a throwaway cluster for the demo",
            app::redact(&opts.database_url)
        );
        let pg = LocalPostgres::start(false)?;
        opts.database_url = pg.url("dashtam");
        Some(pg)
    };
    let created = dashtam_store::migrate::ensure_database(&opts.database_url)
        .await
        .with_context(|| {
            format!(
                "cannot reach PostgreSQL at {}",
                app::redact(&opts.database_url)
            )
        })?;
    let pool = app::connect(&config, &opts.database_url).await?;
    app::migrate(&pool)
        .await
        .context("migrating the demo database")?;
    println!(
        "database   {} ({})",
        app::redact(&opts.database_url),
        if created {
            "created and migrated"
        } else {
            "migrated"
        }
    );

    let shutdown = CancellationToken::new();
    let sandbox_config = SandboxConfig {
        client_id: config.sandbox.client_id.clone(),
        secret: config.sandbox.secret.clone(),
        seed: config.sandbox.seed,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(sandbox_config.clone());
    let stop = shutdown.clone();
    let sandbox_addr = sandbox
        .clone()
        .spawn(
            "127.0.0.1:0".parse()?,
            async move { stop.cancelled().await },
        )
        .await
        .context("starting the sandbox provider")?;
    println!(
        "sandbox    http://{sandbox_addr} (Plaid /transactions/sync and Schwab OAuth + window formats)"
    );
    config.use_sandbox(&format!("http://{sandbox_addr}"), &sandbox_config);
    config.worker.poll_interval_ms = 200.into();

    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    // New Plaid connections get our webhook endpoint registered: the
    // sandbox then tells the daemon when an item has new data.
    config.providers.plaid.webhook_url = Some(format!(
        "http://{}/api/v1/webhooks/plaid",
        listener.local_addr()?
    ));
    let secrets = Secrets::ephemeral(&config)?;
    let jwt_secret = secrets.jwt.clone().context("jwt secret")?.current();
    let daemon = Daemon::new(config, pool, &secrets)?;
    let running = daemon
        .start(
            &[Role::Api, Role::Worker, Role::Scheduler],
            Some(listener),
            shutdown.clone(),
        )
        .await?;
    let api = format!("http://{}", running.api_addr.context("api address")?);
    println!("api        {api}");

    let result = drive(
        &daemon,
        &sandbox,
        &sandbox_config,
        &api,
        &jwt_secret,
        &opts,
        started,
    )
    .await;
    if let Ok(ok) = &result {
        let operator = issue_token(
            &jwt_secret,
            &daemon.config.auth.issuer,
            &daemon.config.auth.audience,
            "demo-operator",
            TokenRole::Operator,
            Duration::from_secs(12 * 3600),
        )?;
        println!(
            "
look around: {api}/ops/ (the operator console: sign in with the token below),
             {api}/api/v1/docs (the API), {api}/metrics"
        );
        println!("operator token (12 h): {operator}");
        if opts.keep {
            println!(
                "the daemon keeps running (--keep); Ctrl-C stops it{}",
                if _local.is_some() {
                    " and removes the throwaway database"
                } else {
                    ""
                }
            );
            app::cancel_on_signals(shutdown.clone());
            running.wait().await?;
            return Ok(*ok);
        }
    }
    shutdown.cancel();
    running.wait().await?;
    result
}

async fn drive(
    daemon: &Daemon,
    sandbox: &Sandbox,
    sandbox_config: &SandboxConfig,
    api: &str,
    jwt_secret: &secrecy::SecretString,
    opts: &DemoOptions,
    started: Instant,
) -> anyhow::Result<bool> {
    let user = format!("demo-{:08x}", fastrand_u32());
    let token = issue_token(
        jwt_secret,
        &daemon.config.auth.issuer,
        &daemon.config.auth.audience,
        &user,
        TokenRole::Client,
        Duration::from_secs(3600),
    )?;
    let http = reqwest::Client::new();
    let sandbox_url = &daemon.config.providers.plaid.base_url;

    // Link flow: the sandbox hands out public tokens; the API exchanges them.
    let mut connections = Vec::new();
    for _ in 0..opts.connections {
        let linked: Value = http
            .post(format!("{sandbox_url}/sandbox/public_token/create"))
            .json(&json!({
                "client_id": sandbox_config.client_id,
                "secret": sandbox_config.secret,
                "institution_id": "ins_109508",
                "initial_products": ["transactions"],
                "options": {
                    "accounts": opts.accounts,
                    "transactions_per_account": opts.transactions_per_account,
                },
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let resp = http
            .post(format!("{api}/api/v1/connections"))
            .bearer_auth(&token)
            .json(&json!({ "provider": "plaid", "public_token": linked["public_token"] }))
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if status.as_u16() != 201 {
            bail!("creating a connection failed: {status} {body}");
        }
        connections.push(body["id"].as_str().context("connection id")?.to_owned());
    }
    // OAuth flow: the user consents at the provider, which redirects back
    // with a code; the API exchanges it for tokens.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    for _ in 0..opts.oauth_connections {
        let consent = no_redirects
            .get(format!("{sandbox_url}/v1/oauth/authorize"))
            .query(&[
                ("client_id", daemon.config.providers.schwab.app_key.as_str()),
                ("redirect_uri", &daemon.config.providers.schwab.redirect_uri),
                ("response_type", "code"),
                ("accounts", &opts.accounts.to_string()),
                (
                    "transactions_per_account",
                    &opts.transactions_per_account.to_string(),
                ),
            ])
            .send()
            .await?;
        let location = consent
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .context("the consent step did not redirect")?;
        let code = reqwest::Url::parse(location)?
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .context("the redirect carries no code")?;
        let resp = http
            .post(format!("{api}/api/v1/connections"))
            .bearer_auth(&token)
            .json(&json!({ "provider": "schwab", "authorization_code": code }))
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if status.as_u16() != 201 {
            bail!("creating an OAuth connection failed: {status} {body}");
        }
        connections.push(body["id"].as_str().context("connection id")?.to_owned());
    }
    println!(
        "user       {user}: {} sandbox connections linked ({} Plaid-style, {} Schwab-style OAuth)",
        connections.len(),
        opts.connections,
        opts.oauth_connections,
    );

    println!("\nround 1: initial sync of every connection");
    let mut outcomes = sync_round(&http, api, &token, &connections).await?;

    println!(
        "\nround 2: the providers post pending transactions, modify, remove and add some; \
         OAuth access tokens expire (the syncs refresh them)"
    );
    for grant in sandbox.oauth_grants() {
        for step in ["expire", "advance"] {
            http.post(format!(
                "{sandbox_url}/sandbox/dashtam/oauth/grants/{}/{step}",
                grant.id
            ))
            .json(&json!({ "post_pending": true, "add": 10 }))
            .send()
            .await?
            .error_for_status()?;
        }
    }
    for access_token in sandbox.access_tokens() {
        sandbox.advance(
            &access_token,
            Advance {
                post_pending: true,
                modify: 5,
                remove: 2,
                add: 10,
            },
        );
    }
    outcomes.extend(sync_round(&http, api, &token, &connections).await?);

    if let (Some(first), Some(access_token)) = (
        connections.first().filter(|_| opts.connections > 0),
        sandbox.access_tokens().first(),
    ) {
        println!(
            "\nround 3: new data at the provider; its signed SYNC_UPDATES_AVAILABLE webhook \
             starts a sync by itself (no API call)"
        );
        let seen: Vec<String> = outcomes.keys().cloned().collect();
        sandbox.advance(
            access_token,
            Advance {
                post_pending: false,
                modify: 1,
                remove: 0,
                add: 5,
            },
        );
        let (id, state) = webhook_sync(&http, api, &token, first, &seen).await?;
        println!(
            "  job {} {state}: started by a webhook for connection {first}",
            &id[id.len() - 8..]
        );
        outcomes.insert(id, state);
    }

    let summary = daemon
        .store()
        .user_summary(&UserId::parse(&user).map_err(anyhow::Error::msg)?)
        .await?;
    let succeeded = outcomes
        .values()
        .filter(|s| JobState::parse(s) == Some(JobState::Succeeded))
        .count();
    let failed = outcomes.len() - succeeded;
    let refreshes: u64 = sandbox.oauth_grants().iter().map(|g| g.refresh_calls).sum();
    println!(
        "\nsummary: {} jobs ({succeeded} succeeded, {failed} failed), {} connections, {} accounts, \
         {} transactions (+{} removed), {refreshes} token refreshes, {} audit records, {:.2} s",
        outcomes.len(),
        summary.connections,
        summary.accounts,
        summary.transactions,
        summary.removed_transactions,
        summary.audit_records,
        started.elapsed().as_secs_f64(),
    );
    Ok(failed == 0)
}

/// Enqueues a sync per connection through the API and polls the jobs until
/// they finish, printing progress. Returns each job's final state.
async fn sync_round(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    connections: &[String],
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut jobs = Vec::new();
    for c in connections {
        let resp = http
            .post(format!("{api}/api/v1/connections/{c}/syncs"))
            .bearer_auth(token)
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if !status.is_success() {
            bail!("enqueueing a sync failed: {status} {body}");
        }
        jobs.push(body["id"].as_str().context("job id")?.to_owned());
    }
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut finals = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while finals.len() < jobs.len() {
        if Instant::now() > deadline {
            bail!("jobs did not finish within 10 minutes");
        }
        for id in &jobs {
            if finals.contains_key(id) {
                continue;
            }
            let job: Value = http
                .get(format!("{api}/api/v1/jobs/{id}"))
                .bearer_auth(token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let state = job["state"].as_str().unwrap_or("?").to_owned();
            let p = &job["progress"];
            let line = format!(
                "  job {} {:<10} attempt {} pages {:>3} transactions {:>6}{}",
                &id[id.len() - 8..],
                state,
                job["attempt"],
                p["pages"].as_u64().unwrap_or(0),
                p["transactions"].as_u64().unwrap_or(0),
                job["last_error"]["error"]
                    .as_str()
                    .map(|e| format!("  last error: {e}"))
                    .unwrap_or_default(),
            );
            if last.get(id) != Some(&line) {
                println!("{line}");
                last.insert(id.clone(), line);
            }
            if finished(&state) {
                finals.insert(id.clone(), state);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(finals)
}

/// Waits for the sync of `connection` that none of the jobs `seen` is
/// (the one a webhook enqueued) to finish; returns its id and final state.
async fn webhook_sync(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    connection: &str,
    seen: &[String],
) -> anyhow::Result<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page: Value = http
            .get(format!("{api}/api/v1/jobs"))
            .query(&[("connection_id", connection), ("kind", "sync")])
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let new = page["data"].as_array().into_iter().flatten().find(|j| {
            j["id"]
                .as_str()
                .is_some_and(|id| !seen.iter().any(|s| s == id))
        });
        if let Some(job) = new {
            let state = job["state"].as_str().unwrap_or("?");
            if finished(state) {
                let id = job["id"].as_str().unwrap_or_default().to_owned();
                return Ok((id, state.to_owned()));
            }
        }
        if Instant::now() > deadline {
            bail!("no sync started by the webhook finished within a minute");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A job state the API reported is one the job ends in.
fn finished(state: &str) -> bool {
    JobState::parse(state).is_some_and(JobState::is_finished)
}

fn fastrand_u32() -> u32 {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap_or_default();
    u32::from_le_bytes(b)
}
