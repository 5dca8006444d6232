//! Lease expiry: the leader ends every lease whose countdown ran out (see [`crate::lease`]) by
//! proposing its revocation, which deletes the lease's keys in that one entry on every replica.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use crate::lease::LeaseClocks;
use crate::raft::Raft;
use crate::types::{now_ms, Command, Proposal};

/// How often the leader looks for leases whose countdown has run out: a lease ends at most this
/// long (plus one commit) after its deadline.
pub const LEASE_POLL: Duration = Duration::from_millis(100);

/// Runs until Raft shuts down.
pub async fn run(raft: Raft, clocks: Arc<LeaseClocks>) {
    loop {
        tokio::time::sleep(LEASE_POLL).await;
        if raft.metrics().borrow().running_state.is_err() {
            return;
        }
        let due = clocks.due();
        if due.is_empty() {
            continue;
        }
        let revocations = due.into_iter().map(|id| {
            let raft = raft.clone();
            let clocks = clocks.clone();
            async move {
                let proposal = Proposal {
                    stamp_ms: now_ms(),
                    command: Command::LeaseRevoke { id },
                };
                match raft.client_write(proposal).await {
                    Ok(_) => tracing::info!(lease = id, "lease expired"),
                    Err(e) => {
                        tracing::debug!(lease = id, "lease expiry not committed (will retry): {e}");
                        clocks.retry(id);
                    }
                }
            }
        });
        join_all(revocations).await;
    }
}
