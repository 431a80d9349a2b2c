//! Ticks to let pass between tries of something Redis (or any peer) did not take: 1, 2,
//! 4, … up to `MAX` ticks while tries fail, the next tick again once one succeeds. Kept
//! by the services that retry on a periodic tick (pairing's unsynced revocations, the
//! hub's take-backs), each per shard.

/// The back-off of one kind of try, in ticks of its caller's timer; at most `MAX`.
#[derive(Debug, Default)]
pub struct Backoff<const MAX: u32> {
    /// Ticks to let pass before the next try.
    wait: u32,
    /// The current back-off.
    ticks: u32,
}

impl<const MAX: u32> Backoff<MAX> {
    /// Whether a try may start at this tick (else one tick of the wait passes).
    pub fn ready(&mut self) -> bool {
        if self.wait > 0 {
            self.wait -= 1;
            return false;
        }
        true
    }

    /// A try ended: the next comes 1, 2, 4, … `MAX` ticks after this one while they
    /// fail, at the next tick once one succeeded.
    pub fn outcome(&mut self, taken: bool) {
        if taken {
            self.ticks = 0;
        } else {
            self.ticks = (self.ticks * 2).clamp(1, MAX);
        }
        self.wait = self.ticks.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;

    #[test]
    fn waits_double_up_to_the_bound_and_reset_on_success() {
        let mut b = Backoff::<8>::default();
        let mut waits = Vec::new();
        for _ in 0..6 {
            let mut skipped = 0;
            while !b.ready() {
                skipped += 1;
            }
            waits.push(skipped);
            b.outcome(false);
        }
        assert_eq!(waits, [0, 0, 1, 3, 7, 7]);
        b.outcome(true);
        assert!(b.ready());
    }
}
