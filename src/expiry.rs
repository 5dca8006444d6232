//! TTL expiry. The leader proposes an `Expire` entry whenever some key has expired; applying it
//! removes every key whose expiry is at or before the entry's stamp, on every replica alike, so
//! replicas and snapshots agree on what is gone. Reads hide expired keys even before that.

use std::time::Duration;

use crate::storage::KvReader;
use crate::types::{now_ms, Command, Proposal, Raft};

/// How often the leader looks for expired keys.
pub const EXPIRY_INTERVAL: Duration = Duration::from_millis(500);

/// Runs until Raft shuts down.
pub async fn run(raft: Raft, reader: KvReader) {
    let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (leading, running) = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            (
                metrics.current_leader == Some(metrics.id),
                metrics.running_state.is_ok(),
            )
        };
        if !running {
            return;
        }
        let now = now_ms();
        if !leading || !reader.has_expired(now) {
            continue;
        }
        let proposal = Proposal {
            stamp_ms: now,
            command: Command::Expire,
        };
        if let Err(e) = raft.client_write(proposal).await {
            tracing::debug!("expiry proposal not committed (will retry): {e}");
        }
    }
}
