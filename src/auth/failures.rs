//! Failure budgets for the routes that check a secret (issue 20, finding 4). Sans-IO:
//! every call takes `now`.
//!
//! A *failure* is a wrong secret: an unknown API key or device token, a wrong claim
//! secret, a JWT that is not one of ours (malformed, wrong algorithm, wrong signature).
//! A correct secret never counts, nor does a missing one, nor a JWT of ours that has
//! expired (it cannot be produced without the key). Failures are counted per client
//! address ([`client_addr`]: an IPv6 address by its /64), on the shard that owns the
//! address (`shard_of(limits::client_key(ip))`), in a [`FailureLedger`]:
//!
//! * **Per address**: `per_client_max` failures within a window of `window` (opened by
//!   the address's first failure). The failure that spends the budget starts a
//!   *back-off*: every attempt of the address on a secret route is refused (429,
//!   `retry-after`) until the window ends (at least 1 s). Each failure after a back-off
//!   doubles it, up to `backoff_max`. An address is forgotten once it has not failed
//!   for `window` after its back-off ended: it starts over with a full budget.
//! * **In total**: `total_max` failures per `window` from all the addresses this shard
//!   owns. Refusing everyone once that is spent would be a denial of service anyone can
//!   trigger; instead, while it is spent, every address *with recent failures* (one
//!   the ledger holds) is refused until the window ends, and an address that fails
//!   then goes into back-off at once. An address without recent failures may still try,
//!   so a correct secret still works from it during a flood from many addresses; an
//!   attacker gets one evaluated failure per fresh address per back-off instead of
//!   `per_client_max`.
//!
//! The owner is asked only where it matters: the shard that took the request keeps
//! [`FailureHints`], what it has heard of addresses with recent failures. An address
//! it has no hint of is let through without a message (the common case: every honest
//! client); an address hinted as backed off is refused locally; any other hinted
//! address is checked with its owner first. A failure is told to the owner, and the
//! address hinted.
//!
//! Parallel connections (review of issue 20): each shard lets at most one check of an
//! address be in flight whose outcome is not yet counted ([`InFlight`]); the next
//! attempt of that address on that shard waits for it. A check that does not await
//! (an API key, a JWT) is admitted and decided in one step of the shard, so only the
//! checks that await (a device token or claim secret looked up on another shard, and
//! admission while it asks the owner) are held in flight. So when the owner admits an
//! attempt, the failures it does not know yet are at most one per other shard (the
//! check in flight there, or the failure told from there and not yet received; a
//! shard's own told failures reach the owner before its next question): an address
//! gets at most `per_client_max + cores - 1` evaluated attempts per window, however many
//! connections it opens. The honest path is unchanged: an address without recent
//! failures costs no message, and waits only behind its own awaiting checks on the same
//! shard.
//!
//! Both tables are bounded (`clients_max` each). A full table forgets the entry that
//! expires first: those of addresses with a few failures and no back-off go before
//! those in a long back-off, so pushing one's own backed-off address out takes
//! `clients_max` failures from other addresses, each of which the budget also counts.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use crate::time::UnixTime;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The shortest back-off (a budget spent at the very end of its window still waits this).
const BACKOFF_MIN_NANOS: u64 = NANOS_PER_SEC;

/// The budgets (`--auth-failures-per-ip-max`, `--auth-failures-total-max`,
/// `--auth-failure-window`, `--auth-backoff-max`, `--auth-failure-addresses-max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureLimits {
    /// Failures one address may make within a window before it backs off.
    pub per_client_max: u32,
    /// Failures per window from all addresses (server-wide; each shard enforces its
    /// share, [`FailureLimits::shard_share`]).
    pub total_max: u32,
    /// The window of both budgets.
    pub window: Duration,
    /// The longest back-off.
    pub backoff_max: Duration,
    /// Addresses one shard's ledger remembers, and addresses its hints remember.
    pub clients_max: usize,
}

impl Default for FailureLimits {
    fn default() -> Self {
        FailureLimits {
            per_client_max: 10,
            total_max: 1000,
            window: Duration::from_secs(60),
            backoff_max: Duration::from_secs(600),
            clients_max: 65_536,
        }
    }
}

impl FailureLimits {
    /// The limits one of `shards` shards enforces: its share of the total budget
    /// (rounded up; addresses spread evenly over shards by hash).
    pub fn shard_share(mut self, shards: usize) -> FailureLimits {
        let shards = u32::try_from(shards.max(1)).unwrap_or(u32::MAX);
        self.total_max = self.total_max.div_ceil(shards).max(1);
        self
    }

    fn window_nanos(&self) -> u64 {
        duration_nanos(self.window)
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The address failures are counted under: IPv4 as is (an IPv4-mapped IPv6 address as
/// its IPv4 address), IPv6 by its /64 (one host usually holds a whole /64). The same
/// grouping as [`crate::limits::client_key`].
pub fn client_addr(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Which budget refused an attempt (for the message and the flag it names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// The address spent its own budget (`--auth-failures-per-ip-max`).
    Address,
    /// The shard's total is spent and the address has recent failures
    /// (`--auth-failures-total-max`).
    Total,
}

/// The owner's answer about an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It may try now. Until `recent_until` it has recent failures (the taking shard
    /// asks again before each attempt); [`UnixTime::EPOCH`] when it has none.
    Allowed { recent_until: UnixTime },
    /// Refused (429) until `until`; recent failures are remembered until `recent_until`.
    Refused {
        until: UnixTime,
        recent_until: UnixTime,
        by: Budget,
    },
}

impl Verdict {
    /// Whole seconds to wait at `now` (rounded up, at least 1); `None` when allowed.
    pub fn retry_after_secs(&self, now: UnixTime) -> Option<u64> {
        match *self {
            Verdict::Allowed { .. } => None,
            Verdict::Refused { until, .. } => Some(
                until
                    .saturating_nanos_since(now)
                    .div_ceil(NANOS_PER_SEC)
                    .max(1),
            ),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// When the address's current window began (its first failure in it).
    window_start: UnixTime,
    /// Failures in that window.
    failures: u32,
    /// Length of its last back-off (0: none yet since it was last forgotten).
    backoff_nanos: u64,
    /// Refused until then, by that budget.
    blocked_until: UnixTime,
    blocked_by: Budget,
    /// Forgotten at this instant (its key in `by_expiry`).
    expires: UnixTime,
}

/// One shard's failure ledger, for the addresses it owns. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct FailureLedger {
    limits: FailureLimits,
    /// Address → its failures; at most `limits.clients_max` entries.
    entries: HashMap<IpAddr, Entry>,
    /// `(expires, address)` of every entry: the first is the first to go, by sweep or
    /// when the table is full.
    by_expiry: BTreeSet<(UnixTime, IpAddr)>,
    /// Start of the total budget's window, and the failures in it.
    total_start: UnixTime,
    total_failures: u32,
}

impl FailureLedger {
    /// An empty ledger with this shard's limits (see [`FailureLimits::shard_share`]).
    pub fn new(limits: FailureLimits) -> FailureLedger {
        FailureLedger {
            limits,
            entries: HashMap::new(),
            by_expiry: BTreeSet::new(),
            total_start: UnixTime::EPOCH,
            total_failures: 0,
        }
    }

    /// Addresses remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn total_end(&self) -> UnixTime {
        self.total_start
            .saturating_add_nanos(self.limits.window_nanos())
    }

    /// Whether the total budget is spent at `now` (its window still open).
    fn total_spent(&self, now: UnixTime) -> bool {
        now < self.total_end() && self.total_failures >= self.limits.total_max
    }

    /// May `addr` try a secret at `now`? Not counted.
    pub fn check(&mut self, addr: IpAddr, now: UnixTime) -> Verdict {
        let Some(e) = self.entries.get(&addr).copied() else {
            return Verdict::Allowed {
                recent_until: UnixTime::EPOCH,
            };
        };
        if now >= e.expires {
            self.forget(addr, e.expires);
            return Verdict::Allowed {
                recent_until: UnixTime::EPOCH,
            };
        }
        if now < e.blocked_until {
            return Verdict::Refused {
                until: e.blocked_until,
                recent_until: e.expires,
                by: e.blocked_by,
            };
        }
        if self.total_spent(now) {
            return Verdict::Refused {
                until: self.total_end(),
                recent_until: e.expires,
                by: Budget::Total,
            };
        }
        Verdict::Allowed {
            recent_until: e.expires,
        }
    }

    /// Counts a failure of `addr` at `now` and returns its state after it.
    pub fn fail(&mut self, addr: IpAddr, now: UnixTime) -> Verdict {
        let window = self.limits.window_nanos();
        // The total budget's window.
        if now >= self.total_end() || now < self.total_start {
            self.total_start = now;
            self.total_failures = 0;
        }
        self.total_failures = self.total_failures.saturating_add(1);
        let total_spent = self.total_failures >= self.limits.total_max;

        let fresh = Entry {
            window_start: now,
            failures: 0,
            backoff_nanos: 0,
            blocked_until: UnixTime::EPOCH,
            blocked_by: Budget::Address,
            expires: now,
        };
        let mut e = match self.entries.get(&addr).copied() {
            Some(e) => {
                self.by_expiry.remove(&(e.expires, addr));
                if now >= e.expires {
                    fresh
                } else {
                    e
                }
            }
            None => {
                if self.limits.clients_max == 0 {
                    // Nothing can be remembered: refuse for the window rather than
                    // evaluate every attempt (a configuration the flags refuse).
                    return Verdict::Refused {
                        until: now.saturating_add_nanos(window),
                        recent_until: now.saturating_add_nanos(window),
                        by: Budget::Address,
                    };
                }
                while self.entries.len() >= self.limits.clients_max {
                    let Some((exp, old)) = self.by_expiry.pop_first() else {
                        break;
                    };
                    debug_assert!(self.entries.get(&old).is_some_and(|o| o.expires == exp));
                    self.entries.remove(&old);
                }
                fresh
            }
        };
        // A new window for an address not backed off since it was last forgotten.
        if e.backoff_nanos == 0 && now.saturating_nanos_since(e.window_start) >= window {
            e.window_start = now;
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        let over = e.backoff_nanos > 0 || e.failures >= self.limits.per_client_max;
        if over || total_spent {
            let cap = duration_nanos(self.limits.backoff_max).max(BACKOFF_MIN_NANOS);
            let next = if !over {
                // Within its own budget, but the total is spent: back off until the
                // total's window ends.
                e.blocked_by = Budget::Total;
                self.total_end().saturating_nanos_since(now)
            } else if e.backoff_nanos == 0 {
                // The rest of the address's window.
                e.window_start
                    .saturating_add_nanos(window)
                    .saturating_nanos_since(now)
            } else {
                e.backoff_nanos.saturating_mul(2)
            };
            if over {
                e.blocked_by = Budget::Address;
            }
            e.backoff_nanos = next.clamp(BACKOFF_MIN_NANOS, cap);
            e.blocked_until = e
                .blocked_until
                .max(now.saturating_add_nanos(e.backoff_nanos));
        }
        e.expires = e
            .window_start
            .saturating_add_nanos(window)
            .max(e.blocked_until.saturating_add_nanos(window));
        self.entries.insert(addr, e);
        self.by_expiry.insert((e.expires, addr));
        if now < e.blocked_until {
            Verdict::Refused {
                until: e.blocked_until,
                recent_until: e.expires,
                by: e.blocked_by,
            }
        } else {
            Verdict::Allowed {
                recent_until: e.expires,
            }
        }
    }

    fn forget(&mut self, addr: IpAddr, expires: UnixTime) {
        self.entries.remove(&addr);
        self.by_expiry.remove(&(expires, addr));
    }

    /// Forgets the addresses whose entries expired by `now`; returns how many.
    pub fn sweep(&mut self, now: UnixTime) -> usize {
        let mut n = 0;
        while let Some(&(exp, addr)) = self.by_expiry.first() {
            if exp > now {
                break;
            }
            self.forget(addr, exp);
            n += 1;
        }
        n
    }
}

/// What the shard that took a request should do about an address, from its hints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Look {
    /// No recent failure known here: let it try without asking the owner.
    Unknown,
    /// Backed off (as last heard from the owner): refuse without asking.
    Refused { until: UnixTime, by: Budget },
    /// Recent failures: ask the owner.
    Ask,
}

#[derive(Clone, Copy, Debug)]
struct Hint {
    refused: Option<(UnixTime, Budget)>,
    expires: UnixTime,
}

/// What a shard has heard of the recent failures of addresses other shards own (so
/// that only those cost a message). Bounded by `clients_max`; a full table forgets the
/// hint that expires first (that address then gets one attempt evaluated before the
/// owner is asked again).
#[derive(Clone, Debug)]
pub struct FailureHints {
    hints: HashMap<IpAddr, Hint>,
    by_expiry: BTreeSet<(UnixTime, IpAddr)>,
    window: Duration,
    clients_max: usize,
}

impl FailureHints {
    pub fn new(limits: &FailureLimits) -> FailureHints {
        FailureHints {
            hints: HashMap::new(),
            by_expiry: BTreeSet::new(),
            window: limits.window,
            clients_max: limits.clients_max,
        }
    }

    /// Addresses hinted.
    pub fn len(&self) -> usize {
        self.hints.len()
    }

    /// Whether no address is hinted.
    pub fn is_empty(&self) -> bool {
        self.hints.is_empty()
    }

    /// What to do about `addr` at `now`.
    pub fn look(&self, addr: IpAddr, now: UnixTime) -> Look {
        match self.hints.get(&addr) {
            None => Look::Unknown,
            Some(h) if now >= h.expires => Look::Unknown,
            Some(Hint {
                refused: Some((until, by)),
                ..
            }) if now < *until => Look::Refused {
                until: *until,
                by: *by,
            },
            Some(_) => Look::Ask,
        }
    }

    fn put(&mut self, addr: IpAddr, hint: Hint) {
        if let Some(old) = self.hints.remove(&addr) {
            self.by_expiry.remove(&(old.expires, addr));
        }
        if self.clients_max == 0 {
            return;
        }
        while self.hints.len() >= self.clients_max {
            let Some((_, old)) = self.by_expiry.pop_first() else {
                break;
            };
            self.hints.remove(&old);
        }
        self.hints.insert(addr, hint);
        self.by_expiry.insert((hint.expires, addr));
    }

    /// Takes in the owner's verdict on `addr`.
    pub fn note(&mut self, addr: IpAddr, verdict: Verdict, now: UnixTime) {
        let hint = match verdict {
            Verdict::Allowed { recent_until } => Hint {
                refused: None,
                expires: recent_until,
            },
            Verdict::Refused {
                until,
                recent_until,
                by,
            } => Hint {
                refused: Some((until, by)),
                expires: recent_until.max(until),
            },
        };
        if hint.expires <= now {
            if let Some(old) = self.hints.remove(&addr) {
                self.by_expiry.remove(&(old.expires, addr));
            }
            return;
        }
        self.put(addr, hint);
    }

    /// `addr` failed here at `now` (the owner is told): ask the owner before its next
    /// attempt, for at least a window.
    pub fn failed(&mut self, addr: IpAddr, now: UnixTime) {
        let at_least = now.saturating_add(self.window);
        let hint = match self.hints.get(&addr) {
            Some(h) => Hint {
                refused: h.refused,
                expires: h.expires.max(at_least),
            },
            None => Hint {
                refused: None,
                expires: at_least,
            },
        };
        self.put(addr, hint);
    }

    /// Drops the hints that expired by `now`.
    pub fn sweep(&mut self, now: UnixTime) -> usize {
        let mut n = 0;
        while let Some(&(exp, addr)) = self.by_expiry.first() {
            if exp > now {
                break;
            }
            self.by_expiry.pop_first();
            self.hints.remove(&addr);
            n += 1;
        }
        n
    }
}

/// Secret checks in flight on one shard, per client address ([`client_addr`]): the
/// attempts admitted ([`crate::auth::budget::admit`]) whose outcome is not known yet,
/// because the check awaits (a device token or claim secret looked up on another shard)
/// or because admission itself awaits the owner's verdict. An address with one in flight
/// waits for it before its next attempt on this shard is admitted, so each attempt is
/// admitted with the failures of the ones before it already counted (review of issue
/// 20: 40 parallel connections of one address were 12 to 31 evaluated attempts; see the
/// module docs for the bound).
///
/// Bounded without a limit of its own: an entry exists only while an attempt holds it
/// ([`Attempt`]), and each attempt is a request being answered on this shard, so there
/// are at most as many entries as the shard has connections (`--max-connections`).
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    counts: HashMap<IpAddr, u32>,
}

impl InFlight {
    /// Checks of `addr` in flight.
    pub fn count(&self, addr: IpAddr) -> u32 {
        self.counts.get(&addr).copied().unwrap_or(0)
    }

    /// Addresses with a check in flight.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether no check is in flight.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    fn enter(&mut self, addr: IpAddr) {
        *self.counts.entry(addr).or_default() += 1;
    }

    fn leave(&mut self, addr: IpAddr) {
        if let Some(n) = self.counts.get_mut(&addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(&addr);
            }
        }
    }
}

/// One secret check in flight ([`InFlight`]): counted from [`Attempt::enter`] until it
/// is dropped.
#[derive(Debug)]
pub struct Attempt<'a> {
    table: &'a std::cell::RefCell<InFlight>,
    addr: IpAddr,
}

impl<'a> Attempt<'a> {
    /// Counts a check of `addr` in flight in `table`.
    pub fn enter(table: &'a std::cell::RefCell<InFlight>, addr: IpAddr) -> Attempt<'a> {
        table.borrow_mut().enter(addr);
        Attempt { table, addr }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.table.borrow_mut().leave(self.addr);
    }
}

/// A route family that checks a secret, as `/metrics` labels it (`route="…"`): each
/// has the failure budget's check before its secret is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretRoute {
    /// `POST /api/token`.
    Token,
    /// `POST /api/pairing/generate-code`.
    GenerateCode,
    /// `GET /api/pairing/{id}/status`.
    PairingStatus,
    /// The operator routes and `/api/dashboard/*`.
    Admin,
    /// `GET /ws`.
    Ws,
    /// The agent and task routes, under `--require-agent-auth` or when the request
    /// carries an `X-API-Key` or a bearer token.
    Agent,
}

impl SecretRoute {
    /// Every route family, in counter order.
    pub const ALL: [SecretRoute; 6] = [
        SecretRoute::Token,
        SecretRoute::GenerateCode,
        SecretRoute::PairingStatus,
        SecretRoute::Admin,
        SecretRoute::Ws,
        SecretRoute::Agent,
    ];

    /// The `route` label.
    pub fn label(self) -> &'static str {
        match self {
            SecretRoute::Token => "token",
            SecretRoute::GenerateCode => "generate_code",
            SecretRoute::PairingStatus => "pairing_status",
            SecretRoute::Admin => "admin",
            SecretRoute::Ws => "ws",
            SecretRoute::Agent => "agent",
        }
    }

    /// Its index in [`SecretRoute::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A wrong secret, by route and kind of secret (`/metrics` labels `route`, `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// `POST /api/token` with an unknown `X-API-Key` (with or without a device token).
    TokenApiKey,
    /// `POST /api/token` with an unknown `X-Device-Token`.
    TokenDeviceToken,
    /// `generate-code` with an unknown `X-API-Key`.
    GenerateCode,
    /// Pairing status with a wrong claim secret or an unknown entry id.
    PairingStatus,
    /// An operator or dashboard route with a JWT that is not ours.
    Admin,
    /// `/ws` with a JWT that is not ours.
    Ws,
    /// An agent or task route with a JWT that is not ours.
    Agent,
    /// An agent or task route with an `X-API-Key` that is no known key (it decides
    /// which agents the request may act as and which tasks it may read).
    AgentApiKey,
}

impl Failure {
    /// Every failure, in counter order.
    pub const ALL: [Failure; 8] = [
        Failure::TokenApiKey,
        Failure::TokenDeviceToken,
        Failure::GenerateCode,
        Failure::PairingStatus,
        Failure::Admin,
        Failure::Ws,
        Failure::Agent,
        Failure::AgentApiKey,
    ];

    /// The route family.
    pub fn route(self) -> SecretRoute {
        match self {
            Failure::TokenApiKey | Failure::TokenDeviceToken => SecretRoute::Token,
            Failure::GenerateCode => SecretRoute::GenerateCode,
            Failure::PairingStatus => SecretRoute::PairingStatus,
            Failure::Admin => SecretRoute::Admin,
            Failure::Ws => SecretRoute::Ws,
            Failure::Agent | Failure::AgentApiKey => SecretRoute::Agent,
        }
    }

    /// The `kind` label: which secret was wrong.
    pub fn kind(self) -> &'static str {
        match self {
            Failure::TokenApiKey | Failure::GenerateCode | Failure::AgentApiKey => "api_key",
            Failure::TokenDeviceToken => "device_token",
            Failure::PairingStatus => "claim_secret",
            Failure::Admin | Failure::Ws | Failure::Agent => "jwt",
        }
    }

    /// Its index in [`Failure::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const T0: UnixTime = UnixTime(1_795_239_689_000_000_000);

    fn at(secs: f64) -> UnixTime {
        T0.saturating_add_nanos((secs * 1e9) as u64)
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    fn limits(per: u32, total: u32) -> FailureLimits {
        FailureLimits {
            per_client_max: per,
            total_max: total,
            window: Duration::from_secs(60),
            backoff_max: Duration::from_secs(600),
            clients_max: 1000,
        }
    }

    fn allowed(v: Verdict) -> bool {
        matches!(v, Verdict::Allowed { .. })
    }

    #[test]
    fn budget_then_backoff_that_doubles_to_the_cap() {
        let mut l = FailureLedger::new(limits(10, 1_000_000));
        for i in 0..9 {
            assert!(allowed(l.check(ip(1), at(i as f64))));
            assert!(allowed(l.fail(ip(1), at(i as f64))), "failure {i}");
        }
        // The tenth failure spends the budget: refused until the window (opened at 0)
        // ends.
        let v = l.fail(ip(1), at(9.0));
        assert_eq!(v.retry_after_secs(at(9.0)), Some(51));
        assert_eq!(
            l.check(ip(1), at(30.0)).retry_after_secs(at(30.0)),
            Some(30)
        );
        assert!(allowed(l.check(ip(1), at(60.0))));
        // Each failure after a back-off doubles it: 51 s, then 102, 204, 408, 600 (cap).
        let mut t = 60.0;
        for want in [102, 204, 408, 600, 600] {
            let v = l.fail(ip(1), at(t));
            assert_eq!(v.retry_after_secs(at(t)), Some(want), "at {t}");
            assert!(!allowed(l.check(ip(1), at(t + want as f64 - 0.5))));
            t += want as f64;
            assert!(allowed(l.check(ip(1), at(t))));
        }
        // Quiet for a window after the back-off: forgotten, a full budget again.
        t += 60.0;
        assert!(allowed(l.check(ip(1), at(t))));
        assert!(l.is_empty(), "check forgets an expired entry");
        for _ in 0..9 {
            assert!(allowed(l.fail(ip(1), at(t))));
        }
        assert!(!allowed(l.fail(ip(1), at(t))));
        // Other addresses were never affected.
        assert!(allowed(l.check(ip(2), at(t))));
    }

    #[test]
    fn a_window_without_backoff_starts_over() {
        let mut l = FailureLedger::new(limits(3, 1_000_000));
        assert!(allowed(l.fail(ip(1), at(0.0))));
        assert!(allowed(l.fail(ip(1), at(1.0))));
        // 60 s after the window opened, the count starts over.
        assert!(allowed(l.fail(ip(1), at(60.0))));
        assert!(allowed(l.fail(ip(1), at(61.0))));
        let v = l.fail(ip(1), at(62.0));
        assert_eq!(v.retry_after_secs(at(62.0)), Some(58));
        // A budget spent at the end of its window still waits the minimum.
        let mut l = FailureLedger::new(limits(2, 1_000_000));
        l.fail(ip(1), at(0.0));
        let v = l.fail(ip(1), at(59.9999));
        assert_eq!(v.retry_after_secs(at(59.9999)), Some(1));
    }

    #[test]
    fn total_budget_refuses_only_addresses_with_recent_failures() {
        // 5 failures per window in total, 10 per address.
        let mut l = FailureLedger::new(limits(10, 5));
        for n in 0..4 {
            assert!(allowed(l.fail(ip(n), at(1.0))));
        }
        // The fifth failure spends the total: that address backs off to the window's
        // end (the total window opened at 1 s).
        let v = l.fail(ip(4), at(2.0));
        assert_eq!(
            v,
            Verdict::Refused {
                until: at(61.0),
                recent_until: at(121.0),
                by: Budget::Total
            }
        );
        // The others, which failed recently, are refused until the total window ends.
        for n in 0..4 {
            let v = l.check(ip(n), at(3.0));
            assert!(
                matches!(
                    v,
                    Verdict::Refused {
                        by: Budget::Total,
                        ..
                    }
                ),
                "{v:?}"
            );
            assert_eq!(v.retry_after_secs(at(3.0)), Some(58));
        }
        // An address without recent failures may still try (a right secret works).
        assert_eq!(
            l.check(ip(100), at(3.0)),
            Verdict::Allowed {
                recent_until: UnixTime::EPOCH
            }
        );
        // If it fails, it backs off at once.
        assert!(!allowed(l.fail(ip(100), at(3.0))));
        // Next window: the addresses without back-off may try again.
        assert!(allowed(l.check(ip(0), at(61.0))));
        // ip(4) and ip(100) were backed off: their next failure doubles it.
        let v = l.fail(ip(100), at(61.0));
        assert_eq!(v.retry_after_secs(at(61.0)), Some(116));
    }

    #[test]
    fn a_full_table_forgets_what_expires_first() {
        let mut l = FailureLedger::new(FailureLimits {
            clients_max: 3,
            ..limits(2, 1_000_000)
        });
        // ip(1) backs off (expires late); ip(2), ip(3) have one failure each.
        l.fail(ip(1), at(0.0));
        assert!(!allowed(l.fail(ip(1), at(0.0))));
        l.fail(ip(2), at(1.0));
        l.fail(ip(3), at(2.0));
        assert_eq!(l.len(), 3);
        // A newcomer pushes out ip(2), whose entry expires first; ip(1) stays backed off.
        l.fail(ip(4), at(3.0));
        assert_eq!(l.len(), 3);
        assert!(allowed(l.check(ip(2), at(3.0))));
        assert!(!allowed(l.check(ip(1), at(3.0))));
        // Many newcomers: the backed-off address is the last to go.
        l.fail(ip(5), at(4.0));
        assert!(!allowed(l.check(ip(1), at(4.0))));
        assert_eq!(l.entries.len(), l.by_expiry.len());
        // Sweep drops what expired.
        assert_eq!(l.sweep(at(200.0)), 3);
        assert!(l.is_empty());
        assert!(l.by_expiry.is_empty());
    }

    #[test]
    fn clock_going_back_does_not_panic() {
        let mut l = FailureLedger::new(limits(2, 3));
        l.fail(ip(1), at(100.0));
        l.fail(ip(1), at(100.0));
        let _ = l.check(ip(1), UnixTime::EPOCH);
        let _ = l.fail(ip(1), UnixTime::EPOCH);
        let _ = l.fail(ip(2), UnixTime(u64::MAX));
        let _ = l.check(ip(2), UnixTime(u64::MAX));
        l.sweep(UnixTime(u64::MAX));
        assert!(l.is_empty());
    }

    #[test]
    fn shard_share_rounds_up() {
        let l = FailureLimits {
            total_max: 1000,
            ..FailureLimits::default()
        };
        assert_eq!(l.shard_share(1).total_max, 1000);
        assert_eq!(l.shard_share(3).total_max, 334);
        assert_eq!(l.shard_share(0).total_max, 1000);
        let tiny = FailureLimits {
            total_max: 1,
            ..FailureLimits::default()
        };
        assert_eq!(tiny.shard_share(16).total_max, 1);
    }

    #[test]
    fn label_tables_are_in_index_order() {
        for (i, r) in SecretRoute::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        for (i, f) in Failure::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
        }
    }

    #[test]
    fn ipv6_counts_by_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::7".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_addr(a), client_addr(b));
        assert_ne!(client_addr(a), client_addr(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_addr(mapped), ip(1));
    }

    #[test]
    fn hints_ask_only_about_addresses_with_recent_failures() {
        let lim = limits(2, 100);
        let mut owner = FailureLedger::new(lim);
        let mut h = FailureHints::new(&lim);
        assert_eq!(h.look(ip(1), at(0.0)), Look::Unknown);
        // A failure here: the owner is told, the address hinted.
        h.failed(ip(1), at(0.0));
        owner.fail(ip(1), at(0.0));
        assert_eq!(h.look(ip(1), at(1.0)), Look::Ask);
        h.note(ip(1), owner.check(ip(1), at(1.0)), at(1.0));
        assert_eq!(h.look(ip(1), at(1.0)), Look::Ask);
        // The owner backs it off: refused here without asking until the back-off ends.
        h.failed(ip(1), at(2.0));
        let v = owner.fail(ip(1), at(2.0));
        h.note(ip(1), v, at(2.0));
        assert_eq!(
            h.look(ip(1), at(3.0)),
            Look::Refused {
                until: at(60.0),
                by: Budget::Address
            }
        );
        assert_eq!(h.look(ip(1), at(60.0)), Look::Ask);
        // The owner's entry lasts a window past the back-off; so does the hint.
        assert_eq!(h.look(ip(1), at(119.9)), Look::Ask);
        assert_eq!(h.look(ip(1), at(120.0)), Look::Unknown);
        assert_eq!(h.sweep(at(120.0)), 1);
        assert!(h.is_empty());
        // An "allowed, nothing recent" verdict drops the hint.
        h.failed(ip(2), at(0.0));
        h.note(
            ip(2),
            Verdict::Allowed {
                recent_until: UnixTime::EPOCH,
            },
            at(1.0),
        );
        assert_eq!(h.look(ip(2), at(1.0)), Look::Unknown);
        assert!(h.is_empty());
    }

    #[test]
    fn attempts_in_flight_are_counted_until_dropped() {
        let table = std::cell::RefCell::new(InFlight::default());
        let a = Attempt::enter(&table, ip(1));
        let b = Attempt::enter(&table, ip(1));
        let c = Attempt::enter(&table, ip(2));
        assert_eq!((table.borrow().count(ip(1)), table.borrow().len()), (2, 2));
        drop(a);
        assert_eq!(table.borrow().count(ip(1)), 1);
        drop((b, c));
        assert!(
            table.borrow().is_empty(),
            "an address goes with its last attempt"
        );
        assert_eq!(table.borrow().count(ip(1)), 0);
    }

    #[test]
    fn full_hints_forget_what_expires_first() {
        let lim = FailureLimits {
            clients_max: 2,
            ..limits(2, 100)
        };
        let mut h = FailureHints::new(&lim);
        h.note(
            ip(1),
            Verdict::Refused {
                until: at(500.0),
                recent_until: at(560.0),
                by: Budget::Address,
            },
            at(0.0),
        );
        h.failed(ip(2), at(0.0));
        h.failed(ip(3), at(1.0));
        assert_eq!(h.len(), 2);
        assert_eq!(h.look(ip(2), at(1.0)), Look::Unknown, "expired first: gone");
        assert!(matches!(h.look(ip(1), at(1.0)), Look::Refused { .. }));
        assert_eq!(h.look(ip(3), at(1.0)), Look::Ask);
        assert_eq!(h.hints.len(), h.by_expiry.len());
    }
}
