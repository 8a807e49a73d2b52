//! The sandbox's Schwab side as the Trader API behaves: RFC 6749 client
//! authentication (form-encoded id and secret), Trader-shaped JSON errors
//! for every bad request, `types` required and checked, `symbol` filtering,
//! and the reported shape of an expired refresh token.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{Duration, Utc};
use dashtam_sandbox::{ExpiredRefresh, OAuthSettings, Sandbox, SandboxConfig};
use serde_json::Value;

const SECRET: &str = "s3c+r/t==";
const REDIRECT: &str = "https://127.0.0.1/callback";

struct Schwab {
    url: String,
    http: reqwest::Client,
}

fn basic(id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

impl Schwab {
    async fn start(oauth: OAuthSettings) -> (Self, Sandbox) {
        let sandbox = Sandbox::new(SandboxConfig {
            secret: SECRET.into(),
            oauth,
            ..SandboxConfig::default()
        });
        let addr = sandbox
            .clone()
            .spawn("127.0.0.1:0".parse().unwrap(), std::future::pending())
            .await
            .unwrap();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        (
            Self {
                url: format!("http://{addr}"),
                http,
            },
            sandbox,
        )
    }

    async fn token(&self, auth: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/v1/oauth/token", self.url))
            .header("authorization", auth)
            .form(form)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    /// Consent, then the code exchange with properly encoded credentials.
    async fn authorize(&self) -> Value {
        let consent = self
            .http
            .get(format!("{}/v1/oauth/authorize", self.url))
            .query(&[
                ("client_id", "dashtam-sandbox-client"),
                ("redirect_uri", REDIRECT),
                ("accounts", "1"),
                ("transactions_per_account", "60"),
            ])
            .send()
            .await
            .unwrap();
        let location = consent.headers()["location"].to_str().unwrap();
        let code = reqwest::Url::parse(location)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "code")
            .unwrap()
            .1
            .into_owned();
        let (status, tokens) = self
            .token(
                &basic("dashtam-sandbox-client", SECRET),
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                ],
            )
            .await;
        assert_eq!(status, 200, "{tokens}");
        tokens
    }

    async fn get(&self, access: &str, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(access)
            .query(query)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{path} answered {status} without JSON"
        );
        (status, resp.json().await.unwrap())
    }
}

fn trader_error(v: &Value) {
    assert!(v["message"].is_string(), "{v}");
    assert!(v["errors"].as_array().is_some_and(|e| !e.is_empty()), "{v}");
}

#[tokio::test]
async fn client_credentials_are_form_decoded() {
    let (s, _) = Schwab::start(OAuthSettings::default()).await;
    // The code exchange in `authorize` sends them form-encoded (RFC 6749).
    let tokens = s.authorize().await;
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh)];
    // Unencoded, as authlib (schwab-py) and `requests` send them: accepted.
    let raw = format!(
        "Basic {}",
        STANDARD.encode(format!("dashtam-sandbox-client:{SECRET}"))
    );
    let (status, body) = s.token(&raw, &form).await;
    assert_eq!(status, 200, "{body}");
    // A wrong secret, either way: refused.
    for wrong in [
        basic("dashtam-sandbox-client", "s3c r/t=="),
        basic("x", SECRET),
    ] {
        let (status, body) = s.token(&wrong, &form).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], "invalid_client");
    }
}

#[tokio::test]
async fn trader_requests_are_checked_with_json_errors() {
    let (s, _) = Schwab::start(OAuthSettings::default()).await;
    let tokens = s.authorize().await;
    let access = tokens["access_token"].as_str().unwrap();
    let (_, numbers) = s
        .get(access, "/trader/v1/accounts/accountNumbers", &[])
        .await;
    let hash = numbers[0]["hashValue"].as_str().unwrap().to_owned();
    let path = format!("/trader/v1/accounts/{hash}/transactions");
    let end = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let start =
        (Utc::now() - Duration::days(364)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);

    // `types` is required and must name Trader API types.
    let (status, body) = s
        .get(access, &path, &[("startDate", &start), ("endDate", &end)])
        .await;
    assert_eq!(status, 400);
    trader_error(&body);
    let (status, body) = s
        .get(
            access,
            &path,
            &[
                ("startDate", &start),
                ("endDate", &end),
                ("types", "TRADE,BOGUS"),
            ],
        )
        .await;
    assert_eq!(status, 400);
    trader_error(&body);
    assert!(body["errors"][0].as_str().unwrap().contains("BOGUS"));
    // Missing or malformed dates: JSON, not text.
    let (status, body) = s.get(access, &path, &[("types", "TRADE")]).await;
    assert_eq!(status, 400);
    trader_error(&body);
    let (status, body) = s
        .get(
            access,
            &path,
            &[
                ("startDate", "yesterday"),
                ("endDate", &end),
                ("types", "TRADE"),
            ],
        )
        .await;
    assert_eq!(status, 400);
    trader_error(&body);
    // A bad token is a Trader-shaped 401.
    let (status, body) = s.get("nope", "/trader/v1/accounts", &[]).await;
    assert_eq!(status, 401);
    trader_error(&body);

    // Types and symbol filter.
    let all_types = "TRADE,DIVIDEND_OR_INTEREST,ACH_RECEIPT,ACH_DISBURSEMENT,CASH_DISBURSEMENT";
    let (status, all) = s
        .get(
            access,
            &path,
            &[
                ("startDate", &start),
                ("endDate", &end),
                ("types", all_types),
            ],
        )
        .await;
    assert_eq!(status, 200);
    let all = all.as_array().unwrap().clone();
    let (_, trades) = s
        .get(
            access,
            &path,
            &[("startDate", &start), ("endDate", &end), ("types", "TRADE")],
        )
        .await;
    let trades = trades.as_array().unwrap();
    assert!(!trades.is_empty() && trades.len() < all.len());
    assert!(trades.iter().all(|t| t["type"] == "TRADE"));
    let symbol = trades[0]["transferItems"][1]["instrument"]["symbol"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, only) = s
        .get(
            access,
            &path,
            &[
                ("startDate", &start),
                ("endDate", &end),
                ("types", "TRADE"),
                ("symbol", &symbol),
            ],
        )
        .await;
    let only = only.as_array().unwrap();
    assert!(!only.is_empty() && only.len() <= trades.len());
    assert!(
        only.iter()
            .all(|t| t["transferItems"][1]["instrument"]["symbol"] == symbol.as_str())
    );
}

#[tokio::test]
async fn an_expired_refresh_token_can_answer_as_schwab_reportedly_does() {
    for (shape, error) in [
        (ExpiredRefresh::InvalidGrant, "invalid_grant"),
        (
            ExpiredRefresh::UnsupportedTokenType,
            "unsupported_token_type",
        ),
    ] {
        let (s, _) = Schwab::start(OAuthSettings {
            refresh_ttl_secs: 0,
            expired_refresh: shape,
            ..OAuthSettings::default()
        })
        .await;
        let tokens = s.authorize().await;
        let (status, body) = s
            .token(
                &basic("dashtam-sandbox-client", SECRET),
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
                ],
            )
            .await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], error);
        if shape == ExpiredRefresh::UnsupportedTokenType {
            assert!(
                body["error_description"]
                    .as_str()
                    .unwrap()
                    .contains("refresh_token_authentication_error")
            );
        }
    }
}
