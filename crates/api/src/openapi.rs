//! The OpenAPI 3.1 description, generated from the handlers themselves:
//! every route is registered through `utoipa_axum::routes!`, which takes
//! the path and method from the handler's `#[utoipa::path]`, so the spec
//! and the router cannot drift apart. Served at `/api/v1/openapi.json`,
//! with a docs page at `/api/v1/docs`.

use std::collections::BTreeMap;

use axum::response::{Html, IntoResponse, Response};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// The name of the bearer-token security scheme in the spec: every
/// operation needs it but those tagged `ops`, which say `security(())`.
const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dashtam Worker API",
        description = "Enqueue and follow provider syncs; read the accounts and \
            transactions they bring in. Every error is an RFC 9457 problem \
            (`application/problem+json`).",
        version = "1",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&Security),
    security(("bearer" = [])),
    tags(
        (name = "connections", description = "Provider connections and their syncs"),
        (name = "jobs", description = "Job status, live events and cancellation"),
        (name = "data", description = "Accounts and transactions"),
        (name = "admin", description = "Operators: queues, job retry and discard, the scheduler"),
        (name = "ops", description = "Health, readiness, metrics and this description"),
        (name = "webhooks", description = "Provider webhooks, verified by the provider's signature"),
    ),
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.bearer_format = Some("JWT".to_owned());
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER, SecurityScheme::Http(http));
    }
}

/// The error responses every operation may give: an RFC 9457 problem
/// ([`crate::error::Problem`]), 4XX or 5XX.
pub struct Problems;

impl IntoResponses for Problems {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        let problem = |description: &str| -> RefOr<utoipa::openapi::Response> {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(
                            <crate::error::Problem as ToSchema>::name(),
                        )))
                        .build(),
                )
                .build()
                .into()
        };
        BTreeMap::from([
            (
                "4XX".to_owned(),
                problem(
                    "The request was refused: bad input (400, 413, 415, 422), no or a bad \
                     token (401), not an operator (403), not found (404), a conflicting \
                     state (409) or too many requests (429).",
                ),
            ),
            (
                "5XX".to_owned(),
                problem(
                    "The server failed (logged under the request id) or a dependency is \
                     unavailable (503).",
                ),
            ),
        ])
    }
}

/// The OpenAPI description of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    security(()),
    responses(
        (status = 200, description = "This API's OpenAPI 3.1 description", body = Object),
        Problems,
    ),
)]
pub async fn spec(axum::Extension(spec): axum::Extension<SpecJson>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        spec.0,
    )
        .into_response()
}

/// The serialized description, made once when the router is built.
#[derive(Clone)]
pub struct SpecJson(pub bytes::Bytes);

/// A browsable page for the description, served whole from the binary: no
/// third-party script runs on the API's origin (a compromised CDN would
/// otherwise run code where tokens are pasted). A strict
/// Content-Security-Policy allows only this page's own script and style,
/// by hash, and requests to this origin.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "ops",
    security(()),
    responses(
        (status = 200, description = "An HTML page that renders the description", content_type = "text/html", body = String),
        Problems,
    ),
)]
pub async fn docs() -> axum::response::Response {
    use axum::response::IntoResponse;
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let csp = CSP.get_or_init(|| {
        format!(
            "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            sha256_source(DOCS_SCRIPT),
            sha256_source(DOCS_STYLE)
        )
    });
    (
        [
            (axum::http::header::CONTENT_SECURITY_POLICY, csp.as_str()),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (axum::http::header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(format!(
            "{DOCS_HEAD}<style>{DOCS_STYLE}</style>{DOCS_BODY}<script>{DOCS_SCRIPT}</script></body></html>"
        )),
    )
        .into_response()
}

/// A CSP source for an inline element: `sha256-<base64 of its SHA-256>`.
fn sha256_source(content: &str) -> String {
    use base64::Engine;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

const DOCS_HEAD: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Dashtam Worker API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
"#;

const DOCS_STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#111}\
h1{font-size:1.5rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #ccc}\
section{margin:1rem 0;padding:.5rem 1rem;border:1px solid #ddd;border-radius:6px}\
code{font:13px ui-monospace,monospace}.m{font-weight:700;text-transform:uppercase;margin-right:.5rem}\
.d{color:#333;white-space:pre-wrap}ul{margin:.25rem 0}";

const DOCS_BODY: &str = r#"</head>
<body>
<main>
<h1>Dashtam Worker API</h1>
<p>The whole description: <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.</p>
<div id="ops" aria-live="polite">Loading…</div>
</main>
"#;

/// Renders every operation from the description with DOM text nodes only
/// (nothing from the description is parsed as HTML).
const DOCS_SCRIPT: &str = r#"(async () => {
  const root = document.getElementById("ops");
  const el = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  };
  try {
    const spec = await (await fetch("/api/v1/openapi.json")).json();
    root.textContent = "";
    const byTag = new Map();
    for (const [path, item] of Object.entries(spec.paths || {})) {
      for (const [method, op] of Object.entries(item)) {
        if (typeof op !== "object" || !op.responses) continue;
        const tag = (op.tags && op.tags[0]) || "other";
        if (!byTag.has(tag)) byTag.set(tag, []);
        byTag.get(tag).push([method, path, op]);
      }
    }
    for (const [tag, ops] of byTag) {
      root.appendChild(el("h2", tag));
      for (const [method, path, op] of ops) {
        const s = el("section");
        const h = el("h3");
        h.appendChild(el("span", method, "m"));
        h.appendChild(el("code", path));
        s.appendChild(h);
        if (op.description || op.summary) s.appendChild(el("p", op.description || op.summary, "d"));
        const params = (op.parameters || []).map(p => `${p.name} (${p.in}${p.required ? ", required" : ""})`);
        if (params.length) {
          s.appendChild(el("p", "Parameters:"));
          const ul = el("ul");
          params.forEach(p => ul.appendChild(el("li", p)));
          s.appendChild(ul);
        }
        s.appendChild(el("p", "Responses: " + Object.keys(op.responses).join(", ")));
        root.appendChild(s);
      }
    }
  } catch (e) {
    root.textContent = "Could not load the description: " + e;
  }
})();"#;
