//! The replicated map itself: an ordered map of live values with an expiry index, and the
//! deterministic rules by which commands change it.
//!
//! Time only enters through `clock_ms`, the highest leader stamp applied so far, so every replica
//! applying the same entries reaches the same map. Expired keys stay in the map until an
//! `Expire` entry removes them, but no command or read treats them as present.
//!
//! Each entry is one [`Record`] (a single exactly sized allocation, see `record.rs`); reads copy
//! the parts they need into a [`StoredValue`].

mod record;

use std::collections::BTreeSet;
use std::io::Read;
use std::ops::Bound;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use self::record::Record;
use crate::raft::codec;
use crate::types::{
    BatchOp, CasAction, Command, CommandResult, Expected, Proposal, PutOp, StoredValue,
};

#[derive(Debug, Clone, Default)]
pub struct KvMap {
    /// Ordered by key; looked up by `&[u8]` through `Record: Borrow<[u8]>`.
    entries: BTreeSet<Record>,
    /// (expiry, key) for every key with a TTL, so expiry finds its victims without a full scan.
    expiry: BTreeSet<(u64, Box<[u8]>)>,
    value_bytes: u64,
    /// Bytes of all keys, with `value_bytes` what sizes the snapshot image without a walk.
    key_bytes: u64,
    /// Highest leader stamp applied: the map's notion of "now".
    clock_ms: u64,
}

/// One page of a scan.
#[derive(Debug, Default)]
pub struct ScanPage {
    pub items: Vec<(String, StoredValue)>,
    /// First key after this page when more remain.
    pub next_start: Option<String>,
}

impl KvMap {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn value_bytes(&self) -> u64 {
        self.value_bytes
    }

    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// The key's value if it is live at `now_ms`.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<StoredValue> {
        self.live(key, now_ms).map(Record::to_stored)
    }

    fn live(&self, key: &str, now_ms: u64) -> Option<&Record> {
        self.entries
            .get(key.as_bytes())
            .filter(|r| r.is_live(now_ms))
    }

    /// The earliest expiry among the stored keys, if any has a TTL.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.expiry.first().map(|(at, _)| *at)
    }

    /// Whether some key has expired by `now_ms` and awaits an `Expire` entry.
    pub fn has_expired(&self, now_ms: u64) -> bool {
        self.expiry.first().is_some_and(|(at, _)| *at <= now_ms)
    }

    /// Live keys from `start` (inclusive) up to `end` (exclusive, `None` = no bound), at most
    /// `limit` of them.
    pub fn scan(&self, start: &str, end: Option<&str>, limit: usize, now_ms: u64) -> ScanPage {
        if end.is_some_and(|end| end <= start) {
            return ScanPage::default();
        }
        let upper = match end {
            Some(end) => Bound::Excluded(end.as_bytes()),
            None => Bound::Unbounded,
        };
        let mut page = ScanPage::default();
        let range = self
            .entries
            .range::<[u8], _>((Bound::Included(start.as_bytes()), upper))
            .filter(|r| r.is_live(now_ms));
        for record in range {
            if page.items.len() == limit {
                page.next_start = Some(record.key_string());
                break;
            }
            page.items.push((record.key_string(), record.to_stored()));
        }
        page
    }

    /// Stores `record`, replacing any entry with its key; returns whether a live one was replaced.
    fn insert(&mut self, record: Record) -> bool {
        let expiry = record
            .expires_at_ms()
            .map(|at| (at, Box::<[u8]>::from(record.key())));
        self.value_bytes += record.value().len() as u64;
        self.key_bytes += record.key().len() as u64;
        let old = self.entries.replace(record);
        // The old entry's index is dropped before the new one is added: both may be the same
        // (key, expiry) pair, e.g. a rewrite with the same absolute expiry.
        let existed = self.forget(old);
        if let Some(entry) = expiry {
            self.expiry.insert(entry);
        }
        existed
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        let old = self.entries.take(key);
        self.forget(old)
    }

    /// Drops a replaced or removed entry's accounting; returns whether it was live.
    fn forget(&mut self, old: Option<Record>) -> bool {
        let Some(old) = old else { return false };
        self.value_bytes -= old.value().len() as u64;
        self.key_bytes -= old.key().len() as u64;
        if let Some(at) = old.expires_at_ms() {
            self.expiry.remove(&(at, Box::from(old.key())));
        }
        old.is_live(self.clock_ms)
    }

    fn put(&mut self, op: PutOp, revision: u64) -> bool {
        self.insert(Record::new(
            op.key.as_bytes(),
            &op.value,
            revision,
            op.expires_at_ms,
        ))
    }

    /// Applies one entry's proposal at log index `revision`.
    pub fn apply(&mut self, revision: u64, proposal: Proposal) -> CommandResult {
        self.clock_ms = self.clock_ms.max(proposal.stamp_ms);
        self.apply_command(revision, proposal.command)
    }

    fn apply_command(&mut self, revision: u64, command: Command) -> CommandResult {
        match command {
            Command::Multi(commands) => CommandResult::Multi(
                commands
                    .into_iter()
                    .map(|command| self.apply_command(revision, command))
                    .collect(),
            ),
            Command::Put(op) => CommandResult::Write {
                revision,
                existed: self.put(op, revision),
            },
            Command::Delete { key } => CommandResult::Write {
                revision,
                existed: self.remove(key.as_bytes()),
            },
            Command::Batch(ops) => {
                let existed = ops
                    .into_iter()
                    .map(|op| match op {
                        BatchOp::Put(op) => self.put(op, revision),
                        BatchOp::Delete { key } => self.remove(key.as_bytes()),
                    })
                    .collect();
                CommandResult::Batch { revision, existed }
            }
            Command::CompareAndSwap {
                key,
                expected,
                action,
            } => self.compare_and_swap(revision, key, expected, action),
            Command::Expire => CommandResult::Expire {
                revision,
                removed: self.expire(),
            },
        }
    }

    fn compare_and_swap(
        &mut self,
        revision: u64,
        key: String,
        expected: Expected,
        action: CasAction,
    ) -> CommandResult {
        let current = self.live(&key, self.clock_ms);
        let holds = match (&expected, current) {
            (Expected::Revision(0), None) => true,
            (Expected::Revision(r), Some(v)) => v.revision() == *r,
            (Expected::Value(want), Some(v)) => v.value() == want.as_slice(),
            _ => false,
        };
        // Only a failed comparison reports the current value, so only then is it copied out.
        let current = if holds {
            None
        } else {
            current.map(Record::to_stored)
        };
        if holds {
            match action {
                CasAction::Put {
                    value,
                    expires_at_ms,
                } => {
                    let op = PutOp {
                        key,
                        value,
                        expires_at_ms,
                    };
                    self.put(op, revision);
                }
                CasAction::Delete => {
                    self.remove(key.as_bytes());
                }
            }
        }
        CommandResult::CompareAndSwap {
            revision,
            succeeded: holds,
            current,
        }
    }

    /// Removes every key expired by the map's clock; returns how many.
    fn expire(&mut self) -> u64 {
        let mut removed = 0;
        while self.has_expired(self.clock_ms) {
            let Some((_, key)) = self.expiry.pop_first() else {
                break;
            };
            self.remove(&key);
            removed += 1;
        }
        removed
    }

    /// The snapshot image: bincode of `clock_ms` then the entries as a map from `String` to
    /// [`StoredValue`], byte for byte what earlier versions wrote from a
    /// `BTreeMap<String, StoredValue>`, so nodes of either version read each other's snapshots.
    ///
    /// The buffer is sized exactly before encoding, so the image is one allocation with no
    /// growth copies (for a large map, one `mmap` that goes back to the OS when dropped).
    pub fn encode(&self) -> Result<Vec<u8>, bincode::Error> {
        let image = ImageOut {
            clock_ms: self.clock_ms,
            entries: EntriesOut(&self.entries),
        };
        let mut out = Vec::new();
        // Should the length be absurd, the reservation fails harmlessly and the buffer grows.
        let _ = out.try_reserve_exact(usize::try_from(self.image_len()).unwrap_or(0));
        codec::encode_into(&mut out, &image)?;
        Ok(out)
    }

    /// Length of [`KvMap::encode`]'s output, from counters rather than a walk of the map (a
    /// walk costs about a third of encoding, during which apply waits): clock and entry count,
    /// then per entry a u64 length before the key and the value, the revision, the `Option`
    /// tag, and 8 bytes for each expiry (the expiry index has one item per key with a TTL).
    fn image_len(&self) -> u64 {
        const PER_ENTRY: u64 = 8 + 8 + 8 + 1;
        8 + 8
            + self.len() as u64 * PER_ENTRY
            + self.key_bytes
            + self.value_bytes
            + 8 * self.expiry.len() as u64
    }

    /// Decodes an image made by [`KvMap::encode`] (or by earlier versions); trailing bytes are an
    /// error.
    pub fn decode(bytes: &[u8]) -> Result<Self, bincode::Error> {
        Ok(Self::from_image(codec::decode(bytes)?))
    }

    /// Decodes an image streamed from `reader`, without holding the encoded bytes in memory.
    /// Stops at the end of the image: checking that nothing follows is the caller's job.
    pub fn decode_from(reader: impl Read) -> Result<Self, bincode::Error> {
        Ok(Self::from_image(codec::decode_from(reader)?))
    }

    fn from_image(image: ImageIn) -> Self {
        // Collecting sorts (stably) and drops all but the last of equal keys, as inserting one by
        // one would; built from sorted input, the tree's leaves are full rather than half full.
        let entries: BTreeSet<Record> = image.entries.0.into_iter().collect();
        let mut map = KvMap {
            clock_ms: image.clock_ms,
            ..Default::default()
        };
        for record in &entries {
            map.value_bytes += record.value().len() as u64;
            map.key_bytes += record.key().len() as u64;
            if let Some(at) = record.expires_at_ms() {
                map.expiry.insert((at, Box::from(record.key())));
            }
        }
        map.entries = entries;
        map
    }
}

/// The encoding side of the snapshot image; field order and types mirror the `Image` struct that
/// older versions serialized (`clock_ms`, then `entries: BTreeMap<String, StoredValue>`).
#[derive(Serialize)]
struct ImageOut<'a> {
    clock_ms: u64,
    entries: EntriesOut<'a>,
}

struct EntriesOut<'a>(&'a BTreeSet<Record>);

/// Mirrors [`StoredValue`]'s serialized form without copying the value.
#[derive(Serialize)]
struct ValueOut<'a> {
    value: &'a serde_bytes::Bytes,
    revision: u64,
    expires_at_ms: Option<u64>,
}

impl Serialize for EntriesOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for record in self.0 {
            // Written as bytes: bincode encodes a `str` and a byte string alike (length, then
            // bytes), and keys enter the map as `String`s, so checking UTF-8 again would only
            // cost time (it was 40% of encoding) while apply waits. Decoding checks it.
            let key = serde_bytes::Bytes::new(record.key());
            let value = ValueOut {
                value: serde_bytes::Bytes::new(record.value()),
                revision: record.revision(),
                expires_at_ms: record.expires_at_ms(),
            };
            map.serialize_entry(key, &value)?;
        }
        map.end()
    }
}

/// The decoding side: reads the same bytes into records directly, never building the
/// `BTreeMap<String, StoredValue>` (a second full copy of the data) that older versions did.
#[derive(Deserialize)]
struct ImageIn {
    clock_ms: u64,
    entries: EntriesIn,
}

struct EntriesIn(Vec<Record>);

impl<'de> Deserialize<'de> for EntriesIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EntriesVisitor)
    }
}

struct EntriesVisitor;

/// Most entries pre-allocated from the length an image claims: a damaged length must not make
/// us reserve gigabytes before the first entry is read (16 MiB of record handles at most).
const MAX_PREALLOCATED_ENTRIES: usize = 1 << 20;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = EntriesIn;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map from key to stored value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<EntriesIn, A::Error> {
        let claimed = access.size_hint().unwrap_or(0);
        let mut records = Vec::with_capacity(claimed.min(MAX_PREALLOCATED_ENTRIES));
        while let Some((key, value)) = access.next_entry::<String, StoredValue>()? {
            records.push(Record::new(
                key.as_bytes(),
                &value.value,
                value.revision,
                value.expires_at_ms,
            ));
        }
        Ok(EntriesIn(records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stamp_ms: u64, command: Command) -> Proposal {
        Proposal { stamp_ms, command }
    }

    fn put(key: &str, value: &str, expires_at_ms: Option<u64>) -> Command {
        Command::Put(PutOp {
            key: key.into(),
            value: value.into(),
            expires_at_ms,
        })
    }

    #[test]
    fn expired_keys_are_absent_and_removed_by_expire() {
        let mut map = KvMap::default();
        map.apply(1, at(100, put("a", "1", Some(150))));
        map.apply(2, at(100, put("b", "2", None)));
        assert!(map.get("a", 149).is_some());
        assert!(map.get("a", 150).is_none(), "expired at its expiry instant");
        assert!(map.has_expired(150));
        assert_eq!(map.scan("", None, 10, 200).items.len(), 1);

        let result = map.apply(3, at(200, Command::Expire));
        assert_eq!(
            result,
            CommandResult::Expire {
                revision: 3,
                removed: 1
            }
        );
        assert_eq!(map.len(), 1);
        assert!(!map.has_expired(10_000));
    }

    #[test]
    fn cas_on_revision_value_and_absence() {
        let mut map = KvMap::default();
        let create = |expected| Command::CompareAndSwap {
            key: "k".into(),
            expected,
            action: CasAction::Put {
                value: b"v1".to_vec(),
                expires_at_ms: None,
            },
        };
        let r = map.apply(1, at(0, create(Expected::Revision(0))));
        assert!(matches!(
            r,
            CommandResult::CompareAndSwap {
                succeeded: true,
                ..
            }
        ));
        let r = map.apply(2, at(0, create(Expected::Revision(0))));
        let CommandResult::CompareAndSwap {
            succeeded, current, ..
        } = r
        else {
            panic!()
        };
        assert!(!succeeded);
        assert_eq!(current.unwrap().revision, 1);
        let r = map.apply(3, at(0, create(Expected::Value(b"v1".to_vec()))));
        assert!(matches!(
            r,
            CommandResult::CompareAndSwap {
                succeeded: true,
                ..
            }
        ));
        let delete = Command::CompareAndSwap {
            key: "k".into(),
            expected: Expected::Revision(3),
            action: CasAction::Delete,
        };
        assert!(matches!(
            map.apply(4, at(0, delete)),
            CommandResult::CompareAndSwap {
                succeeded: true,
                ..
            }
        ));
        assert!(map.is_empty());
    }

    #[test]
    fn snapshot_round_trip_keeps_values_expiry_and_bytes() {
        let mut map = KvMap::default();
        map.apply(1, at(5, put("a", "xyz", Some(50))));
        map.apply(2, at(6, put("b", "pq", None)));
        let copy = KvMap::decode(&map.encode().unwrap()).unwrap();
        assert_eq!(copy.value_bytes(), 5);
        assert_eq!(copy.clock_ms(), 6);
        assert!(copy.has_expired(50));
        assert_eq!(copy.get("b", 0).unwrap().revision, 2);
    }

    #[test]
    fn multi_applies_in_order_with_one_revision_and_a_result_each() {
        let mut map = KvMap::default();
        let multi = Command::Multi(vec![
            put("a", "1", None),
            Command::CompareAndSwap {
                key: "a".into(),
                expected: Expected::Value(b"1".to_vec()),
                action: CasAction::Delete,
            },
            put("b", "2", None),
        ]);
        let CommandResult::Multi(results) = map.apply(7, at(0, multi)) else {
            panic!("a multi entry has one result per command")
        };
        assert_eq!(results.len(), 3);
        assert!(matches!(
            results[1],
            CommandResult::CompareAndSwap {
                succeeded: true,
                revision: 7,
                ..
            }
        ));
        assert!(map.get("a", 0).is_none(), "the CAS saw the put before it");
        assert_eq!(map.get("b", 0).unwrap().revision, 7);
    }

    #[test]
    fn scan_pages_and_bounds() {
        let mut map = KvMap::default();
        for (i, key) in ["a", "b", "c", "d"].iter().enumerate() {
            map.apply(i as u64 + 1, at(0, put(key, "v", None)));
        }
        let page = map.scan("a", Some("d"), 2, 0);
        assert_eq!(
            page.items
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(page.next_start.as_deref(), Some("c"));
        let page = map.scan("c", Some("d"), 2, 0);
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.next_start, None);
        assert!(map.scan("d", Some("a"), 2, 0).items.is_empty());
    }

    /// What versions before the compact map serialized, kept here to prove the image bytes did
    /// not change.
    #[derive(Serialize, Deserialize)]
    struct OldImage {
        clock_ms: u64,
        entries: std::collections::BTreeMap<String, StoredValue>,
    }

    fn mixed_map() -> KvMap {
        let mut map = KvMap::default();
        map.apply(1, at(10, put("b", "two", Some(500))));
        map.apply(2, at(20, put("a", "", None)));
        map.apply(3, at(30, put("ключ", "значение", None)));
        map.apply(
            4,
            at(40, put(&"k".repeat(300), &"v".repeat(70_000), Some(9))),
        );
        map.apply(5, at(35, put("b", "2", None)));
        map
    }

    fn old_image(map: &KvMap) -> OldImage {
        let entries = map
            .scan("", None, usize::MAX, 0)
            .items
            .into_iter()
            .collect();
        OldImage {
            clock_ms: map.clock_ms(),
            entries,
        }
    }

    #[test]
    fn image_bytes_are_identical_to_the_old_btreemap_encoding() {
        for map in [KvMap::default(), mixed_map()] {
            // `scan` at time 0 sees every entry, live or not, so the old image holds them all.
            let old = codec::encode(&old_image(&map)).unwrap();
            let new = map.encode().unwrap();
            assert_eq!(new, old);
            assert_eq!(new.len(), new.capacity(), "the buffer was sized exactly");
        }
    }

    #[test]
    fn old_images_decode_into_the_same_map() {
        let map = mixed_map();
        let old = codec::encode(&old_image(&map)).unwrap();
        for copy in [
            KvMap::decode(&old).unwrap(),
            KvMap::decode_from(old.as_slice()).unwrap(),
        ] {
            assert_eq!(copy.len(), 4);
            assert_eq!(copy.value_bytes(), map.value_bytes());
            assert_eq!(copy.clock_ms(), 40);
            assert_eq!(copy.get("b", 0).unwrap().revision, 5);
            assert_eq!(copy.get("ключ", 0).unwrap().value, "значение".as_bytes());
            assert!(copy.has_expired(9));
            assert_eq!(copy.encode().unwrap(), old);
        }
    }

    #[test]
    fn decode_rejects_trailing_bytes_and_truncation() {
        let mut bytes = mixed_map().encode().unwrap();
        bytes.push(0);
        assert!(KvMap::decode(&bytes).is_err());
        bytes.truncate(bytes.len() - 10);
        assert!(KvMap::decode(&bytes).is_err());
        assert!(KvMap::decode_from(bytes.as_slice()).is_err());
    }

    #[test]
    fn a_huge_claimed_entry_count_fails_without_preallocating_it() {
        let mut bytes = 0u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(KvMap::decode(&bytes).is_err());
    }

    #[test]
    fn duplicate_keys_in_an_image_keep_the_last_like_the_old_decoder() {
        // A hand-made image whose map lists "k" twice, as a buggy peer might send.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&7u64.to_le_bytes());
        bytes.extend_from_slice(&2u64.to_le_bytes());
        for (value, revision) in [(b"first", 1u64), (b"later", 2)] {
            bytes.extend_from_slice(&1u64.to_le_bytes());
            bytes.push(b'k');
            bytes.extend_from_slice(&5u64.to_le_bytes());
            bytes.extend_from_slice(value);
            bytes.extend_from_slice(&revision.to_le_bytes());
            bytes.push(0);
        }
        let map = KvMap::decode(&bytes).unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(map.get("k", 0).unwrap().value, b"later");
        assert_eq!(map.value_bytes(), 5);
    }

    #[test]
    fn rewriting_a_key_with_the_same_expiry_keeps_it_expirable() {
        let mut map = KvMap::default();
        map.apply(1, at(100, put("k", "1", Some(150))));
        map.apply(2, at(100, put("k", "2", Some(150))));
        assert!(map.has_expired(150), "the expiry index still holds k");
        map.apply(3, at(150, Command::Expire));
        assert!(map.is_empty());
        assert!(!map.has_expired(u64::MAX));
    }

    #[test]
    fn replacing_and_deleting_keep_value_bytes_and_expiry_index_in_step() {
        let mut map = KvMap::default();
        map.apply(1, at(0, put("a", "1234", Some(100))));
        map.apply(2, at(0, put("a", "12", None)));
        assert_eq!(map.value_bytes(), 2);
        assert!(
            !map.has_expired(u64::MAX),
            "the old expiry went with the old value"
        );
        map.apply(3, at(0, Command::Delete { key: "a".into() }));
        assert_eq!(map.value_bytes(), 0);
        assert!(map.is_empty());
    }

    #[test]
    fn the_image_buffer_is_sized_exactly_after_every_kind_of_change() {
        let mut map = mixed_map();
        let exact = |map: &KvMap| {
            let image = map.encode().unwrap();
            assert_eq!(image.len(), image.capacity());
            assert_eq!(image.len() as u64, map.image_len());
        };
        exact(&map);
        map.apply(6, at(50, put("b", "longer value", Some(60))));
        exact(&map);
        map.apply(7, at(50, Command::Delete { key: "a".into() }));
        exact(&map);
        map.apply(8, at(100, Command::Expire));
        exact(&map);
        exact(&KvMap::decode(&map.encode().unwrap()).unwrap());
    }
}
