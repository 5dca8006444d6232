//! The record of every operation the clients did: invoked when, completed when, with what
//! outcome, on which key; split into one history per key for the checker.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use super::checker::{Call, Op, Ret};

/// How an operation ended, as far as the client can tell.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The cluster answered.
    Ok(Ret),
    /// Certainly not applied (refused before anything was proposed).
    Failed(String),
    /// Maybe applied, maybe not (timeout, connection lost, leader replaced while waiting).
    Ambiguous(String),
}

/// Counts for the run's summary.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub ok: usize,
    pub failed: usize,
    pub ambiguous_writes: usize,
    pub dropped_reads: usize,
    /// Writes sent more than once (their first attempt was ambiguous) that got a definite
    /// answer, counted in `ok` too.
    pub retries_resolved: usize,
    /// Writes sent more than once that stayed ambiguous, counted in `ambiguous_writes` too.
    pub retries_unresolved: usize,
}

#[derive(Default)]
struct Inner {
    ops: Vec<(String, Op)>,
    counts: Counts,
    /// Error messages (their first 70 characters) and how often each was seen.
    samples: BTreeMap<String, usize>,
}

/// Shared by every client; times are nanoseconds since the recorder was made.
pub struct Recorder {
    start: Instant,
    inner: Mutex<Inner>,
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            inner: Mutex::default(),
        }
    }

    /// When the history's clock started.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Nanoseconds since the start, on the monotonic clock.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records one finished operation, sent `attempts` times (a write's retries with its
    /// idempotency key are the same operation, from the first attempt's `invoke` to the last
    /// answer): failed ones and ambiguous reads are only counted (neither had an effect),
    /// ambiguous writes stay open-ended.
    pub fn record(
        &self,
        key: &str,
        call: Call,
        label: String,
        invoke: u64,
        attempts: u32,
        outcome: Outcome,
    ) {
        let complete = self.now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if attempts > 1 {
            match outcome {
                Outcome::Ok(_) => inner.counts.retries_resolved += 1,
                Outcome::Ambiguous(_) => inner.counts.retries_unresolved += 1,
                // Only a first attempt's refusal is final; a retry's leaves the write ambiguous.
                Outcome::Failed(_) => unreachable!("a retried write ends ok or ambiguous"),
            }
        }
        let (complete, ret) = match outcome {
            Outcome::Ok(ret) => {
                inner.counts.ok += 1;
                (Some(complete), Some(ret))
            }
            Outcome::Failed(why) => {
                inner.counts.failed += 1;
                *inner.samples.entry(sample("failed", &why)).or_default() += 1;
                return;
            }
            Outcome::Ambiguous(why) if call == Call::Get => {
                *inner
                    .samples
                    .entry(sample("read dropped", &why))
                    .or_default() += 1;
                inner.counts.dropped_reads += 1;
                return;
            }
            Outcome::Ambiguous(why) => {
                *inner.samples.entry(sample("ambiguous", &why)).or_default() += 1;
                inner.counts.ambiguous_writes += 1;
                (None, None)
            }
        };
        let op = Op {
            call,
            invoke,
            complete,
            ret,
            label,
        };
        inner.ops.push((key.to_string(), op));
    }

    pub fn counts(&self) -> Counts {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .counts
            .clone()
    }

    /// Error messages seen (their first 70 characters), with how often.
    pub fn error_summary(&self) -> Vec<(String, usize)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.samples.iter().map(|(m, n)| (m.clone(), *n)).collect()
    }

    /// One history per key, in invocation order.
    pub fn by_key(&self) -> BTreeMap<String, Vec<Op>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: BTreeMap<String, Vec<Op>> = BTreeMap::new();
        for (key, op) in &inner.ops {
            keys.entry(key.clone()).or_default().push(op.clone());
        }
        for ops in keys.values_mut() {
            ops.sort_by_key(|op| op.invoke);
        }
        keys
    }
}

fn sample(kind: &str, why: &str) -> String {
    format!("{kind}: {}", why.chars().take(70).collect::<String>())
}
