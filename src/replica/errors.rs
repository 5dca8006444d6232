//! How Raft's answers become gRPC statuses, and when a request should go to the leader instead.

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use tonic::Status;

use crate::raft::{Node, NodeId};

/// What to do with a request this node could not serve itself.
#[derive(Clone)]
pub enum Redirect {
    /// Send it to this leader (through its peer port).
    Leader { id: NodeId, member: Node },
    /// Answer the client with this status.
    Fail(Status),
}

fn no_leader() -> Status {
    Status::unavailable(
        "no leader is elected right now (election in progress or quorum lost); retry shortly",
    )
}

fn from_forward(forward: ForwardToLeader<NodeId, Node>) -> Redirect {
    match (forward.leader_id, forward.leader_node) {
        (Some(id), Some(member)) => Redirect::Leader { id, member },
        _ => Redirect::Fail(no_leader()),
    }
}

/// "node 3 at host:7003": a leader as clients know it (by its client address, when known).
pub fn leader_label(id: NodeId, member: &Node) -> String {
    match member.client_address.as_str() {
        "" => format!("node {id}"),
        address => format!("node {id} at {address}"),
    }
}

fn fatal(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft is not running on this node: {e}"))
}

pub fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> Redirect {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => from_forward(f),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Redirect::Fail(Status::failed_precondition(e.to_string()))
        }
        RaftError::Fatal(e) => Redirect::Fail(fatal(e)),
    }
}

pub fn read_error(e: RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>) -> Redirect {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => from_forward(f),
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)) => Redirect::Fail(
            Status::unavailable(format!("the leader cannot reach a quorum: {e}")),
        ),
        RaftError::Fatal(e) => Redirect::Fail(fatal(e)),
    }
}

/// A write or read that did not finish within `--request-timeout-ms`.
pub fn timed_out(what: &str, millis: u64) -> Status {
    Status::unavailable(format!(
        "{what} did not complete within {millis} ms: the cluster may have lost its quorum \
         (a write may still be applied later)"
    ))
}
