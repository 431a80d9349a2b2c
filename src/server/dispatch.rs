//! The owner side of every service's operations: a message to this shard is applied to
//! the state the shard owns (each service's `Op::apply`). Sans-IO, so the simulator runs
//! the very same dispatch. What needs the shard's I/O (a connection handed over, the
//! dashboard's gathers, the shard's own counters and test clock) is the shard context's
//! (`ShardCtx::on_message`).

use super::msg::{Msg, ShardOp, ShardReply};
use super::{ServerConfig, ShardState};
use crate::time::UnixTime;

/// Applies `msg` to `state` at `now`: the reply of an ask, `None` for a tell. `Err(msg)` for a message this dispatch does not
/// take (see the module docs).
pub fn apply(
    state: &ShardState,
    config: &ServerConfig,
    msg: Msg,
    now: UnixTime,
) -> Result<Option<Msg>, Msg> {
    let st = state;
    Ok(match msg {
        Msg::Registry(op) => {
            let reply = op.apply(
                &mut st.agents.borrow_mut(),
                now,
                &mut st.changes.borrow_mut(),
            );
            Some(Msg::RegistryReply(reply))
        }
        Msg::Hub(op) => {
            let reply = op.apply(
                &mut st.hub.borrow_mut(),
                &mut st.agents.borrow_mut(),
                now,
                &mut st.changes.borrow_mut(),
            );
            Some(Msg::HubReply(reply))
        }
        Msg::Pairing(op) => {
            let reply = op.apply(
                &mut st.pairing.borrow_mut(),
                now,
                &mut st.changes.borrow_mut(),
            );
            Some(Msg::PairingReply(reply))
        }
        Msg::Auth(op) => {
            let mut tokens = st.tokens.borrow_mut();
            let mut failures = st.auth_failures.borrow_mut();
            let store = crate::auth::ops::Store {
                tokens: &mut tokens,
                failures: &mut failures,
            };
            Some(Msg::AuthReply(op.apply(store, now)))
        }
        Msg::Signaling(op) => {
            let mut authz = st.authz.borrow_mut();
            let store = crate::signaling::ops::Store {
                conns: &st.ws,
                authz: &mut authz,
                api_keys: &config.auth.api_keys,
            };
            op.apply(store, now).map(Msg::SignalingReply)
        }
        Msg::Shard(ShardOp::Changes(since)) => {
            let delta = st.changes.borrow().since(since);
            Some(Msg::ShardReply(ShardReply::Changes(Box::new(delta))))
        }
        // Replies go to the asking future, never to a handler.
        Msg::RegistryReply(_)
        | Msg::HubReply(_)
        | Msg::PairingReply(_)
        | Msg::AuthReply(_)
        | Msg::SignalingReply(_)
        | Msg::DashboardReply(_)
        | Msg::ShardReply(_) => None,
        other @ (Msg::Dashboard(_) | Msg::Adopt(_) | Msg::Shard(_) | Msg::Turn(_)) => {
            return Err(other)
        }
    })
}
