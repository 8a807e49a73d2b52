//! `/api/v1`: one module per resource, each with its routes.

mod admin;
mod connections;
mod data;
mod jobs;
mod scheduler;
mod shared;
mod views;
mod webhooks;

use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(admin::router())
        .merge(connections::router())
        .merge(jobs::router())
        .merge(data::router())
        .merge(scheduler::router())
        .merge(webhooks::router())
}
