//! The Raft boundary: openraft's type configuration, its settings, the codec of everything
//! that crosses a wire or a disk, and both sides of the internal `raftkv.raft.v1.Raft` service
//! ([`network`] sends, [`service`] receives).

pub mod codec;
pub mod member;
pub mod network;
pub mod service;

use std::io::Cursor;

use anyhow::anyhow;
use openraft::{Config, SnapshotPolicy};

use crate::types::{CommandResult, Proposal};

/// Node ids are chosen by the operator (`--id`); 0 is reserved to mean "no node".
pub type NodeId = u64;

/// A cluster member as openraft stores it in membership entries: its peer and client addresses.
pub type Node = member::Member;

openraft::declare_raft_types!(
    /// openraft types for raftkv: commands in, command results out, snapshots in memory.
    pub TypeConfig:
        D = Proposal,
        R = CommandResult,
        NodeId = NodeId,
        Node = Node,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;

/// Entries per AppendEntries message. Large enough to catch up quickly on small values; the
/// network layer additionally caps each message by bytes (see `network::APPEND_BYTES_BUDGET`).
const MAX_PAYLOAD_ENTRIES: u64 = 512;

/// Snapshot chunk size for InstallSnapshot: far below any gRPC message limit.
const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;

/// The operator's choices among openraft's settings (`raftkv serve --heartbeat-ms` and so on).
#[derive(Debug, Clone, Copy)]
pub struct RaftSettings {
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// Entries applied since the last snapshot that trigger a new one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, for slow followers.
    pub logs_kept: u64,
}

/// openraft settings for a log that waits on disk.
///
/// openraft's defaults (heartbeat 50 ms, election 150–300 ms) assume an in-memory log; here every
/// append waits for a sled flush, and a busy two-core machine can stall a process for tens of
/// milliseconds, which at those defaults starts needless elections. The defaults chosen here are
/// etcd's: heartbeat 100 ms, election timeout 1–2 s. A leader failure costs 3–5 s of writes,
/// because openraft 0.9 lets a follower campaign only after the old leader's lease (the maximum
/// election timeout) and then a random election timeout have passed.
pub fn raft_config(args: &RaftSettings) -> anyhow::Result<Config> {
    let config = Config {
        cluster_name: "raftkv".to_string(),
        heartbeat_interval: args.heartbeat_ms,
        election_timeout_min: args.election_timeout_ms,
        election_timeout_max: args.election_timeout_ms * 2,
        install_snapshot_timeout: 10_000.max(args.election_timeout_ms),
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(args.snapshot_every),
        max_in_snapshot_log_to_keep: args.logs_kept,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        // Purge at most every 64 entries, and never wait for more entries than a snapshot covers.
        purge_batch_size: args.snapshot_every.min(64),
        ..Default::default()
    };
    config
        .validate()
        .map_err(|e| anyhow!("invalid raft settings: {e}"))
}
