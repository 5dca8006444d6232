//! Each snapshot image in a sled database of its own: `<data dir>/snapshots/<generation>/`.
//!
//! Why not a tree of the node's main database (layout 2 did that): sled keeps every page it has
//! touched in its page cache until its accounting catches up, which it does per shard and only
//! after 64 accesses to that shard, so after writing or reading an image most of it stayed
//! resident, cache of an image already decoded. And sled reclaims the space of a replaced image only by
//! segment cleaning, once a segment is at most half live, so the main database file kept
//! growing by a multiple of the image with every snapshot. A database per image is opened only
//! while an image is written or read, so closing it frees its cache, and a replaced image is
//! deleted as a whole directory.
//!
//! Write amplification: sled splits a leaf once it holds 17 values, rewriting both halves, so
//! appending chunks in key order writes each chunk about three times. The keys are therefore
//! first inserted with empty values, which builds every leaf while it is tiny, and then filled:
//! a fill adds one delta to a leaf of nine, under sled's threshold of ten deltas for a rewrite,
//! so each chunk is written once.

use std::path::{Path, PathBuf};

/// Bytes of the image per sled value. Nine of them make a leaf (see the module docs), which
/// stays under sled's blob threshold of a quarter segment so leaves live in its segments.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// The file in which sled keeps a database's data.
const SLED_DATA_FILE: &str = "db";

/// The directory holding one database per stored image.
pub struct ImageDir {
    root: PathBuf,
}

impl ImageDir {
    pub fn new(root: PathBuf) -> Self {
        ImageDir { root }
    }

    fn path(&self, generation: u64) -> PathBuf {
        self.root.join(generation.to_string())
    }

    /// Whether an image of `generation` is on disk (complete or not: the manifest decides).
    pub fn contains(&self, generation: u64) -> bool {
        self.path(generation).is_dir()
    }

    /// Creates the database of `generation` and stores `chunks` in it under `key(index)`,
    /// flushed to disk, with the directory entries synced, before it returns. sled syncs its
    /// files but never a directory, and the manifest naming this image is written next, after
    /// which the previous image is deleted and the log purged: a power loss must not find the
    /// manifest without the image.
    pub fn write<'a>(
        &self,
        generation: u64,
        chunks: impl ExactSizeIterator<Item = &'a [u8]> + Clone,
        key: impl Fn(u64) -> [u8; 16],
    ) -> Result<(), sled::Error> {
        if !self.root.is_dir() {
            std::fs::create_dir_all(&self.root)?;
            if let Some(parent) = self.root.parent() {
                sync_dir(parent)?;
            }
        }
        let path = self.path(generation);
        if path.exists() {
            // Left by a write cut short; nothing names it.
            std::fs::remove_dir_all(&path)?;
        }
        let db = config(&path).create_new(true).open()?;
        let count = chunks.len() as u64;
        for index in 0..count {
            db.insert(key(index), sled::IVec::default())?;
        }
        for (index, chunk) in (0u64..).zip(chunks) {
            db.insert(key(index), chunk)?;
        }
        db.flush()?;
        drop(db);
        // sled's flush does not reach the device cache (see `storage::disk_sync`); the manifest
        // that names this image is written only after this returns.
        std::fs::File::open(path.join(SLED_DATA_FILE))?.sync_data()?;
        sync_dir(&path)?;
        let blobs = path.join("blobs");
        if blobs.is_dir() {
            sync_dir(&blobs)?;
        }
        sync_dir(&self.root)?;
        Ok(())
    }

    /// Opens the database of `generation`, waiting out the lock of one just closed. `None` when
    /// there is no such database, or its directory lost its data file: sled would quietly
    /// create an empty one.
    pub fn open(&self, generation: u64) -> Result<Option<sled::Db>, sled::Error> {
        let path = self.path(generation);
        if !path.join(SLED_DATA_FILE).is_file() {
            return Ok(None);
        }
        // An image written a moment ago may still be locked by the handle just dropped.
        crate::storage::open_waiting_for_lock(&config(&path)).map(Some)
    }

    /// Deletes every image database but `keep`'s (all of them when `keep` is `None`).
    pub fn remove_except(&self, keep: Option<u64>) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let keep = keep.map(|generation| generation.to_string());
        for entry in entries {
            let entry = entry?;
            if Some(entry.file_name().to_string_lossy().as_ref()) == keep.as_deref() {
                continue;
            }
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        sync_dir(&self.root)
    }
}

fn config(path: &Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        .segment_size(crate::storage::segment_size(path))
        // Written once and read once while open; nothing is gained by caching more.
        .cache_capacity(8 * 1024 * 1024)
        // No background flusher thread: every write ends with an explicit flush.
        .flush_every_ms(None)
}

/// Makes the creation or removal of entries in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
