//! Steering a keep-alive HTTP connection to the shard that owns what it asks about
//! (issue 26: "the cross-shard hop made cheap").
//!
//! The kernel spreads accepted connections over the shards (`SO_REUSEPORT`), so at
//! `--cores N` an agent's heartbeats land on its agent's owner only one time in N; every
//! other one takes the hop there and back (two mailbox messages, and on a busy machine
//! two thread switches). An agent keeps one connection for its heartbeats, so once a
//! connection has shown whose it is, it is handed to that shard (`conn`'s move: the
//! socket and its TLS state, as a signaling upgrade is handed to its peer's owner) and
//! its next requests are served where their state lives.
//!
//! [`Steer`] is the policy, sans-IO: which answered requests named which owner, and
//! when a connection moves; [`move_out`] is the hand-over's sending side (the owner's
//! side, which serves the connection on, is `conn::on_adopt`). A client whose requests
//! name agents of several shards (a load generator rotating over agents, a dashboard)
//! must not bounce between shards: a move needs [`STEER_AFTER`] requests in a row
//! naming the same other shard, and a connection tries at most [`STEER_MOVES_MAX`]
//! moves in its life (refused ones included).

use std::net::SocketAddr;
use std::time::Duration;

use reactor::ShardId;

use crate::server::metrics::ShardCounters;
use crate::server::msg::{AdoptHttp, Msg};
use crate::server::ShardCtx;
use crate::tls::Transport;

/// How long a connection offered to another shard (`steer`) waits for its answer. The
/// answer comes as soon as that shard reads its mail (it checks two things and replies);
/// a shard that has stopped, or is more than this behind, does not answer in time, and
/// the offering task must not wait on it forever (it would hold its own shard's drain
/// at shutdown). The connection is then that shard's: served there if it takes it,
/// closed if it hands it back (the reply finds no one waiting).
const MOVE_ANSWER_TIME_MAX: Duration = Duration::from_secs(1);

/// Requests in a row that must name the same other shard before the connection moves
/// there. One is not enough: a client naming agents of several shards would move on
/// every other request; two in a row is what one agent's heartbeats look like.
pub const STEER_AFTER: u32 = 2;

/// Moves one connection may make in its life. Each move costs a cancelled receive, a
/// message to the other shard and a new receive there; a client whose requests change
/// owner in runs would otherwise pay that again and again. Past it, the connection
/// stays where it is (its requests hop, as they would without steering).
pub const STEER_MOVES_MAX: u32 = 2;

/// One connection's steering state: a few bytes, as it lives in every keep-alive
/// connection's task (shard ids are stored as `u16`: a server has far fewer shards).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steer {
    /// The other shard the last requests named, and how many in a row (up to
    /// [`STEER_AFTER`]).
    run: Option<(u16, u8)>,
    /// Moves made so far (carried along when the connection moves; up to
    /// [`STEER_MOVES_MAX`]).
    moves: u8,
}

impl Steer {
    /// A connection that has moved `moves` times already.
    pub fn moved(moves: u32) -> Steer {
        Steer {
            run: None,
            moves: u8::try_from(moves).unwrap_or(u8::MAX),
        }
    }

    /// Moves made so far.
    pub fn moves(&self) -> u32 {
        u32::from(self.moves)
    }

    /// The shard the connection should move to, if its requests asked for a move and it
    /// has moves left. The caller moves it only when nothing else is in progress on it
    /// (a request partly received waits for the next turn: the move stays due), and
    /// hands [`Steer::moved_to`] along, or calls [`Steer::refused`].
    pub fn due(&self) -> Option<ShardId> {
        match self.run {
            Some((to, n)) if u32::from(n) >= STEER_AFTER && self.moves() < STEER_MOVES_MAX => {
                Some(ShardId::from(to))
            }
            _ => None,
        }
    }

    /// An answered request on shard `here` named state owned by `home` (`None`: it
    /// named none, as `/healthz` or a listing: the run is left as it is). Returns
    /// [`Steer::due`] after it.
    pub fn answered(&mut self, here: ShardId, home: Option<ShardId>) -> Option<ShardId> {
        let Some(home) = home else {
            return self.due();
        };
        // A shard id beyond u16 (never: shards are cores) is not steered to.
        let Ok(to) = u16::try_from(home) else {
            self.run = None;
            return None;
        };
        if home == here {
            self.run = None;
            return None;
        }
        let n = match self.run {
            Some((s, n)) if s == to => n.saturating_add(1),
            _ => 1,
        };
        self.run = Some((to, n.min(u8::try_from(STEER_AFTER).unwrap_or(u8::MAX))));
        self.due()
    }

    /// The connection was handed to another shard: the state it carries there.
    pub fn moved_to(&self) -> Steer {
        Steer::moved(self.moves().saturating_add(1))
    }

    /// The move was refused (the other shard's mailbox was full, it is shutting down,
    /// or it holds as many connections of this client as it may): it counts as one of
    /// the connection's moves (a shard that keeps refusing is not asked after every
    /// other request: each try stops and re-arms the receive and costs a round trip,
    /// more than the hop it would save; second review), and the next try waits for
    /// another run.
    pub fn refused(&mut self) {
        self.run = None;
        self.moves = self.moves.saturating_add(1);
    }
}

/// How [`move_out`] went.
pub enum Moved {
    /// The connection is the other shard's now.
    Gone,
    /// The other shard could not take it (its mailbox was full, or it handed it back):
    /// the connection, and the bytes of the next request already received.
    Kept(Transport, Vec<u8>),
    /// It broke on the way (a receive or TLS error): closed.
    Closed,
}

/// Hands a keep-alive connection, between two requests, to shard `to` (`steer`): its
/// multishot receive is stopped first, and what it had received goes along.
pub async fn move_out(
    ctx: &ShardCtx,
    mut stream: Transport,
    rx: Option<reactor::recv_ring::MultiRecv>,
    peer: SocketAddr,
    steer: &Steer,
    to: reactor::ShardId,
) -> Moved {
    let mut leftover = Vec::new();
    if let Some(rx) = rx {
        let mut rest = rx.stop().await;
        let n = rest.len();
        // Sized by what arrived (usually nothing: the client waits for its answer).
        match stream.open_received(&mut rest, n) {
            Ok(m) => {
                rest.truncate(m);
                leftover = rest;
            }
            Err(_) => return Moved::Closed,
        }
    }
    let a = AdoptHttp {
        conn: stream.detach(),
        leftover,
        peer,
        moves: steer.moved_to().moves(),
    };
    let kept = |a: Box<AdoptHttp>| {
        let AdoptHttp { conn, leftover, .. } = *a;
        match Transport::attach(conn) {
            Ok(s) => Moved::Kept(s, leftover),
            Err(_) => Moved::Closed,
        }
    };
    // A socket is not a message that can wait for room: a full mailbox keeps it here.
    // The other shard answers at once whether it took it (its per-IP count and its
    // shutdown are its own to check); this connection's place in this shard's count is
    // given up only then.
    let asked = match ctx.shard.try_ask(to, Msg::AdoptHttp(Box::new(a))) {
        Ok(ask) => ask,
        Err(Msg::AdoptHttp(a)) => return kept(a),
        Err(_) => return Moved::Closed,
    };
    match monoio::time::timeout(MOVE_ANSWER_TIME_MAX, asked).await {
        Ok(Ok(Msg::AdoptHttpReply(None))) => {
            ShardCounters::inc(&ctx.counters.http_moved);
            Moved::Gone
        }
        Ok(Ok(Msg::AdoptHttpReply(Some(a)))) => kept(a),
        // No answer in time (see MOVE_ANSWER_TIME_MAX): the connection is the other
        // shard's. This shard's count lets it go.
        Ok(_) | Err(_) => Moved::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_requests_in_a_row_for_another_shard_move_the_connection() {
        let mut s = Steer::default();
        assert_eq!(s.answered(0, Some(1)), None);
        assert_eq!(s.answered(0, Some(1)), Some(1));
        assert_eq!(s.moved_to(), Steer::moved(1));
    }

    #[test]
    fn requests_that_name_no_owner_leave_the_run_as_it_is() {
        let mut s = Steer::default();
        assert_eq!(s.answered(0, Some(1)), None);
        assert_eq!(s.answered(0, None), None);
        assert_eq!(s.answered(0, Some(1)), Some(1));
        // A move put off (the next request partly received) stays due past requests
        // that name no owner, and past more of the same run.
        assert_eq!(s.answered(0, None), Some(1));
        for _ in 0..300 {
            assert_eq!(s.answered(0, Some(1)), Some(1));
        }
        assert_eq!(s.due(), Some(1));
    }

    #[test]
    fn a_request_for_this_shard_or_a_third_one_starts_the_run_again() {
        let mut s = Steer::default();
        assert_eq!(s.answered(0, Some(1)), None);
        assert_eq!(s.answered(0, Some(0)), None);
        assert_eq!(s.answered(0, Some(1)), None);
        assert_eq!(s.answered(0, Some(2)), None);
        assert_eq!(s.answered(0, Some(1)), None);
        assert_eq!(s.answered(0, Some(1)), Some(1));
    }

    #[test]
    fn requests_for_this_shard_never_move_it() {
        let mut s = Steer::default();
        for _ in 0..10 {
            assert_eq!(s.answered(3, Some(3)), None);
        }
    }

    #[test]
    fn a_connection_stops_moving_after_its_moves() {
        // Moved twice already (0 → 1 → 0): it stays, whatever its requests name.
        let mut s = Steer::moved(STEER_MOVES_MAX);
        for _ in 0..10 {
            assert_eq!(s.answered(0, Some(1)), None);
        }
        // One move left: it takes it.
        let mut s = Steer::moved(STEER_MOVES_MAX - 1);
        s.answered(0, Some(1));
        assert_eq!(s.answered(0, Some(1)), Some(1));
        assert_eq!(s.moved_to().moves(), STEER_MOVES_MAX);
    }

    #[test]
    fn the_state_is_a_few_bytes() {
        assert!(std::mem::size_of::<Steer>() <= 8);
    }

    #[test]
    fn a_refused_move_waits_for_another_run_and_counts_as_a_move() {
        let mut s = Steer::default();
        s.answered(0, Some(1));
        assert_eq!(s.answered(0, Some(1)), Some(1));
        s.refused();
        assert_eq!(s.answered(0, Some(1)), None);
        assert_eq!(s.answered(0, Some(1)), Some(1));
        s.refused();
        // Two tries refused: no more, whatever the requests name.
        for _ in 0..10 {
            assert_eq!(s.answered(0, Some(1)), None);
        }
    }
}
