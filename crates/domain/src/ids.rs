//! Typed identifiers: a `ConnectionId` can never be passed where an
//! `AccountId` is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! typed_uuid {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered (v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

typed_uuid!(
    /// A user's link to one provider.
    ConnectionId
);
typed_uuid!(
    /// An account at a provider, under one connection.
    AccountId
);
typed_uuid!(
    /// A normalized transaction.
    TransactionId
);
typed_uuid!(
    /// A job in the queue.
    JobId
);

/// The tenant: the JWT `sub` of the user who owns the data.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Parses a subject; it must be non-empty, at most 255 bytes, with no
    /// control characters.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.is_empty() {
            return Err("subject is empty");
        }
        if s.len() > 255 {
            return Err("subject is longer than 255 bytes");
        }
        if s.chars().any(char::is_control) {
            return Err("subject contains control characters");
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings() {
        let id = ConnectionId::new();
        assert_eq!(id.to_string().parse::<ConnectionId>().unwrap(), id);
        assert!("not-a-uuid".parse::<ConnectionId>().is_err());
    }

    #[test]
    fn user_ids_are_validated() {
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a\nb").is_err());
        assert!(UserId::parse(&"x".repeat(256)).is_err());
        assert_eq!(UserId::parse("user-1").unwrap().as_str(), "user-1");
    }
}
