//! Access tokens: HS256 for development; RS256 and ES256 with several
//! public keys at once, chosen by `kid`; an algorithm allow-list; and every
//! way a token can be wrong is a 401 problem with `WWW-Authenticate`.

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashtam::app::Role;
use dashtam::config::JwtAlgorithm;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{TestApp, spawn_app_with, test_config};

/// (private PKCS#8 PEM, public PEM) from openssl.
fn keypair(args: &[&str]) -> (String, String) {
    let dir = std::env::temp_dir().join(format!("dashtam-keys-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let private = dir.join("key.pem");
    let ok = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&private)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .output()
        .unwrap();
    assert!(public.status.success());
    let pair = (
        std::fs::read_to_string(&private).unwrap(),
        String::from_utf8(public.stdout).unwrap(),
    );
    std::fs::remove_dir_all(dir).unwrap();
    pair
}

fn rsa() -> (String, String) {
    keypair(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
}

fn ec() -> (String, String) {
    keypair(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str) -> Value {
    json!({
        "sub": sub, "exp": now() + 600, "nbf": now(), "iat": now(),
        "iss": "dashtam", "aud": "dashtam-api", "role": "client",
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

async fn status_of(app: &TestApp, token: &str) -> (u16, Option<String>) {
    let resp = app
        .http
        .get(format!("{}/api/v1/connections", app.api))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (resp.status().as_u16(), www)
}

#[sqlx::test(migrations = "../../migrations")]
async fn rs256_and_es256_by_kid_with_every_bad_token_refused(pool: PgPool) {
    let (rsa1_private, rsa1_public) = rsa();
    let (rsa2_private, rsa2_public) = rsa();
    let (ec_private, ec_public) = ec();
    let mut config = test_config();
    config.auth.algorithms = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256]
        .map(JwtAlgorithm)
        .to_vec();
    config.auth.public_keys = json!({ "keys": [
        { "kid": "rsa-1", "alg": "RS256", "pem": rsa1_public },
        { "kid": "rsa-2", "alg": "RS256", "pem": rsa2_public },
        { "kid": "ec-1", "alg": "ES256", "pem": ec_public },
    ]})
    .to_string();
    let app = spawn_app_with(pool.clone(), &[Role::Api], config).await;
    let rsa1 = EncodingKey::from_rsa_pem(rsa1_private.as_bytes()).unwrap();
    let rsa2 = EncodingKey::from_rsa_pem(rsa2_private.as_bytes()).unwrap();
    let ec = EncodingKey::from_ec_pem(ec_private.as_bytes()).unwrap();
    let alice = claims("alice");

    // Accepted: each key under its own kid (two RSA keys at once: rotation),
    // and the development HS256 secret.
    for token in [
        sign(Algorithm::RS256, Some("rsa-1"), &rsa1, &alice),
        sign(Algorithm::RS256, Some("rsa-2"), &rsa2, &alice),
        sign(Algorithm::ES256, Some("ec-1"), &ec, &alice),
        app.token("alice"),
    ] {
        assert_eq!(status_of(&app, &token).await.0, 200);
    }

    let mut tampered = sign(Algorithm::RS256, Some("rsa-1"), &rsa1, &alice);
    let payload = URL_SAFE_NO_PAD.encode(claims("mallory").to_string());
    let parts: Vec<&str> = tampered.split('.').collect();
    tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(alice.to_string())
    );
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 3600);
    let mut early = claims("alice");
    early["nbf"] = json!(now() + 3600);
    let mut foreign = claims("alice");
    foreign["iss"] = json!("someone-else");
    let mut elsewhere = claims("alice");
    elsewhere["aud"] = json!("another-api");
    let refused = [
        (
            "unknown kid",
            sign(Algorithm::RS256, Some("rsa-9"), &rsa1, &alice),
        ),
        ("no kid", sign(Algorithm::RS256, None, &rsa1, &alice)),
        (
            "signed by another key",
            sign(Algorithm::RS256, Some("rsa-1"), &rsa2, &alice),
        ),
        (
            "EC key named as RSA",
            sign(Algorithm::ES256, Some("rsa-1"), &ec, &alice),
        ),
        // The classic confusion: HMAC keyed with the RSA *public* key.
        (
            "HS256 with the public key",
            sign(
                Algorithm::HS256,
                Some("rsa-1"),
                &EncodingKey::from_secret(rsa1_public.as_bytes()),
                &alice,
            ),
        ),
        ("tampered payload", tampered),
        ("alg none", unsigned),
        (
            "expired",
            sign(Algorithm::RS256, Some("rsa-1"), &rsa1, &expired),
        ),
        (
            "not yet valid",
            sign(Algorithm::RS256, Some("rsa-1"), &rsa1, &early),
        ),
        (
            "wrong issuer",
            sign(Algorithm::ES256, Some("ec-1"), &ec, &foreign),
        ),
        (
            "wrong audience",
            sign(Algorithm::ES256, Some("ec-1"), &ec, &elsewhere),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (what, token) in &refused {
        let (status, www) = status_of(&app, token).await;
        assert_eq!(status, 401, "{what}");
        let www = www.unwrap_or_default();
        assert!(
            www.starts_with("Bearer realm=\"dashtam\", error=\"invalid_token\""),
            "{what}: {www}"
        );
    }
    app.stop().await;

    // Production allow-list: no HS256 at all.
    let mut config = test_config();
    config.auth.algorithms = vec![JwtAlgorithm(Algorithm::RS256)];
    config.auth.public_keys =
        json!({ "keys": [{ "kid": "rsa-1", "alg": "RS256", "pem": rsa1_public }] }).to_string();
    let app = spawn_app_with(pool, &[Role::Api], config).await;
    assert_eq!(status_of(&app, &app.token("alice")).await.0, 401);
    let (status, www) = status_of(&app, &sign(Algorithm::ES256, Some("ec-1"), &ec, &alice)).await;
    assert_eq!(status, 401);
    assert!(www.unwrap().contains("algorithm is not allowed"));
    assert_eq!(
        status_of(&app, &sign(Algorithm::RS256, Some("rsa-1"), &rsa1, &alice))
            .await
            .0,
        200
    );
    app.stop().await;
}
