//! Persistence: the Raft log (vote, entries, committed id, purge marker) and snapshots in one
//! sled database per node, and the in-memory state machine rebuilt from them on start.
//!
//! sled layout:
//! - trees `raft_log/<span>`: bincode `Entry` in pieces of at most 8 KiB under big-endian
//!   `index ++ piece number` (so sled's byte order is log order), 64 consecutive indexes per tree
//!   (see `log_store::spans`)
//! - tree `raft_meta`: `vote`, `committed`, `last_purged`, `format` → bincode values
//! - tree `snapshot`: `manifest`, naming the latest snapshot, whose image is in a sled database
//!   of its own under `snapshots/<generation>/` (see `state_machine::snapshot_store`)

// openraft's storage traits fix the error type to its (large) `StorageError`; the helpers here
// return it unboxed so it flows into those traits without conversion.
#![allow(clippy::result_large_err)]

pub mod disk_sync;
pub mod kv_map;
pub mod log_store;
pub mod snapshot_mark;
pub mod state_machine;
#[cfg(test)]
mod test_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::raft::codec;

pub use disk_sync::DiskSync;
pub use kv_map::{IdempotencyStats, LeaseSummary, ScanPage};
pub use log_store::LogStore;
pub use state_machine::{KvReader, StateMachineStore};

/// Directory under the data dir holding one sled database per snapshot image.
const SNAPSHOT_DIR: &str = "snapshots";

/// sled's page cache size (see `open`).
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// sled's log segment size for new data dirs. sled writes any record larger than a quarter of a
/// segment to a file of its own under `blobs/`, reclaimed only lazily; with its 512 KiB default
/// that is 128 KiB, less than one grouped log entry or one rewritten leaf of sixteen of them, so
/// most of the log went to blob files. 8 MiB segments raise the
/// threshold to 2 MiB, above a leaf of sixteen maximum-size grouped entries.
const SLED_SEGMENT_BYTES: usize = 8 * 1024 * 1024;

/// Version of the on-disk layout above; bumped when it changes incompatibly.
///
/// 3: snapshot images in sled databases of their own under `snapshots/`, log entries in trees
/// of 64 indexes. Version 2 kept the chunks in the main database and version 1 kept the
/// snapshot as one value under `snapshot`/`current`; both kept the log in one tree `raft_log`.
/// Such dirs are still opened (log and snapshot are converted) and are then marked 3, so that an
/// older binary refuses them with this message instead of finding no snapshot where it looks,
/// starting from an empty map over a purged log and diverging silently.
const FORMAT_VERSION: u32 = 3;
/// Layout versions this build opens.
const READABLE_VERSIONS: [u32; 3] = [1, 2, 3];

/// Why a data directory could not be opened, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data dir {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "cannot open the database in {path}: {source} (is another raftkv process using this data dir?)"
    )]
    Locked { path: PathBuf, source: sled::Error },
    #[error("cannot open the database in {path}: {reason} (the data dir looks damaged)")]
    Damaged { path: PathBuf, reason: String },
    #[error(
        "data dir {path} was written by an incompatible raftkv (layout version {found}, this build reads versions {READABLE_VERSIONS:?})"
    )]
    Version { path: PathBuf, found: u32 },
}

/// Opens (or creates) the sled database of a node and builds its log store and state machine.
///
/// Every record the node will need at start (vote, log bounds, snapshot) is decoded here once, so
/// a damaged directory is reported before Raft starts rather than as a fatal error later.
///
/// `fsync`: whether each flush Raft relies on is followed by an `fdatasync` (see [`disk_sync`]).
pub async fn open(
    data_dir: &Path,
    fsync: bool,
) -> Result<(LogStore, StateMachineStore), OpenError> {
    if data_dir.exists() && !data_dir.is_dir() {
        return Err(OpenError::NotADirectory {
            path: data_dir.to_path_buf(),
        });
    }
    std::fs::create_dir_all(data_dir).map_err(|source| OpenError::CreateDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let db_path = data_dir.join("sled");
    let db = sled::Config::new()
        .path(&db_path)
        .mode(sled::Mode::HighThroughput)
        .segment_size(segment_size(&db_path))
        // sled caches up to 1 GiB by default; the map already holds every value in memory and
        // the log is read back only to replicate recent entries, so a small cache suffices.
        .cache_capacity(SLED_CACHE_BYTES)
        .open()
        .map_err(|source| classify_open_error(&db_path, source))?;

    let damaged = damaged_at(&db_path);
    check_format(&db, &db_path)?;
    let sync = DiskSync::for_database(&db_path, fsync)
        .map_err(|e| damaged(format!("cannot open sled's data file for fdatasync: {e}")))?;
    let log_store = LogStore::open(&db, sync).map_err(|e| damaged(e.to_string()))?;
    log_store
        .check_readable()
        .map_err(|e| damaged(e.to_string()))?;
    let state_machine = StateMachineStore::open(
        &db,
        data_dir.join(SNAPSHOT_DIR),
        log_store.durable_index(),
        log_store.snapshot_mark(),
    )
    .map_err(|e| damaged(e.to_string()))?;
    check_purge_behind_snapshot(&log_store, &state_machine).map_err(damaged)?;
    mark_format(&db, &db_path)?;
    Ok((log_store, state_machine))
}

/// A log purged past the latest snapshot has lost the entries in between: nothing on this node
/// can rebuild the map, so say so instead of starting from a wrong one.
fn check_purge_behind_snapshot(
    log_store: &LogStore,
    state_machine: &StateMachineStore,
) -> Result<(), String> {
    let purged = log_store.last_purged_index().map_err(|e| e.to_string())?;
    let covered = state_machine.snapshot_last_index();
    match purged {
        Some(purged) if covered.is_none_or(|covered| covered < purged) => Err(format!(
            "the log was purged through index {purged}, but {}; the entries in between are \
             gone from this node. Wipe its data dir and add it again (raftkv cluster remove, \
             then serve --join) to copy them from its peers",
            covered.map_or("there is no snapshot".to_string(), |c| format!(
                "the latest snapshot covers only up to index {c}"
            ))
        )),
        _ => Ok(()),
    }
}

/// The segment size to open `db_path` with: sled refuses to reopen a database with a segment size
/// other than the one it was created with, so a data dir made by an earlier raftkv (512 KiB) keeps
/// its own, read from the `conf` file sled writes beside the database.
pub(crate) fn segment_size(db_path: &Path) -> usize {
    // The file ends in a binary checksum, so it is not valid UTF-8 as a whole.
    std::fs::read(db_path.join("conf"))
        .ok()
        .and_then(|conf| recorded_segment_size(&String::from_utf8_lossy(&conf)))
        .unwrap_or(SLED_SEGMENT_BYTES)
}

fn recorded_segment_size(conf: &str) -> Option<usize> {
    conf.lines()
        .find_map(|line| line.strip_prefix("segment_size:")?.trim().parse().ok())
}

/// sled releases a database's file lock from background threads shortly after the last handle
/// is dropped, so reopening it in the same process may briefly find it locked.
const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Whether sled refused to open a database because a handle still holds its file lock.
fn is_lock_error(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io)
        if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock"))
}

/// Opens a database, retrying for up to [`LOCK_RELEASE_WAIT`] while it is still locked by
/// handles of this process that were just dropped (an image written a moment ago, a test
/// reopening a data dir).
pub(crate) fn open_waiting_for_lock(config: &sled::Config) -> Result<sled::Db, sled::Error> {
    let start = Instant::now();
    loop {
        match config.open() {
            Err(e) if is_lock_error(&e) && start.elapsed() < LOCK_RELEASE_WAIT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

fn classify_open_error(path: &Path, source: sled::Error) -> OpenError {
    if is_lock_error(&source) {
        OpenError::Locked {
            path: path.to_path_buf(),
            source,
        }
    } else {
        OpenError::Damaged {
            path: path.to_path_buf(),
            reason: source.to_string(),
        }
    }
}

/// An error about `path` reported as a damaged data dir.
fn damaged_at(path: &Path) -> impl Fn(String) -> OpenError + '_ {
    move |reason| OpenError::Damaged {
        path: path.to_path_buf(),
        reason,
    }
}

/// Refuses a layout this build cannot read; a pristine database gets no mark until
/// [`mark_format`].
fn check_format(db: &sled::Db, path: &Path) -> Result<(), OpenError> {
    let damaged = damaged_at(path);
    let meta = db
        .open_tree(log_store::META_TREE)
        .map_err(|e| damaged(e.to_string()))?;
    if let Some(bytes) = meta.get("format").map_err(|e| damaged(e.to_string()))? {
        let found: u32 = codec::decode(&bytes).map_err(|e| damaged(e.to_string()))?;
        if !READABLE_VERSIONS.contains(&found) {
            return Err(OpenError::Version {
                path: path.to_path_buf(),
                found,
            });
        }
    }
    Ok(())
}

/// Records (durably) that the database now has this build's layout; called once everything
/// older has been converted.
fn mark_format(db: &sled::Db, path: &Path) -> Result<(), OpenError> {
    let write = || -> Result<(), Box<dyn std::error::Error>> {
        let meta = db.open_tree(log_store::META_TREE)?;
        meta.insert("format", codec::encode(&FORMAT_VERSION)?)?;
        db.flush()?;
        Ok(())
    };
    write().map_err(|e| damaged_at(path)(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::test_support::{format_of, open_when_unlocked, raw_db};
    use super::*;

    fn segment_size_of(data_dir: &Path) -> Option<usize> {
        let conf = std::fs::read(data_dir.join("sled").join("conf")).ok()?;
        recorded_segment_size(&String::from_utf8_lossy(&conf))
    }

    #[tokio::test]
    async fn a_new_data_dir_uses_large_segments() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path(), true).await.unwrap();
        assert_eq!(segment_size_of(dir.path()), Some(SLED_SEGMENT_BYTES));
    }

    /// Data dirs written before the segment size changed were made with sled's 512 KiB default,
    /// which sled refuses to reopen with any other size.
    #[tokio::test]
    async fn a_data_dir_made_with_sleds_default_segments_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new()
                .path(dir.path().join("sled"))
                .open()
                .unwrap();
            db.flush().unwrap();
        }
        assert_eq!(segment_size_of(dir.path()), Some(512 * 1024));
        open(dir.path(), true).await.unwrap();
        assert_eq!(segment_size_of(dir.path()), Some(512 * 1024));
    }

    /// Sets the recorded layout version with sled directly, as another build would have.
    async fn record_format(dir: &Path, version: u32) {
        drop(open_when_unlocked(dir).await.unwrap());
        let db = raw_db(dir);
        let meta = db.open_tree(log_store::META_TREE).unwrap();
        meta.insert("format", codec::encode(&version).unwrap())
            .unwrap();
        db.flush().unwrap();
    }

    #[tokio::test]
    async fn a_version_1_data_dir_opens_and_is_then_marked_version_3() {
        let dir = tempfile::tempdir().unwrap();
        record_format(dir.path(), 1).await;
        drop(open_when_unlocked(dir.path()).await.unwrap());
        assert_eq!(format_of(dir.path()), FORMAT_VERSION);
    }

    #[tokio::test]
    async fn a_data_dir_of_an_unknown_layout_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        record_format(dir.path(), 7).await;
        match open_when_unlocked(dir.path()).await {
            Err(e @ OpenError::Version { found: 7, .. }) => {
                assert!(e.to_string().contains("layout version 7"), "{e}");
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a layout-7 data dir was opened"),
        }
    }
}
