//! Read-index batching for linearizable reads.
//!
//! A linearizable read needs the leader to confirm, with a heartbeat round to a quorum, that it
//! still leads, and then to wait until it has applied everything committed so far
//! (`Raft::ensure_linearizable`). Done per read, 64 concurrent readers mean 64 heartbeat rounds
//! at once, which on a small machine time out and fail reads. One confirmation serves every read
//! that arrived before it started, so readers queue here and each round answers all of them; the
//! reads that arrive during a round wait for the next one.
//!
//! One more guard: openraft 0.9 restores a restarted leader as leader in its old term and takes
//! the read index from that term's first entry and the commit index it persisted, which may lag
//! what it had acknowledged before the crash. By Raft's leader completeness every acknowledged
//! write is in that leader's log, so while it still leads in the term it restarted in, reads wait
//! until it has applied its whole log as it was at startup ([`StartupBarrier`], read from
//! storage before Raft starts). A leader elected later starts a new term with a fresh first
//! entry, and openraft's own read index suffices.

use std::time::Duration;

use openraft::metrics::WaitError;
use openraft::Vote;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::errors::{read_error, Redirect};
use crate::types::{NodeId, Raft};

type Reply = Result<(), Redirect>;

/// Hands linearizable reads to the confirmation task.
#[derive(Clone)]
pub struct ReadIndex {
    queue: mpsc::UnboundedSender<oneshot::Sender<Reply>>,
}

impl ReadIndex {
    /// Starts the confirmation task for `raft`; it ends when every handle is dropped.
    pub fn start(raft: Raft, barrier: Option<StartupBarrier>) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, barrier, waiting));
        Self { queue }
    }

    /// Returns once this node may serve a linearizable read from its local map.
    pub async fn wait(&self) -> Reply {
        let (reply, answer) = oneshot::channel();
        let stopped = || Redirect::Fail(Status::unavailable("this node is shutting down"));
        self.queue.send(reply).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// For a node restored as leader at startup: the term it leads in and its last log index then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupBarrier {
    term: u64,
    last_log_index: u64,
}

impl StartupBarrier {
    /// `Some` only when the persisted vote is a committed vote for `id`, which is exactly when
    /// openraft restores this node as leader.
    pub fn for_restored_leader(
        id: NodeId,
        vote: Option<&Vote<NodeId>>,
        last_log_index: Option<u64>,
    ) -> Option<Self> {
        let vote = vote?;
        (vote.committed && vote.leader_id.node_id == id).then(|| Self {
            term: vote.leader_id.term,
            last_log_index: last_log_index.unwrap_or(0),
        })
    }

    /// While this node leads in the restored term, waits until it has applied its startup log.
    /// A leader's own entries can only become committed, never truncated, so this ends; if the
    /// node is deposed meanwhile (its term moves on), the reads fail with UNAVAILABLE and are
    /// retried.
    async fn wait(&self, raft: &Raft) -> Reply {
        let mut first = true;
        loop {
            let term = raft.metrics().borrow().current_term;
            if term != self.term && first {
                // Leadership was just confirmed in a newer term: openraft's index suffices.
                return Ok(());
            }
            if term != self.term {
                return Err(Redirect::Fail(Status::unavailable(
                    "leadership changed while this restarted leader caught up; retry",
                )));
            }
            first = false;
            let applied = raft
                .wait(Some(Duration::from_millis(200)))
                .applied_index_at_least(Some(self.last_log_index), "read after restart")
                .await;
            match applied {
                Ok(_) => return Ok(()),
                Err(WaitError::Timeout(..)) => continue,
                Err(e) => {
                    return Err(Redirect::Fail(Status::unavailable(format!(
                        "raft stopped: {e}"
                    ))))
                }
            }
        }
    }
}

async fn run(
    raft: Raft,
    mut barrier: Option<StartupBarrier>,
    mut waiting: mpsc::UnboundedReceiver<oneshot::Sender<Reply>>,
) {
    let mut round = Vec::new();
    // Everything queued so far joins this round; a read queued later waits for the next.
    while waiting.recv_many(&mut round, usize::MAX).await > 0 {
        let mut outcome = raft
            .ensure_linearizable()
            .await
            .map(drop)
            .map_err(read_error);
        if let (Ok(()), Some(startup)) = (&outcome, barrier) {
            outcome = startup.wait(&raft).await;
            if outcome.is_ok() {
                barrier = None;
            }
        }
        for reply in round.drain(..) {
            let _ = reply.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::LeaderId;

    use super::*;

    fn vote(term: u64, node: NodeId, committed: bool) -> Vote<NodeId> {
        Vote {
            leader_id: LeaderId {
                term,
                node_id: node,
            },
            committed,
        }
    }

    #[test]
    fn only_a_committed_vote_for_this_node_restores_leadership() {
        let barrier = StartupBarrier::for_restored_leader(1, Some(&vote(3, 1, true)), Some(40));
        assert_eq!(
            barrier,
            Some(StartupBarrier {
                term: 3,
                last_log_index: 40
            })
        );
        assert_eq!(
            StartupBarrier::for_restored_leader(1, Some(&vote(3, 2, true)), Some(40)),
            None
        );
        assert_eq!(
            StartupBarrier::for_restored_leader(1, Some(&vote(3, 1, false)), Some(40)),
            None
        );
        assert_eq!(StartupBarrier::for_restored_leader(1, None, None), None);
    }
}
