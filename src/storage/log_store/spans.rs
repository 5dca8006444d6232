//! The log's entries spread over sled trees of [`SPAN`] consecutive indexes each
//! (`raft_log/<span number, hex>`), so that purging the head of the log drops whole trees.
//!
//! Why: removing entries one by one makes sled rewrite the leaves they sit in, so purging wrote
//! about as many bytes as it deleted, where dropping their trees writes almost nothing. Only the one
//! span the purge point falls into still has entries removed one by one.
//!
//! Each entry is stored in pieces of at most [`PIECE_BYTES`] under `index ++ piece number`, so no
//! sled page gets large. sled's page cache is split into 256 shards by page id and a shard always
//! keeps the last page it was told about, whatever its size: with whole grouped entries of
//! ~140 KB, leaves of up to sixteen of them were larger than a shard's share of the cache, so
//! every leaf of the log stayed in memory. Pieces keep leaves under 128 KiB, which the cache does evict. Piece 0
//! starts with the number of pieces, so an entry cut short by a crash (sled recovers a prefix of
//! its writes) is recognised, and removed on open.
//!
//! Layout version 3 and later; the single tree `raft_log` of earlier versions is moved into spans
//! on open.

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use sled::IVec;

/// Entries per tree. Small enough that the span a purge point falls into costs little to trim,
/// large enough that the trees stay few (a node keeping `--snapshot-every` 10,000 entries plus
/// `--logs-kept` 1,000 has about 170; sled keeps tree names in one metadata page).
pub const SPAN: u64 = 64;

const PREFIX: &str = "raft_log/";
/// The single log tree of layout versions before 3.
const LEGACY_TREE: &str = "raft_log";

fn span_of(index: u64) -> u64 {
    index / SPAN
}

fn first_index(span: u64) -> u64 {
    span * SPAN
}

fn last_index(span: u64) -> u64 {
    span * SPAN + (SPAN - 1)
}

/// Largest piece of an entry stored as one sled value: sixteen of them (a full leaf) stay under a
/// cache shard's share of sled's 64 MiB cache (256 KiB).
pub const PIECE_BYTES: usize = 8 * 1024;

/// Bytes at the start of piece 0 holding the number of pieces (u32, big-endian).
const HEADER_BYTES: usize = 4;

/// Key of piece `piece` of the entry at `index`: big-endian, so sled keeps log order.
fn piece_key(index: u64, piece: u32) -> [u8; 12] {
    let mut key = [0; 12];
    key[..8].copy_from_slice(&index.to_be_bytes());
    key[8..].copy_from_slice(&piece.to_be_bytes());
    key
}

fn split_piece_key(key: &[u8]) -> Option<(u64, u32)> {
    let index = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let piece = u32::from_be_bytes(key.get(8..)?.try_into().ok()?);
    Some((index, piece))
}

fn damaged(message: String) -> sled::Error {
    sled::Error::Io(std::io::Error::other(message))
}

fn tree_name(span: u64) -> String {
    format!("{PREFIX}{span:016x}")
}

fn parse_tree_name(name: &[u8]) -> Option<u64> {
    let hex = std::str::from_utf8(name.strip_prefix(PREFIX.as_bytes())?).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// One stored entry: its index and encoded value.
pub type Item = (u64, Vec<u8>);

/// Puts pieces read in key order back together into entries.
#[derive(Default)]
struct Assembler {
    /// Index, number of pieces and bytes so far of the entry being assembled.
    current: Option<(u64, u32, Vec<u8>)>,
    next_piece: u32,
}

impl Assembler {
    /// Adds one piece; returns the entry it completes, if any.
    fn push(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Item>, sled::Error> {
        let (index, piece) = split_piece_key(key)
            .ok_or_else(|| damaged(format!("log key {key:?} is not an entry piece")))?;
        if piece == 0 {
            if let Some((open, ..)) = &self.current {
                return Err(damaged(format!("log entry {open} is missing pieces")));
            }
            let count = value
                .get(..HEADER_BYTES)
                .and_then(|h| h.try_into().ok())
                .map(u32::from_be_bytes)
                .filter(|&count| count > 0)
                .ok_or_else(|| damaged(format!("log entry {index} has a damaged header")))?;
            self.current = Some((index, count, value[HEADER_BYTES..].to_vec()));
            self.next_piece = 1;
        } else {
            match &mut self.current {
                // Only a piece written as a key, its value not yet, is empty: every piece
                // after the first holds at least one byte.
                Some(_) if value.is_empty() => {
                    return Err(damaged(format!(
                        "log entry {index} has an empty piece {piece}"
                    )))
                }
                Some((open, _, bytes)) if *open == index && piece == self.next_piece => {
                    bytes.extend_from_slice(value);
                    self.next_piece += 1;
                }
                _ => {
                    return Err(damaged(format!(
                        "log entry {index} has piece {piece} out of place"
                    )))
                }
            }
        }
        match &self.current {
            Some((_, count, _)) if *count == self.next_piece => {
                Ok(self.current.take().map(|(index, _, bytes)| (index, bytes)))
            }
            _ => Ok(None),
        }
    }

    /// The index of an entry whose pieces ran out before it was whole.
    fn unfinished(&self) -> Option<u64> {
        self.current.as_ref().map(|(index, ..)| *index)
    }
}

/// The entries held by `pieces` (key, value pairs in key order), all of which must be whole.
fn assemble(
    pieces: impl Iterator<Item = Result<(IVec, IVec), sled::Error>>,
    mut take: impl FnMut(Item) -> bool,
) -> Result<(), sled::Error> {
    let mut assembler = Assembler::default();
    for piece in pieces {
        let (key, value) = piece?;
        if let Some(item) = assembler.push(&key, &value)? {
            if !take(item) {
                return Ok(());
            }
        }
    }
    match assembler.unfinished() {
        Some(index) => Err(damaged(format!("log entry {index} is missing pieces"))),
        None => Ok(()),
    }
}

pub struct Spans {
    db: sled::Db,
    /// Open trees by span number. Readers hold the read lock while they use a tree and dropping
    /// a tree takes the write lock, so no one reads from a tree as it is dropped.
    trees: RwLock<BTreeMap<u64, sled::Tree>>,
}

impl Spans {
    /// Opens the span trees of `db`, first moving the entries of a pre-span log into them.
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        let mut trees = BTreeMap::new();
        for name in db.tree_names() {
            if let Some(span) = parse_tree_name(&name) {
                trees.insert(span, db.open_tree(&name)?);
            }
        }
        let spans = Spans {
            db: db.clone(),
            trees: RwLock::new(trees),
        };
        spans.convert_legacy_tree()?;
        spans.remove_torn_tail()?;
        Ok(spans)
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<u64, sled::Tree>> {
        // Every step leaves the map matching the trees on disk, so a poisoned lock is harmless.
        self.trees.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, sled::Tree>> {
        self.trees.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies every entry of the old single tree into spans (idempotent: a conversion cut short
    /// is redone from the start), flushes, then drops the old tree.
    fn convert_legacy_tree(&self) -> Result<(), sled::Error> {
        if !self
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == LEGACY_TREE.as_bytes())
        {
            return Ok(());
        }
        let legacy = self.db.open_tree(LEGACY_TREE)?;
        tracing::info!(
            entries = legacy.len(),
            "moving the log into trees of {SPAN} entries"
        );
        for item in legacy.iter() {
            let (key, value) = item?;
            let index = key_index(&key).ok_or_else(|| {
                let message = format!("old log tree holds a key that is not an index: {key:?}");
                sled::Error::Io(std::io::Error::other(message))
            })?;
            self.insert(index, &value)?;
        }
        self.db.flush()?;
        drop(legacy);
        self.db.drop_tree(LEGACY_TREE)?;
        self.db.flush()?;
        Ok(())
    }

    /// Removes every entry at the end of the log that a crash cut short.
    ///
    /// An append writes the keys of all its pieces first, empty, and then fills them in index
    /// order, and sled recovers a prefix of its writes: a crash part way leaves whole entries,
    /// then at most one partly filled entry, then entries with empty pieces. None of them was
    /// flushed, so none was acknowledged (a leader's early acknowledgement is never visible
    /// before its flush, see `durable`), and the leader sends them again. So the tail is
    /// removed back to the last whole entry; an entry that is not whole with whole ones after
    /// it cannot come from a crash and is reported as damage when it is read.
    fn remove_torn_tail(&self) -> Result<(), sled::Error> {
        let trees = self.read();
        let mut removed = Vec::new();
        'trees: for tree in trees.values().rev() {
            while let Some(index) = last_index_of(tree)? {
                if let Ok(Some(_)) = read_entry(tree, index) {
                    break 'trees;
                }
                remove_keys(tree, piece_key(index, 0)..=piece_key(index, u32::MAX))?;
                removed.push(index);
            }
        }
        if let (Some(last), Some(first)) = (removed.first(), removed.last()) {
            tracing::warn!(
                first,
                last,
                "removed {} log entries cut short by a crash (never acknowledged)",
                removed.len()
            );
            self.db.flush()?;
        }
        Ok(())
    }

    /// Stores the encoded entry at `index` in pieces, creating its span's tree if needed.
    pub fn insert(&self, index: u64, value: &[u8]) -> Result<(), sled::Error> {
        self.insert_all(&[(index, value)])
    }

    /// Stores several encoded entries (one append): first every piece's key with an empty value,
    /// then the values. sled splits a leaf once it holds 17 keys and writes both halves out
    /// again, so appending whole pieces wrote most of them two or three times; the keys alone
    /// make those splits cheap, and each value then lands as one small change to a leaf that
    /// already exists.
    pub fn insert_all(&self, entries: &[(u64, impl AsRef<[u8]>)]) -> Result<(), sled::Error> {
        let mut placed = Vec::with_capacity(entries.len());
        for (index, value) in entries {
            let index = *index;
            let tree = self.tree_for(span_of(index))?;
            let pieces = Pieces::new(index, value.as_ref())?;
            for piece in 0..pieces.count {
                tree.insert(piece_key(index, piece), IVec::default())?;
            }
            placed.push((tree, pieces));
        }
        #[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
        let several = placed.len() > 2;
        for (written, (tree, pieces)) in placed.into_iter().enumerate() {
            if written == 1 {
                // Failpoint `log-write-between-pieces`: one entry of an append of three or more
                // is whole, the others have empty pieces; `crash` flushes sled first (as its own
                // background flush may do at any moment) so that this shape is what a restart
                // finds on disk.
                fail::fail_point!("log-write-between-pieces", several, |_| {
                    let _ = self.db.flush();
                    crate::failpoints::crash_now("log-write-between-pieces")
                });
            }
            pieces.write(&tree)?;
        }
        Ok(())
    }

    /// The tree of `span`, created if needed.
    fn tree_for(&self, span: u64) -> Result<sled::Tree, sled::Error> {
        if let Some(tree) = self.read().get(&span) {
            return Ok(tree.clone());
        }
        let mut trees = self.write();
        match trees.entry(span) {
            std::collections::btree_map::Entry::Occupied(e) => Ok(e.get().clone()),
            std::collections::btree_map::Entry::Vacant(e) => {
                Ok(e.insert(self.db.open_tree(tree_name(span))?).clone())
            }
        }
    }

    /// Every entry whose index lies in `range`, in index order.
    pub fn range(&self, range: &impl RangeBounds<u64>) -> Result<Vec<Item>, sled::Error> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => match i.checked_add(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => match i.checked_sub(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => u64::MAX,
        };
        if start > end {
            return Ok(Vec::new());
        }
        let trees = self.read();
        let mut items = Vec::new();
        for (_, tree) in trees.range(span_of(start)..=span_of(end)) {
            let pieces = tree.range(piece_key(start, 0)..=piece_key(end, u32::MAX));
            assemble(pieces, |item| {
                items.push(item);
                true
            })?;
        }
        Ok(items)
    }

    /// The entry with the lowest index.
    pub fn first(&self) -> Result<Option<Item>, sled::Error> {
        for tree in self.read().values() {
            let mut first = None;
            assemble(tree.iter(), |item| {
                first = Some(item);
                false
            })?;
            if first.is_some() {
                return Ok(first);
            }
        }
        Ok(None)
    }

    /// The entry with the highest index.
    pub fn last(&self) -> Result<Option<Item>, sled::Error> {
        for tree in self.read().values().rev() {
            if let Some(index) = last_index_of(tree)? {
                return read_entry(tree, index);
            }
        }
        Ok(None)
    }

    /// Removes every entry at or below `index`: whole spans are dropped, the span `index` falls
    /// into (unless it ends there) loses its entries one by one.
    pub fn remove_through(&self, index: u64) -> Result<(), sled::Error> {
        let mut trees = self.write();
        let whole: Vec<u64> = trees
            .keys()
            .copied()
            .take_while(|&span| last_index(span) <= index)
            .collect();
        self.drop_spans(&mut trees, &whole)?;
        if let Some(tree) = trees.get(&span_of(index)) {
            remove_keys(tree, ..=piece_key(index, u32::MAX))?;
        }
        Ok(())
    }

    /// Removes every entry at or above `index`, the same way, from the end backwards: the
    /// highest span goes first and the span `index` falls into is trimmed last, so a crash at
    /// any point leaves the log a contiguous prefix (with a hole, a restart would find entries
    /// after a gap and refuse to start).
    pub fn remove_from(&self, index: u64) -> Result<(), sled::Error> {
        let mut trees = self.write();
        let whole: Vec<u64> = trees
            .keys()
            .rev()
            .copied()
            .take_while(|&span| first_index(span) >= index)
            .collect();
        for (dropped, span) in whole.iter().enumerate() {
            if dropped == 1 {
                // Failpoint `log-truncate-between-spans`: one span of a truncation is dropped,
                // the others not yet; `crash` flushes first so a restart finds this shape.
                fail::fail_point!("log-truncate-between-spans", |_| {
                    let _ = self.db.flush();
                    crate::failpoints::crash_now("log-truncate-between-spans")
                });
            }
            self.drop_spans(&mut trees, std::slice::from_ref(span))?;
        }
        if let Some(tree) = trees.get(&span_of(index)) {
            remove_keys(tree, piece_key(index, 0)..)?;
        }
        Ok(())
    }

    fn drop_spans(
        &self,
        trees: &mut BTreeMap<u64, sled::Tree>,
        spans: &[u64],
    ) -> Result<(), sled::Error> {
        for span in spans {
            trees.remove(span);
            self.db.drop_tree(tree_name(*span))?;
        }
        Ok(())
    }
}

/// Index of the last entry with a piece in `tree`.
fn last_index_of(tree: &sled::Tree) -> Result<Option<u64>, sled::Error> {
    let Some((key, _)) = tree.last()? else {
        return Ok(None);
    };
    let (index, _) = split_piece_key(&key)
        .ok_or_else(|| damaged(format!("log key {key:?} is not an entry piece")))?;
    Ok(Some(index))
}

/// The entry at `index` of `tree`, put back together; an error if a piece is missing.
fn read_entry(tree: &sled::Tree, index: u64) -> Result<Option<Item>, sled::Error> {
    let mut entry = None;
    let pieces = tree.range(piece_key(index, 0)..=piece_key(index, u32::MAX));
    assemble(pieces, |item| {
        entry = Some(item);
        false
    })?;
    Ok(entry)
}

/// An encoded entry cut into the pieces it is stored as.
struct Pieces<'a> {
    index: u64,
    value: &'a [u8],
    count: u32,
}

impl<'a> Pieces<'a> {
    fn new(index: u64, value: &'a [u8]) -> Result<Self, sled::Error> {
        let count = value.len().div_ceil(PIECE_BYTES).max(1);
        let count = u32::try_from(count)
            .map_err(|_| damaged(format!("log entry {index} is too large to store")))?;
        Ok(Pieces {
            index,
            value,
            count,
        })
    }

    /// Writes the pieces; the first one starts with their number.
    fn write(&self, tree: &sled::Tree) -> Result<(), sled::Error> {
        let mut pieces = self.value.chunks(PIECE_BYTES);
        let first = pieces.next().unwrap_or_default();
        let mut head = Vec::with_capacity(HEADER_BYTES + first.len());
        head.extend_from_slice(&self.count.to_be_bytes());
        head.extend_from_slice(first);
        tree.insert(piece_key(self.index, 0), head)?;
        for (piece, bytes) in (1u32..).zip(pieces) {
            tree.insert(piece_key(self.index, piece), bytes)?;
        }
        Ok(())
    }
}

/// Removes the keys of `tree` in `range`, in one sled batch.
fn remove_keys(tree: &sled::Tree, range: impl RangeBounds<[u8; 12]>) -> Result<(), sled::Error> {
    let mut batch = sled::Batch::default();
    for key in tree.range(range).keys() {
        batch.remove(key?);
    }
    tree.apply_batch(batch)
}

/// The log index a span key names (big-endian, so sled's byte order is log order); `None` for
/// a key that is not 8 bytes long (a damaged tree).
fn key_index(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_names_round_trip_and_sort_in_span_order() {
        for span in [0, 1, 15, 16, 255, u64::MAX / SPAN] {
            assert_eq!(parse_tree_name(tree_name(span).as_bytes()), Some(span));
        }
        assert!(tree_name(15) < tree_name(16));
        assert_eq!(parse_tree_name(LEGACY_TREE.as_bytes()), None);
        assert_eq!(parse_tree_name(b"raft_log/zz"), None);
    }

    #[test]
    fn span_bounds_cover_the_whole_index_space() {
        assert_eq!(span_of(0), 0);
        assert_eq!(last_index(0), SPAN - 1);
        assert_eq!(span_of(SPAN), 1);
        assert_eq!(first_index(1), SPAN);
        assert_eq!(last_index(span_of(u64::MAX)), u64::MAX);
    }

    fn temp_db() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new()
            .path(dir.path())
            .open()
            .expect("open sled");
        (dir, db)
    }

    fn span_trees(db: &sled::Db) -> Vec<u64> {
        let mut spans: Vec<u64> = db
            .tree_names()
            .iter()
            .filter_map(|name| parse_tree_name(name))
            .collect();
        spans.sort_unstable();
        spans
    }

    fn indexes(items: &[Item]) -> Vec<u64> {
        items.iter().map(|(index, _)| *index).collect()
    }

    fn filled(db: &sled::Db, count: u64) -> Spans {
        let spans = Spans::open(db).expect("open spans");
        for index in 0..count {
            spans.insert(index, &index.to_be_bytes()).expect("insert");
        }
        spans
    }

    #[test]
    fn entries_read_back_across_spans_in_index_order() {
        let (_dir, db) = temp_db();
        let spans = filled(&db, 200);
        assert_eq!(span_trees(&db), vec![0, 1, 2, 3]);
        assert_eq!(
            indexes(&spans.range(&(60..70)).unwrap()),
            (60..70).collect::<Vec<_>>()
        );
        assert_eq!(
            indexes(&spans.range(&(..)).unwrap()),
            (0..200).collect::<Vec<_>>()
        );
        assert!(spans.range(&(300..)).unwrap().is_empty());
        let (_, value) = spans.last().unwrap().expect("last");
        assert_eq!(value, 199u64.to_be_bytes());
    }

    #[test]
    fn a_purge_drops_the_spans_it_covers_and_trims_the_one_it_ends_in() {
        let (_dir, db) = temp_db();
        let spans = filled(&db, 200);
        spans.remove_through(100).unwrap();
        assert_eq!(
            span_trees(&db),
            vec![1, 2, 3],
            "span 0 (0-63) dropped as a whole"
        );
        assert_eq!(
            indexes(&spans.range(&(..)).unwrap()),
            (101..200).collect::<Vec<_>>()
        );
        let (index, _) = spans.first().unwrap().expect("first");
        assert_eq!(index, 101);
        // Ending exactly on a span boundary leaves no trimmed span behind.
        spans.remove_through(127).unwrap();
        assert_eq!(span_trees(&db), vec![2, 3]);
    }

    #[test]
    fn a_truncation_drops_the_spans_above_and_trims_the_one_it_starts_in() {
        let (_dir, db) = temp_db();
        let spans = filled(&db, 200);
        spans.remove_from(130).unwrap();
        assert_eq!(span_trees(&db), vec![0, 1, 2]);
        let (index, _) = spans.last().unwrap().expect("last");
        assert_eq!(index, 129);
        spans.remove_from(128).unwrap();
        assert_eq!(span_trees(&db), vec![0, 1], "span 2 starts at 128");
        // The log continues where it was cut.
        spans.insert(128, &[1]).unwrap();
        assert_eq!(
            indexes(&spans.range(&(120..)).unwrap()),
            (120..=128).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_log_in_the_old_single_tree_is_moved_into_spans() {
        let (_dir, db) = temp_db();
        let legacy = db.open_tree(LEGACY_TREE).unwrap();
        for index in 5..150u64 {
            legacy
                .insert(index.to_be_bytes(), index.to_be_bytes().to_vec())
                .unwrap();
        }
        drop(legacy);
        let spans = Spans::open(&db).expect("open spans");
        assert!(!db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == LEGACY_TREE.as_bytes()));
        assert_eq!(span_trees(&db), vec![0, 1, 2]);
        assert_eq!(
            indexes(&spans.range(&(..)).unwrap()),
            (5..150).collect::<Vec<_>>()
        );
    }

    /// Bytes that differ from position to position, so a piece out of place would show.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    #[test]
    fn large_entries_are_stored_in_pieces_and_read_back_whole() {
        let (_dir, db) = temp_db();
        let spans = Spans::open(&db).unwrap();
        let sizes = [
            0,
            1,
            PIECE_BYTES - HEADER_BYTES,
            PIECE_BYTES,
            PIECE_BYTES + 1,
            140_000,
        ];
        for (index, &len) in (10u64..).zip(&sizes) {
            spans.insert(index, &pattern(len, index as u8)).unwrap();
        }
        let tree = db.open_tree(tree_name(0)).unwrap();
        assert_eq!(
            tree.len(),
            1 + 1 + 1 + 1 + 2 + 140_000usize.div_ceil(PIECE_BYTES)
        );
        assert!(tree
            .iter()
            .values()
            .all(|v| v.unwrap().len() <= HEADER_BYTES + PIECE_BYTES));
        let items = spans.range(&(..)).unwrap();
        assert_eq!(items.len(), sizes.len());
        for ((index, value), &len) in items.iter().zip(&sizes) {
            assert_eq!(value, &pattern(len, *index as u8), "entry {index}");
        }
        assert_eq!(spans.first().unwrap().map(|(i, _)| i), Some(10));
        assert_eq!(spans.last().unwrap(), Some((15, pattern(140_000, 15))));
    }

    #[test]
    fn an_entry_cut_short_by_a_crash_is_removed_on_open() {
        let (_dir, db) = temp_db();
        let spans = Spans::open(&db).unwrap();
        spans.insert(1, &pattern(100, 1)).unwrap();
        spans.insert(2, &pattern(5 * PIECE_BYTES, 2)).unwrap();
        drop(spans);
        // What sled recovers when a crash lands between the pieces of entry 2.
        let tree = db.open_tree(tree_name(0)).unwrap();
        tree.remove(piece_key(2, 4)).unwrap();
        tree.remove(piece_key(2, 3)).unwrap();
        let spans = Spans::open(&db).unwrap();
        assert_eq!(spans.last().unwrap(), Some((1, pattern(100, 1))));
        assert_eq!(indexes(&spans.range(&(..)).unwrap()), vec![1]);
    }

    /// Writes the shape a crash half way through one append of `indexes` leaves: every piece
    /// key present, the first `whole` entries filled, the next one with only its piece 0.
    fn torn_append(db: &sled::Db, indexes: std::ops::RangeInclusive<u64>, whole: usize) {
        let spans = Spans::open(db).unwrap();
        for index in indexes.clone() {
            let tree = spans.tree_for(span_of(index)).unwrap();
            for piece in 0..3 {
                tree.insert(piece_key(index, piece), IVec::default())
                    .unwrap();
            }
        }
        for (n, index) in indexes.enumerate() {
            let value = pattern(3 * PIECE_BYTES, index as u8);
            let pieces = Pieces::new(index, &value).unwrap();
            let tree = spans.tree_for(span_of(index)).unwrap();
            if n < whole {
                pieces.write(&tree).unwrap();
            } else if n == whole {
                let mut head = 3u32.to_be_bytes().to_vec();
                head.extend_from_slice(&value[..PIECE_BYTES]);
                tree.insert(piece_key(index, 0), head).unwrap();
            }
        }
    }

    #[test]
    fn every_entry_of_an_append_cut_short_is_removed_on_open() {
        for whole in 0..3 {
            let (_dir, db) = temp_db();
            drop(filled(&db, 10));
            torn_append(&db, 10..=14, whole);
            let spans = Spans::open(&db).expect("a crash's shape opens");
            let kept: Vec<u64> = (0..10 + whole as u64).collect();
            assert_eq!(
                indexes(&spans.range(&(..)).unwrap()),
                kept,
                "whole = {whole}"
            );
            assert_eq!(spans.last().unwrap().map(|(i, _)| i), kept.last().copied());
        }
    }

    #[test]
    fn a_torn_append_across_a_span_boundary_is_removed_on_open() {
        let (_dir, db) = temp_db();
        drop(filled(&db, 60));
        torn_append(&db, 60..=70, 1);
        let spans = Spans::open(&db).expect("opens");
        assert_eq!(spans.last().unwrap().map(|(i, _)| i), Some(60));
        assert_eq!(
            indexes(&spans.range(&(55..)).unwrap()),
            (55..=60).collect::<Vec<_>>()
        );
        spans.insert(61, &[1]).unwrap();
        assert_eq!(spans.last().unwrap().map(|(i, _)| i), Some(61));
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn a_truncation_cut_short_leaves_a_contiguous_prefix() {
        let scenario = fail::FailScenario::setup();
        let (_dir, db) = temp_db();
        let spans = filled(&db, 5 * SPAN);
        fail::cfg("log-truncate-between-spans", "panic").unwrap();
        let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            spans.remove_from(SPAN + 10)
        }));
        fail::remove("log-truncate-between-spans");
        scenario.teardown();
        assert!(cut.is_err(), "the failpoint interrupted the truncation");
        drop(spans);
        let spans = Spans::open(&db).expect("reopens");
        let left = indexes(&spans.range(&(..)).unwrap());
        let last = *left.last().expect("entries left");
        assert_eq!(left, (0..=last).collect::<Vec<_>>(), "no hole");
        assert!(last >= SPAN + 9, "nothing below the truncation point went");
    }

    #[test]
    fn a_missing_piece_in_the_middle_of_the_log_is_reported() {
        let (_dir, db) = temp_db();
        let spans = filled(&db, 3);
        spans.insert(3, &pattern(3 * PIECE_BYTES, 3)).unwrap();
        spans.insert(4, &[4]).unwrap();
        let tree = db.open_tree(tree_name(0)).unwrap();
        tree.remove(piece_key(3, 1)).unwrap();
        let error = spans.range(&(..)).unwrap_err().to_string();
        assert!(error.contains("log entry 3"), "{error}");
    }
}
