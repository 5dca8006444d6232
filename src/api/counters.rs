//! Per-node operation counters for the Metrics call and `/metrics`.
//!
//! They count client requests this node received, not forwarded copies, so the counters of all
//! nodes add up to the operations clients performed.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct OpCounters {
    pub get: AtomicU64,
    pub put: AtomicU64,
    pub delete: AtomicU64,
    pub batch: AtomicU64,
    pub cas: AtomicU64,
    pub scan: AtomicU64,
    pub batch_get: AtomicU64,
}

impl OpCounters {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
