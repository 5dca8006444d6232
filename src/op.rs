//! The client operations a node counts, listed once: the KV service counts them, the Metrics
//! response carries them, `/metrics` and `raftkv metrics` print them.
//!
//! The counters count client requests this node received, not forwarded copies, so the
//! counters of all nodes add up to the operations clients performed.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::proto::v1::MetricsResponse;

/// A counted client operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    BatchGet,
    Scan,
    Put,
    Delete,
    Batch,
    Cas,
}

impl Op {
    /// Every operation, in the order they are shown.
    pub const ALL: [Op; 7] = [
        Op::Get,
        Op::BatchGet,
        Op::Scan,
        Op::Put,
        Op::Delete,
        Op::Batch,
        Op::Cas,
    ];

    /// The name in metrics: the Prometheus `op` label, and `<name>_ops` in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::BatchGet => "batch_get",
            Op::Scan => "scan",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::Batch => "batch",
            Op::Cas => "cas",
        }
    }

    /// The Metrics response field that carries this operation's count.
    pub fn field(self, metrics: &mut MetricsResponse) -> &mut u64 {
        match self {
            Op::Get => &mut metrics.get_ops,
            Op::BatchGet => &mut metrics.batch_get_ops,
            Op::Scan => &mut metrics.scan_ops,
            Op::Put => &mut metrics.put_ops,
            Op::Delete => &mut metrics.delete_ops,
            Op::Batch => &mut metrics.batch_ops,
            Op::Cas => &mut metrics.cas_ops,
        }
    }

    /// This operation's count in a Metrics response.
    pub fn count_in(self, metrics: &MetricsResponse) -> u64 {
        match self {
            Op::Get => metrics.get_ops,
            Op::BatchGet => metrics.batch_get_ops,
            Op::Scan => metrics.scan_ops,
            Op::Put => metrics.put_ops,
            Op::Delete => metrics.delete_ops,
            Op::Batch => metrics.batch_ops,
            Op::Cas => metrics.cas_ops,
        }
    }
}

/// One counter per [`Op`].
#[derive(Debug, Default)]
pub struct OpCounters([AtomicU64; Op::ALL.len()]);

impl OpCounters {
    pub fn count(&self, op: Op) {
        self.0[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self, op: Op) -> u64 {
        self.0[op as usize].load(Ordering::Relaxed)
    }

    /// Fills in every operation's field of a Metrics response.
    pub fn fill(&self, metrics: &mut MetricsResponse) {
        for op in Op::ALL {
            *op.field(metrics) = self.read(op);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_its_own_field_and_name() {
        let counters = OpCounters::default();
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op as usize, i, "ALL is in declaration order");
            for _ in 0..=i {
                counters.count(op);
            }
        }
        let mut metrics = MetricsResponse::default();
        counters.fill(&mut metrics);
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op.count_in(&metrics), i as u64 + 1, "{}", op.name());
        }
        let mut names: Vec<_> = Op::ALL.iter().map(|op| op.name()).collect();
        names.dedup();
        assert_eq!(names.len(), Op::ALL.len());
    }
}
