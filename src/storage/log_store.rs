//! The Raft log in sled, following openraft's storage contract:
//! - `append` hands its callback to a flusher thread that calls it only once the entries are on
//!   disk; every append waiting at that moment shares one flush (group commit). The exception
//!   is a leader's append of its own new entries, acknowledged at once and made durable in the
//!   background, with [`DurableIndex`] holding back whatever must wait for it (see [`durable`]),
//! - `save_vote` is flushed before it returns,
//! - `truncate(id)` removes `[id.index, ∞)` and `purge(id)` removes `[0, id.index]` after
//!   persisting the purge marker.
//!
//! Entries live in sled trees of 64 consecutive indexes ([`spans`]), so a purge drops whole trees.

pub mod durable;
mod spans;

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, OnceLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError, Vote,
};
use tokio::sync::{mpsc, oneshot};

pub use self::durable::DurableIndex;
use self::spans::Spans;
use super::disk_sync::DiskSync;
use super::snapshot_mark::SnapshotMark;
use crate::raft::codec;
use crate::raft::{Entry, LogId, NodeId, StorageError, TypeConfig};

pub(crate) const META_TREE: &str = "raft_meta";

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// Work for the flusher thread.
enum FlushJob {
    /// Entries up to `last_index` were written: flush, record them durable, then tell openraft
    /// through `callback` unless it was already told.
    Appended {
        last_index: u64,
        callback: Option<LogFlushed<TypeConfig>>,
    },
    /// Answered once every job queued before it is done.
    Barrier(oneshot::Sender<()>),
}

/// Handle to the sled-backed log. Clones share the same trees, flusher and vote record.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    /// Turns each flush into one that survives a power loss (see `disk_sync`).
    sync: DiskSync,
    log: Arc<Spans>,
    meta: sled::Tree,
    flusher: mpsc::UnboundedSender<FlushJob>,
    durable: DurableIndex,
    /// This node's id, once known: only then are its own leader appends recognised.
    own_id: Arc<OnceLock<NodeId>>,
    /// How far the durable snapshot reaches: a purge waits for an install (see
    /// `snapshot_mark`).
    snapshot_mark: SnapshotMark,
    /// The vote last saved, which tells whose entries an append carries.
    vote: Arc<Mutex<Option<Vote<NodeId>>>>,
}

impl LogStore {
    /// Opens the log trees and starts the flusher thread. Everything already in the log counts
    /// as durable.
    pub fn open(db: &sled::Db, sync: DiskSync) -> Result<Self, sled::Error> {
        let log = Arc::new(Spans::open(db)?);
        let last_index = log.last()?.map_or(0, |(index, _)| index);
        let durable = DurableIndex::new(last_index);
        let (flusher, pending) = mpsc::unbounded_channel();
        let flush_db = db.clone();
        let flush_durable = durable.clone();
        let flush_sync = sync.clone();
        std::thread::Builder::new()
            .name("raftkv-log-flush".into())
            .spawn(move || run_flusher(flush_db, flush_sync, flush_durable, pending))
            .map_err(sled::Error::Io)?;
        let meta = db.open_tree(META_TREE)?;
        let vote = meta
            .get(KEY_VOTE)?
            .and_then(|bytes| codec::decode::<Vote<NodeId>>(&bytes).ok());
        Ok(Self {
            db: db.clone(),
            sync,
            log,
            meta,
            flusher,
            durable,
            own_id: Arc::default(),
            snapshot_mark: SnapshotMark::default(),
            vote: Arc::new(Mutex::new(vote)),
        })
    }

    /// Tells the store which node it belongs to, so that this node's appends as leader are
    /// acknowledged before their flush (see [`durable`]). Without it every append waits for
    /// its flush, as openraft's contract has it.
    pub fn set_node_id(&self, id: NodeId) {
        let _ = self.own_id.set(id);
    }

    /// Turns a saved committed vote for `own_id` (this node led when it stopped) into the same
    /// vote uncommitted, durably, and returns the term it led in; leaves any other vote alone.
    /// Call it before `Raft::new`.
    ///
    /// Why: openraft 0.9 restores a node whose saved vote is a committed vote for itself as
    /// leader of that same term, without a new first entry. A leader acknowledges its own
    /// appends before they are on its disk (see [`durable`]), so after a crash its log can be
    /// shorter than what it already sent: resuming the term, it would hand out log ids (term,
    /// leader, index) that followers hold for other entries, and a follower's conflict check,
    /// which compares log ids only, would keep its old entry. Log Matching would be gone. An
    /// uncommitted vote for itself makes the node start as a follower that has voted for itself
    /// in that term: it grants no other candidate of the term, takes no leader of it (it led
    /// it), and campaigns in a new term, whose first entry truncates any orphaned tail.
    pub async fn give_up_restored_leadership(
        &mut self,
        own_id: NodeId,
    ) -> Result<Option<u64>, StorageError> {
        let Some(vote) = self.read_vote().await? else {
            return Ok(None);
        };
        if !(vote.committed && vote.leader_id.node_id == own_id) {
            return Ok(None);
        }
        let uncommitted = Vote::new(vote.leader_id.term, own_id);
        self.save_vote(&uncommitted).await?;
        Ok(Some(vote.leader_id.term))
    }

    /// How far the durable snapshot reaches, shared with the snapshot store and the service
    /// that receives snapshots.
    pub fn snapshot_mark(&self) -> SnapshotMark {
        self.snapshot_mark.clone()
    }

    /// The durable end of this log, shared with the state machine and the network.
    pub fn durable_index(&self) -> DurableIndex {
        self.durable.clone()
    }

    /// Whether `entries` are this node's own new entries as leader: the last saved vote is for
    /// this node and every entry was created under that vote's leadership. A membership change
    /// is never acknowledged early: openraft starts the next step of a change (and lets the
    /// next change begin) as soon as it counts the entry committed, which must not rest on a
    /// copy that a crash of this node would undo. A follower always
    /// saves a vote for its leader before taking the leader's entries, so its appends never
    /// match, not even entries this node created in an earlier term.
    fn own_leader_entries(&self, entries: &[Entry]) -> bool {
        let Some(own_id) = self.own_id.get() else {
            return false;
        };
        let vote = self.vote.lock().unwrap_or_else(|p| p.into_inner());
        match vote.as_ref() {
            Some(vote) if vote.leader_id.node_id == *own_id => entries.iter().all(|entry| {
                entry.log_id.leader_id == vote.leader_id
                    && !matches!(entry.payload, EntryPayload::Membership(_))
            }),
            _ => false,
        }
    }

    /// Writes `entries` and queues their flush. Without a `callback` (openraft is told at once
    /// by the caller) they are recorded as acknowledged early until the flush is done.
    fn write_and_flush_later(
        &self,
        entries: Vec<Entry>,
        callback: Option<LogFlushed<TypeConfig>>,
    ) -> Result<(), StorageError> {
        let last_index = entries.last().map_or(0, |entry| entry.log_id.index);
        self.write_entries(entries)?;
        if callback.is_none() {
            self.durable.acknowledge_early(last_index);
        }
        self.flusher
            .send(FlushJob::Appended {
                last_index,
                callback,
            })
            .map_err(|_| write_logs(std::io::Error::other("log flusher stopped")))
    }

    /// Waits until every job queued with the flusher so far is done.
    async fn drain_flusher(&self) -> Result<(), StorageError> {
        let stopped = || write_logs(std::io::Error::other("log flusher stopped"));
        let (done, finished) = oneshot::channel();
        self.flusher
            .send(FlushJob::Barrier(done))
            .map_err(|_| stopped())?;
        finished.await.map_err(|_| stopped())
    }

    /// Index of the last purged entry, if any was purged.
    pub fn last_purged_index(&self) -> Result<Option<u64>, StorageError> {
        Ok(self
            .read_meta::<LogId>(KEY_LAST_PURGED, ErrorSubject::Store)?
            .map(|id| id.index))
    }

    /// Decodes the records read at start-up, so damage is reported before Raft starts.
    pub fn check_readable(&self) -> Result<(), StorageError> {
        self.read_meta::<Vote<NodeId>>(KEY_VOTE, ErrorSubject::Vote)?;
        self.read_meta::<Option<LogId>>(KEY_COMMITTED, ErrorSubject::Store)?;
        self.read_meta::<LogId>(KEY_LAST_PURGED, ErrorSubject::Store)?;
        if let Some(first) = self.log.first().map_err(read_logs)? {
            decode_entry(first.0, &first.1)?;
        }
        self.last_log_id()?;
        Ok(())
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        let io_err = |e: String| io_error(subject.clone(), ErrorVerb::Read, e);
        match self.meta.get(key).map_err(|e| io_err(e.to_string()))? {
            None => Ok(None),
            Some(bytes) => Ok(Some(
                codec::decode(&bytes).map_err(|e| io_err(e.to_string()))?,
            )),
        }
    }

    fn write_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let io_err = |e: String| io_error(subject.clone(), ErrorVerb::Write, e);
        let bytes = codec::encode(value).map_err(|e| io_err(e.to_string()))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| io_err(e.to_string()))?;
        Ok(())
    }

    /// Flushes sled and makes the flush durable (see `disk_sync`).
    async fn flush(&self, subject: ErrorSubject<NodeId>) -> Result<(), StorageError> {
        let fail = |e: String| io_error(subject.clone(), ErrorVerb::Write, e);
        self.db
            .flush_async()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if self.sync.is_on() {
            let sync = self.sync.clone();
            tokio::task::spawn_blocking(move || sync.after_flush())
                .await
                .map_err(|e| fail(e.to_string()))?
                .map_err(|e| fail(format!("fdatasync: {e}")))?;
        }
        Ok(())
    }

    fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        match self.log.last().map_err(read_logs)? {
            None => Ok(None),
            Some((index, value)) => Ok(Some(decode_entry(index, &value)?.log_id)),
        }
    }

    /// Writes entries to sled, not yet flushed: the first half of `append`, public so that the
    /// append path can be benchmarked without openraft's callback.
    ///
    /// Plain inserts rather than one `sled::Batch`: a batch adds a manifest record that makes the
    /// next flush write and sync a second IO buffer, and Raft needs no atomicity here. sled
    /// recovers its log as a prefix, so a crash before the flush keeps a prefix of these
    /// entries, which openraft handles like any unflushed tail.
    pub fn write_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<(), StorageError> {
        let encoded = entries
            .into_iter()
            .map(|entry| {
                Ok((
                    entry.log_id.index,
                    codec::encode(&entry).map_err(write_logs)?,
                ))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        self.log.insert_all(&encoded).map_err(write_logs)
    }

    /// Flushes everything written so far: the second half of `append`.
    pub async fn flush_log(&self) -> Result<(), StorageError> {
        self.flush(ErrorSubject::Logs).await
    }
}

/// Flushes sled for every batch of jobs waiting, records what became durable, and then
/// acknowledges them in order.
///
/// One flush covers every write made before it, so all jobs queued while a flush runs are
/// answered by the next one: many client writes share one disk sync.
///
/// It runs on a thread of its own and calls sled's blocking `flush`: `flush_async` would hand
/// each flush to sled's thread pool, whose queue wakes all seven of its idle threads per job,
/// and then hop back to tokio.
fn run_flusher(
    db: sled::Db,
    sync: DiskSync,
    durable: DurableIndex,
    mut pending: mpsc::UnboundedReceiver<FlushJob>,
) {
    let mut waiting = Vec::new();
    while let Some(first) = pending.blocking_recv() {
        waiting.push(first);
        while let Ok(next) = pending.try_recv() {
            waiting.push(next);
        }
        // Failpoint `log-flush-before`: the batch is written, not yet flushed. A delay here
        // widens the window in which a leader has sent entries that are not on its own disk,
        // which a crash must not turn into a broken log (DESIGN.md, invariant 1); `crash`
        // ends the process inside that window.
        fail::fail_point!("log-flush-before", |_| crate::failpoints::crash_now(
            "log-flush-before"
        ));
        let result = db
            .flush()
            .and_then(|_| sync.after_flush().map_err(sled::Error::Io));
        match &result {
            Ok(_) => {
                let flushed = waiting.iter().filter_map(|job| match job {
                    FlushJob::Appended { last_index, .. } => Some(*last_index),
                    FlushJob::Barrier(_) => None,
                });
                if let Some(through) = flushed.max() {
                    durable.advance(through);
                }
            }
            Err(e) => durable.fail(e.to_string()),
        }
        for job in waiting.drain(..) {
            match job {
                FlushJob::Appended {
                    callback: Some(callback),
                    ..
                } => callback.log_io_completed(match &result {
                    Ok(_) => Ok(()),
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                }),
                FlushJob::Appended { callback: None, .. } => {}
                FlushJob::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

fn io_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, message: String) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::error(message)).into()
}

fn read_logs(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_logs(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

fn decode_entry(index: u64, value: &[u8]) -> Result<Entry, StorageError> {
    let entry: Entry = codec::decode(value).map_err(read_logs)?;
    if index != entry.log_id.index {
        let msg = format!(
            "log key {index} does not match entry index {}",
            entry.log_id.index
        );
        return Err(read_logs(std::io::Error::other(msg)));
    }
    Ok(entry)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let items = self.log.range(&range).map_err(read_logs)?;
        items
            .iter()
            .map(|(index, value)| decode_entry(*index, value))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.read_meta::<LogId>(KEY_LAST_PURGED, ErrorSubject::Store)?;
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote, ErrorSubject::Vote)?;
        self.flush(ErrorSubject::Vote).await?;
        *self.vote.lock().unwrap_or_else(|p| p.into_inner()) = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(KEY_VOTE, ErrorSubject::Vote)
    }

    /// Not flushed on its own: the next append's flush persists it. openraft uses it only to
    /// re-apply sooner after a restart, and it never names an entry missing after a crash: it is
    /// written after the entries it covers, and sled recovers a prefix of its writes.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_meta(KEY_COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_meta::<Option<LogId>>(KEY_COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if self.own_leader_entries(&entries) {
            self.write_and_flush_later(entries, None)?;
            callback.log_io_completed(Ok(()));
        } else {
            self.write_and_flush_later(entries, Some(callback))?;
        }
        Ok(())
    }

    /// Waits for the appends still being flushed first, so that their completion cannot mark
    /// durable the entries written later at the same indexes.
    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.drain_flusher().await?;
        self.log.remove_from(log_id.index).map_err(write_logs)?;
        self.durable.truncate_to(log_id.index.saturating_sub(1));
        Ok(())
    }

    /// Waits first until a snapshot being installed that covers `log_id` is on disk (openraft
    /// asks for this purge before the install is done; see `snapshot_mark`).
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.snapshot_mark.wait_before_purge(log_id.index).await;
        // The marker must be durable before entries disappear, or a crash in between would
        // leave a log whose start is unknown.
        self.write_meta(KEY_LAST_PURGED, &log_id, ErrorSubject::Store)?;
        self.flush(ErrorSubject::Store).await?;
        // Failpoint `purge-before-remove`: the marker is on disk, the entries not yet removed.
        crate::failpoints::crash_point("purge-before-remove");
        self.log.remove_through(log_id.index).map_err(write_logs)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn blank(term: u64, leader: NodeId, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
            payload: EntryPayload::Blank,
        }
    }

    fn open_store() -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = sled::Config::new()
            .path(dir.path().join("sled"))
            .open()
            .expect("sled");
        let store = LogStore::open(&db, DiskSync::off()).expect("log store");
        (dir, store)
    }

    #[tokio::test]
    async fn only_this_nodes_own_entries_as_leader_are_acknowledged_early() {
        let (_dir, mut store) = open_store();
        let own = [blank(4, 1, 5), blank(4, 1, 6)];
        store
            .save_vote(&Vote::new_committed(4, 1))
            .await
            .expect("vote");
        assert!(!store.own_leader_entries(&own), "node id not known yet");
        store.set_node_id(1);
        assert!(store.own_leader_entries(&own));
        assert!(
            !store.own_leader_entries(&[blank(3, 1, 5)]),
            "this node's entries from an earlier term come from another leader now"
        );
        store
            .save_vote(&Vote::new_committed(5, 2))
            .await
            .expect("vote");
        assert!(!store.own_leader_entries(&[blank(5, 2, 7)]), "node 2 leads");
        assert!(!store.own_leader_entries(&own), "following node 2");
    }

    #[tokio::test]
    async fn a_membership_change_of_the_leader_waits_for_its_flush() {
        let (_dir, mut store) = open_store();
        store.set_node_id(1);
        store
            .save_vote(&Vote::new_committed(4, 1))
            .await
            .expect("vote");
        let change = Entry {
            log_id: LogId::new(CommittedLeaderId::new(4, 1), 6),
            payload: EntryPayload::Membership(openraft::Membership::new(
                vec![std::collections::BTreeSet::from([1, 2, 3])],
                None,
            )),
        };
        assert!(store.own_leader_entries(&[blank(4, 1, 5)]));
        assert!(!store.own_leader_entries(std::slice::from_ref(&change)));
        assert!(!store.own_leader_entries(&[blank(4, 1, 5), change]));
    }

    #[tokio::test]
    async fn entries_acknowledged_early_hold_back_waiters_until_their_flush() {
        let (_dir, mut store) = open_store();
        let durable = store.durable_index();
        store
            .write_and_flush_later(vec![blank(1, 1, 1), blank(1, 1, 2)], None)
            .expect("write");
        tokio::time::timeout(Duration::from_secs(10), durable.wait_for(2))
            .await
            .expect("the flusher records the flush")
            .expect("flushed without error");
        let read = store.try_get_log_entries(1..=2).await.expect("read");
        assert_eq!(read.len(), 2);
    }

    /// Copies a data dir while its store is still open: what a kill -9 at this instant would
    /// leave on disk (what sled has written, not what it still buffers).
    fn crash_image(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).expect("image dir");
        for entry in std::fs::read_dir(from).expect("read data dir") {
            let entry = entry.expect("dir entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("file type").is_dir() {
                crash_image(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).expect("copy data file");
            }
        }
    }

    #[tokio::test]
    async fn a_committed_vote_for_this_node_is_given_up_durably_and_other_votes_are_kept() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let data = dir.path().join("node");
        let (mut store, _state_machine) = crate::storage::open(&data, true).await.expect("open");

        assert_eq!(
            store.give_up_restored_leadership(1).await.expect("no vote"),
            None
        );
        assert_eq!(store.read_vote().await.expect("read"), None);

        let untouched = [
            Vote::new_committed(7, 2), // this node follows node 2
            Vote::new(7, 2),           // this node voted for node 2
            Vote::new(7, 1),           // this node campaigned, never led
        ];
        for vote in untouched {
            store.save_vote(&vote).await.expect("save");
            assert_eq!(
                store.give_up_restored_leadership(1).await.expect("give up"),
                None,
                "{vote:?}"
            );
            assert_eq!(store.read_vote().await.expect("read"), Some(vote));
        }

        store
            .save_vote(&Vote::new_committed(9, 1))
            .await
            .expect("save");
        assert_eq!(
            store.give_up_restored_leadership(1).await.expect("give up"),
            Some(9),
            "this node led term 9"
        );
        let given_up = Vote::new(9, 1);
        assert!(!given_up.committed);
        assert_eq!(store.read_vote().await.expect("read"), Some(given_up));
        assert_eq!(
            store.give_up_restored_leadership(1).await.expect("again"),
            None,
            "an uncommitted vote is left alone, so a second start changes nothing"
        );

        let image = dir.path().join("image");
        crash_image(&data, &image);
        let (mut reopened, _state_machine) =
            crate::storage::open(&image, true).await.expect("reopen");
        assert_eq!(
            reopened.read_vote().await.expect("read after crash"),
            Some(given_up),
            "the uncommitted vote is on disk once give_up_restored_leadership returns"
        );
    }

    #[tokio::test]
    async fn a_truncation_waits_for_pending_flushes_and_leaves_nothing_pending() {
        let (_dir, mut store) = open_store();
        let durable = store.durable_index();
        let entries = (1..=5).map(|i| blank(1, 1, i)).collect();
        store.write_and_flush_later(entries, None).expect("write");
        store
            .truncate(LogId::new(CommittedLeaderId::new(1, 1), 3))
            .await
            .expect("truncate");
        assert_eq!(store.try_get_log_entries(1..).await.expect("read").len(), 2);
        tokio::time::timeout(Duration::from_millis(500), durable.wait_for(5))
            .await
            .expect("nothing acknowledged early is left unflushed")
            .expect("no error");
    }
}
