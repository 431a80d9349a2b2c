//! chatixia-core: the chatixia mesh server on a thread-per-core reactor.
//!
//! Protocol and service logic lives in sans-IO modules (they take bytes and `now`, and
//! return outputs); only the shard loop in [`server`] does I/O or reads the clock.

pub mod auth;
pub mod config;
pub mod dashboard;
pub mod hub;
pub mod ice;
pub mod limits;
pub mod pairing;
pub mod registry;
pub mod server;
pub mod shard;
pub mod signaling;
pub mod store_cli;
pub mod tls;

pub use wire::{http, time, ws};
