//! The log's entries spread over sled trees of [`SPAN`] consecutive indexes each
//! (`raft_log/<span number, hex>`), so that purging the head of the log drops whole trees.
//!
//! Why: removing entries one by one makes sled rewrite the leaves they sit in, so purging wrote
//! about as many bytes as it deleted (measured: purging 1,001 grouped entries of ~140 KB grew
//! the database file by 150 MB, where dropping their trees writes almost nothing). Only the one
//! span the purge point falls into still has entries removed one by one.
//!
//! Layout version 3 and later; the single tree `raft_log` of earlier versions is moved into spans
//! on open.

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use sled::IVec;

use super::super::codec::{index_key, key_index};

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

fn tree_name(span: u64) -> String {
    format!("{PREFIX}{span:016x}")
}

fn parse_tree_name(name: &[u8]) -> Option<u64> {
    let hex = std::str::from_utf8(name.strip_prefix(PREFIX.as_bytes())?).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// One stored entry: its key (big-endian index) and encoded value.
pub type Item = (IVec, IVec);

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
            self.insert(index, value)?;
        }
        self.db.flush()?;
        drop(legacy);
        self.db.drop_tree(LEGACY_TREE)?;
        self.db.flush()?;
        Ok(())
    }

    /// Stores the encoded entry at `index`, creating its span's tree if needed.
    pub fn insert(&self, index: u64, value: impl Into<IVec>) -> Result<(), sled::Error> {
        let span = span_of(index);
        {
            let trees = self.read();
            if let Some(tree) = trees.get(&span) {
                tree.insert(index_key(index), value)?;
                return Ok(());
            }
        }
        let mut trees = self.write();
        let tree = match trees.entry(span) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(self.db.open_tree(tree_name(span))?)
            }
        };
        tree.insert(index_key(index), value)?;
        Ok(())
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
            for item in tree.range(index_key(start)..=index_key(end)) {
                items.push(item?);
            }
        }
        Ok(items)
    }

    /// The entry with the lowest index.
    pub fn first(&self) -> Result<Option<Item>, sled::Error> {
        for tree in self.read().values() {
            if let Some(item) = tree.first()? {
                return Ok(Some(item));
            }
        }
        Ok(None)
    }

    /// The entry with the highest index.
    pub fn last(&self) -> Result<Option<Item>, sled::Error> {
        for tree in self.read().values().rev() {
            if let Some(item) = tree.last()? {
                return Ok(Some(item));
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
            remove_keys(tree, ..=index_key(index))?;
        }
        Ok(())
    }

    /// Removes every entry at or above `index`, the same way.
    pub fn remove_from(&self, index: u64) -> Result<(), sled::Error> {
        let mut trees = self.write();
        let whole: Vec<u64> = trees
            .keys()
            .copied()
            .filter(|&span| first_index(span) >= index)
            .collect();
        self.drop_spans(&mut trees, &whole)?;
        if let Some(tree) = trees.get(&span_of(index)) {
            remove_keys(tree, index_key(index)..)?;
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

/// Removes the keys of `tree` in `range`, in one sled batch.
fn remove_keys(tree: &sled::Tree, range: impl RangeBounds<[u8; 8]>) -> Result<(), sled::Error> {
    let mut batch = sled::Batch::default();
    for key in tree.range(range).keys() {
        batch.remove(key?);
    }
    tree.apply_batch(batch)
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
        items
            .iter()
            .map(|(key, _)| key_index(key).expect("index key"))
            .collect()
    }

    fn filled(db: &sled::Db, count: u64) -> Spans {
        let spans = Spans::open(db).expect("open spans");
        for index in 0..count {
            spans
                .insert(index, index.to_be_bytes().to_vec())
                .expect("insert");
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
        assert_eq!(value.as_ref(), 199u64.to_be_bytes());
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
        let (key, _) = spans.first().unwrap().expect("first");
        assert_eq!(key_index(&key), Some(101));
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
        let (key, _) = spans.last().unwrap().expect("last");
        assert_eq!(key_index(&key), Some(129));
        spans.remove_from(128).unwrap();
        assert_eq!(span_trees(&db), vec![0, 1], "span 2 starts at 128");
        // The log continues where it was cut.
        spans.insert(128, vec![1]).unwrap();
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
                .insert(index_key(index), index.to_be_bytes().to_vec())
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
}
