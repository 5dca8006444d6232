//! How far the durable snapshot reaches, so that a purge never passes it (DESIGN.md,
//! invariant 4).
//!
//! openraft queues `PurgeLog` for a received snapshot right after handing the snapshot to the
//! state-machine task, without waiting for the install. Purged first and crashed before the
//! install's manifest was written, a node would hold an old snapshot and a log that starts after
//! the new one: the entries in between exist nowhere on it, and it could never start again. So
//! the receiving side announces an incoming snapshot before openraft sees its last chunk, the
//! snapshot store records each manifest once it is on disk, and a purge up to an announced
//! snapshot waits until its manifest is.
//!
//! Every other purge openraft makes is behind a snapshot this node built, whose manifest is on
//! disk before openraft learns of it, so it never waits.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Reach {
    /// Last log index covered by the snapshot whose manifest is on disk.
    durable: Option<u64>,
    /// Last log index covered by the latest snapshot announced as being received.
    incoming: Option<u64>,
}

/// Shared between the log store (purge), the snapshot store and the Raft service; clones
/// observe the same record.
#[derive(Clone, Default)]
pub struct SnapshotMark {
    reach: Arc<watch::Sender<Reach>>,
}

impl SnapshotMark {
    /// Records that the snapshot through `index` has its manifest on disk.
    pub fn record_durable(&self, index: u64) {
        self.raise(index, |reach| &mut reach.durable);
    }

    /// Records that a snapshot through `index` has fully arrived and is about to be installed.
    pub fn announce_incoming(&self, index: u64) {
        self.raise(index, |reach| &mut reach.incoming);
    }

    /// Moves one bound of the reach up to `index`; never down.
    fn raise(&self, index: u64, bound: fn(&mut Reach) -> &mut Option<u64>) {
        self.reach.send_if_modified(|reach| {
            let bound = bound(reach);
            let moved = *bound < Some(index);
            if moved {
                *bound = Some(index);
            }
            moved
        });
    }

    /// Whether a purge through `index` must wait: a snapshot reaching it was announced and its
    /// manifest is not on disk yet.
    fn must_wait(reach: &Reach, index: u64) -> bool {
        reach.incoming >= Some(index) && reach.durable < Some(index)
    }

    /// Returns once a purge through `index` cannot pass the durable snapshot.
    pub async fn wait_before_purge(&self, index: u64) {
        let mut receiver = self.reach.subscribe();
        loop {
            let waited = tokio::time::timeout(
                Duration::from_secs(10),
                receiver.wait_for(|reach| !Self::must_wait(reach, index)),
            )
            .await;
            match waited {
                Ok(_) => return,
                Err(_) => tracing::warn!(
                    index,
                    "purge waiting for the snapshot being installed to reach the disk"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn returns_soon(mark: &SnapshotMark, index: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(200), mark.wait_before_purge(index))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_purge_waits_only_for_an_announced_snapshot_not_yet_on_disk() {
        let mark = SnapshotMark::default();
        assert!(returns_soon(&mark, 50).await, "nothing announced");
        mark.record_durable(40);
        mark.announce_incoming(100);
        assert!(returns_soon(&mark, 40).await, "behind the durable snapshot");
        assert!(
            !returns_soon(&mark, 100).await,
            "the install is not on disk"
        );
        let waiter = tokio::spawn({
            let mark = mark.clone();
            async move { mark.wait_before_purge(100).await }
        });
        mark.record_durable(100);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released once the manifest is on disk")
            .expect("task");
        assert!(
            returns_soon(&mark, 150).await,
            "past every announced snapshot"
        );
    }
}
