//! Every provider endpoint we call, as route templates (never a URL with
//! an id in it): the `endpoint` label of `dashtam_provider_requests_total`
//! and `dashtam_provider_request_seconds`, known in advance so the metrics
//! have every series from the first scrape.

/// Plaid's API (version 2020-09-14).
pub mod plaid {
    pub const EXCHANGE: &str = "/item/public_token/exchange";
    pub const ACCOUNTS: &str = "/accounts/get";
    pub const WEBHOOK_UPDATE: &str = "/item/webhook/update";
    pub const TRANSACTIONS_SYNC: &str = "/transactions/sync";
    pub const REMOVE: &str = "/item/remove";
    pub const VERIFICATION_KEY: &str = "/webhook_verification_key/get";
    pub const ALL: [&str; 6] = [
        EXCHANGE,
        ACCOUNTS,
        WEBHOOK_UPDATE,
        TRANSACTIONS_SYNC,
        REMOVE,
        VERIFICATION_KEY,
    ];
}

/// The Charles Schwab Trader API and its OAuth endpoints.
pub mod schwab {
    pub const TOKEN: &str = "/v1/oauth/token";
    pub const REVOKE: &str = "/v1/oauth/revoke";
    pub const ACCOUNT_NUMBERS: &str = "/trader/v1/accounts/accountNumbers";
    pub const ACCOUNTS: &str = "/trader/v1/accounts";
    pub const TRANSACTIONS: &str = "/trader/v1/accounts/{accountNumber}/transactions";
    pub const ALL: [&str; 5] = [TOKEN, REVOKE, ACCOUNT_NUMBERS, ACCOUNTS, TRANSACTIONS];
}
