//! Dashtam's domain: entities, value objects and the ports the adapters
//! implement.
//!
//! Architecture invariant: this crate does no I/O. It knows nothing of
//! Postgres, HTTP or tokio; adapters depend on it, never the reverse.

pub mod audit;
pub mod ids;
pub mod jobs;
pub mod link;
pub mod model;
pub mod money;
pub mod ports;
pub mod schedule;

pub use ids::{AccountId, ConnectionId, JobId, TransactionId, UserId};
pub use money::{Currency, CurrencyError};
