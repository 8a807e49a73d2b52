//! Writes run to completion, and `Idempotency-Key` on POSTs.
//!
//! A write's handler runs in a task of its own: a client that times out or
//! disconnects does not cancel it half-way (a provider exchange that
//! succeeded is stored, a revocation is recorded). With an
//! `Idempotency-Key`, the same key and request get the first response again
//! (`Idempotent-Replayed: true`; error responses included, as the problem
//! they were); the same key with a different request is a 422; a retry
//! while the first request still runs is a 409 with `Retry-After`. Keys are
//! leased: if the process handling the first request dies, a retry takes
//! the key over once the lease lapses. Our own failures (5xx) release the
//! key so the client may retry them.

use std::future::Future;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashtam_store::idempotency::{Claim, StoredResponse};
use tracing::Instrument;

use crate::error::ApiError;
use crate::{AppState, RequestId};

const HEADER: &str = "idempotency-key";

/// A POST's `Idempotency-Key` header: 1 to 255 visible characters. The
/// same key and request get the first response again (with
/// `Idempotent-Replayed: true`); the same key with a different request is
/// a 422. Keys are per user and kept a day.
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    fn from_header(v: &axum::http::HeaderValue) -> Result<Self, ApiError> {
        match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 255 => Ok(Self(k.to_owned())),
            _ => Err(ApiError::invalid_field(
                "Idempotency-Key",
                "must be 1 to 255 visible characters",
            )),
        }
    }
}

impl utoipa::IntoParams for IdempotencyKey {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        vec![
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(utoipa::openapi::Required::False)
                .description(Some(
                    "1 to 255 visible characters. The same key and request get the first \
                     response again (with `Idempotent-Replayed: true`); the same key with a \
                     different request is a 422. Keys are per user and kept a day.",
                ))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .max_length(Some(255)),
                ))
                .build(),
        ]
    }
}

/// Runs `work` in its own task, so it finishes even if the client goes
/// away.
async fn spawned(
    work: impl Future<Output = Response> + Send + 'static,
) -> Result<Response, tokio::task::JoinError> {
    tokio::spawn(work.in_current_span()).await
}

/// A handler that panicked: a 500.
fn failed(e: tokio::task::JoinError) -> Response {
    ApiError::internal(format!("request handler failed: {e}")).into_response()
}

/// [`spawned`], a panic being a 500.
async fn to_completion(work: impl Future<Output = Response> + Send + 'static) -> Response {
    spawned(work).await.unwrap_or_else(failed)
}

pub async fn idempotency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return next.run(req).await;
    }
    let raw_key = match req.headers().get(HEADER) {
        Some(k) if req.method() == Method::POST => k.clone(),
        _ => return to_completion(next.run(req)).await,
    };
    let key = match IdempotencyKey::from_header(&raw_key) {
        Ok(IdempotencyKey(k)) => k,
        Err(e) => return e.into_response(),
    };
    // Keys are per subject; an unauthenticated request goes on to its 401.
    let subject = crate::auth::bearer_token(req.headers())
        .and_then(|t| state.auth.verify(t).ok())
        .map(|c| c.sub);
    let Some(subject) = subject else {
        return to_completion(next.run(req)).await;
    };
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, state.body_limit).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
                "the request body exceeds the configured limit",
            )
            .into_response();
        }
    };
    let mut material = Vec::with_capacity(bytes.len() + 64);
    material.extend_from_slice(parts.method.as_str().as_bytes());
    material.push(0);
    material.extend_from_slice(parts.uri.path().as_bytes());
    material.push(0);
    material.extend_from_slice(&bytes);
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &material);

    match state
        .store
        .idempotency_claim(&subject, &key, hash.as_ref(), state.lease)
        .await
    {
        Err(e) => return ApiError::from(e).into_response(),
        Ok(Claim::Mismatch) => {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "this Idempotency-Key was already used for a different request",
            )
            .into_response();
        }
        Ok(Claim::InProgress { lease_left_secs }) => {
            let mut e =
                ApiError::conflict("a request with this Idempotency-Key is still in progress");
            e.retry_after = Some(lease_left_secs.clamp(1, 5));
            return e.into_response();
        }
        Ok(Claim::Done(stored)) => return replay(stored),
        Ok(Claim::Fresh) => {}
    }

    let instance = parts.uri.path().to_owned();
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .map(|r| r.0.to_string())
        .unwrap_or_default();
    let request = Request::from_parts(parts, Body::from(bytes));
    let work = {
        let (state, subject, key) = (state.clone(), subject.clone(), key.clone());
        async move {
            let resp = next.run(request).await;
            remember(&state, &subject, &key, &instance, &request_id, resp).await
        }
    };
    match spawned(work).await {
        Ok(resp) => resp,
        Err(e) => {
            // The handler panicked and never reached `remember`.
            if let Err(e) = state.store.idempotency_release(&subject, &key).await {
                tracing::warn!(error = %e, "could not release an idempotency key");
            }
            failed(e)
        }
    }
}

/// Stores the response under the key (a problem rendered as the client
/// sees it), or releases the key after a failure of ours.
async fn remember(
    state: &AppState,
    subject: &str,
    key: &str,
    instance: &str,
    request_id: &str,
    resp: Response,
) -> Response {
    if resp.status().is_server_error() {
        if let Err(e) = state.store.idempotency_release(subject, key).await {
            tracing::warn!(error = %e, "could not release an idempotency key");
        }
        return resp;
    }
    // A problem is rendered here, as the client gets it, so a replay says
    // exactly the same thing.
    let resp = match resp.extensions().get::<ApiError>() {
        Some(e) => {
            let mut out = crate::error::render(e, instance, request_id);
            for (k, v) in resp.headers() {
                if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
                    out.headers_mut().entry(k).or_insert(v.clone());
                }
            }
            out
        }
        None => resp,
    };
    let status = resp.status();
    let (parts, body) = resp.into_parts();
    let body = match to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let text = |h: header::HeaderName| {
        parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let stored = StoredResponse {
        status: i16::try_from(status.as_u16()).unwrap_or(500),
        content_type: text(header::CONTENT_TYPE),
        location: text(header::LOCATION),
        body: body.to_vec(),
    };
    if let Err(e) = state.store.idempotency_finish(subject, key, &stored).await {
        tracing::warn!(error = %e, "could not store an idempotent response");
    }
    Response::from_parts(parts, Body::from(body))
}

fn replay(stored: StoredResponse) -> Response {
    let status = u16::try_from(stored.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut resp = (status, stored.body).into_response();
    let h = resp.headers_mut();
    if let Some(v) = stored
        .content_type
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Some(v) = stored.location.and_then(|v| HeaderValue::from_str(&v).ok()) {
        h.insert(header::LOCATION, v);
    }
    h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}
