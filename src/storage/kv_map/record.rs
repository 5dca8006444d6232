//! One map entry in one heap allocation.
//!
//! A `BTreeMap<String, StoredValue>` spends a 24-byte `String` and a 48-byte struct per slot of a
//! half-full B-tree leaf, plus separate allocations for the key and the value: about 440 bytes of
//! memory for a 16-byte key and a 256-byte value. A [`Record`] packs the key, value, revision and
//! expiry into one exactly sized `Box<[u8]>`, so a set of records costs the data, a few bytes of
//! header, malloc's chunk rounding and a 16-byte slot in the tree.
//!
//! Layout: `[key length, LEB128][key][value][revision][expiry, u64 LE, if set][flags]`. The
//! revision is stored in as few little-endian bytes as it needs (a log index below 2^32 takes
//! four); the last byte, `flags`, holds that byte count in its low nibble and [`FLAG_EXPIRY`]
//! when an expiry is present. For a 16-byte key and 256-byte value that is 278 bytes, which
//! glibc serves from a 288-byte chunk; a fixed 8-byte revision would make it 282 bytes and a
//! 304-byte chunk. The key comes first so comparisons read only the front of the record; the
//! rest follows the order a snapshot encodes an entry (key, value, revision, expiry).
//!
//! Records are only ever built by [`Record::new`], so the layout always holds; the accessors still
//! avoid indexing that could panic and read a damaged record as empty fields instead.

use std::borrow::Borrow;
use std::cmp::Ordering;

use crate::types::StoredValue;

/// Bytes of the optional expiry.
const EXPIRY: usize = 8;
/// Set in the flags byte when an expiry is present.
const FLAG_EXPIRY: u8 = 0x10;
/// The low nibble of the flags byte: how many bytes the revision takes (0 to 8).
const REVISION_LEN_MASK: u8 = 0x0f;

/// A key with its value, revision and optional expiry, ordered by key alone so that a
/// `BTreeSet<Record>` is a map keyed by `[u8]` (see the `Borrow` impl).
#[derive(Clone)]
pub struct Record(Box<[u8]>);

impl Record {
    pub fn new(key: &[u8], value: &[u8], revision: u64, expires_at_ms: Option<u64>) -> Self {
        let revision_len = (u64::BITS - revision.leading_zeros()).div_ceil(8) as usize;
        let expiry_len = if expires_at_ms.is_some() { EXPIRY } else { 0 };
        let mut bytes = Vec::with_capacity(
            varint_len(key.len()) + key.len() + value.len() + revision_len + expiry_len + 1,
        );
        push_varint(&mut bytes, key.len());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(&revision.to_le_bytes()[..revision_len]);
        let mut flags = revision_len as u8;
        if let Some(at) = expires_at_ms {
            bytes.extend_from_slice(&at.to_le_bytes());
            flags |= FLAG_EXPIRY;
        }
        bytes.push(flags);
        // Capacity was exact, so this does not reallocate.
        Record(bytes.into_boxed_slice())
    }

    /// Bytes this record occupies on the heap (not counting malloc's rounding).
    #[cfg(test)]
    pub fn heap_bytes(&self) -> usize {
        self.0.len()
    }

    /// Where the key starts and ends.
    fn key_bounds(&self) -> (usize, usize) {
        let (len, start) = read_varint(&self.0);
        (start, start.saturating_add(len).min(self.0.len()))
    }

    fn flags(&self) -> u8 {
        self.0.last().copied().unwrap_or(0)
    }

    fn has_expiry(&self) -> bool {
        self.flags() & FLAG_EXPIRY != 0
    }

    /// Where the revision starts and how long it is.
    fn revision_bounds(&self) -> (usize, usize) {
        let len = usize::from(self.flags() & REVISION_LEN_MASK).min(8);
        let expiry = if self.has_expiry() { EXPIRY } else { 0 };
        let start = self.0.len().saturating_sub(1 + expiry + len);
        (start, len)
    }

    pub fn key(&self) -> &[u8] {
        let (start, end) = self.key_bounds();
        self.0.get(start..end).unwrap_or_default()
    }

    /// The key as text. Keys enter the map as `String`s, so the lossy branch never runs.
    pub fn key_string(&self) -> String {
        String::from_utf8_lossy(self.key()).into_owned()
    }

    pub fn value(&self) -> &[u8] {
        let (_, key_end) = self.key_bounds();
        let (revision_start, _) = self.revision_bounds();
        self.0.get(key_end..revision_start).unwrap_or_default()
    }

    pub fn revision(&self) -> u64 {
        let (start, len) = self.revision_bounds();
        let mut bytes = [0; 8];
        if let (Some(to), Some(from)) = (bytes.get_mut(..len), self.0.get(start..start + len)) {
            to.copy_from_slice(from);
        }
        u64::from_le_bytes(bytes)
    }

    pub fn expires_at_ms(&self) -> Option<u64> {
        self.has_expiry()
            .then(|| read_u64(&self.0, self.0.len().saturating_sub(EXPIRY + 1)))
    }

    /// Whether the value is still alive at `now_ms` (same rule as [`StoredValue::is_live`]).
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms().is_none_or(|at| at > now_ms)
    }

    /// The owned form handed out to readers.
    pub fn to_stored(&self) -> StoredValue {
        StoredValue {
            value: self.value().to_vec(),
            revision: self.revision(),
            expires_at_ms: self.expires_at_ms(),
        }
    }
}

impl Borrow<[u8]> for Record {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Record {}

impl PartialOrd for Record {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// By key bytes, which for UTF-8 keys is the same order as `str`'s, so the map keeps the order
/// the `BTreeMap<String, _>` it replaces had (scans and snapshots depend on it).
impl Ord for Record {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(other.key())
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("key", &String::from_utf8_lossy(self.key()))
            .field("value_len", &self.value().len())
            .field("revision", &self.revision())
            .field("expires_at_ms", &self.expires_at_ms())
            .finish()
    }
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at.saturating_add(8))
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// LEB128: seven bits per byte, low bits first, high bit set on every byte but the last. Keys
/// under 128 bytes take one byte, so the common case costs nothing over a `u8` length.
fn push_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint_len(n: usize) -> usize {
    let bits = usize::BITS - n.leading_zeros();
    (bits as usize).div_ceil(7).max(1)
}

/// The number at the start of `bytes` and how many bytes it took.
fn read_varint(bytes: &[u8]) -> (usize, usize) {
    let mut n = 0usize;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        n |= usize::from(byte & 0x7f)
            .checked_shl(7 * i as u32)
            .unwrap_or(0);
        if byte & 0x80 == 0 {
            return (n, i + 1);
        }
    }
    (0, bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_with_and_without_expiry() {
        let plain = Record::new(b"key", b"value", 42, None);
        assert_eq!(plain.key(), b"key");
        assert_eq!(plain.value(), b"value");
        assert_eq!(plain.revision(), 42);
        assert_eq!(plain.expires_at_ms(), None);
        assert_eq!(plain.heap_bytes(), 1 + 3 + 5 + 1 + 1);

        let ttl = Record::new(b"k", b"", u64::MAX, Some(7));
        assert_eq!(ttl.key(), b"k");
        assert_eq!(ttl.value(), b"");
        assert_eq!(ttl.revision(), u64::MAX);
        assert_eq!(ttl.expires_at_ms(), Some(7));
        assert!(ttl.is_live(6) && !ttl.is_live(7));
    }

    #[test]
    fn revisions_of_every_width_round_trip() {
        let mut revisions = vec![0, 1, u64::MAX];
        revisions.extend((1..64).flat_map(|bit| [(1u64 << bit) - 1, 1u64 << bit]));
        for revision in revisions {
            for expiry in [None, Some(u64::MAX - 1)] {
                let record = Record::new(b"key", &[0xff; 3], revision, expiry);
                assert_eq!(record.revision(), revision);
                assert_eq!(record.expires_at_ms(), expiry);
                assert_eq!(record.value(), &[0xff; 3], "revision {revision}");
                assert_eq!(record.key(), b"key");
            }
        }
    }

    #[test]
    fn the_typical_entry_fits_a_288_byte_malloc_chunk() {
        // 16-byte key, 256-byte value, a revision below 2^32: 278 bytes, and glibc serves
        // requests up to 280 bytes from 288-byte chunks.
        let record = Record::new(&[b'k'; 16], &[b'v'; 256], u32::MAX.into(), None);
        assert_eq!(record.heap_bytes(), 278);
    }

    #[test]
    fn long_keys_use_a_longer_length_prefix() {
        for len in [0, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            let key = vec![b'x'; len];
            let record = Record::new(&key, b"v", 1, Some(2));
            assert_eq!(record.key(), key.as_slice(), "key of {len} bytes");
            assert_eq!(record.value(), b"v");
            assert_eq!(record.expires_at_ms(), Some(2));
            let mut prefix = Vec::new();
            push_varint(&mut prefix, len);
            assert_eq!(prefix.len(), varint_len(len));
            assert_eq!(read_varint(&prefix), (len, prefix.len()));
        }
    }

    #[test]
    fn a_value_ending_in_the_flag_byte_is_not_mistaken_for_an_expiry() {
        let record = Record::new(b"k", &[FLAG_EXPIRY | 8; 20], 5, None);
        assert_eq!(record.value(), &[FLAG_EXPIRY | 8; 20]);
        assert_eq!(record.expires_at_ms(), None);
        assert_eq!(record.revision(), 5);
    }

    #[test]
    fn ordered_by_key_bytes_like_str() {
        let mut keys = ["b", "a", "ab", "é", "z", ""];
        let mut records: Vec<Record> = keys
            .iter()
            .map(|k| Record::new(k.as_bytes(), b"", 0, None))
            .collect();
        records.sort();
        keys.sort();
        let sorted: Vec<&[u8]> = records.iter().map(Record::key).collect();
        let expected: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        assert_eq!(sorted, expected);
    }
}
