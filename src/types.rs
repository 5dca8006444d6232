//! The Raft type configuration and the commands replicated through the log.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// Node ids are chosen by the operator (`--id`); 0 is reserved to mean "no node".
pub type NodeId = u64;

/// A cluster member as openraft stores it in membership entries: its gRPC address.
pub type Node = openraft::BasicNode;

openraft::declare_raft_types!(
    /// openraft types for raftkv: commands in, command results out, snapshots in memory.
    pub TypeConfig:
        D = Command,
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

/// A write replicated through the Raft log.
///
/// Applying a command must be deterministic: it may only use what is in the entry, so that every
/// replica reaches the same map. New variants go at the end: the log and snapshots encode the
/// variant by position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: String,
        /// Encoded as one byte string, not element by element: values are up to megabytes.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
}

/// What applying a [`Command`] produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// Log index of the entry that applied the command (etcd's "revision").
    pub revision: u64,
    /// Whether the key existed before the command was applied.
    pub existed: bool,
}
