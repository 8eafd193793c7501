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
//! Memory: an id is its UUID's 128 bits (another string is mapped into UUID space by a UUIDv5
//! of it) with its `received_at` in seconds, one hash map entry of 24 bytes.

use std::collections::HashMap;

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

/// An event id as the store holds it: the UUID's 128 bits, as two words (8-byte aligned, so a
/// map entry with its time takes 24 bytes, not the 32 a `u128` key would).
pub type IdKey = [u64; 2];

fn to_key(uuid: Uuid) -> IdKey {
    let bits = uuid.as_u128();
    [(bits >> 64) as u64, bits as u64]
}

/// The store key of `event_id`.
pub fn id_key(event_id: &str) -> IdKey {
    to_key(Uuid::parse_str(event_id).unwrap_or_else(|_| Uuid::new_v5(&FOREIGN_ID_NAMESPACE, event_id.as_bytes())))
}

/// The changelog record key of `key`: the event id itself for UUID ids.
pub fn key_bytes(key: IdKey) -> Vec<u8> {
    let bits = (u128::from(key[0]) << 64) | u128::from(key[1]);
    Uuid::from_u128(bits).hyphenated().to_string().into_bytes()
}

/// A changelog record key back to the store key.
pub fn parse_key(bytes: &[u8]) -> Option<IdKey> {
    Uuid::try_parse_ascii(bytes).ok().map(to_key)
}

/// The `received_at` of a changelog value written with the `io.nectar.SeenEvent` schema whose
/// registry id is `schema_id`, read straight from the Confluent wire format (magic byte, id,
/// then the record's one field, an Avro `long`: a zig-zag varint). `None` for any other value
/// (another schema id, a later version of the record), which the caller decodes through the
/// registry. A rebuild reads millions of these; this is what keeps it near Kafka's own speed.
pub fn decode_seen(bytes: &[u8], schema_id: u32) -> Option<i64> {
    let (id, body) = nectar_core::schema::split_frame(bytes).ok()?;
    if id != schema_id {
        return None;
    }
    let mut value: u64 = 0;
    for (i, byte) in body.iter().enumerate() {
        if i >= 10 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // The whole value is the one field: anything after it is another layout.
            if i + 1 != body.len() {
                return None;
            }
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

/// A changelog value for `received_at` with the `io.nectar.SeenEvent` schema whose registry id
/// is `schema_id`, in the Confluent wire format: what the registry codec would write, without
/// its lookup on every record (the inverse of [`decode_seen`]).
pub fn encode_seen(received_at: i64, schema_id: u32) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(15);
    bytes.push(0);
    bytes.extend_from_slice(&schema_id.to_be_bytes());
    let mut zigzag = ((received_at << 1) ^ (received_at >> 63)) as u64;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            bytes.push(byte);
            return bytes;
        }
        bytes.push(byte | 0x80);
    }
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
    LastSweep(i64),
    /// The map's previous value of `key` (`None`: it was absent).
    Set {
        key: IdKey,
        previous: Option<u32>,
    },
}

/// Seconds since the epoch, as the store keeps times (a second is fine for a window of
/// hours, and 4 bytes instead of 8 per id).
fn secs(millis: i64) -> u32 {
    u32::try_from(millis.div_euclid(1000)).unwrap_or(if millis < 0 { 0 } else { u32::MAX })
}

/// The ids of one input partition.
///
/// One hash map from id to the `received_at` (seconds) of its first delivery. Expired ids are
/// swept out whenever stream time has moved on by a sixty-fourth of the window (an id past
/// its window but not yet swept already counts as new); a full store first sweeps, then
/// forgets the oldest hundredth of its ids at once (found in one linear pass), so each
/// insertion costs O(1) amortised.
#[derive(Debug)]
pub struct PartitionStore {
    window_ms: i64,
    max_ids: usize,
    ids: HashMap<IdKey, u32>,
    /// The largest `received_at` observed (ms).
    stream_time: i64,
    /// Stream time of the last sweep.
    last_sweep: i64,
    undo: Vec<Undo>,
}

impl PartitionStore {
    pub fn new(config: &DedupConfig) -> Self {
        Self {
            window_ms: i64::try_from(config.window_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            max_ids: config.max_ids_per_partition,
            ids: HashMap::new(),
            stream_time: i64::MIN,
            last_sweep: i64::MIN,
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
                self.ids.insert(key, secs(at));
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
        if self.stream_time.saturating_sub(self.last_sweep) >= (self.window_ms / 64).max(1000) {
            self.sweep(changes);
        }
        let key = id_key(event_id);
        let previous = self.ids.get(&key).copied();
        if previous.is_some_and(|at| !self.expired(at)) {
            return Seen::Duplicate;
        }
        if previous.is_none() && self.ids.len() >= self.max_ids {
            self.sweep(changes);
            if self.ids.len() >= self.max_ids {
                self.evict_oldest(changes);
            }
        }
        self.ids.insert(key, secs(received_at));
        self.undo.push(Undo::Set { key, previous });
        changes.push(Change::Remember { key, received_at });
        Seen::New
    }

    fn expired(&self, at: u32) -> bool {
        i64::from(at) * 1000 <= self.stream_time.saturating_sub(self.window_ms)
    }

    /// Forget every id whose window has passed.
    fn sweep(&mut self, changes: &mut Vec<Change>) {
        self.undo.push(Undo::LastSweep(self.last_sweep));
        self.last_sweep = self.stream_time;
        let cutoff = self.stream_time.saturating_sub(self.window_ms);
        self.forget_where(|at| i64::from(at) * 1000 <= cutoff, Forgotten::Expired, changes);
    }

    /// Forget the oldest hundredth of the ids (at least one).
    fn evict_oldest(&mut self, changes: &mut Vec<Change>) {
        let mut times: Vec<u32> = self.ids.values().copied().collect();
        let n = (times.len() / 100).max(1) - 1;
        let (_, threshold, _) = times.select_nth_unstable(n);
        let threshold = *threshold;
        drop(times);
        self.forget_where(|at| at <= threshold, Forgotten::Evicted, changes);
    }

    fn forget_where(&mut self, old: impl Fn(u32) -> bool, why: Forgotten, changes: &mut Vec<Change>) {
        let undo = &mut self.undo;
        self.ids.retain(|key, at| {
            if old(*at) {
                undo.push(Undo::Set {
                    key: *key,
                    previous: Some(*at),
                });
                changes.push(Change::Forget { key: *key, why });
                false
            } else {
                true
            }
        });
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
                Undo::LastSweep(t) => self.last_sweep = t,
                Undo::Set { key, previous } => {
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
    fn a_copy_past_the_window_is_new_even_before_the_sweep_removes_the_first() {
        let mut s = store(3600, 100);
        let mut changes = Vec::new();
        let sec = 1000;
        s.observe(&id(1), 0, &mut changes);
        s.observe(&id(2), HOUR - 30 * sec, &mut changes);
        changes.clear();
        // 31 s after the last sweep (sweeps come every 56 s of a 1 h window): id 1 is past
        // its window but still held, and counts as new.
        assert_eq!(s.observe(&id(1), HOUR + sec, &mut changes), Seen::New);
        assert_eq!(
            changes,
            [Change::Remember {
                key: id_key(&id(1)),
                received_at: HOUR + sec
            }]
        );
        assert_eq!(s.observe(&id(1), HOUR + 2 * sec, &mut Vec::new()), Seen::Duplicate);
    }

    #[test]
    fn the_oldest_ids_are_evicted_at_the_bound() {
        let mut s = store(3600, 2);
        let mut changes = Vec::new();
        s.observe(&id(1), 0, &mut changes);
        s.observe(&id(2), 1000, &mut changes);
        changes.clear();
        s.observe(&id(3), 2000, &mut changes);
        assert_eq!(
            changes,
            [
                Change::Forget {
                    key: id_key(&id(1)),
                    why: Forgotten::Evicted
                },
                Change::Remember {
                    key: id_key(&id(3)),
                    received_at: 2000
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
            s.observe(&id(n), i64::from(n) * 1000, &mut changes);
        }
        s.commit();
        let ids_before = s.ids.clone();
        let (stream_before, sweep_before) = (s.stream_time, s.last_sweep);
        // Evicts 1, then sweeps 2 and 3 out when stream time passes their window.
        s.observe(&id(4), 4000, &mut changes);
        s.observe(&id(5), HOUR + 3500, &mut changes);
        assert!(!s.contains(&id(1)) && !s.contains(&id(2)) && s.contains(&id(5)));
        s.abort();
        assert_eq!(s.ids, ids_before);
        assert_eq!((s.stream_time, s.last_sweep), (stream_before, sweep_before));
        assert_eq!(s.observe(&id(2), 5000, &mut Vec::new()), Seen::Duplicate);
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

    // The datum helper is deprecated for a builder API; it is the plainest way to encode a
    // value with a schema in a test.
    #[test]
    #[allow(deprecated)]
    fn seen_values_are_read_and_written_as_the_avro_library_does() {
        use nectar_core::events::SeenEvent;
        let schema = nectar_core::schema::SEEN_EVENT.schema();
        for received_at in [0, 1, -1, 63, 64, -65, 1_795_000_000_123, i64::MAX, i64::MIN] {
            let value = apache_avro::to_value(SeenEvent { received_at }).expect("value");
            let body = apache_avro::to_avro_datum(&schema, value).expect("datum");
            let mut bytes = vec![0, 0, 0, 0, 42];
            bytes.extend(&body);
            assert_eq!(decode_seen(&bytes, 42), Some(received_at), "{received_at}");
            assert_eq!(encode_seen(received_at, 42), bytes, "{received_at}");
            assert_eq!(decode_seen(&bytes, 43), None, "another schema id");
            bytes.push(0);
            assert_eq!(decode_seen(&bytes, 42), None, "another layout");
        }
        assert_eq!(decode_seen(&[0, 0, 0, 0, 42, 0x80], 42), None, "truncated");
        assert_eq!(decode_seen(&[1, 0, 0, 0, 42, 2], 42), None, "no magic byte");
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
