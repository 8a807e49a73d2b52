//! Job payloads: versioned and tagged, so a job enqueued by an older
//! release still parses after an upgrade.

use serde::{Deserialize, Serialize};

use crate::{ConnectionId, JobId};

pub const QUEUE_SYNC: &str = "sync";
pub const KIND_SYNC: &str = "sync";
pub const QUEUE_TOKEN_REFRESH: &str = "token_refresh";
pub const KIND_TOKEN_REFRESH: &str = "token_refresh";

/// Sync one connection's transactions from its provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum SyncJob {
    #[serde(rename = "1")]
    V1 {
        connection_id: ConnectionId,
        /// A follow-up: it starts only once this sync of the same
        /// connection has ended (news of data that arrived while that one
        /// ran).
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

    /// The sync this one waits for, if it is a follow-up.
    pub fn waits_for(&self) -> Option<JobId> {
        match self {
            Self::V1 { after, .. } => *after,
        }
    }

    /// At most one pending or running sync per connection, plus at most
    /// one follow-up queued behind a running one.
    pub fn unique_key(&self) -> String {
        match self.waits_for() {
            None => format!("sync:{}", self.connection_id()),
            Some(_) => format!("sync:{}:next", self.connection_id()),
        }
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

    /// At most one pending refresh per connection from the sweep.
    pub fn unique_key(&self) -> String {
        format!("token_refresh:{}", self.connection_id())
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
