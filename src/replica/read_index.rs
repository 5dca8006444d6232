//! Read-index batching for linearizable reads.
//!
//! A linearizable read needs the leader to confirm, with a heartbeat round to a quorum, that it
//! still leads, and then to wait until it has applied everything committed so far
//! (`Raft::ensure_linearizable`). Done per read, 64 concurrent readers mean 64 heartbeat rounds
//! at once, which on a small machine time out and fail reads. One confirmation serves every read
//! that arrived before it started, so readers queue here and each round answers all of them; the
//! reads that arrive during a round wait for the next one.
//!
//! A restarted leader never resumes its old term (`LogStore::give_up_restored_leadership`): every
//! leader that answers reads was elected, its term began with a fresh first entry, and
//! openraft's read index (the commit index once that entry is committed) covers every write
//! acknowledged before.

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::errors::{read_error, Redirect};
use crate::raft::Raft;

type Reply = Result<(), Redirect>;

/// Hands linearizable reads to the confirmation task.
#[derive(Clone)]
pub struct ReadIndex {
    queue: mpsc::UnboundedSender<oneshot::Sender<Reply>>,
}

impl ReadIndex {
    /// Starts the confirmation task for `raft`; it ends when every handle is dropped.
    pub fn start(raft: Raft) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, waiting));
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

async fn run(raft: Raft, mut waiting: mpsc::UnboundedReceiver<oneshot::Sender<Reply>>) {
    let mut round = Vec::new();
    // Everything queued so far joins this round; a read queued later waits for the next.
    while waiting.recv_many(&mut round, usize::MAX).await > 0 {
        let outcome = raft
            .ensure_linearizable()
            .await
            .map(drop)
            .map_err(read_error);
        for reply in round.drain(..) {
            let _ = reply.send(outcome.clone());
        }
    }
}
