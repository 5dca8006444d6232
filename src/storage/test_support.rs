//! Helpers for tests that open a node's data dir more than once in one process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    open, open_waiting_for_lock, LogStore, OpenError, StateMachineStore, LOCK_RELEASE_WAIT,
};

/// `storage::open`, retried while the previous handles are still letting go of the lock.
pub async fn open_when_unlocked(dir: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    let start = Instant::now();
    loop {
        match open(dir, true).await {
            Err(OpenError::Locked { .. }) if start.elapsed() < LOCK_RELEASE_WAIT => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            result => return result,
        }
    }
}

/// The node's sled database opened directly, with the segment size it was made with (the one
/// `storage::open` would use), retried while the lock is being released.
pub fn raw_db(dir: &Path) -> sled::Db {
    open_directly(&dir.join("sled"))
}

/// The directory of the image database of snapshot `generation` in the data dir `dir`.
pub fn image_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(super::SNAPSHOT_DIR).join(generation.to_string())
}

/// The image database of snapshot `generation` opened directly, as [`raw_db`] opens the main
/// one. The directory must exist: sled would otherwise create an empty database, which would
/// hide a missing image from the test.
pub fn raw_image_db(dir: &Path, generation: u64) -> sled::Db {
    let path = image_path(dir, generation);
    assert!(path.is_dir(), "no image database at {}", path.display());
    open_directly(&path)
}

/// The layout version recorded in the main database (`raft_meta`/`format`).
pub fn format_of(dir: &Path) -> u32 {
    let db = raw_db(dir);
    let meta = db.open_tree(super::log_store::META_TREE).unwrap();
    crate::raft::codec::decode(&meta.get("format").unwrap().expect("a recorded format")).unwrap()
}

/// Opens the sled database at `path` the way `storage` does (same segment size), waiting out
/// the lock of handles that were just dropped.
fn open_directly(path: &Path) -> sled::Db {
    let config = sled::Config::new()
        .segment_size(super::segment_size(path))
        .path(path);
    open_waiting_for_lock(&config).unwrap_or_else(|e| panic!("open sled directly: {e}"))
}
