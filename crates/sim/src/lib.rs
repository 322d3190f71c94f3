//! Gatehouse's simulators: today the load generator behind `gatehouse bench` (MQTT, and EST
//! enrollment); the fleet simulator (normal and attacking devices) joins it here.
//!
//! The design decision that shapes it: the load generator is measured as much as the
//! broker is, so its client ([`client`]) is a lean, task-per-connection MQTT client over
//! tokio-rustls that drives gatehouse-mqtt's sans-I/O codec directly, with small buffers
//! and no background machinery, light enough to hold tens of thousands of idle mutual-TLS
//! connections next to the broker it measures on the same two cores.

pub mod bench;
pub mod client;
pub mod est;
pub mod fleet;

pub use bench::{BenchArgs, run};
