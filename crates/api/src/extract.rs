//! Extractors that turn every malformed input into a clear 4xx problem.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use dashtam_domain::{ConnectionId, JobId};
use serde::de::DeserializeOwned;
use utoipa::IntoParams;
use utoipa::openapi::Required;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};

use crate::error::{ApiError, FieldError};

/// `axum::Json`, but rejections become problem details: 415 without a JSON
/// content type, 400 for broken JSON, 422 for well-formed JSON of the wrong
/// shape (unknown fields included), 413 past the body limit.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => {
            // "path: message" from serde_path_to_error via axum.
            let full = e.body_text();
            let msg = full
                .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                .unwrap_or(&full)
                .to_owned();
            let (field, message) = match msg.split_once(": ") {
                Some((f, m)) if !f.contains(' ') => (f.to_owned(), m.to_owned()),
                _ => ("body".to_owned(), msg.clone()),
            };
            let mut err = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Request body failed validation",
                msg,
            );
            err.errors.push(FieldError { field, message });
            err
        }
        JsonRejection::JsonSyntaxError(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            e.body_text(),
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as JSON with Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
                "the request body exceeds the configured limit",
            )
        }
        other => ApiError::bad_request(other.body_text()),
    }
}

/// Parses an id from a query parameter.
pub fn parse_id<T: std::str::FromStr>(field: &str, raw: &str) -> Result<T, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::invalid_field(field, format!("{raw:?} is not a valid UUID")))
}

/// A type that is a route's one path parameter: it names the parameter,
/// parses it, and describes it in the OpenAPI description.
pub trait PathParam: std::str::FromStr {
    /// The route's parameter, as the OpenAPI description names it.
    const NAME: &'static str;
    /// What it is, for its description.
    const DESCRIPTION: &'static str;
    /// What a malformed one is not (`"{raw}" is not a valid UUID`).
    const IS: &'static str = "a valid UUID";

    /// Its schema: a UUID unless said otherwise.
    fn schema() -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
    }
}

impl PathParam for ConnectionId {
    const NAME: &'static str = "connection_id";
    const DESCRIPTION: &'static str = "The connection's id (a UUID).";
}

impl PathParam for JobId {
    const NAME: &'static str = "job_id";
    const DESCRIPTION: &'static str = "The job's id (a UUID).";
}

/// The route's one path parameter, typed: a malformed one is a 400
/// naming the parameter.
pub struct PathId<T>(pub T);

impl<S: Send + Sync, T: PathParam> FromRequestParts<S> for PathId<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        raw.parse()
            .map(Self)
            .map_err(|_| ApiError::invalid_field(T::NAME, format!("{raw:?} is not {}", T::IS)))
    }
}

impl<T: PathParam> IntoParams for PathId<T> {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name(T::NAME)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(T::DESCRIPTION))
                .schema(Some(T::schema()))
                .build(),
        ]
    }
}
