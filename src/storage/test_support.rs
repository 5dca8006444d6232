//! Helpers for tests that open a node's data dir more than once in one process.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{open, LogStore, OpenError, StateMachineStore};

/// sled releases its file lock from background threads shortly after the last handle is
/// dropped, so reopening a directory in the same process may briefly find it locked.
pub const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// `storage::open`, retried while the previous handles are still letting go of the lock.
pub async fn open_when_unlocked(dir: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    let start = Instant::now();
    loop {
        match open(dir).await {
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
    let path = dir.join("sled");
    let config = sled::Config::new()
        .segment_size(super::segment_size(&path))
        .path(path);
    let start = Instant::now();
    loop {
        match config.open() {
            Ok(db) => return db,
            Err(sled::Error::Io(e)) if start.elapsed() < LOCK_RELEASE_WAIT => {
                assert!(e.to_string().contains("lock"), "open sled directly: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("open sled directly: {e}"),
        }
    }
}
