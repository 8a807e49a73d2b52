//! `/api/v1`: one module per resource, each with its routes.

mod admin;
mod connections;
mod data;
mod jobs;
mod scheduler;

use axum::Router;

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(admin::router())
        .merge(connections::router())
        .merge(jobs::router())
        .merge(data::router())
        .merge(scheduler::router())
}
