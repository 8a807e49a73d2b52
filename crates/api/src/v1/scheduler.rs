//! Operator view of the scheduler: who leads, and what each cycle's ticks
//! did.

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Datelike, Utc};
use dashtam_queue::leadership;

use super::views::{LeaseOut, TickOut};
use serde::{Deserialize, Serialize};

use super::shared::query;
use crate::AppState;
use crate::auth::Operator;
use crate::error::ApiError;
use crate::openapi::Problems;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(cycles))
}

/// A scheduler cycle.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // Documents the `cycle` filter and `TickOut::cycle`.
enum Cycle {
    TokenRefresh,
    StaleSync,
    Prune,
}

const CYCLES: [&str; 3] = ["token_refresh", "stale_sync", "prune"];

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct CyclesQuery {
    #[param(value_type = Option<Cycle>, inline)]
    cycle: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct CyclesView {
    /// The current lease; `live: false` means nobody leads right now.
    leader: Option<LeaseOut>,
    data: Vec<TickOut>,
    /// `<tick>/<cycle>` of the page's last row, if there may be more.
    next_cursor: Option<String>,
}

/// Recent ticks, newest first (start, end, jobs enqueued, connections
/// flagged, and which leader ran them).
#[utoipa::path(
    get, path = "/scheduler/cycles", tag = "admin", params(CyclesQuery),
    responses((status = 200, body = CyclesView), Problems),
)]
async fn cycles(
    State(state): State<AppState>,
    _: Operator,
    q: Result<Query<CyclesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CyclesView>, ApiError> {
    let q = query(q)?;
    if let Some(c) = q.cycle.as_deref().filter(|c| !CYCLES.contains(c)) {
        return Err(ApiError::invalid_field(
            "cycle",
            format!("{c:?} is not a cycle (token_refresh, stale_sync, prune)"),
        ));
    }
    let limit = super::shared::page_size(q.limit, 100, 1000)?;
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            c.split_once('/')
                .and_then(|(t, cycle)| Some((t.parse::<DateTime<Utc>>().ok()?, cycle)))
                .filter(|(t, cycle)| {
                    super::shared::storable_year(t.year()) && CYCLES.contains(cycle)
                })
                .ok_or_else(|| {
                    ApiError::invalid_field("cursor", "is not a cursor this API issued")
                })?,
        ),
    };
    let pool = state.queue.pool();
    let leader = leadership::lease(pool, leadership::LEASE).await?;
    let mut data = leadership::ticks(pool, q.cycle.as_deref(), after, limit + 1).await?;
    let next_cursor = super::shared::next_page(&mut data, limit, |t| {
        format!("{}/{}", t.tick.to_rfc3339(), t.cycle)
    });
    Ok(Json(CyclesView {
        leader: leader.map(LeaseOut::from),
        data: data.into_iter().map(TickOut::from).collect(),
        next_cursor,
    }))
}
