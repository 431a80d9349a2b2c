//! Signaling: the `/ws` WebSocket relay (PROTOCOL.md §7) on the shards.
//!
//! * The shard that accepted the HTTP connection validates the upgrade and the JWT,
//!   admits the client IP (`shard_of(ip)` counts connections per IP), then hands the
//!   socket (descriptor and any bytes already read) to `shard_of(peer_id)`, which runs
//!   it from then on. Relaying to any peer is then one mailbox hop, computed from the
//!   target id with no lookup table.
//! * The owner checks revocation (the peer's pairing authorization, [`PeerAuthz`], lives
//!   on the same shard), its connection limit, answers 101, and runs the connection: one
//!   task per connection that waits for readability (no read buffer while idle: reads
//!   borrow a buffer from the shard's pool), decodes frames (sans-IO codec), acts on
//!   signaling messages, and writes what its bounded outbound queue holds.
//!
//! Rooms: [`store`] (the per-shard connection table, limits, idle sweep; sans-IO),
//! [`authz`] (which peers may signal), [`ops`] (typed operations between shards and their
//! `apply`), [`api`] (upgrade, hand-off, admission), `session` (the connection loop).

pub mod api;
pub mod authz;
pub mod ops;
mod session;
pub mod store;

pub use api::{upgrade, Adopt};
pub use authz::{PeerAuthz, REVOCATION_MEMORY};
pub use store::{ConnTable, DuplicateLog, WsLimits};
