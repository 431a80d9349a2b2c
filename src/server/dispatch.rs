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
        other @ (Msg::Dashboard(_)
        | Msg::Adopt(_)
        | Msg::AdoptHttp(_)
        | Msg::AdoptHttpReply(_)
        | Msg::Shard(_)
        | Msg::Turn(_)) => return Err(other),
    })
}

/// [`apply`], and the peer whose **last** approval `msg` revoked, if any: a
/// `PeerDeauthorize` of a peer that another approved entry still authorizes revokes
/// nothing (PROTOCOL §5.6), so its embedded-TURN allocations stay.
pub fn apply_noting_revocation(
    state: &ShardState,
    config: &ServerConfig,
    msg: Msg,
    now: UnixTime,
) -> (Result<Option<Msg>, Msg>, Option<String>) {
    let deauthorizing = match &msg {
        Msg::Signaling(crate::signaling::ops::Op::PeerDeauthorize(peer))
            if state.authz.borrow().contains(peer) =>
        {
            Some((**peer).clone())
        }
        _ => None,
    };
    let applied = apply(state, config, msg, now);
    let revoked = deauthorizing.filter(|p| !state.authz.borrow().contains(p));
    (applied, revoked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signaling::ops::Op;

    #[test]
    fn only_the_last_approval_of_a_peer_revokes_it() {
        let config = ServerConfig::new(std::time::Duration::from_secs(75));
        let state = ShardState::new(&config, 1);
        let now = UnixTime::from_secs(1_800_000_000);
        let authorize = || Msg::Signaling(Op::PeerAuthorize(Box::new(("agent-1".into(), None))));
        let revoke = || Msg::Signaling(Op::PeerDeauthorize(Box::new("agent-1".into())));
        // Two approved entries of one peer id.
        for _ in 0..2 {
            let (r, revoked) = apply_noting_revocation(&state, &config, authorize(), now);
            assert!(r.is_ok() && revoked.is_none());
        }
        let (_, revoked) = apply_noting_revocation(&state, &config, revoke(), now);
        assert_eq!(revoked, None, "another approval still authorizes the peer");
        let (_, revoked) = apply_noting_revocation(&state, &config, revoke(), now);
        assert_eq!(revoked.as_deref(), Some("agent-1"));
        // A peer that was never approved (or is already revoked) revokes nothing more.
        let (_, revoked) = apply_noting_revocation(&state, &config, revoke(), now);
        assert_eq!(revoked, None);
    }
}
