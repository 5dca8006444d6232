//! TTL expiry. A key's expiry is decided by time carried in the log: it is gone once an entry
//! whose leader stamp is at or past its expiry has been applied, and not before, on every replica
//! alike (reads judge liveness by the map's clock, the highest stamp applied; see
//! `KvReader::get`). So that a TTL ends close to its time even when nothing else is written, the
//! leader proposes an `Expire` entry as soon as its own clock passes the earliest expiry;
//! applying it advances the map's clock to the entry's stamp and removes every key expired by
//! then.

use std::time::Duration;

use crate::raft::Raft;
use crate::storage::KvReader;
use crate::types::{now_ms, Command, Proposal};

/// Longest sleep between looks at the earliest expiry: a key written with a TTL while the task
/// sleeps is seen within this time.
pub const EXPIRY_POLL: Duration = Duration::from_millis(100);

/// Runs until Raft shuts down.
pub async fn run(raft: Raft, reader: KvReader) {
    loop {
        let wait = reader
            .next_expiry_ms()
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
            .unwrap_or(EXPIRY_POLL)
            .min(EXPIRY_POLL);
        tokio::time::sleep(wait).await;
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
        // `expiry-skip` (`return`) ends this task before it proposes anything, so that a test
        // can read a key whose TTL has passed by the wall clock but not yet in the log.
        fail::fail_point!("expiry-skip", |_| ());
        let proposal = Proposal {
            stamp_ms: now,
            command: Command::Expire,
        };
        if let Err(e) = raft.client_write(proposal).await {
            tracing::debug!("expiry proposal not committed (will retry): {e}");
            tokio::time::sleep(EXPIRY_POLL).await;
        }
    }
}
