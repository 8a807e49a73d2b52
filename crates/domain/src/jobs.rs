//! Job payloads: versioned and tagged, so a job enqueued by an older
//! release still parses after an upgrade.

use serde::{Deserialize, Serialize};

use crate::ConnectionId;

pub const QUEUE_SYNC: &str = "sync";
pub const KIND_SYNC: &str = "sync";
pub const QUEUE_TOKEN_REFRESH: &str = "token_refresh";
pub const KIND_TOKEN_REFRESH: &str = "token_refresh";

/// Sync one connection's transactions from its provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum SyncJob {
    #[serde(rename = "1")]
    V1 { connection_id: ConnectionId },
}

impl SyncJob {
    pub fn new(connection_id: ConnectionId) -> Self {
        Self::V1 { connection_id }
    }

    pub fn connection_id(&self) -> ConnectionId {
        match self {
            Self::V1 { connection_id } => *connection_id,
        }
    }

    /// At most one pending or running sync per connection.
    pub fn unique_key(&self) -> String {
        format!("sync:{}", self.connection_id())
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
            serde_json::from_value::<SyncJob>(v)
                .unwrap()
                .connection_id(),
            id
        );
    }
}
