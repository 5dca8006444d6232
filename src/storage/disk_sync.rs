//! Makes what sled has flushed survive a power loss, not only a process crash.
//!
//! sled's flush writes its buffers with `pwrite` and then `sync_file_range`, which waits for the
//! pages to reach the device but neither flushes the device's volatile write cache nor writes the
//! file's metadata (its new length). That is enough when only the process dies (`kill -9`, a
//! panic: the kernel still has every page), but after a power loss a node could come back with
//! an older vote (and vote twice in one term: two leaders) or without log entries it had
//! acknowledged. So every flush that Raft relies on (a log append before it is acknowledged, a
//! vote before it is answered, a purge marker before entries go) is followed by an `fdatasync`
//! of sled's data file, which flushes the data, the length and the device cache.
//!
//! `--unsafe-no-fsync` (etcd's name) skips that last step: a process crash still loses nothing
//! acknowledged, a power loss may.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// The one file sled 0.34 keeps its log and pages in, inside the database directory.
pub const SLED_DATA_FILE: &str = "db";

/// Whether and how a flushed database is made durable; clones share the file handle.
#[derive(Clone, Debug, Default)]
pub struct DiskSync {
    /// sled's data file, open for `fdatasync` (any descriptor of a file syncs all of it);
    /// `None` when syncing is off.
    data_file: Option<Arc<File>>,
}

impl DiskSync {
    /// Syncs the data file of the sled database in `db_path` after each flush, when `enabled`.
    /// The directory is synced once too, so that the file itself survives a power loss.
    pub fn for_database(db_path: &Path, enabled: bool) -> std::io::Result<Self> {
        if !enabled {
            return Ok(Self::off());
        }
        let data_file = File::open(db_path.join(SLED_DATA_FILE))?;
        File::open(db_path)?.sync_all()?;
        Ok(Self {
            data_file: Some(Arc::new(data_file)),
        })
    }

    /// No `fdatasync`: what sled's flush gives, and nothing more.
    pub fn off() -> Self {
        Self { data_file: None }
    }

    /// Whether flushes are followed by an `fdatasync`.
    pub fn is_on(&self) -> bool {
        self.data_file.is_some()
    }

    /// Call right after a successful sled flush: once it returns, everything that flush wrote
    /// is on stable storage.
    pub fn after_flush(&self) -> std::io::Result<()> {
        match &self.data_file {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_the_data_file_of_a_real_database_and_can_be_off() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = sled::Config::new()
            .path(dir.path().join("sled"))
            .open()
            .expect("sled");
        db.insert("k", "v").expect("insert");
        db.flush().expect("flush");
        let sync = DiskSync::for_database(&dir.path().join("sled"), true).expect("data file");
        assert!(sync.is_on());
        sync.after_flush().expect("fdatasync");
        assert!(!DiskSync::off().is_on());
        DiskSync::off().after_flush().expect("nothing to do");
    }

    #[test]
    fn a_database_without_its_data_file_is_an_error_not_a_silent_no_op() {
        let dir = tempfile::tempdir().expect("temporary directory");
        assert!(DiskSync::for_database(dir.path(), true).is_err());
    }
}
