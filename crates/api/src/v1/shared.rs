//! What the handlers share: pagination and query parsing, the transaction
//! of an action with its audit record, and the queue job of a sync. Units
//! of work below the handlers; no route lives here.

use axum::extract::Query;
use dashtam_domain::audit::{AuditAction, AuditEntry};
use dashtam_domain::jobs::SyncJob;
use dashtam_queue::NewJob;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::{AppState, RequestId};

/// A page size from the query: `default` when absent, else 1 to `max`.
pub fn page_size(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::invalid_field(
            "limit",
            format!("must be between 1 and {max}"),
        ))
    }
}

/// Keeps the first `limit` of `rows` (fetched with `limit + 1`) and returns
/// the cursor of the last kept one if more followed.
pub fn next_page<T>(
    rows: &mut Vec<T>,
    limit: i64,
    cursor: impl Fn(&T) -> String,
) -> Option<String> {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(cursor)
    } else {
        None
    }
}

pub fn query<T: serde::de::DeserializeOwned>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// Dates a user may send: years 1 to 9999. chrono parses signed and
/// five-digit years, which Postgres (or any sane client) does not take.
pub fn storable_year(year: i32) -> bool {
    (1..=9999).contains(&year)
}

/// An audit OUTCOME for an operator (or client) action.
pub fn action(
    action: AuditAction,
    caller: &Caller,
    resource_type: &'static str,
    resource_id: String,
    request_id: &RequestId,
) -> AuditEntry {
    crate::actions::entry(
        action,
        format!("user:{}", caller.user),
        resource_type,
        resource_id,
        Some(request_id.0.to_string()),
    )
}

/// The queue job for `job`, a sync of `user`'s connection at `provider`.
pub fn sync_job(
    state: &AppState,
    job: &SyncJob,
    user: &str,
    provider: &str,
) -> Result<NewJob, ApiError> {
    let mut new = NewJob::from_args(job).map_err(ApiError::internal)?;
    new.owner = Some(user.to_owned());
    new.throttle_key = Some(provider.to_owned());
    new.max_attempts = state.jobs.sync_max_attempts;
    Ok(new)
}

/// `value`, if given, as the one of `all` whose `name` it is; otherwise a
/// 400 naming `field` and listing the names.
pub fn one_of<T: Copy>(
    field: &str,
    value: Option<&str>,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<Option<T>, ApiError> {
    let Some(v) = value else { return Ok(None) };
    all.iter()
        .copied()
        .find(|t| name(*t) == v)
        .map(Some)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|t| name(*t)).collect();
            ApiError::invalid_field(field, format!("{v:?} is not one of {}", names.join(", ")))
        })
}
