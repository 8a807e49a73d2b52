//! Where a job is in its life: the one list of states, and the one answer
//! to "is this job finished?".

use serde::{Deserialize, Serialize};

/// A job's state, as the `jobs.state` column holds it.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    sqlx::Type,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum JobState {
    /// Waits for its `run_at`.
    Scheduled,
    /// Ready to be claimed by a worker.
    Available,
    Running,
    /// Failed an attempt; waits for its retry.
    Retryable,
    Succeeded,
    /// Dead: out of attempts, or a permanent error.
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        Self::Scheduled,
        Self::Available,
        Self::Running,
        Self::Retryable,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Available => "available",
            Self::Running => "running",
            Self::Retryable => "retryable",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The job will not run again by itself (an operator may retry a
    /// failed or cancelled one).
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_ends_are_finished() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::from(s.as_str())
            );
        }
        assert_eq!(JobState::parse("done"), None);
        let finished: Vec<_> = JobState::ALL
            .into_iter()
            .filter(|s| s.is_finished())
            .collect();
        assert_eq!(
            finished,
            [JobState::Succeeded, JobState::Failed, JobState::Cancelled]
        );
        assert!(!JobState::Retryable.is_finished());
    }
}
