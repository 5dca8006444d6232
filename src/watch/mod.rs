//! The feed of applied changes that watchers read: every put and delete this node applies, with
//! its revision, in apply order, and a bounded history of the recent ones for watchers that
//! start in the past.
//!
//! The state machine [`WatchHub::publish`]es each entry's changes under its own write lock, and a
//! watcher [`WatchHub::subscribe`]s under the hub's lock, taking the history it asks for and the
//! live feed at one point: so a watcher sees every change after its start exactly once, in
//! revision order, whatever arrives while it subscribes.
//!
//! The history holds the changes of the last `max_revisions` entries that made any, and at most
//! `max_bytes` of keys and values; it is refilled after a restart by the log entries replayed
//! after the snapshot. A watch that starts before [`Subscription`]'s oldest complete revision is
//! refused with that revision (etcd's `compact_revision`), so the client re-reads and resumes.
//! After a snapshot install the history restarts at the snapshot, and watchers that were behind
//! it are told so instead of silently skipping the changes it covers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::types::StoredValue;

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: String,
    /// The new value; empty for a delete.
    pub value: Vec<u8>,
    /// The value this change replaced or removed, when there was a live one.
    pub prev: Option<StoredValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

impl Event {
    fn bytes(&self) -> usize {
        self.key.len() + self.value.len() + self.prev.as_ref().map_or(0, |p| p.value.len()) + 64
    }
}

/// The changes of one applied log entry.
#[derive(Debug)]
pub struct Applied {
    pub revision: u64,
    pub events: Vec<Event>,
}

/// What the live feed carries.
#[derive(Debug, Clone)]
pub enum Feed {
    Applied(Arc<Applied>),
    /// A snapshot was installed: changes before `from` are not available on this node.
    Reset {
        from: u64,
    },
}

/// Bounds of the history kept for watchers starting in the past.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub max_revisions: usize,
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            max_revisions: 10_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// How many feed items a watcher may fall behind before it is cancelled.
pub const FEED_CAPACITY: usize = 4096;

struct Inner {
    history: VecDeque<Arc<Applied>>,
    history_bytes: usize,
    /// Every change at this revision or later is in `history` (or still to come).
    complete_from: u64,
    /// The last revision applied.
    applied: u64,
    limits: HistoryLimits,
}

pub struct WatchHub {
    inner: Mutex<Inner>,
    feed: broadcast::Sender<Feed>,
    /// Turned on when the node stops, so that watch streams end and the server can close.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// Where a new watcher starts: the history it asked for, then the live feed.
pub struct Subscription {
    pub backlog: Vec<Arc<Applied>>,
    pub feed: broadcast::Receiver<Feed>,
    /// The revision applied when it subscribed.
    pub applied: u64,
}

/// A watch asked for changes older than the history holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The oldest revision that can still be watched from.
    pub oldest: u64,
}

impl WatchHub {
    pub fn new(limits: HistoryLimits) -> Self {
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let (stopping, _) = tokio::sync::watch::channel(false);
        Self {
            stopping,
            inner: Mutex::new(Inner {
                history: VecDeque::new(),
                history_bytes: 0,
                complete_from: 1,
                applied: 0,
                limits,
            }),
            feed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The map now holds the state at `revision` without the changes that led there (a snapshot
    /// loaded at start or installed from the leader): the history restarts after it.
    pub fn reset(&self, revision: u64) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.history_bytes = 0;
        inner.complete_from = revision + 1;
        inner.applied = revision;
        let _ = self.feed.send(Feed::Reset { from: revision + 1 });
    }

    /// Records the changes entry `revision` made (possibly none) and hands them to watchers.
    pub fn publish(&self, revision: u64, events: Vec<Event>) {
        let mut inner = self.lock();
        inner.applied = revision;
        if events.is_empty() {
            return;
        }
        let applied = Arc::new(Applied { revision, events });
        inner.history_bytes += applied.events.iter().map(Event::bytes).sum::<usize>();
        inner.history.push_back(applied.clone());
        while inner.history.len() > inner.limits.max_revisions
            || (inner.history_bytes > inner.limits.max_bytes && inner.history.len() > 1)
        {
            let Some(evicted) = inner.history.pop_front() else {
                break;
            };
            inner.history_bytes -= evicted.events.iter().map(Event::bytes).sum::<usize>();
            inner.complete_from = evicted.revision + 1;
        }
        // No receiver is not an error: nobody watches.
        let _ = self.feed.send(Feed::Applied(applied));
    }

    /// Sets how much history is kept (`--watch-history`); takes effect with the next entry.
    pub fn set_limits(&self, limits: HistoryLimits) {
        self.lock().limits = limits;
    }

    /// Ends every watch stream (the node is stopping): a stream would otherwise keep its
    /// connection, and the server's graceful shutdown, open for ever.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once [`WatchHub::stop`] has been called.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.subscribe();
        async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        }
    }

    /// The last revision applied.
    pub fn applied(&self) -> u64 {
        self.lock().applied
    }

    /// Starts a watcher at `start_revision` (0: after the current revision).
    pub fn subscribe(&self, start_revision: u64) -> Result<Subscription, Compacted> {
        let inner = self.lock();
        let backlog = if start_revision == 0 || start_revision > inner.applied {
            Vec::new()
        } else if start_revision < inner.complete_from {
            return Err(Compacted {
                oldest: inner.complete_from,
            });
        } else {
            inner
                .history
                .iter()
                .filter(|a| a.revision >= start_revision)
                .cloned()
                .collect()
        };
        Ok(Subscription {
            backlog,
            feed: self.feed.subscribe(),
            applied: inner.applied,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> Event {
        Event {
            kind: EventKind::Put,
            key: key.into(),
            value: b"v".to_vec(),
            prev: None,
        }
    }

    #[test]
    fn a_watcher_gets_the_history_it_asks_for_then_the_feed_without_gaps() {
        let hub = WatchHub::new(HistoryLimits::default());
        hub.publish(1, vec![put("a")]);
        hub.publish(2, vec![]);
        hub.publish(3, vec![put("b"), put("c")]);
        let mut sub = hub.subscribe(2).expect("in history");
        assert_eq!(sub.backlog.len(), 1);
        assert_eq!(sub.backlog[0].revision, 3);
        assert_eq!(sub.applied, 3);
        hub.publish(4, vec![put("d")]);
        match sub.feed.try_recv() {
            Ok(Feed::Applied(a)) => assert_eq!(a.revision, 4),
            other => panic!("expected revision 4, got {other:?}"),
        }
        assert!(hub.subscribe(0).expect("from now").backlog.is_empty());
        assert!(hub.subscribe(9).expect("future").backlog.is_empty());
    }

    #[test]
    fn the_history_is_bounded_and_older_starts_are_compacted() {
        let hub = WatchHub::new(HistoryLimits {
            max_revisions: 2,
            max_bytes: usize::MAX,
        });
        for revision in 1..=5 {
            hub.publish(revision, vec![put("k")]);
        }
        assert_eq!(hub.subscribe(3).err(), Some(Compacted { oldest: 4 }));
        assert_eq!(hub.subscribe(4).map(|s| s.backlog.len()).ok(), Some(2));
        hub.reset(10);
        assert_eq!(hub.subscribe(5).err(), Some(Compacted { oldest: 11 }));
        assert_eq!(hub.subscribe(11).map(|s| s.backlog.len()).ok(), Some(0));
    }

    #[test]
    fn a_byte_bound_evicts_large_entries() {
        let hub = WatchHub::new(HistoryLimits {
            max_revisions: 100,
            max_bytes: 1000,
        });
        let big = Event {
            value: vec![0; 600],
            ..put("k")
        };
        hub.publish(1, vec![big.clone()]);
        hub.publish(2, vec![big]);
        assert_eq!(hub.subscribe(1).err(), Some(Compacted { oldest: 2 }));
    }
}
