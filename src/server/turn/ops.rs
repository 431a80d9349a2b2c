//! The embedded TURN server's message between shards (`Msg::Turn`).

/// A request to a shard's TURN side.
pub enum Op {
    /// The pairing of `peer` was revoked at `at` (Unix seconds): end its allocations
    /// and refuse its older credentials. Told to every shard.
    Revoke(Box<(String, u64)>),
}
