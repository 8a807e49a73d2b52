//! Job payloads: versioned and tagged, so a job enqueued by an older
//! release still parses after an upgrade.

use serde::{Deserialize, Serialize};

use crate::{ConnectionId, JobId};

/// The kinds of job the daemon runs; each has a queue of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Sync one connection ([`SyncJob`]).
    Sync,
    /// Make sure one connection's access token is fresh
    /// ([`TokenRefreshJob`]).
    TokenRefresh,
}

impl JobKind {
    pub const ALL: [JobKind; 2] = [Self::Sync, Self::TokenRefresh];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::TokenRefresh => "token_refresh",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The queue jobs of this kind go to.
    pub fn queue(self) -> &'static str {
        self.as_str()
    }
}

/// What a job's arguments declare about it, once (River's `JobArgs`,
/// Oban's `use Oban.Worker`): its kind (and so its queue), the key that
/// keeps duplicates out, and the domain object it is about. Enqueue sites
/// add only what varies per call (attempts from configuration, owner, when
/// it runs).
pub trait JobArgs: Serialize {
    const KIND: JobKind;
    /// Lower runs first.
    const PRIORITY: i16 = 0;

    /// At most one pending or running job per key; `None`: no limit.
    fn unique_key(&self) -> Option<String>;

    /// What the job is about (a connection id), indexed so its jobs can be
    /// listed.
    fn subject(&self) -> Option<String>;
}

/// Sync one connection's transactions from its provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum SyncJob {
    #[serde(rename = "1")]
    V1 {
        connection_id: ConnectionId,
        /// A follow-up: news of data that arrived while this sync of the
        /// same connection ran (it has a unique key of its own, so one can
        /// wait behind the running one; like every sync it starts only
        /// once no older sync of its connection runs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<JobId>,
    },
}

impl SyncJob {
    pub fn new(connection_id: ConnectionId) -> Self {
        Self::V1 {
            connection_id,
            after: None,
        }
    }

    /// A sync to run once `running` (a sync of the same connection) ends.
    pub fn after(connection_id: ConnectionId, running: JobId) -> Self {
        Self::V1 {
            connection_id,
            after: Some(running),
        }
    }

    pub fn connection_id(&self) -> ConnectionId {
        match self {
            Self::V1 { connection_id, .. } => *connection_id,
        }
    }

    /// The unique key of the follow-up queued behind a running sync of
    /// `connection_id` (see [`SyncJob::after`]).
    pub fn follow_up_key(connection_id: ConnectionId) -> String {
        format!("sync:{connection_id}:next")
    }

    /// The sync that was running when this follow-up was enqueued.
    pub fn waits_for(&self) -> Option<JobId> {
        match self {
            Self::V1 { after, .. } => *after,
        }
    }
}

impl JobArgs for SyncJob {
    const KIND: JobKind = JobKind::Sync;

    /// At most one pending or running sync per connection, plus at most
    /// one follow-up queued behind a running one.
    fn unique_key(&self) -> Option<String> {
        Some(match self.waits_for() {
            None => format!("sync:{}", self.connection_id()),
            Some(_) => Self::follow_up_key(self.connection_id()),
        })
    }

    fn subject(&self) -> Option<String> {
        Some(self.connection_id().to_string())
    }
}

/// Make sure one connection's access token is fresh.
///
/// Any number of these may run for one connection at once (the scheduler's
/// sweep, syncs that met an expired token, operators): the refresh itself is
/// single-flight, so only one of them calls the provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum TokenRefreshJob {
    #[serde(rename = "1")]
    V1 {
        connection_id: ConnectionId,
        /// The credentials version the trigger found stale: refresh unless
        /// a newer version exists by then. `None`: refresh only if the
        /// access token expires within the configured lead time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stale_version: Option<i64>,
    },
}

impl TokenRefreshJob {
    pub fn new(connection_id: ConnectionId, stale_version: Option<i64>) -> Self {
        Self::V1 {
            connection_id,
            stale_version,
        }
    }

    pub fn connection_id(&self) -> ConnectionId {
        match self {
            Self::V1 { connection_id, .. } => *connection_id,
        }
    }

    pub fn stale_version(&self) -> Option<i64> {
        match self {
            Self::V1 { stale_version, .. } => *stale_version,
        }
    }
}

impl JobArgs for TokenRefreshJob {
    const KIND: JobKind = JobKind::TokenRefresh;

    /// At most one pending refresh per connection from the sweep (a
    /// trigger that must not be folded into it clears the key).
    fn unique_key(&self) -> Option<String> {
        Some(format!("token_refresh:{}", self.connection_id()))
    }

    fn subject(&self) -> Option<String> {
        Some(self.connection_id().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_versioned() {
        let id = ConnectionId::new();
        let v = serde_json::to_value(SyncJob::new(id)).unwrap();
        assert_eq!(v["v"], "1");
        assert_eq!(v["connection_id"], id.to_string());
        assert_eq!(
            serde_json::from_value::<SyncJob>(v.clone())
                .unwrap()
                .connection_id(),
            id
        );
        // A payload written before follow-ups existed still parses.
        assert!(v.get("after").is_none());
        let next = SyncJob::after(id, JobId::new());
        assert_ne!(next.unique_key(), SyncJob::new(id).unique_key());
        let back: SyncJob = serde_json::from_value(serde_json::to_value(&next).unwrap()).unwrap();
        assert_eq!(back, next);
    }
}
