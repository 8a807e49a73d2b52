//! The one HTTP error type: RFC 9457 problem details.
//!
//! Handlers return [`ApiError`]; it travels in the response's extensions and
//! the `problem_details` middleware renders it, adding the request's path
//! (`instance`) and id, and logging 500s once (their body says nothing
//! internal). Errors produced by axum itself (unknown route, wrong method)
//! are turned into problems there too.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::RequestId;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The field, parameter or header, as the request named it.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Boxed: errors travel through every handler's `Result`, so they stay one
/// pointer wide.
#[derive(Clone, Debug)]
pub struct ApiError(Box<Details>);

#[derive(Clone, Debug)]
pub struct Details {
    pub status: StatusCode,
    /// Stable, machine-readable problem kind (the last part of `type`).
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    /// Internal cause of a 500, logged, never shown.
    internal: Option<String>,
    www_authenticate: Option<String>,
    pub(crate) retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self(Box::new(Details {
            status,
            kind,
            title,
            detail: detail.into(),
            errors: Vec::new(),
            internal: None,
            www_authenticate: None,
            retry_after: None,
        }))
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Resource not found",
            detail,
        )
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-parameter",
            "Invalid request parameter",
            format!("{field}: {message}"),
        );
        e.errors.push(FieldError {
            field: field.to_owned(),
            message,
        });
        e
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail.clone(),
        );
        let desc = detail.replace(['"', '\\'], "'");
        e.www_authenticate = Some(format!(
            r#"Bearer realm="dashtam", error="invalid_token", error_description="{desc}""#
        ));
        e
    }

    pub fn unavailable(detail: impl Into<String>, retry_after: Option<u64>) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        );
        e.retry_after = retry_after;
        e
    }

    /// A 500: the cause is logged with the request id, the client learns
    /// nothing internal.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let mut e = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "The server failed to handle this request; it has been logged under the request id.",
        );
        e.internal = Some(cause.to_string());
        e
    }
}

impl std::ops::Deref for ApiError {
    type Target = Details;
    fn deref(&self) -> &Details {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut Details {
        &mut self.0
    }
}

impl ApiError {
    /// A database error: 503 with `Retry-After` when the database is
    /// unreachable or the connection died (clients should retry; logged at
    /// warn), else an opaque, logged 500.
    pub fn database(e: &sqlx::Error) -> Self {
        if dashtam_store::health::note(e) {
            tracing::warn!(error = %e, "database unavailable");
            let mut err =
                Self::unavailable("the database is unavailable; try again shortly", Some(2));
            err.kind = "database-unavailable";
            err
        } else {
            Self::internal(e)
        }
    }

    /// Whether retrying the request may succeed (a lost database
    /// connection).
    pub fn database_unavailable(&self) -> bool {
        self.kind == "database-unavailable"
    }
}

impl From<dashtam_store::StoreError> for ApiError {
    fn from(e: dashtam_store::StoreError) -> Self {
        match &e {
            dashtam_store::StoreError::Db(db) => Self::database(db),
            _ => Self::internal(e),
        }
    }
}

impl From<dashtam_queue::QueueError> for ApiError {
    fn from(e: dashtam_queue::QueueError) -> Self {
        match &e {
            dashtam_queue::QueueError::Db(db) => Self::database(db),
            dashtam_queue::QueueError::Shared(db) => Self::database(db),
            dashtam_queue::QueueError::Stopped => Self::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = self.status.into_response();
        resp.extensions_mut().insert(self);
        resp
    }
}

/// An RFC 9457 problem, as every error response carries it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Problem<'a> {
    /// `https://dashtam.dev/problems/<kind>`: stable, machine-readable.
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    /// The request's path.
    instance: &'a str,
    /// Also in the `x-request-id` response header and the server's logs.
    request_id: &'a str,
    /// Per-field validation errors, when there are any.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [FieldError],
}

pub(crate) fn render(e: &ApiError, instance: &str, request_id: &str) -> Response {
    let body = Problem {
        kind: format!("https://dashtam.dev/problems/{}", e.kind),
        title: e.title,
        status: e.status.as_u16(),
        detail: &e.detail,
        instance,
        request_id,
        errors: &e.errors,
    };
    let mut resp = (e.status, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(v) = e
        .www_authenticate
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        h.insert(header::WWW_AUTHENTICATE, v);
    }
    if let Some(secs) = e.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Renders problems (see the module docs). A read (GET, HEAD) that failed
/// only because its database connection was lost is run once more: by then
/// the pools check connections before use, so a Postgres restart costs the
/// client latency, not an error.
pub async fn problem_details(req: Request, next: Next) -> Response {
    // Cheap to keep (shared bytes); read only if the response is a problem.
    let uri = req.uri().clone();
    let request_id = req.extensions().get::<RequestId>().cloned();
    let resp = if matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) {
        let (parts, body) = req.into_parts();
        let again = parts.clone();
        let resp = next.clone().run(Request::from_parts(parts, body)).await;
        if resp
            .extensions()
            .get::<ApiError>()
            .is_some_and(ApiError::database_unavailable)
        {
            tracing::info!("retrying a read after a lost database connection");
            next.run(Request::from_parts(again, axum::body::Body::empty()))
                .await
        } else {
            resp
        }
    } else {
        next.run(req).await
    };
    let instance = uri.path();
    let request_id = request_id.as_ref().map_or("", |r| &r.0);
    if let Some(e) = resp.extensions().get::<ApiError>() {
        if let Some(cause) = &e.internal {
            tracing::error!(request_id = %request_id, error = %cause, "request failed");
        }
        let mut out = render(e, instance, request_id);
        // Keep headers the handler set (e.g. rate-limit headers).
        for (k, v) in resp.headers() {
            if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
                out.headers_mut().entry(k).or_insert(v.clone());
            }
        }
        return out;
    }
    let status = resp.status();
    if (status.is_client_error() || status.is_server_error())
        && resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|ct| ct != "application/problem+json")
    {
        let e = match status {
            StatusCode::NOT_FOUND => ApiError::not_found(format!("no route for {instance}")),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
                status,
                "method-not-allowed",
                "Method not allowed",
                format!("{instance} does not accept this method"),
            ),
            s if s.is_server_error() => ApiError::internal(format!("unhandled {s}")),
            s => ApiError::new(
                s,
                "bad-request",
                "Bad request",
                s.canonical_reason().unwrap_or(""),
            ),
        };
        if let Some(cause) = &e.internal {
            tracing::error!(request_id = %request_id, error = %cause, "request failed");
        }
        let mut out = render(&e, instance, request_id);
        if let Some(allow) = resp.headers().get(header::ALLOW) {
            out.headers_mut().insert(header::ALLOW, allow.clone());
        }
        return out;
    }
    resp
}
