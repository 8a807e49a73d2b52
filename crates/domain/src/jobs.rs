//! Job payloads: versioned and tagged, so a job enqueued by an older
//! release still parses after an upgrade.

use serde::{Deserialize, Serialize};

use crate::ConnectionId;

pub const QUEUE_SYNC: &str = "sync";
pub const KIND_SYNC: &str = "sync";

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
