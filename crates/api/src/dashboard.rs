//! The operator console in the browser, served under `/ops/`.
//!
//! Four files, embedded in the binary (no CDN, no build step): the page,
//! its script and its style. The page holds no data: it asks the admin API
//! for everything with the operator's token, which it keeps in memory only
//! (never a cookie, the URL or storage, so there is no session to steal and
//! nothing for a cross-site request to ride on); a token without the
//! operator role is refused at sign-in, and by every admin endpoint anyway.
//! A strict Content-Security-Policy lets the page run only its own script
//! and style and talk only to this origin.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");
const ICON: &str = include_str!("dashboard/icon.svg");

/// Only this origin's own files, no inline code, no framing, no forms
/// posted anywhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            // A new release's files replace the old ones at once.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ops", get(|| async { Redirect::permanent("/ops/") }))
        .route(
            "/ops/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ops/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ops/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/ops/icon.svg",
            get(|| async { asset("image/svg+xml", ICON) }),
        )
}
