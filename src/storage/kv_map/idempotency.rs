//! The replicated idempotency table: for each idempotency key seen within its window, the
//! fingerprint of the request that first used it and the result that request got.
//!
//! A client that retries a write (after a timeout, a leader change, a lost connection) cannot
//! tell whether the first attempt was applied. With a key, the retry is looked up here: the same
//! request is answered with the first attempt's result and applied no second time; another
//! request under the same key is refused.
//!
//! The table is part of the replicated state, so it obeys the map's rule: apply is
//! deterministic. Whether an entry has expired is judged by the map's clock (the highest leader
//! stamp applied), and the window's end and the table's capacity come from each entry
//! ([`IdempotentCommand`](crate::types::IdempotentCommand)), never from a replica's clock or
//! flags; eviction follows insertion order, which the snapshot image preserves. So every replica,
//! whether it applied the log or installed a snapshot, holds the same table and gives a retry the
//! same answer. Lookups go through ordered maps only: no hash seeded per process could ever
//! decide an order.
//!
//! The counters (hits, conflicts, evictions) describe this process's applies, for metrics; they
//! are not in the image and play no part in any decision.

use std::collections::{BTreeMap, BTreeSet};

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};

use crate::raft::codec;
use crate::types::CommandResult;

#[derive(Debug, Clone, Default)]
pub struct IdempotencyTable {
    /// Key → what the first request with it did.
    slots: BTreeMap<String, Slot>,
    /// Insertion number → key, oldest first: the eviction order, and the image's order.
    order: BTreeMap<u64, String>,
    /// (window end, insertion number) of every slot, so expiry finds its victims without a scan.
    expiry: BTreeSet<(u64, u64)>,
    /// Number of the next insertion. Only the order of these numbers matters, so a table decoded
    /// from an image numbers its slots afresh.
    next: u64,
    /// Encoded size of all slots, so the image is sized without a walk.
    encoded_bytes: u64,
    hits: u64,
    conflicts: u64,
    evictions: u64,
}

#[derive(Debug, Clone)]
struct Slot {
    fingerprint: u64,
    expires_at_ms: u64,
    /// The slot's insertion number (its place in `order` and `expiry`).
    number: u64,
    /// Bytes this slot takes in the image.
    encoded: u64,
    result: CommandResult,
}

/// What the table says about a key and fingerprint.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not in the table: apply the command, then [`IdempotencyTable::record`] its result.
    New,
    /// The same request was applied before, with this result.
    Replay(CommandResult),
    /// The key was used for a different request.
    Conflict,
}

/// The table's size and this process's counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdempotencyStats {
    /// Keys in the table (some may have expired, awaiting the next applied entry).
    pub keys: u64,
    /// Bytes the table takes in a snapshot image: about what its results hold in memory.
    pub bytes: u64,
    /// Retries answered from the table.
    pub hits: u64,
    /// Requests refused because their key was used for another request.
    pub conflicts: u64,
    /// Keys forgotten before their window ended, to keep the table within its capacity.
    pub evictions: u64,
}

impl IdempotencyTable {
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn stats(&self) -> IdempotencyStats {
        IdempotencyStats {
            keys: self.slots.len() as u64,
            bytes: self.encoded_bytes,
            hits: self.hits,
            conflicts: self.conflicts,
            evictions: self.evictions,
        }
    }

    /// Takes over `earlier`'s counters: a table decoded from an installed snapshot replaces the
    /// node's table, but the counters go on counting this process's applies.
    pub fn keep_counters_of(&mut self, earlier: &IdempotencyTable) {
        self.hits = earlier.hits;
        self.conflicts = earlier.conflicts;
        self.evictions = earlier.evictions;
    }

    /// Forgets every key whose window has ended by `now_ms`, the map's clock; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> u64 {
        let mut expired = 0;
        while let Some(&(at, number)) = self.expiry.first() {
            if at > now_ms {
                break;
            }
            self.remove_number(number);
            expired += 1;
        }
        expired
    }

    /// Looks `key` up (callers [`expire`](Self::expire) first, so a slot found is in its window)
    /// and counts a replay or a conflict.
    pub fn check(&mut self, key: &str, fingerprint: u64) -> Seen {
        match self.slots.get(key) {
            None => Seen::New,
            Some(slot) if slot.fingerprint == fingerprint => {
                self.hits += 1;
                Seen::Replay(slot.result.clone())
            }
            Some(_) => {
                self.conflicts += 1;
                Seen::Conflict
            }
        }
    }

    /// Remembers `result` as the outcome of the request `fingerprint` under `key` until
    /// `expires_at_ms`, then forgets the oldest-inserted keys while more than `capacity` remain
    /// (with a capacity of 0, this one too). A window that has already ended by `now_ms` (the
    /// leader's clock behind the map's by more than the window) is not recorded: it would be
    /// expired before any retry could find it.
    pub fn record(
        &mut self,
        key: String,
        fingerprint: u64,
        expires_at_ms: u64,
        result: CommandResult,
        capacity: u64,
        now_ms: u64,
    ) {
        if expires_at_ms > now_ms {
            self.insert(key, fingerprint, expires_at_ms, result);
        }
        while self.slots.len() as u64 > capacity {
            let Some((&oldest, _)) = self.order.first_key_value() else {
                break;
            };
            self.remove_number(oldest);
            self.evictions += 1;
        }
    }

    /// Adds a slot as the newest, replacing any slot of the same key.
    fn insert(&mut self, key: String, fingerprint: u64, expires_at_ms: u64, result: CommandResult) {
        if let Some(old) = self.slots.get(&key) {
            let number = old.number;
            self.remove_number(number);
        }
        let number = self.next;
        self.next += 1;
        let encoded = codec::encoded_len(&SlotOut {
            key: &key,
            fingerprint,
            expires_at_ms,
            result: &result,
        });
        self.encoded_bytes += encoded;
        self.order.insert(number, key.clone());
        self.expiry.insert((expires_at_ms, number));
        self.slots.insert(
            key,
            Slot {
                fingerprint,
                expires_at_ms,
                number,
                encoded,
                result,
            },
        );
    }

    fn remove_number(&mut self, number: u64) {
        let Some(key) = self.order.remove(&number) else {
            return;
        };
        if let Some(slot) = self.slots.remove(&key) {
            self.expiry.remove(&(slot.expires_at_ms, number));
            self.encoded_bytes -= slot.encoded;
        }
    }

    /// Exact length of [`TableOut`]'s encoding: the slot count, then the slots.
    pub fn image_len(&self) -> u64 {
        8 + self.encoded_bytes
    }

    /// The table's part of a snapshot image: its slots, oldest first.
    pub fn image(&self) -> TableOut<'_> {
        TableOut(self)
    }

    /// The table an image describes, slots inserted in the image's order (a key listed twice, as
    /// only a damaged image could, keeps its later slot). Nothing is expired or evicted here:
    /// the restored table must equal the one the image was taken from.
    pub fn from_image(image: TableIn) -> Self {
        let mut table = IdempotencyTable::default();
        for slot in image.0 {
            table.insert(slot.key, slot.fingerprint, slot.expires_at_ms, slot.result);
        }
        table
    }
}

/// One slot as a snapshot image holds it.
#[derive(Serialize)]
struct SlotOut<'a> {
    key: &'a str,
    fingerprint: u64,
    expires_at_ms: u64,
    result: &'a CommandResult,
}

#[derive(Deserialize)]
struct SlotIn {
    key: String,
    fingerprint: u64,
    expires_at_ms: u64,
    result: CommandResult,
}

/// Encodes as a sequence of slots in insertion order (a `Vec` of them in bincode: a u64 count,
/// then each slot), so a decoded table evicts in the same order as the one encoded.
pub struct TableOut<'a>(&'a IdempotencyTable);

impl Serialize for TableOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let table = self.0;
        let mut seq = serializer.serialize_seq(Some(table.order.len()))?;
        for key in table.order.values() {
            if let Some(slot) = table.slots.get(key) {
                seq.serialize_element(&SlotOut {
                    key,
                    fingerprint: slot.fingerprint,
                    expires_at_ms: slot.expires_at_ms,
                    result: &slot.result,
                })?;
            }
        }
        seq.end()
    }
}

/// The decoding side of [`TableOut`]. serde pre-allocates at most a bounded number of slots
/// for the count an image claims, so a damaged count cannot reserve memory without limit.
#[derive(Deserialize)]
pub struct TableIn(Vec<SlotIn>);

#[cfg(test)]
mod tests {
    use super::*;

    fn write(revision: u64) -> CommandResult {
        CommandResult::Write {
            revision,
            existed: false,
        }
    }

    #[test]
    fn expiry_and_eviction_keep_the_indexes_and_byte_count_in_step() {
        let mut table = IdempotencyTable::default();
        table.record("a".into(), 1, 100, write(1), 10, 0);
        table.record("b".into(), 2, 50, write(2), 10, 0);
        table.record("c".into(), 3, 200, write(3), 2, 0);
        assert_eq!(table.slots.len(), 2, "capacity 2 evicted the oldest");
        assert_eq!(table.check("a", 1), Seen::New);
        assert_eq!(table.stats().evictions, 1);
        assert_eq!(table.expire(50), 1, "b's window ended at 50");
        assert_eq!(table.check("c", 3), Seen::Replay(write(3)));
        assert_eq!(table.check("c", 4), Seen::Conflict);
        let one = codec::encoded_len(&SlotOut {
            key: "c",
            fingerprint: 3,
            expires_at_ms: 200,
            result: &write(3),
        });
        assert_eq!(table.stats().bytes, one);
        assert_eq!(table.expire(u64::MAX), 1);
        assert!(table.is_empty() && table.order.is_empty() && table.expiry.is_empty());
        assert_eq!(table.stats().bytes, 0);
        let stats = table.stats();
        assert_eq!((stats.hits, stats.conflicts), (1, 1));
    }

    #[test]
    fn a_window_already_ended_is_not_recorded() {
        let mut table = IdempotencyTable::default();
        table.record("a".into(), 1, 100, write(1), 10, 100);
        assert!(table.is_empty());
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let mut table = IdempotencyTable::default();
        table.record("a".into(), 1, 100, write(1), 0, 0);
        assert!(table.is_empty());
        assert_eq!(table.stats().evictions, 1);
    }
}
