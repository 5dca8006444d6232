//! When leases expire: the leader's countdowns.
//!
//! Which leases exist, and which keys they hold, is replicated state (`storage::kv_map`). When
//! a lease ends is decided by one node, the leader, on its monotonic clock, and carried to every
//! replica as a `LeaseRevoke` entry: replicas never judge a lease by their own clocks, so they
//! all delete the same keys at the same revision, and a node whose wall clock is off (or jumps)
//! changes nothing.
//!
//! The guarantee to a holder: once a leader has answered a renewal, the lease does not expire
//! before its TTL has passed since that answer. The leader answers a renewal only after
//! confirming it still leads (a linearizable read), and counts the TTL from then. A leader that
//! takes over knows nothing of its predecessor's countdowns, so it starts every lease that
//! exists at its first look at the full TTL plus a grace period (at least the election timeout,
//! the time a deposed leader can go on believing it leads): a renewal answered by the old leader
//! just before it lost leadership is honoured, and a holder that needs an election and a
//! reconnect to find the new leader still has its full TTL to do so. The cost is that a lease
//! whose holder died around a leader change lives up to TTL + grace longer.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::raft::Raft;
use crate::storage::KvReader;

/// This node is not the leader, so it keeps no countdowns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotLeader;

/// The countdown of every lease, kept by the leader.
pub struct LeaseClocks {
    raft: Raft,
    reader: KvReader,
    /// Added to each lease's TTL when a term starts (see the module docs).
    grace: Duration,
    countdowns: Mutex<Countdowns>,
}

#[derive(Default)]
struct Countdowns {
    /// The term these countdowns belong to; they are started afresh in every term this node
    /// leads.
    term: Option<u64>,
    leases: HashMap<u64, Countdown>,
}

#[derive(Debug, Clone, Copy)]
struct Countdown {
    deadline: Instant,
    /// Its revocation has been proposed: renewals are refused, as the lease is ending.
    ending: bool,
}

impl LeaseClocks {
    pub fn new(raft: Raft, reader: KvReader, grace: Duration) -> Self {
        Self {
            raft,
            reader,
            grace,
            countdowns: Mutex::default(),
        }
    }

    /// The term this node leads, if it leads.
    fn leading_term(&self) -> Result<u64, NotLeader> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        if metrics.current_leader == Some(metrics.id) && metrics.running_state.is_ok() {
            Ok(metrics.current_term)
        } else {
            Err(NotLeader)
        }
    }

    /// The countdowns of `term`, started for every existing lease (TTL + grace) if this is the
    /// first look in that term.
    fn countdowns(&self, term: u64, now: Instant) -> MutexGuard<'_, Countdowns> {
        let mut countdowns = self.countdowns.lock().unwrap_or_else(|p| p.into_inner());
        if countdowns.term != Some(term) {
            countdowns.term = Some(term);
            countdowns.leases = self
                .reader
                .leases()
                .into_iter()
                .map(|lease| {
                    let countdown = Countdown {
                        deadline: now + Duration::from_millis(lease.ttl_ms) + self.grace,
                        ending: false,
                    };
                    (lease.id, countdown)
                })
                .collect();
        }
        countdowns
    }

    /// Restarts a lease's countdown at its full TTL and returns the TTL (ms); `None` when the
    /// lease does not exist or is ending. The caller has confirmed leadership (a linearizable
    /// read) after the renewal arrived, so the map has every entry of earlier leaders applied.
    pub fn renew(&self, id: u64) -> Result<Option<u64>, NotLeader> {
        let term = self.leading_term()?;
        let now = Instant::now();
        // Looked up under the countdowns' lock, so that a lease revoked meanwhile is not
        // renewed: its revocation's apply has either happened (not found) or not yet (the
        // countdown says ending).
        let mut countdowns = self.countdowns(term, now);
        let Some((ttl_ms, _)) = self.reader.lease(id, false) else {
            return Ok(None);
        };
        let deadline = now + Duration::from_millis(ttl_ms);
        let countdown = countdowns.leases.entry(id).or_insert(Countdown {
            deadline,
            ending: false,
        });
        if countdown.ending {
            return Ok(None);
        }
        countdown.deadline = deadline;
        Ok(Some(ttl_ms))
    }

    /// Time left before the lease is due to expire, with its granted TTL; `None` when it does
    /// not exist.
    pub fn remaining(&self, id: u64) -> Result<Option<(Duration, u64)>, NotLeader> {
        let term = self.leading_term()?;
        let Some((ttl_ms, _)) = self.reader.lease(id, false) else {
            return Ok(None);
        };
        let now = Instant::now();
        let countdowns = self.countdowns(term, now);
        let left = match countdowns.leases.get(&id) {
            Some(countdown) if countdown.ending => Duration::ZERO,
            Some(countdown) => countdown.deadline.saturating_duration_since(now),
            // Granted since the last look: its countdown starts at the next one.
            None => Duration::from_millis(ttl_ms),
        };
        Ok(Some((left, ttl_ms)))
    }

    /// The leases whose countdown has run out, each marked as ending (their revocation is the
    /// caller's to propose). Countdowns of leases gone from the map are dropped and leases
    /// granted since the last look start theirs at the full TTL. Nothing when not leading.
    pub fn due(&self) -> Vec<u64> {
        let Ok(term) = self.leading_term() else {
            return Vec::new();
        };
        let now = Instant::now();
        let leases = self.reader.leases();
        let mut countdowns = self.countdowns(term, now);
        let existing: HashMap<u64, u64> = leases.iter().map(|l| (l.id, l.ttl_ms)).collect();
        countdowns.leases.retain(|id, _| existing.contains_key(id));
        for (&id, &ttl_ms) in &existing {
            countdowns.leases.entry(id).or_insert(Countdown {
                deadline: now + Duration::from_millis(ttl_ms),
                ending: false,
            });
        }
        let mut due: Vec<u64> = countdowns
            .leases
            .iter_mut()
            .filter(|(_, countdown)| !countdown.ending && countdown.deadline <= now)
            .map(|(&id, countdown)| {
                countdown.ending = true;
                id
            })
            .collect();
        due.sort_unstable();
        due
    }

    /// A revocation that did not commit: the lease counts as expired still, and is offered
    /// again by the next [`LeaseClocks::due`] (in this term; a new term starts afresh).
    pub fn retry(&self, id: u64) {
        let mut countdowns = self.countdowns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(countdown) = countdowns.leases.get_mut(&id) {
            countdown.ending = false;
        }
    }
}
