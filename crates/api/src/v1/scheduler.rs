//! Operator view of the scheduler: who leads, and what each cycle's ticks
//! did.

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use dashtam_queue::schedule::{self, Lease, TickRecord};
use serde::{Deserialize, Serialize};

use super::admin::require_operator;
use super::data::query;
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new().route("/scheduler/cycles", get(cycles))
}

const CYCLES: [&str; 3] = ["token_refresh", "stale_sync", "prune"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CyclesQuery {
    cycle: Option<String>,
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

#[derive(Serialize)]
struct CyclesView {
    /// The current lease; `live: false` means nobody leads right now.
    leader: Option<Lease>,
    data: Vec<TickRecord>,
    /// `<tick>/<cycle>` of the page's last row, if there may be more.
    next_cursor: Option<String>,
}

/// Recent ticks, newest first (start, end, jobs enqueued, connections
/// flagged, and which leader ran them).
async fn cycles(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<CyclesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CyclesView>, ApiError> {
    require_operator(&caller)?;
    let q = query(q)?;
    if let Some(c) = q.cycle.as_deref().filter(|c| !CYCLES.contains(c)) {
        return Err(ApiError::invalid_field(
            "cycle",
            format!("{c:?} is not a cycle (token_refresh, stale_sync, prune)"),
        ));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            "must be between 1 and 1000",
        ));
    }
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            c.split_once('/')
                .and_then(|(t, cycle)| Some((t.parse::<DateTime<Utc>>().ok()?, cycle)))
                .ok_or_else(|| {
                    ApiError::invalid_field("cursor", "is not a cursor this API issued")
                })?,
        ),
    };
    let pool = state.queue.pool();
    let leader = schedule::lease(pool, schedule::LEASE).await?;
    let mut data = schedule::ticks(pool, q.cycle.as_deref(), after, limit + 1).await?;
    let next_cursor = if data.len() as i64 > limit {
        data.truncate(usize::try_from(limit).unwrap_or(0));
        data.last()
            .map(|t| format!("{}/{}", t.tick.to_rfc3339(), t.cycle))
    } else {
        None
    };
    Ok(Json(CyclesView {
        leader,
        data,
        next_cursor,
    }))
}
