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

use crate::types::Raft;

/// The commit index this node knows (0 before anything is committed). openraft's metrics do not
/// carry it, so it is read from Raft's state; UNAVAILABLE when Raft has stopped.
pub async fn commit_index(raft: &Raft) -> Result<u64, Status> {
    let committed = raft
        .with_raft_state(|state| state.committed.map(|id| id.index))
        .await
        .map_err(|e| Status::unavailable(format!("raft is not running on this node: {e}")))?;
    Ok(committed.unwrap_or(0))
}
pub use kv::KvService;
pub use limits::Limits;
