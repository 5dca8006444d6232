//! Which of this node's log entries openraft was told about before they reached the disk, for
//! the parts of a leader that must not act on an entry until it has.
//!
//! openraft 0.9 waits for the leader's own log flush before it sends the new entries to the
//! followers, so a write paid one flush on the leader and then another on a follower, one after
//! the other. The leader now acknowledges its own appends to openraft at once and flushes them
//! in the background, as etcd's leader does: the flush overlaps the round trip to the
//! followers. That lets openraft count the leader towards a quorum before the entry is on the
//! leader's disk, so the two places where a commit becomes visible wait here instead:
//! - the state machine applies an entry (and so answers its client) only once no entry up to
//!   it is still waiting for its flush (`StateMachineStore::apply`);
//! - an AppendEntries tells followers a commit index only under the same condition (`network`),
//!   so no follower applies an entry the leader could still lose; after a short wait it repeats
//!   the last commit index it told instead, so that a slow disk does not time out heartbeats.
//!
//! An entry is therefore applied anywhere only once the leader and a follower that acknowledged
//! it (followers acknowledge only after their own flush) both have it on disk: a majority of
//! three. Followers' appends are never acknowledged early, so on a follower nothing waits.

use std::sync::Arc;

use tokio::sync::watch;

/// Where the log's early acknowledgements and its flushes have got to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Progress {
    Running {
        /// Highest index acknowledged to openraft before it was flushed.
        acknowledged_early: u64,
        /// Every entry up to and including this index is on disk.
        durable: u64,
    },
    /// A flush failed: nothing more can be called durable, and waiting is pointless.
    Failed(String),
}

impl Progress {
    /// Whether every entry up to `index` that was acknowledged early is on disk by now.
    fn settled_through(&self, index: u64) -> bool {
        match self {
            Progress::Running {
                acknowledged_early,
                durable,
            } => index <= *durable || acknowledged_early <= durable,
            Progress::Failed(_) => true,
        }
    }
}

/// Shared record of early acknowledgements and flushes; clones observe the same record.
#[derive(Clone)]
pub struct DurableIndex {
    progress: Arc<watch::Sender<Progress>>,
}

impl DurableIndex {
    /// Starts with everything up to `durable` on disk (the log as it was opened) and nothing
    /// acknowledged early.
    pub fn new(durable: u64) -> Self {
        Self {
            progress: Arc::new(watch::Sender::new(Progress::Running {
                acknowledged_early: 0,
                durable,
            })),
        }
    }

    /// Records that entries up to `index` are about to be acknowledged before their flush.
    pub fn acknowledge_early(&self, index: u64) {
        self.progress.send_if_modified(|progress| match progress {
            Progress::Running {
                acknowledged_early, ..
            } if *acknowledged_early < index => {
                *acknowledged_early = index;
                true
            }
            _ => false,
        });
    }

    /// Records that every entry up to `through` is on disk; never moves backwards.
    pub fn advance(&self, through: u64) {
        self.progress.send_if_modified(|progress| match progress {
            Progress::Running { durable, .. } if *durable < through => {
                *durable = through;
                true
            }
            _ => false,
        });
    }

    /// Records that the log now ends at `index` (a truncation): entries written later at the
    /// indexes above it are durable only once flushed again.
    pub fn truncate_to(&self, index: u64) {
        self.progress.send_if_modified(|progress| match progress {
            Progress::Running {
                acknowledged_early,
                durable,
            } => {
                let before = (*acknowledged_early, *durable);
                *acknowledged_early = (*acknowledged_early).min(index);
                *durable = (*durable).min(index);
                before != (*acknowledged_early, *durable)
            }
            Progress::Failed(_) => false,
        });
    }

    /// Records that a flush failed; every waiter, now and later, gets this error.
    pub fn fail(&self, reason: String) {
        self.progress.send_replace(Progress::Failed(reason));
    }

    /// Whether no entry up to `index` that was acknowledged early is still unflushed, or the
    /// flush error that makes waiting for it pointless.
    pub fn is_settled_through(&self, index: u64) -> Result<bool, String> {
        match &*self.progress.borrow() {
            Progress::Failed(reason) => Err(format!("the log could not be flushed: {reason}")),
            progress => Ok(progress.settled_through(index)),
        }
    }

    /// The highest index up to `index` that openraft may count as committed without this node
    /// being the one copy still missing from a majority: `index` itself once every early
    /// acknowledgement up to it is flushed, otherwise the durable end of the log (after a failed
    /// flush, `index`: nothing will become durable any more, and openraft stops).
    pub fn settled_prefix(&self, index: u64) -> u64 {
        match &*self.progress.borrow() {
            progress @ Progress::Running { durable, .. } => {
                if progress.settled_through(index) {
                    index
                } else {
                    (*durable).min(index)
                }
            }
            Progress::Failed(_) => index,
        }
    }

    /// Waits until no entry up to `index` that was acknowledged early is still unflushed, or
    /// fails with the flush error that makes that impossible.
    pub async fn wait_for(&self, index: u64) -> Result<(), String> {
        let mut receiver = self.progress.subscribe();
        let settled = receiver
            .wait_for(|progress| progress.settled_through(index))
            .await
            .map_err(|_| "the log store was closed".to_string())?;
        match &*settled {
            Progress::Running { .. } => Ok(()),
            Progress::Failed(reason) => Err(format!("the log could not be flushed: {reason}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn answer_within_200ms(durable: &DurableIndex, index: u64) -> Option<Result<(), String>> {
        tokio::time::timeout(Duration::from_millis(200), durable.wait_for(index))
            .await
            .ok()
    }

    #[tokio::test]
    async fn without_early_acknowledgements_nothing_waits() {
        let durable = DurableIndex::new(0);
        assert_eq!(answer_within_200ms(&durable, 50).await, Some(Ok(())));
    }

    #[tokio::test]
    async fn a_waiter_is_released_once_the_early_entries_up_to_it_are_flushed() {
        let durable = DurableIndex::new(3);
        durable.acknowledge_early(6);
        assert_eq!(answer_within_200ms(&durable, 3).await, Some(Ok(())));
        assert_eq!(
            answer_within_200ms(&durable, 7).await,
            None,
            "4..=6 unflushed"
        );
        let waiter = tokio::spawn({
            let durable = durable.clone();
            async move { durable.wait_for(5).await }
        });
        durable.advance(4);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "released at 4 while waiting for 5");
        durable.advance(5);
        let result = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(result.expect("released").expect("task"), Ok(()));
        durable.advance(6);
        assert_eq!(answer_within_200ms(&durable, 9).await, Some(Ok(())));
    }

    #[tokio::test]
    async fn a_truncation_forgets_the_early_entries_it_removes() {
        let durable = DurableIndex::new(2);
        durable.acknowledge_early(8);
        durable.advance(4);
        assert_eq!(answer_within_200ms(&durable, 5).await, None);
        durable.truncate_to(4);
        assert_eq!(answer_within_200ms(&durable, 5).await, Some(Ok(())));
    }

    #[test]
    fn the_reported_commit_index_stops_at_the_first_unflushed_early_entry() {
        let durable = DurableIndex::new(3);
        assert_eq!(durable.settled_prefix(3), 3);
        durable.acknowledge_early(8);
        assert_eq!(durable.settled_prefix(3), 3, "3 was on disk before");
        assert_eq!(durable.settled_prefix(7), 3, "4..=7 unflushed");
        durable.advance(6);
        assert_eq!(durable.settled_prefix(7), 6);
        durable.advance(8);
        assert_eq!(durable.settled_prefix(7), 7);
        assert_eq!(durable.settled_prefix(20), 20, "nothing early above 8");
    }

    #[tokio::test]
    async fn a_failed_flush_fails_every_waiter() {
        let durable = DurableIndex::new(1);
        durable.acknowledge_early(3);
        durable.fail("disk full".into());
        let error = answer_within_200ms(&durable, 2)
            .await
            .expect("not left waiting");
        assert!(error.expect_err("failed").contains("disk full"));
        durable.advance(5);
        assert!(answer_within_200ms(&durable, 5)
            .await
            .expect("answered")
            .is_err());
    }
}
