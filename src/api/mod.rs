//! The client-facing gRPC services and the rules they share: input limits, how Raft errors
//! become gRPC statuses, and forwarding to the leader.

pub mod cluster;
pub mod counters;
pub mod errors;
pub mod forward;
pub mod forward_service;
pub mod gather;
pub mod kv;
pub mod leadership;
pub mod limits;
pub mod proposer;
pub mod read_index;

pub use cluster::ClusterService;

use tonic::Status;

use crate::storage::log_store::DurableIndex;
use crate::types::Raft;

/// The commit index this node knows (0 before anything is committed), as Status and Metrics
/// report it. openraft's metrics do not carry it, so it is read from Raft's state; UNAVAILABLE
/// when Raft has stopped.
///
/// A leader counts itself towards a quorum before its own entries are on its disk (see
/// `storage::log_store::durable`), so openraft's figure can include entries that a crash of
/// this node would undo; it is reported only as far as this node has them on disk.
pub async fn commit_index(raft: &Raft, durable: &DurableIndex) -> Result<u64, Status> {
    let committed = raft
        .with_raft_state(|state| state.committed.map(|id| id.index))
        .await
        .map_err(|e| Status::unavailable(format!("raft is not running on this node: {e}")))?;
    Ok(durable.settled_prefix(committed.unwrap_or(0)))
}
pub use kv::KvService;
pub use limits::Limits;
