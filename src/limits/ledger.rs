//! What each client holds in a store, for per-client quotas (issue 13): the byte
//! charge of every entry, who it is charged to, and per client `(entries, bytes)`. The
//! task store and the agent registry each keep one (keyed by their own entry id).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// Charges of entries `K` to clients. Bounded by the entries of its store: a client's
/// line goes away with its last entry.
#[derive(Clone, Debug)]
pub struct ClientLedger<K> {
    /// Bytes charged in all.
    bytes: usize,
    /// entry → (client, bytes charged).
    charged: HashMap<K, (String, usize)>,
    /// client → (entries, bytes).
    clients: HashMap<String, (usize, usize)>,
}

impl<K> Default for ClientLedger<K> {
    fn default() -> Self {
        ClientLedger {
            bytes: 0,
            charged: HashMap::new(),
            clients: HashMap::new(),
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
    pub fn client(&self, client: &str) -> (usize, usize) {
        self.clients.get(client).copied().unwrap_or_default()
    }

    /// Who `key` is charged to, and how much.
    pub fn charge_of<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<(&str, usize)>
    where
        K: Borrow<Q>,
    {
        self.charged.get(key).map(|(c, b)| (c.as_str(), *b))
    }

    /// Charges `key` `bytes` to `client` (the caller has removed any earlier charge).
    pub fn charge(&mut self, key: K, client: String, bytes: usize) {
        self.bytes += bytes;
        let u = self.clients.entry(client.clone()).or_default();
        u.0 += 1;
        u.1 += bytes;
        self.charged.insert(key, (client, bytes));
    }

    /// Removes `key`'s charge and returns it.
    pub fn uncharge<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<(String, usize)>
    where
        K: Borrow<Q>,
    {
        let (client, bytes) = self.charged.remove(key)?;
        self.bytes = self.bytes.saturating_sub(bytes);
        if let Some(u) = self.clients.get_mut(&client) {
            u.0 = u.0.saturating_sub(1);
            u.1 = u.1.saturating_sub(bytes);
            if u.0 == 0 {
                self.clients.remove(&client);
            }
        }
        Some((client, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_add_up_and_clients_leave_at_zero() {
        let mut l = ClientLedger::default();
        l.charge(1u64, "a".into(), 100);
        l.charge(2, "a".into(), 50);
        l.charge(3, "b".into(), 7);
        assert_eq!((l.bytes(), l.len()), (157, 3));
        assert_eq!(l.client("a"), (2, 150));
        assert_eq!(l.charge_of(&3), Some(("b", 7)));
        assert_eq!(l.uncharge(&1), Some(("a".to_owned(), 100)));
        assert_eq!(l.uncharge(&1), None);
        assert_eq!(l.client("a"), (1, 50));
        l.uncharge(&2);
        assert_eq!(l.client("a"), (0, 0));
        assert!(
            !l.clients.contains_key("a"),
            "a client's line goes with its last entry"
        );
        assert_eq!(l.bytes(), 7);
    }
}
