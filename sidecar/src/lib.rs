//! `chatixia-sidecar`: the agent's WebRTC sidecar (PROTOCOL.md §8) on str0m and one
//! reactor shard.
//!
//! Everything protocol-shaped is sans-IO (takes bytes and `now`, returns bytes and
//! events): [`http_client`] (token exchange), [`ws`] (WebSocket client codec),
//! [`signaling`] (message shapes and backoff), [`stun`] (binding requests), [`ipc`]
//! (JSON lines), [`turn`] (TURN client), [`tls`] (TLS to the registry), [`resolve`] (name lookups handed to a helper
//! thread), [`engine`] (the peer table of `Rtc`s and the glue between them, behind one
//! input door and one output door). Only [`driver`] touches sockets, the clock and
//! wakeups ([`kick`]).

pub mod config;
pub mod driver;
pub mod engine;
pub mod http_client;
pub mod ipc;
pub mod kick;
pub mod resolve;
pub mod signaling;
pub mod stun;
pub mod tls;
pub mod turn;
pub mod udp_out;
pub mod url;
pub mod ws;
