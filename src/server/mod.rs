//! The shard application: accept loop, per-connection HTTP loop, routing, and the
//! messages shards exchange. This is the only place that does I/O or reads the clock.

pub mod conn;
pub mod msg;
pub mod router;

use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use reactor::Shard;

use crate::metrics::{ShardCounters, ShardMetrics};
pub use msg::Msg;

/// Settings every shard reads (immutable after start).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub http_idle_timeout: Duration,
    pub http_limits: crate::http::Limits,
}

/// What one shard owns. Single-threaded: `Rc` and `Cell` only.
pub struct ShardCtx {
    pub shard: Shard<Msg>,
    pub counters: ShardCounters,
    pub config: Arc<ServerConfig>,
}

impl ShardCtx {
    /// Handles a message from another shard (or this one); returns the reply of an ask.
    fn on_message(&self, _from: usize, msg: Msg) -> Option<Msg> {
        match msg {
            Msg::MetricsQuery => Some(Msg::Metrics(Box::new(self.metrics_snapshot()))),
            Msg::Metrics(_) => None,
        }
    }

    pub fn metrics_snapshot(&self) -> ShardMetrics {
        ShardMetrics::snapshot(
            self.shard.id(),
            self.shard.driver(),
            &self.counters,
            self.shard.stats(),
        )
    }
}

/// Backoff after an accept error such as EMFILE (out of file descriptors): the
/// listener stays readable, so retrying at once would spin the shard.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// The application future of one shard: serves its listener until shutdown, then waits
/// for its connections to finish.
pub async fn run_shard(shard: Shard<Msg>, listener: StdListener, config: Arc<ServerConfig>) {
    let ctx = Rc::new(ShardCtx {
        shard: shard.clone(),
        counters: ShardCounters::default(),
        config,
    });
    let handler_ctx = ctx.clone();
    shard.set_handler(move |from, msg| handler_ctx.on_message(from, msg));

    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(shard = shard.id(), error = %e, "cannot register listener");
            return;
        }
    };
    let shutdown = shard.shutdown_event().clone();
    loop {
        use reactor::timer::{select2, Either};
        match select2(listener.accept(), shutdown.wait()).await {
            Either::Right(()) => break,
            Either::Left(Ok((stream, peer))) => {
                ShardCounters::inc(&ctx.counters.connections_accepted);
                ShardCounters::inc(&ctx.counters.connections_open);
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                monoio::spawn(async move {
                    conn::serve(&ctx, stream, peer).await;
                    ShardCounters::dec(&ctx.counters.connections_open);
                });
            }
            Either::Left(Err(e)) => {
                tracing::warn!(shard = shard.id(), error = %e, "accept failed");
                monoio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
    // Stop accepting: closing the listener makes the kernel send new connections to
    // the shards still listening (or refuse them once all have closed).
    drop(listener);
    tracing::debug!(
        shard = shard.id(),
        "stopped accepting; draining connections"
    );
    while ctx.counters.connections_open.get() > 0 {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}
