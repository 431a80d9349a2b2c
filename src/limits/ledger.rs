//! What each client holds in a store, for per-client quotas (issue 13) and the
//! anonymous share (issue 20): the byte charge of every entry, who it is charged to, per
//! client `(entries, bytes)`, and what all anonymous clients hold together. The task
//! store and the agent registry each keep one (keyed by their own entry id); their
//! admission rules are [`ClientLedger::admit_new`] and [`ClientLedger::admit_growth`].

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

use super::Charge;

/// One store's budget: its whole size, each client's quota, and the share all
/// anonymous clients may hold together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Entries the store holds at most.
    pub items_max: usize,
    /// Bytes charged to the store at most.
    pub bytes_max: usize,
    /// Entries one client (not an admin) may hold.
    pub client_items_max: usize,
    /// Bytes one client (not an admin) may hold.
    pub client_bytes_max: usize,
    /// Percent of `items_max` and of `bytes_max` that all anonymous clients together
    /// may hold (`--anonymous-share-percent`); the rest is kept for authenticated ones.
    pub anonymous_share_percent: u8,
}

impl Budget {
    /// Entries all anonymous clients together may hold.
    pub fn anonymous_items_max(&self) -> usize {
        share(self.items_max, self.anonymous_share_percent)
    }

    /// Bytes all anonymous clients together may hold.
    pub fn anonymous_bytes_max(&self) -> usize {
        share(self.bytes_max, self.anonymous_share_percent)
    }
}

/// `percent` of `n`, rounded down (a share of 100 or more is the whole).
pub fn share(n: usize, percent: u8) -> usize {
    if percent >= 100 {
        return n;
    }
    // u128: no overflow for any usize.
    (n as u128 * u128::from(percent) / 100) as usize
}

/// Which limit refused an entry, with what was held and the limit. The caller names the
/// store and its flags ([`Names`]) when it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client holds its quota (429, for that client only).
    ClientQuota {
        items: usize,
        bytes: usize,
        items_max: usize,
        bytes_max: usize,
    },
    /// All anonymous clients together hold the anonymous share (503 for anonymous
    /// requests; authenticated ones still have room).
    AnonymousShare {
        items: usize,
        bytes: usize,
        items_max: usize,
        bytes_max: usize,
        percent: u8,
    },
    /// The store holds its whole budget (503 for everyone).
    Full {
        items: usize,
        bytes: usize,
        items_max: usize,
        bytes_max: usize,
    },
}

/// How a store and its limits are called in a refusal.
#[derive(Clone, Copy, Debug)]
pub struct Names {
    /// `task store`, `agent registry`.
    pub store: &'static str,
    /// `tasks`, `agents`.
    pub items: &'static str,
    /// The store's byte budget flag.
    pub bytes_flag: &'static str,
    /// The flag of its entry count, or a description of the fixed limit.
    pub items_flag: &'static str,
    /// The per-client entry quota flag.
    pub client_items_flag: &'static str,
    /// The per-client byte quota flag.
    pub client_bytes_flag: &'static str,
}

impl Refusal {
    /// The HTTP status to answer.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::ClientQuota { .. } => 429,
            Refusal::AnonymousShare { .. } | Refusal::Full { .. } => 503,
        }
    }

    /// The metric labels of the reasons, in [`index`](Self::index) order.
    pub const REASONS: [&'static str; 3] = ["client_quota", "anonymous_share", "store_full"];

    /// The reason's place in [`REASONS`](Self::REASONS).
    pub fn index(&self) -> usize {
        match self {
            Refusal::ClientQuota { .. } => 0,
            Refusal::AnonymousShare { .. } => 1,
            Refusal::Full { .. } => 2,
        }
    }

    /// The refusal as the service's answer: 429 for the client's quota, 503 otherwise,
    /// with [`message`](Self::message).
    pub fn error(&self, n: &Names) -> crate::shard::Error {
        let kind = match self {
            Refusal::ClientQuota { .. } => crate::shard::Kind::TooMany,
            Refusal::AnonymousShare { .. } | Refusal::Full { .. } => {
                crate::shard::Kind::Unavailable
            }
        };
        crate::shard::Error::new(kind, self.message(n))
    }

    /// The metric label of the reason (`client_quota`, `anonymous_share`, `store_full`).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::ClientQuota { .. } => "client_quota",
            Refusal::AnonymousShare { .. } => "anonymous_share",
            Refusal::Full { .. } => "store_full",
        }
    }

    /// The `{"error": …}` text, naming the store, what is held and the flags.
    pub fn message(&self, n: &Names) -> String {
        match *self {
            Refusal::ClientQuota {
                items,
                bytes,
                items_max,
                bytes_max,
            } => format!(
                "this client holds {items} {} ({bytes} bytes) in the {} on this shard; its \
                 quota is {items_max} {} ({}) and {bytes_max} bytes ({}); retry when some \
                 finish",
                n.items, n.store, n.items, n.client_items_flag, n.client_bytes_flag
            ),
            Refusal::AnonymousShare {
                items,
                bytes,
                items_max,
                bytes_max,
                percent,
            } => format!(
                "the {store}'s share for clients without credentials is full on this shard: \
                 they hold {items} {it} ({bytes} bytes) of at most {items_max} {it} and \
                 {bytes_max} bytes (--anonymous-share-percent {percent} of {} and {}); \
                 requests with a valid X-API-Key or bearer token still have room; retry \
                 when some finish",
                n.items_flag,
                n.bytes_flag,
                store = n.store,
                it = n.items,
            ),
            Refusal::Full {
                items,
                bytes,
                items_max,
                bytes_max,
            } => format!(
                "{} is full on this shard: {items} {} ({bytes} bytes) of at most {items_max} \
                 ({}) and {bytes_max} bytes ({}); retry when some finish",
                n.store, n.items, n.items_flag, n.bytes_flag
            ),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// Charges of entries `K` to clients. Bounded by the entries of its store: a client's
/// line goes away with its last entry.
#[derive(Clone, Debug)]
pub struct ClientLedger<K> {
    /// Bytes charged in all.
    bytes: usize,
    /// `(entries, bytes)` charged to anonymous clients, all together.
    anonymous: (usize, usize),
    /// entry → (client, bytes charged).
    charged: HashMap<K, (Charge, usize)>,
    /// client → (entries, bytes).
    clients: HashMap<Charge, (usize, usize)>,
    /// Refusals by reason ([`Refusal::REASONS`]), for `/metrics`.
    refused: [std::cell::Cell<u64>; 3],
}

impl<K> Default for ClientLedger<K> {
    fn default() -> Self {
        ClientLedger {
            bytes: 0,
            anonymous: (0, 0),
            charged: HashMap::new(),
            clients: HashMap::new(),
            refused: Default::default(),
        }
    }
}

impl<K: Hash + Eq> ClientLedger<K> {
    /// Bytes charged in all.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries charged.
    pub fn len(&self) -> usize {
        self.charged.len()
    }

    /// Whether nothing is charged.
    pub fn is_empty(&self) -> bool {
        self.charged.is_empty()
    }

    /// `(entries, bytes)` charged to `client`.
    pub fn client(&self, client: &Charge) -> (usize, usize) {
        self.clients.get(client).copied().unwrap_or_default()
    }

    /// `(entries, bytes)` charged to anonymous clients, all together.
    pub fn anonymous(&self) -> (usize, usize) {
        self.anonymous
    }

    /// Who `key` is charged to, and how much.
    pub fn charge_of<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<(&Charge, usize)>
    where
        K: Borrow<Q>,
    {
        self.charged.get(key).map(|(c, b)| (c, *b))
    }

    /// Charges `key` `bytes` to `client` (the caller has removed any earlier charge).
    pub fn charge(&mut self, key: K, client: Charge, bytes: usize) {
        self.bytes += bytes;
        if client.is_anonymous() {
            self.anonymous.0 += 1;
            self.anonymous.1 += bytes;
        }
        let u = self.clients.entry(client.clone()).or_default();
        u.0 += 1;
        u.1 += bytes;
        self.charged.insert(key, (client, bytes));
    }

    /// Removes `key`'s charge and returns it.
    pub fn uncharge<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<(Charge, usize)>
    where
        K: Borrow<Q>,
    {
        let (client, bytes) = self.charged.remove(key)?;
        self.bytes = self.bytes.saturating_sub(bytes);
        if client.is_anonymous() {
            self.anonymous.0 = self.anonymous.0.saturating_sub(1);
            self.anonymous.1 = self.anonymous.1.saturating_sub(bytes);
        }
        if let Some(u) = self.clients.get_mut(&client) {
            u.0 = u.0.saturating_sub(1);
            u.1 = u.1.saturating_sub(bytes);
            if u.0 == 0 {
                self.clients.remove(&client);
            }
        }
        Some((client, bytes))
    }

    /// May `who` add a new entry of `bytes` under `budget`? In order: `who`'s quota
    /// (anonymous clients and agents), the store's whole budget (everyone), the
    /// anonymous share (anonymous clients).
    /// Refusals so far, by [`Refusal::REASONS`].
    pub fn refused(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.refused[i].get())
    }

    fn count(&self, r: Result<(), Refusal>) -> Result<(), Refusal> {
        if let Err(e) = &r {
            let c = &self.refused[e.index()];
            c.set(c.get() + 1);
        }
        r
    }

    pub fn admit_new(&self, budget: &Budget, who: &Charge, bytes: usize) -> Result<(), Refusal> {
        self.count(self.admit_new_inner(budget, who, bytes))
    }

    fn admit_new_inner(&self, budget: &Budget, who: &Charge, bytes: usize) -> Result<(), Refusal> {
        if who.has_quota() {
            let (items, held) = self.client(who);
            if items >= budget.client_items_max
                || held.saturating_add(bytes) > budget.client_bytes_max
            {
                return Err(Refusal::ClientQuota {
                    items,
                    bytes: held,
                    items_max: budget.client_items_max,
                    bytes_max: budget.client_bytes_max,
                });
            }
        }
        if self.len() >= budget.items_max || self.bytes.saturating_add(bytes) > budget.bytes_max {
            return Err(self.full(budget));
        }
        if who.is_anonymous() {
            let (items, held) = self.anonymous;
            if items >= budget.anonymous_items_max()
                || held.saturating_add(bytes) > budget.anonymous_bytes_max()
            {
                return Err(self.share_refusal(budget));
            }
        }
        Ok(())
    }

    /// May entry `key`, already charged, be charged `bytes` from now on? Growth counts
    /// against the anonymous share when its holder is anonymous, and against the
    /// store's whole budget; the per-client quota governs new entries only. An entry
    /// that does not grow is always admitted (a full store never refuses a heartbeat
    /// or a report that adds nothing); an unknown key is admitted as by the store's
    /// whole budget alone.
    pub fn admit_growth<Q: Hash + Eq + ?Sized>(
        &self,
        budget: &Budget,
        key: &Q,
        bytes: usize,
    ) -> Result<(), Refusal>
    where
        K: Borrow<Q>,
    {
        self.count(self.admit_growth_inner(budget, key, bytes))
    }

    fn admit_growth_inner<Q: Hash + Eq + ?Sized>(
        &self,
        budget: &Budget,
        key: &Q,
        bytes: usize,
    ) -> Result<(), Refusal>
    where
        K: Borrow<Q>,
    {
        let (anonymous, old) = match self.charged.get(key) {
            Some((c, b)) => (c.is_anonymous(), *b),
            None => (false, 0),
        };
        if bytes <= old {
            return Ok(());
        }
        let grow = bytes - old;
        if self.bytes.saturating_add(grow) > budget.bytes_max {
            return Err(self.full(budget));
        }
        if anonymous && self.anonymous.1.saturating_add(grow) > budget.anonymous_bytes_max() {
            return Err(self.share_refusal(budget));
        }
        Ok(())
    }

    fn share_refusal(&self, budget: &Budget) -> Refusal {
        Refusal::AnonymousShare {
            items: self.anonymous.0,
            bytes: self.anonymous.1,
            items_max: budget.anonymous_items_max(),
            bytes_max: budget.anonymous_bytes_max(),
            percent: budget.anonymous_share_percent.min(100),
        }
    }

    fn full(&self, budget: &Budget) -> Refusal {
        Refusal::Full {
            items: self.len(),
            bytes: self.bytes,
            items_max: budget.items_max,
            bytes_max: budget.bytes_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(s: &str) -> Charge {
        Charge::Anonymous(s.into())
    }

    #[test]
    fn charges_add_up_and_clients_leave_at_zero() {
        let mut l = ClientLedger::default();
        l.charge(1u64, anon("a"), 100);
        l.charge(2, anon("a"), 50);
        l.charge(3, Charge::Agent("b".into()), 7);
        assert_eq!((l.bytes(), l.len()), (157, 3));
        assert_eq!(l.client(&anon("a")), (2, 150));
        assert_eq!(l.anonymous(), (2, 150));
        assert_eq!(l.charge_of(&3), Some((&Charge::Agent("b".into()), 7)));
        assert_eq!(l.uncharge(&1), Some((anon("a"), 100)));
        assert_eq!(l.uncharge(&1), None);
        assert_eq!(l.client(&anon("a")), (1, 50));
        assert_eq!(l.anonymous(), (1, 50));
        l.uncharge(&2);
        assert_eq!(l.client(&anon("a")), (0, 0));
        assert!(
            !l.clients.contains_key(&anon("a")),
            "a client's line goes with its last entry"
        );
        assert_eq!((l.bytes(), l.anonymous()), (7, (0, 0)));
    }

    const BUDGET: Budget = Budget {
        items_max: 100,
        bytes_max: 10_000,
        client_items_max: 10,
        client_bytes_max: 1_000,
        anonymous_share_percent: 50,
    };

    /// Many addresses, each within its quota, fill the anonymous share and no more:
    /// authenticated clients keep the other half.
    #[test]
    fn many_addresses_fill_only_the_anonymous_share() {
        let mut l = ClientLedger::default();
        let mut key = 0u64;
        let mut refusals = Vec::new();
        for addr in 0..20 {
            let who = anon(&format!("10.0.0.{addr}"));
            loop {
                match l.admit_new(&BUDGET, &who, 100) {
                    Ok(()) => {
                        l.charge(key, who.clone(), 100);
                        key += 1;
                    }
                    Err(r) => {
                        refusals.push(r.reason());
                        break;
                    }
                }
            }
        }
        // 5 addresses fill their quota (10 × 100 bytes); then the share (5,000 bytes).
        assert_eq!(l.anonymous(), (50, 5_000));
        assert_eq!(refusals[..5], ["client_quota"; 5]);
        assert!(refusals[5..].iter().all(|r| *r == "anonymous_share"));
        let r = l.admit_new(&BUDGET, &anon("10.9.9.9"), 1).unwrap_err();
        assert_eq!(r.status(), 503);
        let names = Names {
            store: "task store",
            items: "tasks",
            bytes_flag: "--task-store-bytes-max",
            items_flag: "65536 tasks a shard",
            client_items_flag: "--task-client-tasks-max",
            client_bytes_flag: "--task-client-bytes-max",
        };
        let m = r.message(&names);
        assert!(m.contains("--anonymous-share-percent 50"), "{m}");
        assert!(
            m.contains("X-API-Key or bearer token still have room"),
            "{m}"
        );
        // An agent and an admin still get in, up to the whole budget.
        let agent = Charge::Agent("a".into());
        for _ in 0..10 {
            l.admit_new(&BUDGET, &agent, 100).unwrap();
            l.charge(key, agent.clone(), 100);
            key += 1;
        }
        let r = l.admit_new(&BUDGET, &agent, 100).unwrap_err();
        assert_eq!(r.reason(), "client_quota", "an agent has a quota too");
        let admin = Charge::Admin("ops".into());
        while l.admit_new(&BUDGET, &admin, 100).is_ok() {
            l.charge(key, admin.clone(), 100);
            key += 1;
        }
        assert_eq!(l.bytes(), BUDGET.bytes_max);
        assert_eq!(
            l.admit_new(&BUDGET, &admin, 1).unwrap_err().reason(),
            "store_full"
        );
        // Room in the store is not room in the share; anonymous entries leaving is.
        l.uncharge(&(key - 1));
        let r = l.admit_new(&BUDGET, &anon("10.9.9.9"), 100).unwrap_err();
        assert_eq!(r.reason(), "anonymous_share");
        l.uncharge(&0);
        l.admit_new(&BUDGET, &anon("10.9.9.9"), 100).unwrap();
    }

    #[test]
    fn the_share_counts_entries_too() {
        let b = Budget {
            items_max: 10,
            bytes_max: 1 << 20,
            client_items_max: 100,
            client_bytes_max: 1 << 20,
            anonymous_share_percent: 30,
        };
        let mut l = ClientLedger::default();
        for k in 0..3u64 {
            l.admit_new(&b, &anon(&k.to_string()), 1).unwrap();
            l.charge(k, anon(&k.to_string()), 1);
        }
        assert_eq!(
            l.admit_new(&b, &anon("x"), 1).unwrap_err(),
            Refusal::AnonymousShare {
                items: 3,
                bytes: 3,
                items_max: 3,
                bytes_max: (1 << 20) * 30 / 100,
                percent: 30
            }
        );
        l.admit_new(&b, &Charge::Agent("a".into()), 1).unwrap();
    }

    #[test]
    fn growth_counts_against_the_holders_class() {
        let mut l = ClientLedger::default();
        l.charge(1u64, anon("a"), 4_000);
        l.charge(2u64, Charge::Agent("b".into()), 100);
        // Anonymous entry 1 may grow to the share (5,000 bytes), no further.
        l.admit_growth(&BUDGET, &1, 5_000).unwrap();
        assert_eq!(
            l.admit_growth(&BUDGET, &1, 5_001).unwrap_err().reason(),
            "anonymous_share"
        );
        // Not growing is always fine; the per-client quota does not apply to growth.
        l.admit_growth(&BUDGET, &1, 4_000).unwrap();
        // The agent's entry may grow to the whole budget.
        l.admit_growth(&BUDGET, &2, 100 + 5_900).unwrap();
        assert_eq!(
            l.admit_growth(&BUDGET, &2, 100 + 5_901)
                .unwrap_err()
                .reason(),
            "store_full"
        );
    }

    #[test]
    fn share_rounds_down_and_caps_at_the_whole() {
        assert_eq!(share(1000, 50), 500);
        assert_eq!(share(999, 50), 499);
        assert_eq!(share(1000, 0), 0);
        assert_eq!(share(1000, 100), 1000);
        assert_eq!(share(1000, 200), 1000);
        assert_eq!(
            share(usize::MAX, 99),
            (usize::MAX as u128 * 99 / 100) as usize
        );
    }
}
