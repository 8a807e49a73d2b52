//! The daemon's integration tests: the real app on port 0, a fresh Postgres
//! database per test, the real sandbox provider on an ephemeral port.

mod api;
mod audit;
mod auth;
mod browser;
mod chaos;
mod cli;
mod crash;
mod field;
mod helpers;
mod metrics;
mod openapi;
mod operations;
mod ops;
mod pgbouncer;
mod providers;
mod ratelimit;
mod scheduler;
mod secrets;
mod sync;
mod tokens;
mod webhooks;
