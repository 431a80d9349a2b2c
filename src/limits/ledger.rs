//! What each client holds in a store, for per-client quotas (issue 13) and the
//! anonymous share (issue 20): the byte charge of every entry, who it is charged to, per
//! client `(entries, bytes)`, and what all anonymous clients hold together. The task
//! store and the agent registry each keep one (keyed by their own entry id); their
//! admission rules are [`ClientLedger::admit_new`] and [`ClientLedger::admit`] (any
//! change of an entry, growth included).

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

/// What one entry of a store is charged, and to whom: `bytes` to its `holder` (the
/// client it counts as an entry of), and optionally a part charged to another client
/// (`extra`, bytes only, no entry): a task's report (state, `result`, `error`) is
/// charged to whoever posted it (issue 20), the rest of the task to its submitter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Who the entry counts as an entry of, and the bytes charged to it.
    pub holder: Charge,
    pub bytes: usize,
    /// Bytes charged to another client; `None`: none.
    pub extra: Option<(Charge, usize)>,
}

impl Line {
    /// `bytes` charged wholly to `holder`.
    pub fn new(holder: Charge, bytes: usize) -> Line {
        Line {
            holder,
            bytes,
            extra: None,
        }
    }

    /// `bytes` to `holder` and `extra` bytes to `reporter`; one part when they are the
    /// same client.
    pub fn split(holder: Charge, bytes: usize, reporter: Option<Charge>, extra: usize) -> Line {
        match reporter {
            Some(r) if r != holder => Line {
                holder,
                bytes,
                extra: Some((r, extra)),
            },
            _ => Line::new(holder, bytes + extra),
        }
    }

    /// Bytes of the whole entry.
    pub fn total(&self) -> usize {
        self.bytes + self.extra.as_ref().map_or(0, |(_, b)| *b)
    }

    /// `(client, entries, bytes)` of each part.
    pub fn parts(&self) -> impl Iterator<Item = (&Charge, usize, usize)> {
        std::iter::once((&self.holder, 1, self.bytes))
            .chain(self.extra.as_ref().map(|(c, b)| (c, 0, *b)))
    }
}

/// Charges of entries `K` to clients. Bounded by the entries of its store: a client's
/// line goes away when it holds nothing.
#[derive(Clone, Debug)]
pub struct ClientLedger<K> {
    /// Bytes charged in all.
    bytes: usize,
    /// `(entries, bytes)` charged to anonymous clients, all together.
    anonymous: (usize, usize),
    /// entry → what it is charged, to whom.
    charged: HashMap<K, Line>,
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

/// How one client's holdings change with an admission: `(entries, bytes)` added (may be
/// negative).
type Delta<'a> = (&'a Charge, i128, i128);

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

    /// What `key` is charged, to whom.
    pub fn charge_of<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&Line>
    where
        K: Borrow<Q>,
    {
        self.charged.get(key)
    }

    /// Whether `key` is charged `bytes`, wholly to the client `holder` accepts: then
    /// charging it so again changes nothing, and [`admit`](Self::admit) would admit it.
    pub fn is_charged<Q: Hash + Eq + ?Sized>(
        &self,
        key: &Q,
        holder: impl FnOnce(&Charge) -> bool,
        bytes: usize,
    ) -> bool
    where
        K: Borrow<Q>,
    {
        self.charged
            .get(key)
            .is_some_and(|l| l.extra.is_none() && l.bytes == bytes && holder(&l.holder))
    }

    /// Charges `key` `bytes` to `client` (the caller has removed any earlier charge).
    pub fn charge(&mut self, key: K, client: Charge, bytes: usize) {
        self.put(key, Line::new(client, bytes));
    }

    /// Charges `key` as `line` says (the caller has removed any earlier charge).
    pub fn put(&mut self, key: K, line: Line) {
        for (client, items, bytes) in line.parts() {
            self.bytes += bytes;
            if client.is_anonymous() {
                self.anonymous.0 += items;
                self.anonymous.1 += bytes;
            }
            if items == 0 && bytes == 0 {
                continue;
            }
            let u = match self.clients.get_mut(client) {
                Some(u) => u,
                None => self.clients.entry(client.clone()).or_default(),
            };
            u.0 += items;
            u.1 += bytes;
        }
        self.charged.insert(key, line);
    }

    /// Removes `key`'s charge and returns it.
    pub fn uncharge<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<Line>
    where
        K: Borrow<Q>,
    {
        let line = self.charged.remove(key)?;
        for (client, items, bytes) in line.parts() {
            self.bytes = self.bytes.saturating_sub(bytes);
            if client.is_anonymous() {
                self.anonymous.0 = self.anonymous.0.saturating_sub(items);
                self.anonymous.1 = self.anonymous.1.saturating_sub(bytes);
            }
            if let Some(u) = self.clients.get_mut(client) {
                u.0 = u.0.saturating_sub(items);
                u.1 = u.1.saturating_sub(bytes);
                if *u == (0, 0) {
                    self.clients.remove(client);
                }
            }
        }
        Some(line)
    }

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

    /// May `who` add a new entry of `bytes` under `budget`? In order: `who`'s quota
    /// (anonymous clients and agents), the store's whole budget (everyone), the
    /// anonymous share (anonymous clients).
    pub fn admit_new(&self, budget: &Budget, who: &Charge, bytes: usize) -> Result<(), Refusal> {
        self.count(self.admit_line(budget, None, &Line::new(who.clone(), bytes)))
    }

    /// May entry `key` (new or already charged) be charged as `line` says from now on?
    /// Growth is held to the same limits as a new entry, charged to whoever it goes to
    /// (issue 20): each client that would hold more (entries or bytes) is held to its
    /// quota (anonymous clients and agents), the store to its whole budget, anonymous
    /// clients together to their share. So a client cannot grow its own entries past
    /// its quota, and an entry that moves to another client (an agent bound anew, a
    /// task's report posted by another) counts for that client in full. A change that
    /// adds nothing to anyone is always admitted (a full store never refuses a
    /// heartbeat or a report that adds nothing).
    pub fn admit<Q: Hash + Eq + ?Sized>(
        &self,
        budget: &Budget,
        key: &Q,
        line: &Line,
    ) -> Result<(), Refusal>
    where
        K: Borrow<Q>,
    {
        self.count(self.admit_line(budget, self.charged.get(key), line))
    }

    fn admit_line(&self, budget: &Budget, old: Option<&Line>, new: &Line) -> Result<(), Refusal> {
        // At most four parts (two before, two after): a small list, no allocation
        // beyond it.
        let mut deltas: Vec<Delta<'_>> = Vec::with_capacity(4);
        let mut add = |client, items: usize, bytes: usize, sign: i128| {
            let (i, b) = (sign * items as i128, sign * bytes as i128);
            match deltas.iter_mut().find(|d| d.0 == client) {
                Some(d) => {
                    d.1 += i;
                    d.2 += b;
                }
                None => deltas.push((client, i, b)),
            }
        };
        for (c, i, b) in old.into_iter().flat_map(Line::parts) {
            add(c, i, b, -1);
        }
        for (c, i, b) in new.parts() {
            add(c, i, b, 1);
        }
        let over =
            |held: usize, delta: i128, max: usize| delta > 0 && held as i128 + delta > max as i128;
        for &(client, items, bytes) in &deltas {
            if !client.has_quota() {
                continue;
            }
            let (held_items, held) = self.client(client);
            if over(held_items, items, budget.client_items_max)
                || over(held, bytes, budget.client_bytes_max)
            {
                return Err(Refusal::ClientQuota {
                    items: held_items,
                    bytes: held,
                    items_max: budget.client_items_max,
                    bytes_max: budget.client_bytes_max,
                });
            }
        }
        let sum = |anonymous_only: bool| {
            deltas
                .iter()
                .filter(|d| !anonymous_only || d.0.is_anonymous())
                .fold((0i128, 0i128), |(i, b), d| (i + d.1, b + d.2))
        };
        let (items, bytes) = sum(false);
        if over(self.len(), items, budget.items_max) || over(self.bytes, bytes, budget.bytes_max) {
            return Err(self.full(budget));
        }
        let (items, bytes) = sum(true);
        if over(self.anonymous.0, items, budget.anonymous_items_max())
            || over(self.anonymous.1, bytes, budget.anonymous_bytes_max())
        {
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
        assert_eq!(
            l.charge_of(&3),
            Some(&Line::new(Charge::Agent("b".into()), 7))
        );
        assert_eq!(l.uncharge(&1), Some(Line::new(anon("a"), 100)));
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

    /// Issue 20 (review): growth is held to the same limits as a new entry, charged to
    /// whoever it goes to.
    #[test]
    fn growth_counts_against_quota_share_and_store() {
        let grow = |l: &ClientLedger<u64>, key: u64, who: &Charge, bytes: usize| {
            l.admit(&BUDGET, &key, &Line::new(who.clone(), bytes))
                .map_err(|r| r.reason())
        };
        let mut l = ClientLedger::default();
        let a = anon("a");
        l.charge(1u64, a.clone(), 400);
        l.charge(2u64, a.clone(), 400);
        // `a` holds 800 of its 1,000 bytes: an entry may grow by 200, no more.
        assert_eq!(grow(&l, 1, &a, 600), Ok(()));
        assert_eq!(grow(&l, 1, &a, 601), Err("client_quota"));
        // Not growing is always fine, even over the quota.
        assert_eq!(grow(&l, 1, &a, 400), Ok(()));
        assert_eq!(grow(&l, 1, &a, 1), Ok(()));
        // The anonymous share (5,000 bytes) holds growth by many addresses.
        let mut l = ClientLedger::default();
        for k in 0..5u64 {
            l.charge(k, anon(&k.to_string()), 990);
        }
        l.charge(5, anon("5"), 40);
        assert_eq!(l.anonymous(), (6, 4_990));
        assert_eq!(grow(&l, 5, &anon("5"), 51), Err("anonymous_share"));
        assert_eq!(grow(&l, 5, &anon("5"), 50), Ok(()));
        // An agent has a quota too; an admin only the store's budget.
        let agent = Charge::Agent("b".into());
        l.charge(10, agent.clone(), 100);
        assert_eq!(grow(&l, 10, &agent, 1_001), Err("client_quota"));
        let admin = Charge::Admin("ops".into());
        l.charge(11, admin.clone(), 100);
        // The store holds 5,190 bytes: entry 11 may grow by 4,810.
        assert_eq!(l.bytes(), 5_190);
        assert_eq!(grow(&l, 11, &admin, 100 + 4_810), Ok(()));
        assert_eq!(grow(&l, 11, &admin, 100 + 4_811), Err("store_full"));
    }

    /// A part charged to another client (a task's report): it counts for that client,
    /// bytes only; moving it from one client to another frees the first.
    #[test]
    fn an_extra_part_counts_for_its_own_client() {
        let mut l = ClientLedger::default();
        let (a, k) = (anon("a"), Charge::Agent("k".into()));
        // A full anonymous share: 5 addresses of 1,000 bytes.
        for n in 0..5u64 {
            l.charge(n, anon(&n.to_string()), 1_000);
        }
        l.charge(9, a.clone(), 0);
        // The share refuses `a` growing entry 9, but not `k` reporting on it.
        assert_eq!(
            l.admit(&BUDGET, &9, &Line::split(a.clone(), 0, Some(a.clone()), 10))
                .unwrap_err()
                .reason(),
            "anonymous_share"
        );
        let line = Line::split(a.clone(), 0, Some(k.clone()), 900);
        assert_eq!(line.total(), 900);
        l.admit(&BUDGET, &9, &line).unwrap();
        l.uncharge(&9);
        l.put(9, line);
        assert_eq!(l.client(&k), (0, 900));
        assert_eq!(l.client(&a), (1, 0));
        assert_eq!(l.anonymous(), (6, 5_000));
        assert_eq!(l.bytes(), 5_900);
        // `k`'s quota holds its reports: 100 more bytes fit, 101 do not.
        let more = Line::split(a.clone(), 0, Some(k.clone()), 1_000);
        l.admit(&BUDGET, &9, &more).unwrap();
        let over = Line::split(a.clone(), 0, Some(k.clone()), 1_001);
        assert_eq!(
            l.admit(&BUDGET, &9, &over).unwrap_err().reason(),
            "client_quota"
        );
        // The report moves back to `a`: the share counts it again.
        let back = Line::split(a.clone(), 0, Some(a.clone()), 900);
        assert_eq!(back, Line::new(a.clone(), 900));
        assert_eq!(
            l.admit(&BUDGET, &9, &back).unwrap_err().reason(),
            "anonymous_share"
        );
        l.uncharge(&9);
        assert!(!l.clients.contains_key(&k) && !l.clients.contains_key(&a));
        assert_eq!((l.bytes(), l.anonymous()), (5_000, (5, 5_000)));
    }

    /// An entry that moves to another client (an agent bound anew) counts as a new one
    /// for that client: one more entry, all its bytes.
    #[test]
    fn a_moved_entry_counts_in_full_for_its_new_client() {
        let mut l = ClientLedger::default();
        let k = Charge::Agent("k".into());
        for n in 0..10u64 {
            l.charge(n, k.clone(), 10);
        }
        l.charge(20, anon("a"), 10);
        // `k` holds its 10 entries: taking entry 20 is over its quota.
        assert_eq!(
            l.admit(&BUDGET, &20, &Line::new(k.clone(), 10))
                .unwrap_err()
                .reason(),
            "client_quota"
        );
        l.uncharge(&0);
        l.admit(&BUDGET, &20, &Line::new(k.clone(), 10)).unwrap();
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
