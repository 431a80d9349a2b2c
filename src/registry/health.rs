//! Agent health: derived from the age of the last heartbeat by a periodic job.

use std::time::Duration;

use serde::{Serialize, Serializer};

/// How often the shard loop should call [`AgentStore::tick_health`](super::AgentStore::tick_health).
///
/// Health is only recomputed by that job (as in the reference), so an agent may read
/// `active` for up to this long after crossing [`STALE_AFTER`].
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(15);

/// An agent whose last heartbeat is strictly older than this is `stale`.
pub const STALE_AFTER: Duration = Duration::from_secs(90);

/// An agent whose last heartbeat is strictly older than this is `offline`.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(270);

/// Health of an agent as shown in the `health` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    /// Heard from within [`STALE_AFTER`] (as of the last health tick), or just registered.
    Active,
    /// Silent for more than [`STALE_AFTER`].
    Stale,
    /// Silent for more than [`OFFLINE_AFTER`].
    Offline,
}

impl Health {
    /// The wire string: `active`, `stale` or `offline`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Health::Active => "active",
            Health::Stale => "stale",
            Health::Offline => "offline",
        }
    }

    /// Health for a given time since the last heartbeat. The thresholds are exclusive
    /// (reference: `age > 270.0` → offline, `age > 90.0` → stale): exactly 90 s is still
    /// `active` and exactly 270 s is still `stale`.
    pub fn from_age(age: Duration) -> Health {
        if age > OFFLINE_AFTER {
            Health::Offline
        } else if age > STALE_AFTER {
            Health::Stale
        } else {
            Health::Active
        }
    }
}

impl Serialize for Health {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_are_exclusive() {
        let ns = Duration::from_nanos(1);
        assert_eq!(Health::from_age(Duration::ZERO), Health::Active);
        assert_eq!(Health::from_age(STALE_AFTER), Health::Active);
        assert_eq!(Health::from_age(STALE_AFTER + ns), Health::Stale);
        assert_eq!(Health::from_age(OFFLINE_AFTER), Health::Stale);
        assert_eq!(Health::from_age(OFFLINE_AFTER + ns), Health::Offline);
        assert_eq!(Health::from_age(Duration::MAX), Health::Offline);
    }

    #[test]
    fn wire_strings() {
        assert_eq!(
            serde_json::to_string(&[Health::Active, Health::Stale, Health::Offline]).unwrap(),
            r#"["active","stale","offline"]"#
        );
    }
}
