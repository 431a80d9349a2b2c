//! Signaling: the `/ws` WebSocket relay (PROTOCOL.md §7) on the shards.
//!
//! * The shard that accepted the HTTP connection (`server::ws`) validates the upgrade
//!   and the JWT, takes a slot of the client IP's count ([`api::acquire_ip`]: the
//!   address's owner `shard_of(ip)` counts connections per IP), then hands the socket
//!   (descriptor and any bytes already read) to `shard_of(peer_id)`, which runs it from
//!   then on. Relaying to any peer is then one mailbox hop, computed from the target id
//!   with no lookup table.
//! * The owner admits it ([`api::admit`]: revocation, its connection limit, the slot in
//!   its connection table), answers 101, and runs the connection ([`session`]): one
//!   task per connection that waits for readability (no read buffer while idle: reads
//!   borrow a buffer from the shard's pool), decodes frames (sans-IO codec), acts on
//!   signaling messages, and writes what its bounded outbound queue holds. When it ends,
//!   the IP's slot is given back ([`api::release_ip`]).
//!
//! Rooms: [`store`] (the per-shard connection table, limits, idle sweep; sans-IO),
//! [`authz`] (which peers may signal), [`ops`] (typed operations between shards and their
//! `apply`), [`api`] (the workflows around a connection, on the shard layer), [`session`]
//! (the connection loop, I/O). Signaling imports the shard layer, `auth`'s API keys and
//! the WebSocket codec; no HTTP.

pub mod api;
pub mod authz;
pub mod ops;
pub mod outbox;
pub mod remote;
pub mod session;
pub mod store;

pub use authz::{PeerAuthz, REVOCATION_MEMORY};
pub use store::{ConnTable, DuplicateLog, WsLimits, WsMetrics};
