//! The server's services on the shard layer's simulator (`shard::sim`): N shards' state
//! and the server's own dispatch in one thread, on simulated time, and the workflow
//! tests of every service on it (one file a service: the services' workflows run as
//! the server runs them, with every other service they ask, so the tests live here, the
//! one place that names every service).

mod auth;
mod dashboard;
mod hub;
mod pairing;
mod registry;
mod signaling;

use std::sync::Arc;

use super::msg::Msg;
use super::{dispatch, ServerConfig, ShardState};
use crate::shard::sim::{Node, Sim};
use crate::shard::ShardId;
use crate::time::UnixTime;

/// One simulated shard: its index, its state (its signaling connection table too) and
/// the settings.
pub struct SimNode {
    pub id: ShardId,
    pub state: ShardState,
    pub config: Arc<ServerConfig>,
}

impl Node<Msg> for SimNode {
    fn handle(&self, _from: ShardId, msg: Msg, now: UnixTime) -> Option<Msg> {
        // A simulated shard cannot tell the others what became pending here
        // (`hub::hints`): its shard layer never trusts a hint (`mail_waiting_from`), so
        // the announcements are dropped.
        let handled = dispatch::apply(&self.state, &self.config, msg, now);
        let _ = self.state.hub.borrow_mut().tasks.take_announcement();
        match handled {
            Ok(reply) => reply,
            // A simulated shard has no I/O: its counters are zero.
            Err(Msg::Dashboard(crate::dashboard::ops::Op::Counters)) => {
                let row = crate::dashboard::ops::ShardRow {
                    shard: self.id,
                    io_driver: "sim",
                    ..Default::default()
                };
                Some(Msg::DashboardReply(crate::dashboard::ops::Reply::Counters(
                    Box::new(row),
                )))
            }
            Err(_) => None,
        }
    }
}

impl<T> crate::shard::Owns<T> for SimNode
where
    ShardState: crate::shard::Owns<T>,
{
    fn owned(&self) -> &T {
        self.state.owned()
    }
}

/// A world of `shards` shards with `config`, its clock at `start`, its scheduler seeded
/// with `seed`. An even seed applies a shard's asks of itself at once when nothing
/// waits for it (as the reactor does), an odd one queues them (each such ask is then a
/// point where another workflow may run): the tests that loop over seeds run both.
pub fn world(shards: usize, config: ServerConfig, start: UnixTime, seed: u64) -> Sim<Msg, SimNode> {
    let config = Arc::new(config);
    let nodes = (0..shards)
        .map(|id| SimNode {
            id,
            state: ShardState::new(&config, shards),
            config: config.clone(),
        })
        .collect();
    let sim = Sim::new(nodes, start, seed);
    sim.set_direct_self_asks(seed % 2 == 0);
    sim
}

/// The default test configuration (no durable store: the simulator's commits stand in).
pub fn config() -> ServerConfig {
    ServerConfig::new(std::time::Duration::from_secs(75))
}
