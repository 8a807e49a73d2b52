//! The `dashtam` daemon's library: configuration, secrets and wiring.
//! `main.rs` is the command line (with the demo and the benchmarks, which
//! are the binary's own).

pub mod app;
pub mod config;
pub mod secrets;
