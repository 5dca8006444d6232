//! Linearizability checker for one key: a register with put, get, delete and compare-and-swap,
//! absent (`None`) at the start.
//!
//! The search is Wing and Gong's, with Lowe's memoization: depth first, it picks an operation
//! that may take effect next (one invoked before every not yet linearized operation that has
//! completed returned), applies it to the register if its recorded result agrees, and goes on
//! until every completed operation is linearized. A configuration (set of linearized
//! operations, register value) that failed once is never explored again, which keeps the search
//! polynomial on the histories a real run produces.
//!
//! An operation without a completion (an ambiguous write: timeout, connection lost) may take
//! effect at any time after its invocation, or never; it has no result to agree with. Checking
//! each key on its own is sound because registers are independent (linearizability is local).
//!
//! Ambiguous writes are what makes such a search blow up: each may be in or out, 2^n sets. Two
//! reductions, both exact, keep it linear in them:
//! - a value that no operation observes (no read or failed CAS returns it, no CAS expects it)
//!   can only be told apart from absence, never from another such value, so all of them become
//!   one value, [`UNOBSERVED`];
//! - ambiguous operations that then do the same thing (say, two puts of unobserved values) are
//!   interchangeable, and only the earliest invoked of those not yet linearized is tried: any
//!   order using a later one can use the earlier one in its place.

use std::collections::HashSet;
use std::fmt;

/// Values are unique per write (`u64` rendered in decimal on the wire).
pub type Value = u64;

/// The one value all values that no operation observes stand for (see the module doc).
const UNOBSERVED: Value = u64::MAX - 1;

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Put(Value),
    Get,
    Delete,
    /// Write `new` if the register holds `expected` (`None`: if it is absent).
    Cas {
        expected: Option<Value>,
        new: Value,
    },
}

/// What the cluster answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ret {
    Put,
    Get(Option<Value>),
    /// Whether the key existed.
    Delete(bool),
    /// `current` is the value the failed condition was evaluated against (unused on success).
    Cas {
        succeeded: bool,
        current: Option<Value>,
    },
}

/// One operation on one key. Times are nanoseconds on one monotonic clock.
#[derive(Clone, Debug)]
pub struct Op {
    pub call: Call,
    pub invoke: u64,
    /// `None`: ambiguous, may take effect at any time after `invoke` or never.
    pub complete: Option<u64>,
    /// `None` exactly when `complete` is.
    pub ret: Option<Ret>,
    /// Who did it, for reports (client and node).
    pub label: String,
}

/// The register's value after `op`, or `None` when `op`'s recorded result contradicts `state`.
fn step(state: Option<Value>, op: &Op) -> Option<Option<Value>> {
    match (&op.call, &op.ret) {
        (Call::Put(value), _) => Some(Some(*value)),
        (Call::Get, Some(Ret::Get(read))) => (*read == state).then_some(state),
        (Call::Get, _) => Some(state),
        (Call::Delete, Some(Ret::Delete(existed))) => (*existed == state.is_some()).then_some(None),
        (Call::Delete, _) => Some(None),
        (Call::Cas { expected, new }, ret) => {
            let holds = state == *expected;
            match ret {
                Some(Ret::Cas {
                    succeeded: true, ..
                }) => holds.then_some(Some(*new)),
                Some(Ret::Cas {
                    succeeded: false,
                    current,
                }) => (!holds && *current == state).then_some(state),
                // Ambiguous: it took effect as its condition says.
                _ => Some(if holds { Some(*new) } else { state }),
            }
        }
    }
}

/// The outcome of a check.
#[derive(Debug)]
pub enum Verdict {
    Linearizable,
    /// No order exists. `linearized` is the longest prefix found (indexes into the history),
    /// `state` the register after it, and `stuck` the completed operations that could have come
    /// next and none of which agrees with `state`.
    Violation {
        linearized: Vec<usize>,
        state: Option<Value>,
        stuck: Vec<usize>,
    },
    /// The search gave up after exploring this many configurations.
    Inconclusive(usize),
}

/// `ops` with every value no operation observes replaced by [`UNOBSERVED`].
fn canonical(ops: &[Op]) -> Vec<Op> {
    let mut observed = HashSet::new();
    for op in ops {
        if let Call::Cas {
            expected: Some(v), ..
        } = op.call
        {
            observed.insert(v);
        }
        match op.ret {
            Some(Ret::Get(Some(v)))
            | Some(Ret::Cas {
                succeeded: false,
                current: Some(v),
            }) => {
                observed.insert(v);
            }
            _ => {}
        }
    }
    let canon = |v: Value| if observed.contains(&v) { v } else { UNOBSERVED };
    ops.iter()
        .map(|op| {
            let call = match op.call {
                Call::Put(v) => Call::Put(canon(v)),
                Call::Cas { expected, new } => Call::Cas {
                    expected,
                    new: canon(new),
                },
                ref other => other.clone(),
            };
            Op { call, ..op.clone() }
        })
        .collect()
}

struct Search<'a> {
    ops: &'a [Op],
    /// Indexes of `ops` in invocation order.
    by_invoke: Vec<usize>,
    /// For an ambiguous operation, the first ambiguous operation with the same (canonical)
    /// call: its class of interchangeable operations.
    class: Vec<Option<usize>>,
    done: Vec<bool>,
    /// Completed operations not yet linearized.
    open: usize,
    path: Vec<usize>,
    failed: HashSet<(Vec<u64>, Option<Value>)>,
    budget: usize,
    best: (usize, Vec<usize>, Option<Value>, Vec<usize>),
}

/// Checks one key's history, exploring at most `budget` configurations.
pub fn check(ops: &[Op], budget: usize) -> Verdict {
    let original = ops;
    let ops = canonical(ops);
    let mut by_invoke: Vec<usize> = (0..ops.len()).collect();
    by_invoke.sort_by_key(|&i| ops[i].invoke);
    let class = ops
        .iter()
        .map(|op| {
            op.complete
                .is_none()
                .then(|| {
                    ops.iter()
                        .position(|o| o.complete.is_none() && o.call == op.call)
                })
                .flatten()
        })
        .collect();
    let mut search = Search {
        ops: &ops,
        by_invoke,
        class,
        done: vec![false; ops.len()],
        open: ops.iter().filter(|op| op.complete.is_some()).count(),
        path: Vec::new(),
        failed: HashSet::new(),
        budget,
        best: (0, Vec::new(), None, Vec::new()),
    };
    match search.explore(None) {
        Some(true) => Verdict::Linearizable,
        Some(false) => {
            let (_, linearized, _, stuck) = search.best;
            // The same steps on the real values, to report the real value.
            let state = linearized.iter().fold(None, |state, &i| {
                step(state, &original[i]).expect("a found step holds on the real values")
            });
            Verdict::Violation {
                linearized,
                state,
                stuck,
            }
        }
        None => Verdict::Inconclusive(search.failed.len()),
    }
}

impl Search<'_> {
    fn key(&self, state: Option<Value>) -> (Vec<u64>, Option<Value>) {
        let mut bits = vec![0u64; self.done.len().div_ceil(64)];
        for (i, _) in self.done.iter().enumerate().filter(|(_, d)| **d) {
            bits[i / 64] |= 1 << (i % 64);
        }
        (bits, state)
    }

    /// Operations that may take effect next, earliest completion first (ambiguous ones last).
    fn candidates(&self) -> Vec<usize> {
        let deadline = self
            .ops
            .iter()
            .zip(&self.done)
            .filter(|(_, done)| !**done)
            .filter_map(|(op, _)| op.complete)
            .min()
            .unwrap_or(u64::MAX);
        let mut classes_seen = HashSet::new();
        let mut next: Vec<usize> = self
            .by_invoke
            .iter()
            .copied()
            .take_while(|&i| self.ops[i].invoke <= deadline)
            .filter(|&i| !self.done[i])
            .filter(|&i| self.class[i].is_none_or(|class| classes_seen.insert(class)))
            .collect();
        next.sort_by_key(|&i| self.ops[i].complete.unwrap_or(u64::MAX));
        next
    }

    /// `Some(true)`: linearizable from here; `Some(false)`: not; `None`: out of budget.
    fn explore(&mut self, state: Option<Value>) -> Option<bool> {
        if self.open == 0 {
            return Some(true);
        }
        if !self.failed.insert(self.key(state)) {
            return Some(false);
        }
        if self.failed.len() > self.budget {
            return None;
        }
        let candidates = self.candidates();
        let completed = self.path.len()
            - self
                .path
                .iter()
                .filter(|&&i| self.class[i].is_some())
                .count();
        if completed >= self.best.0 {
            let stuck = candidates
                .iter()
                .copied()
                .filter(|&i| self.ops[i].complete.is_some())
                .collect();
            self.best = (completed, self.path.clone(), state, stuck);
        }
        for i in candidates {
            let Some(after) = step(state, &self.ops[i]) else {
                continue;
            };
            let completed = self.ops[i].complete.is_some();
            self.done[i] = true;
            self.open -= usize::from(completed);
            self.path.push(i);
            let found = self.explore(after);
            self.path.pop();
            self.open += usize::from(completed);
            self.done[i] = false;
            match found {
                Some(false) => {}
                other => return other,
            }
        }
        Some(false)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = |v: &Option<Value>| v.map_or("nil".to_string(), |v| v.to_string());
        let call = match &self.call {
            Call::Put(v) => format!("put({v})"),
            Call::Get => "get".to_string(),
            Call::Delete => "delete".to_string(),
            Call::Cas { expected, new } => format!("cas({} -> {new})", value(expected)),
        };
        let ret = match &self.ret {
            None => "?".to_string(),
            Some(Ret::Put) => "ok".to_string(),
            Some(Ret::Get(v)) => value(v),
            Some(Ret::Delete(existed)) => format!("existed={existed}"),
            Some(Ret::Cas {
                succeeded: true, ..
            }) => "ok".to_string(),
            Some(Ret::Cas { current, .. }) => format!("failed, current={}", value(current)),
        };
        let secs = |ns: u64| format!("{:.3}", ns as f64 / 1e9);
        let end = self.complete.map_or("inf".to_string(), secs);
        write!(
            f,
            "[{:>8} .. {:>8}] {:<8} {call} => {ret}",
            secs(self.invoke),
            end,
            self.label
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: usize = 100_000;

    /// An operation from `invoke` to `complete` (ms); `complete` None means ambiguous.
    fn op(call: Call, invoke: u64, complete: Option<u64>, ret: Option<Ret>) -> Op {
        Op {
            call,
            invoke: invoke * 1_000_000,
            complete: complete.map(|c| c * 1_000_000),
            ret,
            label: String::new(),
        }
    }

    fn put(v: Value, invoke: u64, complete: u64) -> Op {
        op(Call::Put(v), invoke, Some(complete), Some(Ret::Put))
    }

    fn get(read: Option<Value>, invoke: u64, complete: u64) -> Op {
        op(Call::Get, invoke, Some(complete), Some(Ret::Get(read)))
    }

    fn linearizable(ops: &[Op]) -> bool {
        match check(ops, BUDGET) {
            Verdict::Linearizable => true,
            Verdict::Violation { .. } => false,
            Verdict::Inconclusive(n) => panic!("inconclusive after {n}"),
        }
    }

    #[test]
    fn sequential_and_concurrent_history_passes() {
        let cas = |expected, new, invoke, complete, succeeded, current| {
            op(
                Call::Cas { expected, new },
                invoke,
                Some(complete),
                Some(Ret::Cas { succeeded, current }),
            )
        };
        let history = [
            get(None, 0, 5),
            put(1, 10, 20),
            // Concurrent with put(2): may see 1 or 2.
            put(2, 25, 40),
            get(Some(1), 26, 30),
            get(Some(2), 35, 45),
            cas(Some(2), 3, 50, 60, true, None),
            cas(Some(2), 4, 55, 65, false, Some(3)),
            op(Call::Delete, 70, Some(80), Some(Ret::Delete(true))),
            op(Call::Delete, 85, Some(90), Some(Ret::Delete(false))),
            cas(None, 5, 95, 100, true, None),
            get(Some(5), 105, 110),
        ];
        assert!(linearizable(&history));
    }

    #[test]
    fn stale_read_fails() {
        // 2 is acknowledged before the read starts, yet the read returns 1.
        let history = [put(1, 0, 10), put(2, 20, 30), get(Some(1), 40, 50)];
        match check(&history, BUDGET) {
            Verdict::Violation { stuck, state, .. } => {
                assert_eq!(state, Some(2));
                assert_eq!(stuck, vec![2]);
            }
            other => panic!("stale read accepted: {other:?}"),
        }
    }

    #[test]
    fn ambiguous_write_may_take_effect_later() {
        // put(2) timed out at 10 ms; it shows up long after, then is overwritten.
        let history = [
            put(1, 0, 5),
            op(Call::Put(2), 6, None, None),
            get(Some(1), 20, 25),
            get(Some(2), 100, 105),
            put(3, 110, 115),
            get(Some(3), 120, 125),
        ];
        assert!(linearizable(&history));
        // ...but never before it was invoked.
        let early = [get(Some(2), 0, 5), op(Call::Put(2), 6, None, None)];
        assert!(!linearizable(&early));
        // ...and only once: it cannot reappear after being overwritten.
        let twice = [
            op(Call::Put(2), 0, None, None),
            get(Some(2), 10, 15),
            put(3, 20, 25),
            get(Some(2), 30, 35),
        ];
        assert!(!linearizable(&twice));
    }

    #[test]
    fn lost_acknowledged_write_fails() {
        // put(2) was acknowledged, then the key reads as if it never happened.
        let lost_to_old_value = [put(1, 0, 5), put(2, 10, 15), get(Some(1), 20, 25)];
        assert!(!linearizable(&lost_to_old_value));
        let lost_entirely = [put(2, 10, 15), get(None, 20, 25)];
        assert!(!linearizable(&lost_entirely));
        // A delete claiming the key did not exist after an acknowledged put.
        let delete = [
            put(1, 0, 5),
            op(Call::Delete, 10, Some(15), Some(Ret::Delete(false))),
        ];
        assert!(!linearizable(&delete));
    }

    #[test]
    fn cas_result_must_match_the_register() {
        let wrong_success = [
            put(1, 0, 5),
            op(
                Call::Cas {
                    expected: Some(7),
                    new: 8,
                },
                10,
                Some(15),
                Some(Ret::Cas {
                    succeeded: true,
                    current: None,
                }),
            ),
        ];
        assert!(!linearizable(&wrong_success));
        let wrong_current = [
            put(1, 0, 5),
            op(
                Call::Cas {
                    expected: Some(7),
                    new: 8,
                },
                10,
                Some(15),
                Some(Ret::Cas {
                    succeeded: false,
                    current: Some(9),
                }),
            ),
        ];
        assert!(!linearizable(&wrong_current));
    }

    #[test]
    fn many_concurrent_ambiguous_writes_stay_fast() {
        // 40 ambiguous puts at once, then a read that no order explains: 2^40 sets of them, but
        // the search must give its verdict within a small budget.
        let mut history: Vec<Op> = (0..40).map(|v| op(Call::Put(v), v, None, None)).collect();
        history.push(put(100, 50, 55));
        history.push(get(Some(100), 60, 65));
        // One of them is read back, so it is observed and stays apart from the others.
        history.push(get(Some(7), 80, 85));
        history.push(get(Some(999), 90, 95));
        match check(&history, 10_000) {
            Verdict::Violation { stuck, .. } => assert_eq!(stuck, vec![history.len() - 1]),
            other => panic!("expected a violation, got {other:?}"),
        }
        history.pop();
        assert!(linearizable(&history));
    }
}
