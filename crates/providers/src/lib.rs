//! Provider adapters: each implements a domain port over reqwest.
//!
//! Architecture invariant: adapters speak the provider's real wire format;
//! pointing `base_url` at the real provider must work. Provider quirks (sign
//! conventions, currency fallbacks, status names) are normalized here and
//! nowhere else.

pub mod plaid;

pub use plaid::{PlaidClient, PlaidConfig};
