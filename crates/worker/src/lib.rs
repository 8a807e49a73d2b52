//! Job handlers: what the worker pool runs for each job kind.
//!
//! Architecture invariant: handlers reach the database only through `store`
//! (domain tables) and the `JobContext` (their own job row), and providers
//! only through the domain ports.

mod sync;

pub use sync::{SyncHandler, SyncSettings};
