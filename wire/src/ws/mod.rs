//! WebSocket signaling, sans-IO: the upgrade handshake, an incremental frame codec
//! (frame headers from tungstenite; our own buffers), and the signaling messages of
//! PROTOCOL.md §7. The shard loop in `server::ws` drives them.

pub mod client;
pub mod codec;
pub mod handshake;
pub mod signaling;
