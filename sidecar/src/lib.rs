//! `chatixia-sidecar`: the agent's WebRTC sidecar (PROTOCOL.md §8) on str0m and one
//! reactor shard.
//!
//! Everything protocol-shaped is sans-IO (takes bytes and `now`, returns bytes and
//! events): [`http_client`] (token exchange), [`ws`] (WebSocket client codec),
//! [`signaling`] (message shapes and backoff), [`stun`] (binding requests), [`ipc`]
//! (JSON lines), [`turn`] (TURN client), [`engine`] (the peer table of `Rtc`s and the glue between them). Only
//! [`driver`] touches sockets and the clock.

pub mod config;
pub mod driver;
pub mod engine;
pub mod http_client;
pub mod ipc;
pub mod kick;
pub mod resolve;
pub mod signaling;
pub mod stun;
pub mod turn;
pub mod url;
pub mod ws;
