//! The replicated map itself: an ordered map of live values with an expiry index, and the
//! deterministic rules by which commands change it.
//!
//! Time only enters through `clock_ms`, the highest leader stamp applied so far, so every replica
//! applying the same entries reaches the same map. Expired keys stay in the map until an
//! `Expire` entry removes them, but no command or read treats them as present.
//!
//! Each entry is one [`Record`] (a single exactly sized allocation, see `record.rs`); reads copy
//! the parts they need into a [`StoredValue`].
//!
//! Beside the entries lives the idempotency table (see `idempotency.rs`), which answers retried
//! writes with their first result; it is replicated, and imaged, with the map.
//!
//! Beside them lives the lease table (see `leases.rs`): which leases exist and which keys each
//! holds, so that ending a lease deletes its keys in the entry that ends it.
//!
//! Every change is also recorded as a watch [`Event`] until the state machine takes them after
//! the entry (`take_events`): a put of any key, and the removal of a key that was there (live, or
//! expired but not yet removed, so that a watcher that saw it put also sees it go).

mod idempotency;
mod leases;
mod record;

use std::collections::BTreeSet;
use std::io::Read;
use std::ops::Bound;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use self::idempotency::IdempotencyStats;
use self::idempotency::{IdempotencyTable, Seen, TableIn};
pub use self::leases::{Lease, LeaseSummary};
use self::leases::{LeaseTable, LeasesImage};
use self::record::Record;
use crate::raft::codec;
use crate::types::{
    BatchOp, CasAction, Command, CommandResult, Expected, IdempotentCommand, Proposal, PutOp,
    StoredValue,
};
use crate::watch::{Event, EventKind};

/// First byte of the image's tail, which follows the entries when there is an idempotency table
/// or a lease table to store: the tail's layout version. An image without a tail ends right
/// after the entries. Layout 1 is the idempotency table alone; layout 2 is the idempotency
/// table then the lease table. Layout 1 is still written when there is no lease table, so that
/// such an image stays readable by versions that know only layout 1.
const TAIL_IDEMPOTENCY: u8 = 1;
const TAIL_IDEMPOTENCY_AND_LEASES: u8 = 2;

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
    /// Results of writes that carried an idempotency key, by key.
    idempotency: IdempotencyTable,
    /// Leases and the keys attached to them.
    leases: LeaseTable,
    /// Changes made since the last `take_events`.
    events: Vec<Event>,
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

    pub fn idempotency_stats(&self) -> IdempotencyStats {
        self.idempotency.stats()
    }

    /// Takes over `earlier`'s idempotency counters (this map replaces it, e.g. on a snapshot
    /// install, and the counters describe the process, not the image).
    pub fn keep_counters_of(&mut self, earlier: &KvMap) {
        self.idempotency.keep_counters_of(&earlier.idempotency);
    }

    /// The changes made since the last call, in the order they were made.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
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

    pub fn lease(&self, id: u64) -> Option<&Lease> {
        self.leases.get(id)
    }

    pub fn lease_count(&self) -> u64 {
        self.leases.len() as u64
    }

    /// Every lease, in id order.
    pub fn leases(&self) -> Vec<LeaseSummary> {
        self.leases.list()
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
        let mut event = Event {
            kind: EventKind::Put,
            key: record.key_string(),
            value: record.value().to_vec(),
            prev: None,
        };
        let old = self.entries.replace(record);
        event.prev = old
            .as_ref()
            .filter(|r| r.is_live(self.clock_ms))
            .map(Record::to_stored);
        self.events.push(event);
        // The old entry's index is dropped before the new one is added: both may be the same
        // (key, expiry) pair, e.g. a rewrite with the same absolute expiry.
        let existed = self.forget(old);
        if let Some(entry) = expiry {
            self.expiry.insert(entry);
        }
        existed
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        self.leases.detach(key);
        let old = self.entries.take(key);
        if let Some(old) = &old {
            self.events.push(Event {
                kind: EventKind::Delete,
                key: old.key_string(),
                value: Vec::new(),
                prev: Some(old.to_stored()),
            });
        }
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

    /// Writes a key, attached to `lease` (which the caller checked exists) or to none.
    fn put(&mut self, op: PutOp, revision: u64, lease: Option<u64>) -> bool {
        self.leases.attach(op.key.as_bytes(), lease);
        self.insert(Record::new(
            op.key.as_bytes(),
            &op.value,
            revision,
            op.expires_at_ms,
        ))
    }

    /// Ends a lease and removes its keys; `None` when it does not exist.
    fn revoke(&mut self, id: u64) -> Option<u64> {
        let lease = self.leases.end(id)?;
        Some(lease.keys.iter().filter(|key| self.remove(key)).count() as u64)
    }

    /// Applies one entry's proposal at log index `revision`. Idempotency keys whose window
    /// ended by the (advanced) clock are forgotten first, whatever the command: the table then
    /// holds only live windows, and is the same on every replica at every index.
    pub fn apply(&mut self, revision: u64, proposal: Proposal) -> CommandResult {
        self.clock_ms = self.clock_ms.max(proposal.stamp_ms);
        self.idempotency.expire(self.clock_ms);
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
                existed: self.put(op, revision, None),
            },
            Command::LeasedPut { op, lease } => {
                if !self.leases.contains(lease) {
                    return CommandResult::LeaseNotFound {
                        revision,
                        id: lease,
                    };
                }
                CommandResult::Write {
                    revision,
                    existed: self.put(op, revision, Some(lease)),
                }
            }
            Command::LeaseGrant { ttl_ms } => CommandResult::LeaseGranted {
                revision,
                id: self.leases.grant(ttl_ms),
                ttl_ms,
            },
            Command::LeaseRevoke { id } => match self.revoke(id) {
                Some(deleted) => CommandResult::LeaseRevoked { revision, deleted },
                None => CommandResult::LeaseNotFound { revision, id },
            },
            Command::Delete { key } => CommandResult::Write {
                revision,
                existed: self.remove(key.as_bytes()),
            },
            Command::Batch(ops) => {
                let missing = ops.iter().find_map(|op| match op {
                    BatchOp::LeasedPut { lease, .. } if !self.leases.contains(*lease) => {
                        Some(*lease)
                    }
                    _ => None,
                });
                if let Some(id) = missing {
                    return CommandResult::LeaseNotFound { revision, id };
                }
                let existed = ops
                    .into_iter()
                    .map(|op| match op {
                        BatchOp::Put(op) => self.put(op, revision, None),
                        BatchOp::LeasedPut { op, lease } => self.put(op, revision, Some(lease)),
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
            Command::Idempotent(command) => self.apply_idempotent(revision, command),
        }
    }

    /// Applies the inner command unless its key is in the table: a retry of the same request
    /// gets the first attempt's result and changes nothing (so it cannot overwrite a later
    /// write, nor fail a compare-and-swap that its first attempt made succeed); another request
    /// under the key is refused and changes nothing.
    fn apply_idempotent(&mut self, revision: u64, command: IdempotentCommand) -> CommandResult {
        let IdempotentCommand {
            key,
            fingerprint,
            expires_at_ms,
            capacity,
            command,
        } = command;
        match self.idempotency.check(&key, fingerprint) {
            Seen::Replay(first) => CommandResult::Replayed(Box::new(first)),
            Seen::Conflict => CommandResult::IdempotencyConflict { revision },
            Seen::New => {
                let result = self.apply_command(revision, *command);
                self.idempotency.record(
                    key,
                    fingerprint,
                    expires_at_ms,
                    result.clone(),
                    capacity,
                    self.clock_ms,
                );
                result
            }
        }
    }

    fn compare_and_swap(
        &mut self,
        revision: u64,
        key: String,
        expected: Expected,
        action: CasAction,
    ) -> CommandResult {
        if let CasAction::LeasedPut { lease, .. } = action {
            if !self.leases.contains(lease) {
                return CommandResult::LeaseNotFound {
                    revision,
                    id: lease,
                };
            }
        }
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
                    self.put(op, revision, None);
                }
                CasAction::LeasedPut {
                    value,
                    expires_at_ms,
                    lease,
                } => {
                    let op = PutOp {
                        key,
                        value,
                        expires_at_ms,
                    };
                    self.put(op, revision, Some(lease));
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
    /// `BTreeMap<String, StoredValue>`; then, only while the idempotency table or the lease table
    /// is not empty, a tail: its layout (one byte), the idempotency table's slots, oldest first,
    /// and with layout 2 the lease table. A map without idempotency keys or leases thus has the
    /// image earlier versions wrote, and their images (which end after the entries, or after a
    /// layout 1 tail) decode with empty tables. An image with a tail a version does not know is
    /// refused by it (bytes after what it reads are an error) rather than misread.
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
        if !self.leases.is_empty() {
            out.push(TAIL_IDEMPOTENCY_AND_LEASES);
            codec::encode_into(&mut out, &self.idempotency.image())?;
            codec::encode_into(&mut out, &self.leases.image())?;
        } else if !self.idempotency.is_empty() {
            out.push(TAIL_IDEMPOTENCY);
            codec::encode_into(&mut out, &self.idempotency.image())?;
        }
        Ok(out)
    }

    /// Length of [`KvMap::encode`]'s output, from counters rather than a walk of the map (a
    /// walk costs about a third of encoding, during which apply waits): clock and entry count,
    /// then per entry a u64 length before the key and the value, the revision, the `Option`
    /// tag, and 8 bytes for each expiry (the expiry index has one item per key with a TTL);
    /// then the tail, if any (the table keeps its encoded size).
    fn image_len(&self) -> u64 {
        const PER_ENTRY: u64 = 8 + 8 + 8 + 1;
        let tail = if !self.leases.is_empty() {
            1 + self.idempotency.image_len() + self.leases.image_len()
        } else if !self.idempotency.is_empty() {
            1 + self.idempotency.image_len()
        } else {
            0
        };
        8 + 8
            + self.len() as u64 * PER_ENTRY
            + self.key_bytes
            + self.value_bytes
            + 8 * self.expiry.len() as u64
            + tail
    }

    /// Decodes an image made by [`KvMap::encode`] (or by earlier versions); trailing bytes are an
    /// error.
    pub fn decode(bytes: &[u8]) -> Result<Self, bincode::Error> {
        let (image, tail) = codec::decode_prefix(bytes)?;
        let tail = match tail.split_first() {
            None => Tail::default(),
            Some((&TAIL_IDEMPOTENCY, table)) => Tail {
                idempotency: Some(codec::decode(table)?),
                leases: None,
            },
            Some((&TAIL_IDEMPOTENCY_AND_LEASES, tables)) => {
                let (idempotency, leases) = codec::decode_prefix(tables)?;
                Tail {
                    idempotency: Some(idempotency),
                    leases: Some(codec::decode(leases)?),
                }
            }
            Some((&version, _)) => return Err(unknown_tail(version)),
        };
        Ok(Self::from_image(image, tail))
    }

    /// Decodes an image streamed from `reader`, without holding the encoded bytes in memory.
    /// An image without a tail is recognised by the end of the input right after its entries,
    /// so `reader` must end where the image does (a snapshot's chunk reader does); a tail is
    /// read up to its end, and checking that nothing follows it is the caller's job.
    pub fn decode_from(mut reader: impl Read) -> Result<Self, bincode::Error> {
        let image = codec::decode_from(&mut reader)?;
        let tail = match next_byte(&mut reader)? {
            None => Tail::default(),
            Some(TAIL_IDEMPOTENCY) => Tail {
                idempotency: Some(codec::decode_from(&mut reader)?),
                leases: None,
            },
            Some(TAIL_IDEMPOTENCY_AND_LEASES) => Tail {
                idempotency: Some(codec::decode_from(&mut reader)?),
                leases: Some(codec::decode_from(&mut reader)?),
            },
            Some(version) => return Err(unknown_tail(version)),
        };
        Ok(Self::from_image(image, tail))
    }

    fn from_image(image: ImageIn, tail: Tail) -> Self {
        // Collecting sorts (stably) and drops all but the last of equal keys, as inserting one by
        // one would; built from sorted input, the tree's leaves are full rather than half full.
        let entries: BTreeSet<Record> = image.entries.0.into_iter().collect();
        let mut map = KvMap {
            clock_ms: image.clock_ms,
            idempotency: tail
                .idempotency
                .map(IdempotencyTable::from_image)
                .unwrap_or_default(),
            ..Default::default()
        };
        for record in &entries {
            map.value_bytes += record.value().len() as u64;
            map.key_bytes += record.key().len() as u64;
            if let Some(at) = record.expires_at_ms() {
                map.expiry.insert((at, Box::from(record.key())));
            }
        }
        if let Some(leases) = tail.leases {
            map.leases = LeaseTable::from_image(leases, |key| entries.contains(key));
        }
        map.entries = entries;
        map
    }
}

/// What an image's tail holds (each part absent in images without it).
#[derive(Default)]
struct Tail {
    idempotency: Option<TableIn>,
    leases: Option<LeasesImage>,
}

fn unknown_tail(version: u8) -> bincode::Error {
    Box::new(bincode::ErrorKind::Custom(format!(
        "the image's tail has layout {version}; this version reads layouts \
         {TAIL_IDEMPOTENCY} and {TAIL_IDEMPOTENCY_AND_LEASES}"
    )))
}

/// The next byte of `reader`, or `None` at the end of its input.
fn next_byte(reader: &mut impl Read) -> Result<Option<u8>, bincode::Error> {
    let mut byte = [0u8];
    loop {
        match reader.read(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(byte[0])),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
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

    fn idem(key: &str, fingerprint: u64, expires_at_ms: u64, command: Command) -> Command {
        idem_capped(key, fingerprint, expires_at_ms, 100, command)
    }

    fn idem_capped(
        key: &str,
        fingerprint: u64,
        expires_at_ms: u64,
        capacity: u64,
        command: Command,
    ) -> Command {
        Command::Idempotent(IdempotentCommand {
            key: key.into(),
            fingerprint,
            expires_at_ms,
            capacity,
            command: Box::new(command),
        })
    }

    fn written(revision: u64, existed: bool) -> CommandResult {
        CommandResult::Write { revision, existed }
    }

    fn replayed(first: CommandResult) -> CommandResult {
        CommandResult::Replayed(Box::new(first))
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
            assert_eq!(copy.idempotency_stats(), IdempotencyStats::default());
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

    #[test]
    fn a_retried_put_applies_once_and_gets_the_first_result() {
        let mut map = KvMap::default();
        let request = || idem("req-1", 11, 10_000, put("k", "v", None));
        let first = map.apply(1, at(100, request()));
        assert_eq!(first, written(1, false));
        let retry = map.apply(2, at(200, request()));
        assert_eq!(retry, replayed(first));
        assert_eq!(retry.revision(), 1, "the retry reports the first revision");
        assert_eq!(map.get("k", 0).unwrap().revision, 1, "one effect");
        let stats = map.idempotency_stats();
        assert_eq!((stats.keys, stats.hits, stats.conflicts), (1, 1, 0));
    }

    #[test]
    fn a_retry_does_not_overwrite_a_later_write() {
        let mut map = KvMap::default();
        let request = || idem("req-1", 11, 10_000, put("k", "mine", None));
        map.apply(1, at(100, request()));
        map.apply(2, at(100, put("k", "theirs", None)));
        assert_eq!(
            map.apply(3, at(100, request())),
            replayed(written(1, false))
        );
        let value = map.get("k", 0).unwrap();
        assert_eq!(
            (value.value.as_slice(), value.revision),
            (&b"theirs"[..], 2)
        );
    }

    #[test]
    fn the_same_key_for_another_request_is_refused_and_changes_nothing() {
        let mut map = KvMap::default();
        map.apply(1, at(100, idem("req-1", 11, 10_000, put("k", "v1", None))));
        let image = map.encode().unwrap();
        let other = map.apply(2, at(100, idem("req-1", 12, 10_000, put("k", "v2", None))));
        assert_eq!(other, CommandResult::IdempotencyConflict { revision: 2 });
        assert_eq!(
            other.revision(),
            2,
            "a conflict reports its own entry's index"
        );
        assert_eq!(map.get("k", 0).unwrap().value, b"v1");
        assert_eq!(
            map.encode().unwrap(),
            image,
            "neither map nor table changed"
        );
        assert_eq!(map.idempotency_stats().conflicts, 1);
    }

    #[test]
    fn windows_end_by_the_logs_clock_never_the_local_one() {
        // A window that ended in 1970 by any real clock: still open by the log's clock.
        let mut map = KvMap::default();
        let request = || idem("req-1", 11, 1_000, put("k", "v", None));
        map.apply(1, at(100, request()));
        assert_eq!(
            map.apply(2, at(999, request())),
            replayed(written(1, false))
        );
        // The stamp reaches the window's end: the key is forgotten and the retry is new.
        assert_eq!(map.apply(3, at(1_000, request())), written(3, true));
        assert_eq!(map.get("k", 0).unwrap().revision, 3);

        // A window that ends long after any real clock: closed once the log's clock passes it.
        let far = 4_000_000_000_000_000;
        let mut map = KvMap::default();
        let request = || idem("req-2", 22, far, put("k", "v", None));
        map.apply(1, at(100, request()));
        assert_eq!(
            map.apply(2, at(far - 1, request())),
            replayed(written(1, false))
        );
        assert_eq!(map.apply(3, at(far, request())), written(3, true));
    }

    #[test]
    fn ended_windows_are_forgotten_by_any_entry_and_the_old_image_returns() {
        let mut map = KvMap::default();
        map.apply(1, at(100, idem("req-1", 11, 500, put("k", "v", None))));
        assert_eq!(map.idempotency_stats().keys, 1);
        map.apply(2, at(500, put("other", "v", None)));
        assert_eq!(map.idempotency_stats().keys, 0);
        let old = codec::encode(&old_image(&map)).unwrap();
        assert_eq!(map.encode().unwrap(), old);
    }

    #[test]
    fn beyond_capacity_the_oldest_key_is_evicted_and_applies_again() {
        let mut map = KvMap::default();
        let request = |n: u64| idem_capped(&format!("req-{n}"), n, 10_000, 2, put("k", "v", None));
        for n in 1..=3 {
            map.apply(n, at(100, request(n)));
        }
        let stats = map.idempotency_stats();
        assert_eq!((stats.keys, stats.evictions), (2, 1));
        assert_eq!(
            map.apply(4, at(100, request(3))),
            replayed(written(3, true))
        );
        assert_eq!(
            map.apply(5, at(100, request(1))),
            written(5, true),
            "req-1 was evicted"
        );
        assert_eq!(map.get("k", 0).unwrap().revision, 5);
        // Re-inserting req-1 evicted req-2, now the oldest.
        assert_eq!(map.idempotency_stats().evictions, 2);
        assert_eq!(map.apply(6, at(100, request(2))), written(6, true));
    }

    #[test]
    fn idempotent_commands_in_a_group_are_looked_up_one_by_one() {
        let mut map = KvMap::default();
        let a = || idem("req-a", 1, 10_000, put("a", "1", None));
        let b = |fingerprint| idem("req-b", fingerprint, 10_000, put("b", "1", None));
        let c = || idem("req-c", 3, 10_000, put("c", "1", None));
        let first = map.apply(
            1,
            at(100, Command::Multi(vec![a(), put("x", "1", None), b(2)])),
        );
        let CommandResult::Multi(first) = first else {
            panic!("a multi entry has one result per command")
        };
        assert_eq!(
            first,
            [written(1, false), written(1, false), written(1, false)]
        );
        let second = map.apply(2, at(100, Command::Multi(vec![a(), b(9), c(), c()])));
        assert_eq!(
            second,
            CommandResult::Multi(vec![
                replayed(written(1, false)),
                CommandResult::IdempotencyConflict { revision: 2 },
                written(2, false),
                replayed(written(2, false)),
            ]),
            "the second attempt in the same entry is a retry of the first"
        );
        assert_eq!(second.revision(), 2);
        assert_eq!(map.get("a", 0).unwrap().revision, 1);
        assert_eq!(map.get("b", 0).unwrap().revision, 1);
    }

    #[test]
    fn a_retried_cas_that_succeeded_succeeds_again() {
        let mut map = KvMap::default();
        let create = || {
            idem(
                "req-1",
                11,
                10_000,
                Command::CompareAndSwap {
                    key: "k".into(),
                    expected: Expected::Revision(0),
                    action: CasAction::Put {
                        value: b"v".to_vec(),
                        expires_at_ms: None,
                    },
                },
            )
        };
        let first = map.apply(1, at(100, create()));
        let succeeded = CommandResult::CompareAndSwap {
            revision: 1,
            succeeded: true,
            current: None,
        };
        assert_eq!(first, succeeded);
        // Applied afresh, the condition (no such key) would now fail.
        assert_eq!(map.apply(2, at(100, create())), replayed(succeeded));
        assert_eq!(map.get("k", 0).unwrap().revision, 1);
    }

    /// A map whose table holds every kind of stored result, a key listed before a later one
    /// with a shorter window, and one slot already evicted.
    fn map_with_table() -> KvMap {
        let mut map = mixed_map();
        let cas_fails = Command::CompareAndSwap {
            key: "b".into(),
            expected: Expected::Value(b"no".to_vec()),
            action: CasAction::Delete,
        };
        let batch = Command::Batch(vec![
            BatchOp::Put(PutOp {
                key: "c".into(),
                value: b"3".to_vec(),
                expires_at_ms: Some(900),
            }),
            BatchOp::Delete { key: "a".into() },
        ]);
        map.apply(
            6,
            at(50, idem_capped("evicted", 1, 800, 4, put("e", "1", None))),
        );
        map.apply(
            7,
            at(50, idem_capped("long", 2, 800, 4, put("l", "1", None))),
        );
        map.apply(8, at(50, idem_capped("cas", 3, 700, 4, cas_fails)));
        map.apply(9, at(50, idem_capped("batch", 4, 600, 4, batch)));
        map.apply(
            10,
            at(
                50,
                idem_capped("del", 5, 650, 4, Command::Delete { key: "e".into() }),
            ),
        );
        assert_eq!(map.idempotency_stats().evictions, 1);
        map
    }

    #[test]
    fn the_table_round_trips_through_both_decoders_in_eviction_order() {
        let map = map_with_table();
        let image = map.encode().unwrap();
        assert_eq!(image.len() as u64, map.image_len());
        assert_eq!(
            image.len(),
            image.capacity(),
            "the buffer was sized exactly"
        );
        for mut copy in [
            KvMap::decode(&image).unwrap(),
            KvMap::decode_from(image.as_slice()).unwrap(),
        ] {
            assert_eq!(copy.encode().unwrap(), image);
            let stats = copy.idempotency_stats();
            assert_eq!(
                (stats.keys, stats.bytes),
                (4, map.idempotency_stats().bytes)
            );
            assert_eq!(stats.evictions, 0, "counters are not in the image");
            let CommandResult::Replayed(cas) =
                copy.apply(11, at(50, idem_capped("cas", 3, 700, 4, Command::Expire)))
            else {
                panic!("the failed CAS is replayed")
            };
            let CommandResult::CompareAndSwap {
                revision: 8,
                succeeded: false,
                current: Some(current),
            } = *cas
            else {
                panic!("the first attempt's result, {cas:?}")
            };
            assert_eq!(current.value, b"2", "with the value it saw then");
            // One more key evicts the oldest one left, "long", as in the original.
            copy.apply(
                12,
                at(50, idem_capped("new", 6, 800, 4, put("n", "1", None))),
            );
            let retry = copy.apply(
                13,
                at(50, idem_capped("long", 2, 800, 4, put("l", "1", None))),
            );
            assert_eq!(retry, written(13, true));
        }
    }

    #[test]
    fn a_restored_table_evolves_like_the_original() {
        let later: Vec<(u64, Proposal)> = vec![
            (11, at(60, idem_capped("x", 7, 900, 3, put("x", "1", None)))),
            (
                12,
                at(610, idem_capped("long", 2, 800, 3, put("l", "2", None))),
            ),
            (13, at(650, idem_capped("cas", 3, 700, 3, Command::Expire))),
            (14, at(700, put("y", "1", None))),
        ];
        let mut original = map_with_table();
        let mut restored = KvMap::decode(&original.encode().unwrap()).unwrap();
        for (index, proposal) in later {
            let a = original.apply(index, proposal.clone());
            let b = restored.apply(index, proposal);
            assert_eq!(a, b, "entry {index}");
            assert_eq!(original.encode().unwrap(), restored.encode().unwrap());
        }
    }

    #[test]
    fn the_image_stays_exactly_sized_as_the_table_changes() {
        let mut map = map_with_table();
        let exact = |map: &KvMap| {
            let image = map.encode().unwrap();
            assert_eq!(image.len(), image.capacity());
            assert_eq!(image.len() as u64, map.image_len());
        };
        exact(&map);
        map.apply(11, at(600, Command::Expire));
        assert_eq!(map.idempotency_stats().keys, 3, "batch's window ended");
        exact(&map);
        map.apply(12, at(799, put("z", "1", None)));
        exact(&map);
        map.apply(13, at(800, put("z", "2", None)));
        assert_eq!(map.idempotency_stats().keys, 0);
        exact(&map);
    }

    #[test]
    fn a_damaged_tail_is_an_error() {
        let image = map_with_table().encode().unwrap();
        let base = codec::encode(&old_image(&map_with_table())).unwrap().len();
        assert_eq!(image[base], TAIL_IDEMPOTENCY);
        let mut newer = image.clone();
        newer[base] = TAIL_IDEMPOTENCY_AND_LEASES + 1;
        assert!(KvMap::decode(&newer).is_err());
        assert!(KvMap::decode_from(newer.as_slice()).is_err());
        let mut trailing = image.clone();
        trailing.push(0);
        assert!(KvMap::decode(&trailing).is_err());
        let truncated = &image[..image.len() - 3];
        assert!(KvMap::decode(truncated).is_err());
        assert!(KvMap::decode_from(truncated).is_err());
    }

    fn leased(key: &str, value: &str, lease: u64) -> Command {
        Command::LeasedPut {
            op: PutOp {
                key: key.into(),
                value: value.into(),
                expires_at_ms: None,
            },
            lease,
        }
    }

    fn granted(result: CommandResult) -> u64 {
        match result {
            CommandResult::LeaseGranted { id, .. } => id,
            other => panic!("not a grant: {other:?}"),
        }
    }

    #[test]
    fn ending_a_lease_deletes_its_keys_in_its_own_entry_and_nothing_else() {
        let mut map = KvMap::default();
        let a = granted(map.apply(1, at(0, Command::LeaseGrant { ttl_ms: 5000 })));
        let b = granted(map.apply(2, at(0, Command::LeaseGrant { ttl_ms: 5000 })));
        assert_ne!(a, b);
        map.apply(3, at(0, leased("x", "1", a)));
        let batch = Command::Batch(vec![
            BatchOp::LeasedPut {
                op: PutOp {
                    key: "y".into(),
                    value: b"2".to_vec(),
                    expires_at_ms: None,
                },
                lease: a,
            },
            BatchOp::Put(PutOp {
                key: "plain".into(),
                value: b"3".to_vec(),
                expires_at_ms: None,
            }),
        ]);
        map.apply(4, at(0, batch));
        // Moved to lease b, then detached by a plain put: neither goes with lease a.
        map.apply(5, at(0, leased("moved", "m", a)));
        map.apply(6, at(0, leased("moved", "m", b)));
        map.apply(7, at(0, leased("detached", "d", a)));
        map.apply(8, at(0, put("detached", "d2", None)));
        map.take_events();
        assert_eq!(
            map.apply(9, at(0, Command::LeaseRevoke { id: a })),
            CommandResult::LeaseRevoked {
                revision: 9,
                deleted: 2
            }
        );
        let events = map.take_events();
        let deleted: Vec<_> = events.iter().map(|e| (e.kind, e.key.as_str())).collect();
        assert_eq!(
            deleted,
            [(EventKind::Delete, "x"), (EventKind::Delete, "y")]
        );
        for key in ["plain", "moved", "detached"] {
            assert!(map.get(key, 0).is_some(), "{key} must stay");
        }
        assert!(map.lease(a).is_none());
        assert_eq!(
            map.apply(10, at(0, Command::LeaseRevoke { id: a })),
            CommandResult::LeaseNotFound {
                revision: 10,
                id: a
            }
        );
        assert_eq!(map.lease(b).map(|l| l.keys.len()), Some(1));
    }

    #[test]
    fn a_write_naming_a_missing_lease_changes_nothing() {
        let mut map = KvMap::default();
        let before = map.encode().unwrap();
        assert_eq!(
            map.apply(1, at(0, leased("k", "v", 42))),
            CommandResult::LeaseNotFound {
                revision: 1,
                id: 42
            }
        );
        let batch = Command::Batch(vec![
            BatchOp::Put(PutOp {
                key: "a".into(),
                value: b"1".to_vec(),
                expires_at_ms: None,
            }),
            BatchOp::LeasedPut {
                op: PutOp {
                    key: "b".into(),
                    value: b"2".to_vec(),
                    expires_at_ms: None,
                },
                lease: 42,
            },
        ]);
        assert_eq!(
            map.apply(2, at(0, batch)),
            CommandResult::LeaseNotFound {
                revision: 2,
                id: 42
            }
        );
        let cas = Command::CompareAndSwap {
            key: "k".into(),
            expected: Expected::Revision(0),
            action: CasAction::LeasedPut {
                value: b"v".to_vec(),
                expires_at_ms: None,
                lease: 42,
            },
        };
        assert_eq!(
            map.apply(3, at(0, cas)),
            CommandResult::LeaseNotFound {
                revision: 3,
                id: 42
            }
        );
        assert!(map.take_events().is_empty());
        assert_eq!(map.encode().unwrap(), before);
    }

    #[test]
    fn leases_and_their_keys_survive_the_image_and_ids_are_not_reused() {
        let mut map = KvMap::default();
        let a = granted(map.apply(1, at(0, Command::LeaseGrant { ttl_ms: 3000 })));
        let gone = granted(map.apply(2, at(0, Command::LeaseGrant { ttl_ms: 3000 })));
        map.apply(3, at(0, leased("k1", "v", a)));
        map.apply(4, at(0, leased("k2", "v", a)));
        map.apply(5, at(0, Command::LeaseRevoke { id: gone }));
        let image = map.encode().unwrap();
        assert_eq!(image.len() as u64, map.image_len());
        for mut restored in [
            KvMap::decode(&image).unwrap(),
            KvMap::decode_from(image.as_slice()).unwrap(),
        ] {
            assert_eq!(restored.leases(), map.leases());
            let next = granted(restored.apply(6, at(0, Command::LeaseGrant { ttl_ms: 3000 })));
            assert!(next > gone, "id {next} reused");
            restored.apply(7, at(0, Command::LeaseRevoke { id: a }));
            assert!(restored.get("k1", 0).is_none() && restored.get("k2", 0).is_none());
        }
    }

    #[test]
    fn an_image_with_idempotency_keys_and_no_leases_keeps_the_old_tail() {
        let map = map_with_table();
        let image = map.encode().unwrap();
        let base = codec::encode(&old_image(&map)).unwrap().len();
        assert_eq!(image[base], TAIL_IDEMPOTENCY);
        let mut with_lease = map.clone();
        with_lease.apply(100, at(0, Command::LeaseGrant { ttl_ms: 1000 }));
        let image = with_lease.encode().unwrap();
        assert_eq!(image[base], TAIL_IDEMPOTENCY_AND_LEASES);
        assert_eq!(image.len() as u64, with_lease.image_len());
        let restored = KvMap::decode(&image).unwrap();
        assert_eq!(
            restored.idempotency_stats().keys,
            map.idempotency_stats().keys
        );
        assert_eq!(restored.leases().len(), 1);
    }
}
