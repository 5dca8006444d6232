//! The state machine: an in-memory ordered map that applies replicated commands, and its
//! snapshots persisted in sled (see `snapshot_store` for the on-disk form).
//!
//! The map lives behind a lock shared with the API ([`KvReader`]) so reads never go through
//! Raft's state-machine task. On start the latest snapshot is loaded; openraft then re-applies the
//! committed log entries that follow it.
//!
//! Encoding, decoding and writing a snapshot take about a second per million keys of CPU and
//! disk work, so they run on tokio's blocking pool rather than on an async worker, where they
//! would stall heartbeats and RPCs sharing that worker.

mod image_db;
mod snapshot_store;
#[cfg(test)]
mod tests;

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
    StorageIOError,
};

use self::snapshot_store::SnapshotStore;
pub use self::snapshot_store::{StoredSnapshot, CHUNK_BYTES};
use super::kv_map::{IdempotencyStats, KvMap, LeaseSummary, ScanPage};
use super::log_store::DurableIndex;
use super::snapshot_mark::SnapshotMark;
use crate::memory::release_free_memory;
use crate::raft::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::types::{now_ms, CommandResult, StoredValue};
use crate::watch::{HistoryLimits, WatchHub};

/// Everything a snapshot must capture together: the map, how far it has applied, and the
/// membership in force at that point.
#[derive(Debug, Clone, Default)]
pub struct KvState {
    pub map: KvMap,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

type Shared = Arc<RwLock<KvState>>;

/// A lock poisoned by a panic elsewhere still holds a consistent map (every mutation is a single
/// map operation), so readers and writers carry on rather than cascade the panic.
fn read(state: &Shared) -> RwLockReadGuard<'_, KvState> {
    state.read().unwrap_or_else(|p| p.into_inner())
}

fn write(state: &Shared) -> RwLockWriteGuard<'_, KvState> {
    state.write().unwrap_or_else(|p| p.into_inner())
}

/// Read-only access to the applied map for the API.
#[derive(Clone)]
pub struct KvReader {
    state: Shared,
}

impl KvReader {
    /// The clocks of a read: whether a key is live is judged by the map's clock, the highest
    /// leader stamp applied, so that every replica and every leader agrees on it at each point
    /// of the log (a leader whose wall clock is behind can never bring back a key that an
    /// earlier read reported gone); the TTL left is shown against this machine's clock too, so
    /// that it counts down between writes.
    fn read_clocks(state: &KvState) -> (u64, u64) {
        let applied = state.map.clock_ms();
        (applied, now_ms().max(applied))
    }

    /// The key's live value and the clock to show its remaining TTL against.
    pub fn get(&self, key: &str) -> (Option<StoredValue>, u64) {
        let state = read(&self.state);
        let (applied, shown) = Self::read_clocks(&state);
        (state.map.get(key, applied), shown)
    }

    /// Several keys read under one lock, so they come from the same applied state.
    pub fn get_many(&self, keys: &[String]) -> (Vec<Option<StoredValue>>, u64) {
        let state = read(&self.state);
        let (applied, shown) = Self::read_clocks(&state);
        (
            keys.iter().map(|k| state.map.get(k, applied)).collect(),
            shown,
        )
    }

    pub fn scan(&self, start: &str, end: Option<&str>, limit: usize) -> (ScanPage, u64) {
        let state = read(&self.state);
        let (applied, shown) = Self::read_clocks(&state);
        (state.map.scan(start, end, limit, applied), shown)
    }

    /// Keys stored and bytes of their values.
    pub fn stats(&self) -> (u64, u64) {
        let state = read(&self.state);
        (state.map.len() as u64, state.map.value_bytes())
    }

    /// The idempotency table's size and this node's replay, conflict and eviction counts.
    pub fn idempotency_stats(&self) -> IdempotencyStats {
        read(&self.state).map.idempotency_stats()
    }

    /// A lease's granted TTL and, with `keys`, its keys in key order; `None` when it does not
    /// exist.
    pub fn lease(&self, id: u64, keys: bool) -> Option<(u64, Vec<String>)> {
        let state = read(&self.state);
        let lease = state.map.lease(id)?;
        let names = if keys {
            lease
                .keys
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect()
        } else {
            Vec::new()
        };
        Some((lease.ttl_ms, names))
    }

    pub fn lease_count(&self) -> u64 {
        read(&self.state).map.lease_count()
    }

    /// Every lease, in id order.
    pub fn leases(&self) -> Vec<LeaseSummary> {
        read(&self.state).map.leases()
    }

    /// Whether some key has expired by `now_ms` and should be removed by an `Expire` entry.
    pub fn has_expired(&self, now_ms: u64) -> bool {
        read(&self.state).map.has_expired(now_ms)
    }

    /// The earliest expiry among the stored keys, if any has a TTL.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        read(&self.state).map.next_expiry_ms()
    }
}

#[derive(Clone)]
pub struct StateMachineStore {
    state: Shared,
    snapshots: Arc<SnapshotStore>,
    /// Which log entries were acknowledged before their flush: such an entry is applied only
    /// once it is on this node's disk.
    durable: DurableIndex,
    /// Where the changes of each applied entry go for watchers, in apply order.
    watch: Arc<WatchHub>,
}

impl StateMachineStore {
    /// Opens the snapshot store (manifest in `db`, images under `images`) and loads the latest
    /// snapshot, if any, into the map. `mark` learns how far the durable snapshot reaches.
    pub fn open(
        db: &sled::Db,
        images: PathBuf,
        durable: DurableIndex,
        mark: SnapshotMark,
    ) -> Result<Self, StorageError> {
        let snapshots = Arc::new(SnapshotStore::open(db, images, mark)?);
        let store = Self {
            state: Shared::default(),
            snapshots,
            durable,
            watch: Arc::new(WatchHub::new(HistoryLimits::default())),
        };
        if let Some((meta, map)) = store.snapshots.load_map()? {
            store
                .watch
                .reset(meta.last_log_id.map(|id| id.index).unwrap_or(0));
            *write(&store.state) = KvState {
                map,
                last_applied: meta.last_log_id,
                membership: meta.last_membership,
            };
            release_free_memory();
        }
        Ok(store)
    }

    /// The last log index the map covers (after `open`: the loaded snapshot's).
    pub fn snapshot_last_index(&self) -> Option<u64> {
        read(&self.state).last_applied.map(|id| id.index)
    }

    /// The feed of applied changes (see [`crate::watch`]).
    pub fn watch_hub(&self) -> Arc<WatchHub> {
        self.watch.clone()
    }

    pub fn reader(&self) -> KvReader {
        KvReader {
            state: self.state.clone(),
        }
    }
}

/// Runs `work` on tokio's blocking pool (see the module docs); a panic in it becomes a storage
/// error about the snapshot rather than a panic of the caller.
async fn blocking<T: Send + 'static>(
    verb: ErrorVerb,
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        let source = AnyError::error(format!("snapshot task failed: {e}"));
        StorageIOError::new(ErrorSubject::Snapshot(None), verb, source)
    })?
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = read(&self.state);
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let Some(last) = entries.last() {
            // A leader acknowledges its own appends before flushing them (see
            // `log_store::durable`); applying is what answers clients, so it waits for the disk.
            self.durable
                .wait_for(last.log_id.index)
                .await
                .map_err(|e| StorageIOError::apply(last.log_id, &std::io::Error::other(e)))?;
        }
        let mut state = write(&self.state);
        let mut results = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            state.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => CommandResult::Noop { revision: index },
                EntryPayload::Normal(proposal) => state.map.apply(index, proposal),
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandResult::Noop { revision: index }
                }
            };
            // Under the state's write lock: a watcher never sees a change before a read can.
            self.watch.publish(index, state.map.take_events());
            results.push(result);
        }
        Ok(results)
    }

    /// Encodes the map and captures the last applied id and membership under one read lock, so
    /// the three agree. openraft calls this on the state-machine task and applies nothing until
    /// it returns, so apply pauses for the encode (a copy of every record into one buffer of the
    /// image's exact size: roughly a memcpy of the data plus a walk of the tree); reads go on,
    /// as they only need the read lock. Encoding into that one buffer costs one encoded copy of
    /// memory, where cloning the map for a background encode would hold a second map as well.
    /// Writing the image to disk happens later, in `build_snapshot`, without the lock.
    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let state = self.state.clone();
        let captured = blocking(ErrorVerb::Read, move || {
            let state = read(&state);
            let image = state
                .map
                .encode()
                .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
            Ok(Captured {
                image,
                last_applied: state.last_applied,
                membership: state.membership.clone(),
            })
        })
        .await;
        SnapshotBuilder {
            captured: Some(captured),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Decodes the received image (so a damaged one changes nothing), stores it, then swaps the
    /// map, keeping the old one's idempotency counters (they count this node's applies). The old
    /// map is dropped after the lock is released, so readers do not wait for it.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let image = snapshot.into_inner();
        let snapshots = self.snapshots.clone();
        let stored_meta = meta.clone();
        let map = blocking(ErrorVerb::Write, move || {
            let map = KvMap::decode(&image)
                .map_err(|e| StorageIOError::read_snapshot(Some(stored_meta.signature()), &e))?;
            snapshots.save(&stored_meta, &image)?;
            Ok(map)
        })
        .await?;
        let mut new_state = KvState {
            map,
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let mut state = write(&self.state);
        new_state.map.keep_counters_of(&state.map);
        self.watch
            .reset(meta.last_log_id.map(|id| id.index).unwrap_or(0));
        let old_state = std::mem::replace(&mut *state, new_state);
        drop(state);
        drop(old_state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let snapshots = self.snapshots.clone();
        let stored = blocking(ErrorVerb::Read, move || {
            let stored = snapshots.read()?;
            release_free_memory();
            Ok(stored)
        })
        .await?;
        Ok(stored.map(|(meta, image)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(image)),
        }))
    }
}

/// The state captured by `get_snapshot_builder`.
struct Captured {
    image: Vec<u8>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// Persists a snapshot encoded by `get_snapshot_builder`.
pub struct SnapshotBuilder {
    /// The captured state, or why it could not be captured (reported by `build_snapshot`);
    /// taken by the first build.
    captured: Option<Result<Captured, StorageError>>,
    snapshots: Arc<SnapshotStore>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// Stores the captured image and returns it. openraft 0.9 keeps only the meta of the result,
    /// but the image is already in memory, so handing it back costs nothing extra.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let captured = self.captured.take().unwrap_or_else(|| {
            let source = AnyError::error("snapshot already built by this builder");
            Err(StorageIOError::write_snapshot(None, source).into())
        })?;
        let meta = SnapshotMeta {
            last_log_id: captured.last_applied,
            last_membership: captured.membership,
            snapshot_id: snapshot_id(captured.last_applied),
        };
        let image = captured.image;
        let snapshots = self.snapshots.clone();
        let (meta, image) = blocking(ErrorVerb::Write, move || {
            snapshots.save(&meta, &image)?;
            release_free_memory();
            Ok((meta, image))
        })
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(image)),
        })
    }
}

/// Unique per build: two snapshots at the same log id must still be told apart.
fn snapshot_id(last_applied: Option<LogId>) -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default();
    match last_applied {
        Some(id) => format!("{}-{}-{nonce}", id.leader_id, id.index),
        None => format!("0-0-{nonce}"),
    }
}
