//! Postgres repositories for the domain tables.
//!
//! Architecture invariant: `store` is the only crate that reads or writes
//! the domain tables (connections, accounts, transactions, audit records);
//! its SQL lives in `queries/*.sql`. The queue's tables belong to `queue`.

pub mod audit;
pub mod connections;
pub mod credentials;
pub mod crypto;
pub mod health;
pub mod idempotency;
pub mod migrate;
pub mod providers;
pub mod reads;
pub mod sweeps;
pub mod sync;
pub mod webhooks;

use dashtam_db::Db;
use std::sync::Arc;

pub use credentials::CredentialLease;
pub use crypto::{Cipher, CryptoError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// Someone else changed the row since we read it.
    #[error("conflict: {0}")]
    Conflict(String),
}

/// Handle on the domain tables.
#[derive(Clone)]
pub struct Store {
    pool: Db,
    cipher: Arc<Cipher>,
}

impl Store {
    pub fn new(pool: impl Into<Db>, cipher: Arc<Cipher>) -> Self {
        let pool = pool.into();
        Self { pool, cipher }
    }

    pub fn pool(&self) -> &Db {
        &self.pool
    }
}
