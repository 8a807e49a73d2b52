//! Why an attempt failed: what to tell the queue and the audit trail.

use std::time::Duration;

use dashtam_domain::model::ConnectionStatus;
use dashtam_domain::ports::ProviderError;
use dashtam_queue::JobError;
use dashtam_store::StoreError;

pub(crate) struct Failure {
    pub error: JobError,
    pub reason: String,
    /// The provider refused the credentials: the connection needs the user
    /// to authorize again.
    pub reauth: bool,
    /// The provider's data changed during pagination (restart the pass).
    pub mutation: bool,
    /// The access token expired (refresh, then call again).
    pub token_expired: bool,
}

impl From<crate::gate::Wait> for Failure {
    /// The provider is down or paused for everyone: the job waits, without
    /// spending its attempt.
    fn from(w: crate::gate::Wait) -> Self {
        Self {
            reason: format!(
                "waiting for the provider ({}) until {}",
                w.reason,
                w.until.to_rfc3339()
            ),
            error: JobError::Snooze {
                after: w.delay(),
                reason: w.reason.to_owned(),
            },
            reauth: false,
            mutation: false,
            token_expired: false,
        }
    }
}

impl Failure {
    pub fn permanent(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self {
            error: JobError::permanent(reason.clone()),
            reason,
            reauth: false,
            mutation: false,
            token_expired: false,
        }
    }

    /// Cancelled on request: stop, keep nothing.
    pub fn cancelled() -> Self {
        Self {
            error: JobError::Cancelled,
            reason: "cancelled on request".into(),
            reauth: false,
            mutation: false,
            token_expired: false,
        }
    }

    /// Refuses work on a connection that is not active.
    pub fn unless_active(status: ConnectionStatus) -> Result<(), Self> {
        if status.can_sync() {
            Ok(())
        } else {
            Err(Self::permanent(format!(
                "the connection is {}, not active",
                status.as_str()
            )))
        }
    }

    pub fn will_retry(&self) -> bool {
        matches!(self.error, JobError::Retry { .. })
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        if let StoreError::Db(db) = &e {
            dashtam_store::health::note(db);
        }
        let reason = e.to_string();
        let error = match e {
            StoreError::Db(_) | StoreError::Conflict(_) => JobError::retry(reason.clone()),
            StoreError::Crypto(_) | StoreError::Corrupt(_) => JobError::permanent(reason.clone()),
        };
        Failure {
            error,
            reason,
            reauth: false,
            mutation: false,
            token_expired: false,
        }
    }
}

impl From<ProviderError> for Failure {
    fn from(e: ProviderError) -> Self {
        let reason = e.to_string();
        let reauth = matches!(e, ProviderError::Unauthorized(_));
        let mutation = matches!(e, ProviderError::MutationDuringPagination);
        let token_expired = matches!(e, ProviderError::AccessTokenExpired);
        let error = match e {
            ProviderError::Transient(_)
            | ProviderError::MutationDuringPagination
            | ProviderError::AccessTokenExpired => JobError::retry(reason.clone()),
            ProviderError::RateLimited { retry_after, .. } => JobError::Retry {
                message: reason.clone(),
                after: Some(retry_after.unwrap_or(Duration::from_secs(30))),
            },
            ProviderError::Unauthorized(_) | ProviderError::Permanent(_) => {
                JobError::permanent(reason.clone())
            }
        };
        Failure {
            error,
            reason,
            reauth,
            mutation,
            token_expired,
        }
    }
}
