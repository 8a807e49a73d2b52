//! The `dashtam` binary's library: configuration, wiring, the demo and the
//! benchmarks. `main.rs` is only the command line.

pub mod app;
pub mod bench;
pub mod config;
pub mod demo;
pub mod secrets;
