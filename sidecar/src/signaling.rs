//! The signaling connection's reconnect backoff (the messages themselves are
//! `wire::ws::signaling::SignalMessage`, PROTOCOL.md §7).

use std::time::Duration;

/// First reconnect delay after the signaling connection drops or fails.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Exponential backoff 1 s → 30 s, reset once a connection gets as far as `peer_list`.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_INITIAL,
        }
    }
}

impl Backoff {
    /// The delay to wait now; doubles the next one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }
    pub fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_cap() {
        let mut b = Backoff::default();
        let v: Vec<u64> = (0..7).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(v, vec![1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.next_delay().as_secs(), 1);
    }
}
