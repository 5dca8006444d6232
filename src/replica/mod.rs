//! How a client request meets Raft, between the services in [`crate::api`] and openraft:
//! writes are grouped into entries ([`proposer`]), linearizable reads wait for a read index
//! ([`read_index`]), a follower sends what it cannot serve to the leader ([`forward`]) and
//! notices when that leader is replaced ([`leadership`]), keyed writes are applied once
//! ([`idempotency`]), and Raft's errors become gRPC statuses ([`errors`]).

pub mod errors;
pub mod forward;
pub mod gather;
pub mod idempotency;
pub mod leadership;
pub mod proposer;
pub mod read_index;

use tonic::Status;

use crate::raft::Raft;
use crate::storage::log_store::DurableIndex;

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
