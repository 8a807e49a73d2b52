//! `Idempotency-Key` on POSTs: the same key and request get the first
//! response again; the same key with a different request is a 422.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashtam_store::idempotency::{Claim, StoredResponse};

use crate::AppState;
use crate::error::ApiError;

const HEADER: &str = "idempotency-key";

pub async fn idempotency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(raw_key) = req.headers().get(HEADER).cloned() else {
        return next.run(req).await;
    };
    let key = match raw_key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 => k.to_owned(),
        _ => {
            return ApiError::invalid_field(
                "Idempotency-Key",
                "must be 1 to 255 visible characters",
            )
            .into_response();
        }
    };
    // Keys are per subject; an unauthenticated request goes on to its 401.
    let subject = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .and_then(|t| state.auth.verify(t.trim()).ok())
        .map(|c| c.sub);
    let Some(subject) = subject else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let limit = state.body_limit;
    let bytes = match to_bytes(body, limit).await {
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
        .idempotency_claim(&subject, &key, hash.as_ref())
        .await
    {
        Err(e) => return ApiError::internal(e).into_response(),
        Ok(Claim::Mismatch) => {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "this Idempotency-Key was already used for a different request",
            )
            .into_response();
        }
        Ok(Claim::InProgress) => {
            return ApiError::conflict("a request with this Idempotency-Key is still in progress")
                .into_response();
        }
        Ok(Claim::Done(stored)) => return replay(stored),
        Ok(Claim::Fresh) => {}
    }

    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let status = resp.status();
    // Our own failures are not remembered: the client may retry them.
    if status.is_server_error() {
        if let Err(e) = state.store.idempotency_release(&subject, &key).await {
            tracing::warn!(error = %e, "could not release an idempotency key");
        }
        return resp;
    }
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
    if let Err(e) = state
        .store
        .idempotency_finish(&subject, &key, &stored)
        .await
    {
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
