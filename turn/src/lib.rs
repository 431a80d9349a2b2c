//! STUN and TURN, sans-IO (RFC 8489, RFC 8656; RFC 5766 clients accepted): no sockets,
//! no clock. It takes bytes, addresses and `now`, and returns bytes and actions.
//!
//! * [`stun`]: the message codec: bounded zero-copy parsing, building, MESSAGE-INTEGRITY,
//!   MESSAGE-INTEGRITY-SHA256, FINGERPRINT, XOR addresses (tested against RFC 5769);
//! * [`auth`]: long-term credential keys, TURN REST credentials (`<expiry>:<peer>`),
//!   stateless nonces;
//! * [`framing`]: ChannelData, and STUN/ChannelData on a byte stream (TCP, TLS);
//! * [`policy`]: which peer addresses a relay may reach;
//! * [`server`]: one shard's TURN server (allocations, permissions, channels,
//!   lifetimes, quotas), on simulated time in its tests.
//!
//! The server binary's driver (`src/turn/`) and the sidecar's TURN client use it.

pub mod auth;
pub mod framing;
pub mod policy;
pub mod server;
pub mod stun;
