//! Stored responses for `Idempotency-Key` requests.

use crate::{Store, StoreError};

/// What a key already holds.
#[derive(Debug)]
pub enum Claim {
    /// New key: handle the request, then [`Store::idempotency_finish`].
    Fresh,
    /// The same request is still being handled (for about this many more
    /// seconds at most, if its process died).
    InProgress { lease_left_secs: u64 },
    /// The same key was used for a different request.
    Mismatch,
    /// The stored response of the first request.
    Done(StoredResponse),
}

#[derive(Debug)]
pub struct StoredResponse {
    pub status: i16,
    pub content_type: Option<String>,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

impl Store {
    /// Claims a key for a request (see `queries/idempotency_claim.sql`),
    /// leased for `lease`: a request whose process dies lets a retry take
    /// the key over once the lease lapses.
    pub async fn idempotency_claim(
        &self,
        subject: &str,
        key: &str,
        request_hash: &[u8],
        lease: std::time::Duration,
    ) -> Result<Claim, StoreError> {
        let claimed = sqlx::query_file_scalar!(
            "queries/idempotency_claim.sql",
            subject,
            key,
            request_hash,
            i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
        )
        .fetch_optional(&self.pool)
        .await?;
        if claimed.is_some() {
            return Ok(Claim::Fresh);
        }
        struct Row {
            request_hash: Vec<u8>,
            status: Option<i16>,
            content_type: Option<String>,
            location: Option<String>,
            body: Option<Vec<u8>>,
            lease_left_secs: Option<f64>,
        }
        let row = sqlx::query_file_as!(Row, "queries/idempotency_lookup.sql", subject, key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            // Released between our insert and select: let the client retry.
            None => Claim::InProgress { lease_left_secs: 1 },
            Some(r) if r.request_hash != request_hash => Claim::Mismatch,
            Some(Row {
                status: None,
                lease_left_secs,
                ..
            }) => Claim::InProgress {
                lease_left_secs: lease_left_secs.unwrap_or(1.0).ceil().max(1.0) as u64,
            },
            Some(Row {
                status: Some(status),
                content_type,
                location,
                body,
                ..
            }) => Claim::Done(StoredResponse {
                status,
                content_type,
                location,
                body: body.unwrap_or_default(),
            }),
        })
    }

    /// Stores the response for replay (and ends the lease).
    pub async fn idempotency_finish(
        &self,
        subject: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        sqlx::query_file!(
            "queries/idempotency_finish.sql",
            subject,
            key,
            response.status,
            response.content_type,
            response.location,
            response.body,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a key whose request failed on our side, so a retry can run.
    pub async fn idempotency_release(&self, subject: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query_file!("queries/idempotency_release.sql", subject, key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets keys older than `age` (clients retry within minutes; a day
    /// is generous). Returns how many went.
    pub async fn prune_idempotency_keys(
        &self,
        age: std::time::Duration,
    ) -> Result<u64, StoreError> {
        Ok(
            sqlx::query_file!("queries/idempotency_prune.sql", age.as_secs_f64())
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}
