//! One allocation: its relay, credentials, lifetime, permissions, channels and rate.

use std::net::{IpAddr, SocketAddr};

use super::{ClientKey, Nanos, RelayId, SEC};

/// A permission for one peer IP (RFC 8656 §9).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Permission {
    pub ip: IpAddr,
    pub expires: Nanos,
    /// The IP is one of the server's own: every send is judged with its port too.
    pub own: bool,
}

/// A channel binding (RFC 8656 §12).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Channel {
    pub number: u16,
    pub peer: SocketAddr,
    pub expires: Nanos,
}

pub(crate) struct Allocation {
    pub client: ClientKey,
    pub relay: RelayId,
    pub port: u16,
    /// The USERNAME of every request on this allocation (`<expiry>:<peer>`).
    pub username: Box<str>,
    /// Where the peer id starts in `username`.
    pub peer_at: u16,
    /// The credential's expiry (Unix seconds): the allocation ends then.
    pub cred_expiry: u64,
    /// The long-term key of `username` (computed once).
    pub key: [u8; 16],
    /// The allocation's lifetime ends here (Refresh moves it).
    pub expires: Nanos,
    /// The Allocate's transaction and its answer, for retransmissions (RFC 8656 §7.2:
    /// a retransmitted Allocate gets the same success). Dropped once the client moves
    /// on to another request, or after [`super::ALLOCATE_RETRANSMIT_WINDOW`].
    pub allocate: Option<(super::TransactionId, Box<[u8]>)>,
    pub allocated_at: Nanos,
    pub permissions: Vec<Permission>,
    pub channels: Vec<Channel>,
    /// Token bucket (bytes) of `--turn-allocation-bytes-per-sec-max`, and when it was
    /// last filled.
    pub tokens: u64,
    pub filled: Nanos,
}

impl Allocation {
    pub fn peer(&self) -> &str {
        &self.username[self.peer_at as usize..]
    }

    pub fn permission(&self, ip: IpAddr, now: Nanos) -> Option<&Permission> {
        self.permissions
            .iter()
            .find(|p| p.ip == ip && p.expires > now)
    }

    pub fn channel_by_number(&self, number: u16, now: Nanos) -> Option<&Channel> {
        self.channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
    }

    pub fn channel_by_peer(&self, peer: SocketAddr, now: Nanos) -> Option<&Channel> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
    }

    /// Takes `bytes` from the bucket (`rate` bytes per second, a burst of one second's
    /// worth); false when it is empty (the packet is dropped). `rate` 0: no limit.
    pub fn take_tokens(&mut self, bytes: usize, rate: u64, now: Nanos) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now.saturating_sub(self.filled).min(SEC);
        if elapsed > 0 {
            // rate ≤ u32::MAX-ish and elapsed ≤ 1e9: the product fits u128 comfortably.
            let add = (u128::from(elapsed) * u128::from(rate) / u128::from(SEC)) as u64;
            self.tokens = self.tokens.saturating_add(add).min(rate);
            self.filled = now;
        }
        let b = bytes as u64;
        if self.tokens < b {
            return false;
        }
        self.tokens -= b;
        true
    }

    /// Drops expired permissions and channels.
    pub fn prune(&mut self, now: Nanos) {
        self.permissions.retain(|p| p.expires > now);
        self.channels.retain(|c| c.expires > now);
    }
}
