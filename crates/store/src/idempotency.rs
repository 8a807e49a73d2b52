//! Stored responses for `Idempotency-Key` requests.

use crate::{Store, StoreError};

/// What a key already holds.
#[derive(Debug)]
pub enum Claim {
    /// New key: handle the request, then [`Store::idempotency_finish`].
    Fresh,
    /// The same request is still being handled.
    InProgress,
    /// The same key was used for a different request.
    Mismatch,
    /// The stored response of the first request.
    Done(StoredResponse),
}

#[derive(Debug, sqlx::FromRow)]
pub struct StoredResponse {
    pub status: i16,
    pub content_type: Option<String>,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

impl Store {
    pub async fn idempotency_claim(
        &self,
        subject: &str,
        key: &str,
        request_hash: &[u8],
    ) -> Result<Claim, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (subject, key, request_hash) VALUES ($1, $2, $3)
             ON CONFLICT (subject, key) DO NOTHING",
        )
        .bind(subject)
        .bind(key)
        .bind(request_hash)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Claim::Fresh);
        }
        #[derive(sqlx::FromRow)]
        struct Row {
            request_hash: Vec<u8>,
            status: Option<i16>,
            content_type: Option<String>,
            location: Option<String>,
            body: Option<Vec<u8>>,
        }
        let row: Option<Row> = sqlx::query_as(
            "SELECT request_hash, status, content_type, location, body FROM idempotency_keys
             WHERE subject = $1 AND key = $2",
        )
        .bind(subject)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            // Released between our insert and select: treat as in progress.
            None => Claim::InProgress,
            Some(r) if r.request_hash != request_hash => Claim::Mismatch,
            Some(Row { status: None, .. }) => Claim::InProgress,
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

    /// Stores the response for replay.
    pub async fn idempotency_finish(
        &self,
        subject: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $3, content_type = $4, location = $5, body = $6
             WHERE subject = $1 AND key = $2",
        )
        .bind(subject)
        .bind(key)
        .bind(response.status)
        .bind(&response.content_type)
        .bind(&response.location)
        .bind(&response.body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a key whose request failed on our side, so a retry can run.
    pub async fn idempotency_release(&self, subject: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM idempotency_keys WHERE subject = $1 AND key = $2")
            .bind(subject)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl Store {
    /// Forgets keys older than `age` (clients retry within minutes; a day
    /// is generous). Returns how many went.
    pub async fn prune_idempotency_keys(
        &self,
        age: std::time::Duration,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM idempotency_keys WHERE created_at < now() - $1 * interval '1 second'",
        )
        .bind(age.as_secs_f64())
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
