//! The de-duplication store: which event ids normalize has passed on, per input partition,
//! within a window.
//!
//! A vendor retries a webhook with the same delivery id and a producer re-sends a request
//! with the same `Idempotency-Key`; ingest turns each retry into a raw record with the same
//! event id (ingest is at least once per delivery: it cannot know what it produced before).
//! normalize is the first exactly-once stage, so it drops an event id it has already passed
//! on, and every stage after it sees each event id once.
//!
//! * The raw record's key (the lead key, else the event id) puts every copy of an event on
//!   the same partition, so one store per input partition sees them all.
//! * Only ids that can recur are remembered: a fresh UUIDv7 (header `nectar-event-id-origin:
//!   generated`) is never re-sent.
//! * An id is remembered from the `received_at` of its first delivery for `window_secs`,
//!   measured in stream time (the largest `received_at` seen on the partition), so a replay
//!   of the same records expires the same ids. Expired ids are forgotten with a changelog
//!   tombstone; beyond `max_ids_per_partition` the oldest are evicted early, counted.
//! * The store is pure data; `main.rs` writes its [`Change`]s to the compacted changelog in
//!   the batch's transaction and rebuilds it from there on assignment (`nectar_core::state`).
//!   Changes of an aborted transaction are undone from an undo log.
//!
//! Memory: an id is a `u128` (a UUID's own bits; another string is mapped into UUID space by
//! a UUIDv5 of it) with its `received_at`, in a hash map and an arrival-order queue.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;
use uuid::Uuid;

/// The `[dedup]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// Drop event ids already passed on. Off: every raw record is normalized, duplicates too.
    pub enabled: bool,
    /// The compacted changelog topic, with as many partitions as each raw topic.
    pub changelog: String,
    /// How long an id is remembered after its first delivery (by `received_at`). Vendors
    /// retry for up to 3 days (Stripe, PayPal; Square 72 h): 259200.
    pub window_secs: u64,
    /// Most ids held per input partition; past it the oldest are forgotten early.
    pub max_ids_per_partition: usize,
}

impl DedupConfig {
    pub fn validate(&self, errors: &mut Vec<String>) {
        if !self.enabled {
            return;
        }
        if self.changelog.trim().is_empty() {
            errors.push("dedup.changelog: must not be empty".into());
        }
        if self.window_secs == 0 || self.window_secs > 366 * 86_400 {
            errors.push("dedup.window_secs: must be between 1 and 31622400 (366 days)".into());
        }
        if self.max_ids_per_partition == 0 {
            errors.push("dedup.max_ids_per_partition: must be at least 1".into());
        }
    }
}

/// Namespace that maps an event id that is not a UUID into UUID space. Never change it.
const FOREIGN_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6e65_6374_6172_4e45_8000_0000_0000_0002);

/// An event id as the store holds it: the UUID's bits.
pub type IdKey = u128;

/// The store key of `event_id`.
pub fn id_key(event_id: &str) -> IdKey {
    Uuid::parse_str(event_id)
        .unwrap_or_else(|_| Uuid::new_v5(&FOREIGN_ID_NAMESPACE, event_id.as_bytes()))
        .as_u128()
}

/// The changelog record key of `key`: the event id itself for UUID ids.
pub fn key_bytes(key: IdKey) -> Vec<u8> {
    Uuid::from_u128(key).hyphenated().to_string().into_bytes()
}

/// A changelog record key back to the store key.
pub fn parse_key(bytes: &[u8]) -> Option<IdKey> {
    Uuid::try_parse_ascii(bytes).ok().map(|u| u.as_u128())
}

/// What the store says of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Passed on before, within the window: drop it.
    Duplicate,
    /// First time (or first since the window passed): pass it on; it is now remembered.
    New,
}

/// Why an id is forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgotten {
    /// The window passed.
    Expired,
    /// The partition held `max_ids_per_partition` ids: the oldest made room.
    Evicted,
}

/// A change for the changelog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Remember { key: IdKey, received_at: i64 },
    Forget { key: IdKey, why: Forgotten },
}

#[derive(Debug)]
enum Undo {
    StreamTime(i64),
    /// Popped from the front of the queue; `removed`: the id was removed from the map too.
    Popped {
        at: i64,
        key: IdKey,
        removed: bool,
    },
    /// Pushed to the back of the queue; the map's previous value.
    Pushed {
        key: IdKey,
        previous: Option<i64>,
    },
}

/// Most ids forgotten by one observation, so a jump in stream time spreads its tombstones
/// over the next records instead of one huge transaction.
const MAX_FORGOTTEN_PER_OBSERVATION: usize = 1000;

/// The ids of one input partition.
#[derive(Debug)]
pub struct PartitionStore {
    window_ms: i64,
    max_ids: usize,
    /// Remembered ids -> `received_at` of their first delivery.
    ids: HashMap<IdKey, i64>,
    /// (`received_at`, id) in arrival order. An entry whose time differs from the map's (or
    /// whose id the map lacks) is stale and skipped when popped.
    queue: VecDeque<(i64, IdKey)>,
    /// The largest `received_at` observed.
    stream_time: i64,
    undo: Vec<Undo>,
}

impl PartitionStore {
    pub fn new(config: &DedupConfig) -> Self {
        Self {
            window_ms: i64::try_from(config.window_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            max_ids: config.max_ids_per_partition,
            ids: HashMap::new(),
            queue: VecDeque::new(),
            stream_time: i64::MIN,
            undo: Vec::new(),
        }
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn contains(&self, event_id: &str) -> bool {
        self.ids.contains_key(&id_key(event_id))
    }

    /// The remembered ids' keys.
    pub fn keys(&self) -> impl Iterator<Item = IdKey> + '_ {
        self.ids.keys().copied()
    }

    /// Fold one changelog record into the store (rebuild, before any observation).
    pub fn restore(&mut self, key: IdKey, received_at: Option<i64>) {
        match received_at {
            Some(at) => {
                self.ids.insert(key, at);
                self.queue.push_back((at, key));
                self.stream_time = self.stream_time.max(at);
            }
            None => {
                self.ids.remove(&key);
            }
        }
    }

    /// Whether the record with `event_id` received at `received_at` was passed on before;
    /// remembers it if not. The changes to write to the changelog are appended to `changes`
    /// (expired and evicted ids too, also for a duplicate).
    pub fn observe(&mut self, event_id: &str, received_at: i64, changes: &mut Vec<Change>) -> Seen {
        if received_at > self.stream_time {
            self.undo.push(Undo::StreamTime(self.stream_time));
            self.stream_time = received_at;
        }
        self.expire(changes);
        let key = id_key(event_id);
        let previous = self.ids.get(&key).copied();
        if previous.is_some_and(|at| !self.expired(at)) {
            return Seen::Duplicate;
        }
        if previous.is_none() {
            while self.ids.len() >= self.max_ids && self.pop_front(Forgotten::Evicted, changes) {}
        }
        self.ids.insert(key, received_at);
        self.queue.push_back((received_at, key));
        self.undo.push(Undo::Pushed { key, previous });
        changes.push(Change::Remember { key, received_at });
        Seen::New
    }

    fn expired(&self, at: i64) -> bool {
        at <= self.stream_time.saturating_sub(self.window_ms)
    }

    fn expire(&mut self, changes: &mut Vec<Change>) {
        for _ in 0..MAX_FORGOTTEN_PER_OBSERVATION {
            match self.queue.front() {
                Some((at, _)) if self.expired(*at) => {
                    self.pop_front(Forgotten::Expired, changes);
                }
                _ => break,
            }
        }
    }

    /// Pop the queue's front; forget its id unless the entry is stale. Returns false when the
    /// queue is empty.
    fn pop_front(&mut self, why: Forgotten, changes: &mut Vec<Change>) -> bool {
        let Some((at, key)) = self.queue.pop_front() else {
            return false;
        };
        let current = self.ids.get(&key) == Some(&at);
        if current {
            self.ids.remove(&key);
            changes.push(Change::Forget { key, why });
        }
        self.undo.push(Undo::Popped {
            at,
            key,
            removed: current,
        });
        true
    }

    /// The open transaction committed: its changes are durable.
    pub fn commit(&mut self) {
        self.undo.clear();
    }

    /// The open transaction was aborted: undo its changes, newest first.
    pub fn abort(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::StreamTime(t) => self.stream_time = t,
                Undo::Popped { at, key, removed } => {
                    self.queue.push_front((at, key));
                    if removed {
                        self.ids.insert(key, at);
                    }
                }
                Undo::Pushed { key, previous } => {
                    self.queue.pop_back();
                    match previous {
                        Some(at) => self.ids.insert(key, at),
                        None => self.ids.remove(&key),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn store(window_secs: u64, max: usize) -> PartitionStore {
        PartitionStore::new(&DedupConfig {
            enabled: true,
            changelog: "c".into(),
            window_secs,
            max_ids_per_partition: max,
        })
    }

    fn id(n: u32) -> String {
        nectar_core::ids::derived_event_id("acme", "test", &n.to_string())
    }

    #[test]
    fn a_repeated_id_is_a_duplicate_within_the_window() {
        let mut s = store(3600, 100);
        let mut changes = Vec::new();
        assert_eq!(s.observe(&id(1), 0, &mut changes), Seen::New);
        assert_eq!(
            changes,
            [Change::Remember {
                key: id_key(&id(1)),
                received_at: 0
            }]
        );
        changes.clear();
        assert_eq!(s.observe(&id(1), HOUR - 1, &mut changes), Seen::Duplicate);
        assert!(changes.is_empty(), "a duplicate changes nothing");
        assert_eq!(s.observe(&id(2), 10, &mut changes), Seen::New);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn an_id_is_forgotten_with_a_tombstone_once_the_window_passed() {
        let mut s = store(3600, 100);
        let mut changes = Vec::new();
        s.observe(&id(1), 0, &mut changes);
        changes.clear();
        // Another id moves stream time past the window: id 1 is forgotten.
        s.observe(&id(2), HOUR, &mut changes);
        assert_eq!(
            changes[0],
            Change::Forget {
                key: id_key(&id(1)),
                why: Forgotten::Expired
            }
        );
        assert!(!s.contains(&id(1)));
        changes.clear();
        assert_eq!(s.observe(&id(1), HOUR + 1, &mut changes), Seen::New, "passed on again");
    }

    #[test]
    fn a_late_copy_after_the_window_is_new_even_before_the_sweep_reaches_it() {
        let mut s = store(3600, 100);
        let mut changes = Vec::new();
        let min = HOUR / 60;
        // Out of order: id 2 arrives with an earlier received_at than id 1.
        s.observe(&id(1), 600 * min, &mut changes);
        s.observe(&id(2), 570 * min, &mut changes);
        changes.clear();
        // At 10h45 id 2 (9h30) is past the window but queued behind id 1 (10h, not past it).
        assert_eq!(s.observe(&id(2), 645 * min, &mut changes), Seen::New);
        assert!(
            matches!(changes[..], [Change::Remember { received_at, .. }] if received_at == 645 * min),
            "{changes:?}"
        );
        changes.clear();
        // At 12h: id 1 and id 2's second delivery are forgotten; the stale entry of id 2's
        // first delivery is skipped, not forgotten twice.
        s.observe(&id(3), 720 * min, &mut changes);
        let forgotten: Vec<_> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Forget { key, .. } => Some(*key),
                Change::Remember { .. } => None,
            })
            .collect();
        assert_eq!(forgotten, [id_key(&id(1)), id_key(&id(2))]);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn the_oldest_ids_are_evicted_at_the_bound() {
        let mut s = store(3600, 2);
        let mut changes = Vec::new();
        s.observe(&id(1), 0, &mut changes);
        s.observe(&id(2), 1, &mut changes);
        changes.clear();
        s.observe(&id(3), 2, &mut changes);
        assert_eq!(
            changes,
            [
                Change::Forget {
                    key: id_key(&id(1)),
                    why: Forgotten::Evicted
                },
                Change::Remember {
                    key: id_key(&id(3)),
                    received_at: 2
                }
            ]
        );
        assert_eq!(s.len(), 2);
        assert!(!s.contains(&id(1)) && s.contains(&id(2)) && s.contains(&id(3)));
    }

    #[test]
    fn abort_restores_the_committed_store_exactly() {
        let mut s = store(3600, 3);
        let mut changes = Vec::new();
        for n in 1..=3 {
            s.observe(&id(n), i64::from(n), &mut changes);
        }
        s.commit();
        let before: Vec<_> = s.queue.iter().copied().collect();
        let ids_before = s.ids.clone();
        // Evicts 1, expires everything up to stream time - window, remembers 4 and 5.
        s.observe(&id(4), 4, &mut changes);
        s.observe(&id(5), HOUR + 3, &mut changes);
        assert!(!s.contains(&id(1)));
        s.abort();
        assert_eq!(s.queue.iter().copied().collect::<Vec<_>>(), before);
        assert_eq!(s.ids, ids_before);
        assert_eq!(s.stream_time, 3);
        assert_eq!(s.observe(&id(2), 5, &mut Vec::new()), Seen::Duplicate);
    }

    #[test]
    fn restore_replays_puts_and_tombstones() {
        let mut s = store(3600, 100);
        s.restore(id_key(&id(1)), Some(5));
        s.restore(id_key(&id(2)), Some(6));
        s.restore(id_key(&id(1)), None);
        assert!(!s.contains(&id(1)));
        assert!(s.contains(&id(2)));
        assert_eq!(s.observe(&id(2), 7, &mut Vec::new()), Seen::Duplicate);
        assert_eq!(s.observe(&id(1), 8, &mut Vec::new()), Seen::New);
    }

    #[test]
    fn keys_are_the_event_id_for_uuids_and_stable_for_other_ids() {
        let uuid = id(1);
        assert_eq!(key_bytes(id_key(&uuid)), uuid.as_bytes());
        assert_eq!(parse_key(&key_bytes(id_key(&uuid))), Some(id_key(&uuid)));
        assert_eq!(id_key("evt_1"), id_key("evt_1"));
        assert_ne!(id_key("evt_1"), id_key("evt_2"));
        assert_eq!(parse_key(&key_bytes(id_key("evt_1"))), Some(id_key("evt_1")));
    }

    #[test]
    fn validation_names_the_key() {
        let mut errors = Vec::new();
        DedupConfig {
            enabled: true,
            changelog: " ".into(),
            window_secs: 0,
            max_ids_per_partition: 0,
        }
        .validate(&mut errors);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("dedup.changelog"));
        assert!(errors[1].starts_with("dedup.window_secs"));
        assert!(errors[2].starts_with("dedup.max_ids_per_partition"));
    }
}
