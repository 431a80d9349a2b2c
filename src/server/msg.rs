//! Messages between shards. Boxed payloads keep the enum (and so every ring slot) small.

use crate::metrics::ShardMetrics;

pub enum Msg {
    /// Ask a shard for its counters.
    MetricsQuery,
    /// Reply to [`Msg::MetricsQuery`].
    Metrics(Box<ShardMetrics>),
}
