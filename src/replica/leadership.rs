//! Notice of a leader losing its office, for requests a follower has forwarded to it.
//!
//! A follower forwards a write to the leader it knows and waits for the answer. When that leader
//! is cut off or paused, the answer never comes, and the client would wait for its own deadline
//! even after the rest of the cluster had elected a new leader. As soon as this node stops naming that leader (it votes in a new
//! term, stands for election or hears from a new leader), the waiting request is answered
//! UNAVAILABLE instead, and the client retries on a node that can serve it.
//!
//! The request may still have been applied: the old leader may have committed it just before,
//! with the answer lost. The status says so, as a timeout would.

use tonic::Status;

use crate::raft::{NodeId, Raft};

/// Resolves once this node's view of the leader is no longer `leader`; never resolves while it
/// still is, nor after Raft has shut down (the forwarded call then ends by itself).
///
/// It watches openraft's server metrics, which change only with the vote, role, leader or
/// membership, not with every applied entry; waiting requests are not woken by each write.
pub async fn leader_replaced(raft: &Raft, leader: NodeId) {
    let mut server = raft.server_metrics();
    loop {
        if server.borrow_and_update().current_leader != Some(leader) {
            return;
        }
        if server.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// The answer for a request whose leader lost its office while the request waited on it.
pub fn leader_replaced_status(leader: &str) -> Status {
    Status::unavailable(format!(
        "the leader ({leader}) was replaced while this request waited for its answer \
         (a new term has begun); the request may or may not have been applied, retry"
    ))
}
