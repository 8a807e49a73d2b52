//! Operator view of the scheduler: who leads, and what each cycle's ticks
//! did.

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Datelike, Utc};
use dashtam_domain::schedule::Cycle;
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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct CyclesQuery {
    #[param(inline)]
    cycle: Option<Cycle>,
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
    let limit = super::shared::page_size(q.limit, 100, 1000)?;
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            c.split_once('/')
                .and_then(|(t, cycle)| {
                    Some((
                        t.parse::<DateTime<Utc>>().ok()?,
                        Cycle::parse(cycle)?.as_str(),
                    ))
                })
                .filter(|(t, _)| super::shared::storable_year(t.year()))
                .ok_or_else(|| {
                    ApiError::invalid_field("cursor", "is not a cursor this API issued")
                })?,
        ),
    };
    let pool = state.queue.pool();
    let leader = leadership::lease(pool, leadership::LEASE).await?;
    let mut data = leadership::ticks(pool, q.cycle.map(Cycle::as_str), after, limit + 1).await?;
    let next_cursor = super::shared::next_page(&mut data, limit, |t| {
        format!("{}/{}", t.tick.to_rfc3339(), t.cycle)
    });
    Ok(Json(CyclesView {
        leader: leader.map(LeaseOut::from),
        data: data.into_iter().map(TickOut::from).collect(),
        next_cursor,
    }))
}
