//! Bounded in-memory caches: every cache of per-user, per-room or per-event data has a size
//! limit, so memory plateaus however many users, rooms and events pass through.
//!
//! [`BoundedMap`] keeps two generations: entries are inserted into the young one; when it is
//! full, it becomes the old one and the previous old generation is dropped whole. A lookup
//! that finds an entry in the old generation moves it back to the young one, so what is in
//! use survives and what is not ages out. At most `capacity` entries are held, every
//! operation is O(1), and there is no per-entry bookkeeping (an LRU list would cost more than
//! most of these values).
//!
//! Each map counts its lookups, hits, size and evictions under its name in Synapse's
//! `synapse_util_caches_cache*` metrics (several maps of one name add up).
//!
//! Sizes: each cache's default (in [`CacheSizes`]) scaled by Synapse's `caches.global_factor`
//! (default 0.5, at which the defaults apply as written), and by `caches.per_cache_factors`
//! under the cache's name, as Synapse scales its own caches.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use myelin_metrics::CacheStats;

/// A map holding at most `capacity` entries, dropping the least recently used generation.
#[derive(Debug)]
pub(crate) struct BoundedMap<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    generation: usize,
    /// Entries held when last counted in `stats`.
    held: usize,
    stats: Arc<CacheStats>,
}

impl<K: Hash + Eq, V> BoundedMap<K, V> {
    /// A map of at most `capacity` entries (at least 2), counted in the metrics as `name`.
    pub(crate) fn new(name: &'static str, capacity: usize) -> Self {
        BoundedMap {
            young: HashMap::new(),
            old: HashMap::new(),
            generation: (capacity / 2).max(1),
            held: 0,
            stats: CacheStats::named(name),
        }
    }

    /// Brings the size metric up to date after a change.
    fn count_size(&mut self) {
        let now = self.young.len() + self.old.len();
        if now != self.held {
            self.stats.resized(now as i64 - self.held as i64);
            self.held = now;
        }
    }

    /// The entry for `key`, if held (and now in the young generation).
    pub(crate) fn get<Q>(&mut self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_mut(key).map(|v| &*v)
    }

    /// As [`BoundedMap::get`], mutably.
    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.young.contains_key(key)
            && let Some((k, v)) = self.old.remove_entry(key)
        {
            self.insert(k, v);
        }
        let found = self.young.get_mut(key);
        self.stats.lookup(found.is_some());
        found
    }

    /// The entry for `key`, if held, without refreshing it (a lookup over many keys that must
    /// not age out the ones it has not reached yet).
    pub(crate) fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let found = self.young.get(key).or_else(|| self.old.get(key));
        self.stats.lookup(found.is_some());
        found
    }

    /// Whether `key` is held (without refreshing it).
    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.young.contains_key(key) || self.old.contains_key(key)
    }

    /// Holds `value` for `key`, replacing any earlier one.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        self.old.remove(&key);
        if self.young.len() >= self.generation && !self.young.contains_key(&key) {
            let dropped = std::mem::replace(&mut self.old, std::mem::take(&mut self.young));
            self.stats.evicted(dropped.len());
        }
        self.young.insert(key, value);
        self.count_size();
    }

    /// Forgets `key`.
    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let removed = self.young.remove(key).or_else(|| self.old.remove(key));
        self.count_size();
        removed
    }

    /// Keeps only the entries `keep` says yes to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.young.retain(&mut keep);
        self.old.retain(keep);
        self.count_size();
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
        self.count_size();
    }

    /// How many entries are held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// The size of every bounded cache, after the config's factors.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSizes {
    /// Rooms whose current state, extremities and depth are kept (`room_state`).
    pub rooms: usize,
    /// Parsed state events (`state_events`).
    pub state_events: usize,
    /// History visibility per state group (`state_group_visibility`).
    pub visibility: usize,
    /// Users' parsed push rules (`push_rules`).
    pub push_rules: usize,
    /// Unread counts per user and room (`unread_counts`).
    pub unread_counts: usize,
    /// When each device was last seen (`last_seen`).
    pub last_seen: usize,
    /// Answers to federation transactions, for retries (`federation_transactions`).
    pub federation_transactions: usize,
    /// Presence last written per user (`presence`).
    pub presence: usize,
    /// Sliding sync: each room's latest activity (`room_activity`) and users' memberships
    /// (`user_memberships`).
    pub room_activity: usize,
    /// See [`CacheSizes::room_activity`].
    pub user_memberships: usize,
}

/// Synapse's default `caches.global_factor`: the defaults below are sized for it.
const DEFAULT_GLOBAL_FACTOR: f64 = 0.5;

impl CacheSizes {
    /// Each cache's default size scaled by `global_factor / 0.5`, or by its own factor from
    /// `per_cache_factors` (Synapse's semantics: a per-cache factor replaces the global one).
    pub fn scaled(global_factor: f64, per_cache_factors: &HashMap<String, f64>) -> Self {
        let size = |name: &str, default: usize| -> usize {
            let factor = per_cache_factors.get(name).copied().unwrap_or(global_factor);
            ((default as f64) * factor / DEFAULT_GLOBAL_FACTOR).round().max(16.0) as usize
        };
        CacheSizes {
            rooms: size("room_state", 10_000),
            state_events: size("state_events", 10_000),
            visibility: size("state_group_visibility", 100_000),
            push_rules: size("push_rules", 10_000),
            unread_counts: size("unread_counts", 100_000),
            last_seen: size("last_seen", 100_000),
            federation_transactions: size("federation_transactions", 10_000),
            presence: size("presence", 100_000),
            room_activity: size("room_activity", 100_000),
            user_memberships: size("user_memberships", 10_000),
        }
    }

    /// The cache names `per_cache_factors` may use.
    pub const NAMES: &'static [&'static str] = &[
        "room_state",
        "state_events",
        "state_group_visibility",
        "push_rules",
        "unread_counts",
        "last_seen",
        "federation_transactions",
        "presence",
        "room_activity",
        "user_memberships",
    ];
}

impl Default for CacheSizes {
    fn default() -> Self {
        Self::scaled(DEFAULT_GLOBAL_FACTOR, &HashMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_than_its_capacity() {
        let mut map = BoundedMap::new("test", 100);
        for i in 0..10_000 {
            map.insert(i, i);
            assert!(map.len() <= 100);
        }
        assert_eq!(map.get(&9_999), Some(&9_999));
        assert_eq!(map.get(&0), None);
    }

    #[test]
    fn what_is_used_survives_and_what_is_not_ages_out() {
        let mut map = BoundedMap::new("test", 10);
        map.insert("hot", 1);
        for i in 0..1_000 {
            map.insert(format!("cold{i}").leak() as &str, 0);
            assert_eq!(map.get("hot"), Some(&1), "after {i} inserts");
        }
        assert_eq!(map.get("cold0"), None);
        assert_eq!(map.remove("hot"), Some(1));
        assert_eq!(map.get("hot"), None);
    }

    #[test]
    fn sizes_follow_synapses_factors() {
        assert_eq!(CacheSizes::default().rooms, 10_000);
        assert_eq!(CacheSizes::scaled(1.0, &HashMap::new()).rooms, 20_000);
        let per = HashMap::from([("room_state".to_owned(), 0.05)]);
        let sizes = CacheSizes::scaled(0.5, &per);
        assert_eq!((sizes.rooms, sizes.state_events), (1_000, 10_000));
    }
}
