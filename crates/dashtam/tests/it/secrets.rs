//! The AWS Secrets Manager adapter and the daemon's secrets tier, against a
//! real local moto server (`pip install 'moto[server]'`).

use dashtam_testkit::wait_for;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use dashtam_domain::ports::{SecretError, SecretSource};
use dashtam_secrets::{AwsSource, SecretCache};
use dashtam_store::Cipher;
use secrecy::ExposeSecret;
use sqlx::PgPool;

use crate::cli::url_of;

/// A moto server on a free port, stopped on drop.
struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `moto_server` if installed, else moto installed from PyPI into the
/// build's scratch directory (once, under a lock: tests run in parallel).
fn moto_command() -> Command {
    let installed = Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if installed {
        return Command::new("moto_server");
    }
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("moto");
    let script = format!(
        "[ -d '{d}/moto' ] || python3 -m pip install --quiet --disable-pip-version-check --target '{d}' 'moto[server]'",
        d = dir.display()
    );
    let lock = format!("{}.lock", dir.display());
    let status = Command::new("flock")
        .args([lock.as_str(), "sh", "-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "installing moto[server] from PyPI failed");
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import sys; from moto.server import main; sys.exit(main())",
    ])
    .env("PYTHONPATH", &dir);
    cmd
}

async fn moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = moto_command()
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start moto's server");
    let url = format!("http://127.0.0.1:{port}");
    wait_for("moto_server to start", Duration::from_secs(30), || {
        reqwest::get(format!("{url}/moto-api/"))
    })
    .await;
    Moto { child, url }
}

fn client(moto: &Moto) -> aws_sdk_secretsmanager::Client {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&moto.url)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
}

async fn put(client: &aws_sdk_secretsmanager::Client, id: &str, value: &str) {
    if client
        .create_secret()
        .name(id)
        .secret_string(value)
        .send()
        .await
        .is_err()
    {
        client
            .put_secret_value()
            .secret_id(id)
            .secret_string(value)
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn aws_secrets_are_found_missing_ones_named_and_rotations_picked_up() {
    let moto = moto().await;
    let aws = client(&moto);
    put(&aws, "dashtam/signing", "first-value").await;
    let source: Arc<dyn SecretSource> = Arc::new(AwsSource::from_client(aws.clone()));
    let found = source.fetch("dashtam/signing").await.unwrap();
    assert_eq!(found.expose_secret(), "first-value");
    match source.fetch("dashtam/nope").await {
        Err(SecretError::NotFound(id)) => assert_eq!(id, "dashtam/nope"),
        other => panic!("expected NotFound, got {other:?}"),
    }

    let cache = Arc::new(
        SecretCache::load(source, Duration::from_secs(1), &["dashtam/signing"])
            .await
            .unwrap(),
    );
    let live = cache.get("dashtam/signing").unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    cache.clone().spawn_refresher(stop.clone());
    put(&aws, "dashtam/signing", "second-value").await;
    wait_for(
        "the rotation to be picked up",
        Duration::from_secs(30),
        || async {
            if live.current().expose_secret() == "second-value" {
                Ok(())
            } else {
                Err("the old value")
            }
        },
    )
    .await;
    stop.cancel();
}

fn dashtam(moto: &Moto, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dashtam"))
        .args(args)
        .env("DASHTAM__SECRETS__SOURCE", "aws")
        .env("DASHTAM__SECRETS__AWS__ENDPOINT_URL", &moto.url)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap()
}

/// The daemon reads its secrets from Secrets Manager: a missing one stops
/// start-up naming it; once they exist, commands that need them work.
#[sqlx::test(migrations = "../../migrations")]
async fn the_daemon_reads_its_secrets_from_secrets_manager(pool: PgPool) {
    let moto = moto().await;
    let url = url_of(&pool);
    let out = dashtam(
        &moto,
        &[
            "serve",
            "--role",
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &url,
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dashtam/encryption-keys"), "{stderr}");

    let aws = client(&moto);
    let key = Cipher::generate_key().unwrap();
    put(
        &aws,
        "dashtam/encryption-keys",
        &format!(
            r#"{{"active": "k1", "keys": {{"k1": "{}"}}}}"#,
            key.expose_secret()
        ),
    )
    .await;
    put(&aws, "dashtam/plaid-secret", "dashtam-sandbox-secret").await;
    let out = dashtam(&moto, &["keys", "rotate", "--database-url", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dashtam/schwab-secret"), "{stderr}");
    put(&aws, "dashtam/schwab-secret", "dashtam-sandbox-secret").await;
    let out = dashtam(&moto, &["keys", "rotate", "--database-url", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("under key \"k1\""), "{stdout}");
}
