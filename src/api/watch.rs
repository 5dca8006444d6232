//! `KV.Watch`: a stream of the changes this node applies to a key, a prefix or a range.
//!
//! Each watcher is one task reading the node's [`WatchHub`]: first the history it asked for,
//! then the live feed, so it sends every change from its start revision once, in revision order;
//! the changes of one log entry (a Batch, an expiry) go in one response. A watcher is served from
//! this node's applied state, like a stale read, never ahead of what a read here would show.
//!
//! Memory stays bounded: the feed is one shared ring of [`crate::watch::FEED_CAPACITY`] entries
//! and each stream buffers at most [`STREAM_BUFFER`] responses, so a client that stops reading
//! falls behind the ring and is cancelled (RESOURCE_EXHAUSTED, naming the revision to resume
//! from) instead of holding the changes it has not taken.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::limits::Limits;
use crate::proto::v1 as pb;
use crate::watch::{Applied, Event, EventKind, Feed, WatchHub};

/// Responses a stream holds for a client that reads slowly.
pub const STREAM_BUFFER: usize = 16;

pub type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

/// Which keys a watcher follows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Keys {
    One(String),
    Prefix(String),
    /// `[start, end)`.
    Range(String, String),
}

impl Keys {
    fn of(req: &pb::WatchRequest, limits: &Limits) -> Result<Self, Status> {
        let checked = |key: &str, field: &str| {
            limits
                .check_key(key)
                .map_err(|e| Status::invalid_argument(format!("{field}: {}", e.message())))
        };
        if req.all {
            return Ok(Keys::Prefix(String::new()));
        }
        if !req.prefix.is_empty() {
            checked(&req.prefix, "prefix")?;
            return Ok(Keys::Prefix(req.prefix.clone()));
        }
        if req.start.is_empty() {
            return Err(Status::invalid_argument(
                "name what to watch: start (a key, or with end a range), prefix, or all",
            ));
        }
        checked(&req.start, "start")?;
        if req.end.is_empty() {
            return Ok(Keys::One(req.start.clone()));
        }
        checked(&req.end, "end")?;
        if req.end <= req.start {
            return Err(Status::invalid_argument(format!(
                "end {:?} must be after start {:?}",
                req.end, req.start
            )));
        }
        Ok(Keys::Range(req.start.clone(), req.end.clone()))
    }

    fn contains(&self, key: &str) -> bool {
        match self {
            Keys::One(one) => key == one,
            Keys::Prefix(prefix) => key.starts_with(prefix.as_str()),
            Keys::Range(start, end) => key >= start.as_str() && key < end.as_str(),
        }
    }
}

/// What one watcher sends.
struct Filter {
    keys: Keys,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
}

impl Filter {
    /// The response for one entry's changes, or `None` when none of them is watched.
    fn response(&self, applied: &Applied) -> Option<pb::WatchResponse> {
        let events: Vec<pb::WatchEvent> = applied
            .events
            .iter()
            .filter(|e| self.keys.contains(&e.key))
            .filter(|e| match e.kind {
                EventKind::Put => !self.no_put,
                EventKind::Delete => !self.no_delete,
            })
            .map(|e| self.event(e, applied.revision))
            .collect();
        (!events.is_empty()).then_some(pb::WatchResponse {
            revision: applied.revision,
            events,
            ..Default::default()
        })
    }

    fn event(&self, event: &Event, revision: u64) -> pb::WatchEvent {
        let kind = match event.kind {
            EventKind::Put => pb::watch_event::Kind::Put,
            EventKind::Delete => pb::watch_event::Kind::Delete,
        };
        pb::WatchEvent {
            kind: kind as i32,
            key: event.key.clone(),
            value: event.value.clone(),
            revision,
            prev: self
                .prev_kv
                .then_some(event.prev.as_ref())
                .flatten()
                .map(|prev| pb::KeyValue {
                    key: event.key.clone(),
                    value: prev.value.clone(),
                    revision: prev.revision,
                    ttl_ms: 0,
                }),
        }
    }
}

/// How a watch starts.
#[derive(Debug)]
pub enum Opened {
    /// A watcher streams from the start revision.
    Streaming(WatchStream),
    /// The start revision is older than this node's history: this canceled response, naming the
    /// oldest revision (`compact_revision`), is the whole answer, and no watcher was started.
    Compacted(pb::WatchResponse),
}

impl Opened {
    /// The answer as one stream, as gRPC sends it: a compacted start is a stream of its one
    /// canceled response.
    pub fn into_stream(self) -> WatchStream {
        match self {
            Opened::Streaming(stream) => stream,
            Opened::Compacted(response) => {
                let (out, stream) = mpsc::channel(1);
                // Room for one response is certain in a new channel.
                let _ = out.try_send(Ok(response));
                ReceiverStream::new(stream)
            }
        }
    }
}

/// Starts a watcher for `req`, as one stream (see [`open`]).
pub fn start(
    hub: &Arc<WatchHub>,
    req: pb::WatchRequest,
    limits: &Limits,
    progress_every: Duration,
) -> Result<WatchStream, Status> {
    open(hub, req, limits, progress_every).map(Opened::into_stream)
}

/// Checks `req` and starts a watcher for it, unless its start revision is older than the
/// history; the watcher's task ends when the client goes away, it falls behind, its history is
/// gone, or the node stops. Both front doors call this: gRPC through [`start`], the HTTP
/// gateway's `/watch` directly, so that it can answer a compacted start with its own status.
pub fn open(
    hub: &Arc<WatchHub>,
    req: pb::WatchRequest,
    limits: &Limits,
    progress_every: Duration,
) -> Result<Opened, Status> {
    let filter = Filter {
        keys: Keys::of(&req, limits)?,
        prev_kv: req.prev_kv,
        no_put: req.no_put,
        no_delete: req.no_delete,
    };
    let subscription = match hub.subscribe(req.start_revision) {
        Ok(subscription) => subscription,
        Err(compacted) => {
            return Ok(Opened::Compacted(canceled(
                compacted.oldest,
                format!(
                    "revision {} is older than this node's watch history; re-read and watch \
                     again from revision {} (or later)",
                    req.start_revision, compacted.oldest
                ),
            )))
        }
    };
    let next = match req.start_revision {
        0 => subscription.applied + 1,
        start => start,
    };
    let (out, stream) = mpsc::channel(STREAM_BUFFER);
    let watcher = Watcher {
        hub: hub.clone(),
        filter,
        out,
        next,
        progress: req.progress_notify.then_some(progress_every),
    };
    tokio::spawn(watcher.run(subscription));
    Ok(Opened::Streaming(ReceiverStream::new(stream)))
}

fn canceled(compact_revision: u64, reason: String) -> pb::WatchResponse {
    pb::WatchResponse {
        compact_revision,
        canceled: true,
        cancel_reason: reason,
        ..Default::default()
    }
}

struct Watcher {
    hub: Arc<WatchHub>,
    filter: Filter,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    /// The first revision not yet sent (or skipped as unwatched).
    next: u64,
    progress: Option<Duration>,
}

impl Watcher {
    async fn run(mut self, subscription: crate::watch::Subscription) {
        let crate::watch::Subscription {
            backlog, mut feed, ..
        } = subscription;
        for applied in backlog {
            if !self.send_applied(&applied).await {
                return;
            }
        }
        let stopped = self.hub.stopped();
        tokio::pin!(stopped);
        let idle = self.progress.unwrap_or(Duration::from_secs(3600));
        loop {
            tokio::select! {
                item = feed.recv() => {
                    if !self.take(item).await {
                        return;
                    }
                }
                () = tokio::time::sleep(idle), if self.progress.is_some() => {
                    // A progress revision must not run ahead of the changes sent, or a client
                    // resuming after it would miss one: the hub publishes under the lock that
                    // `applied` takes, so every change up to that revision is in the feed by
                    // now; send those first.
                    let applied = self.hub.applied();
                    loop {
                        let item = match feed.try_recv() {
                            Ok(item) => Ok(item),
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
                            Err(TryRecvError::Closed) => Err(RecvError::Closed),
                        };
                        if !self.take(item).await {
                            return;
                        }
                    }
                    let progress = pb::WatchResponse {
                        revision: applied.max(self.next.saturating_sub(1)),
                        ..Default::default()
                    };
                    if self.out.send(Ok(progress)).await.is_err() {
                        return;
                    }
                }
                () = &mut stopped => {
                    let status = Status::unavailable(format!(
                        "this node is stopping; watch again on another node with \
                         start_revision {}",
                        self.next
                    ));
                    let _ = self.out.send(Err(status)).await;
                    return;
                }
                () = self.out.closed() => return,
            }
        }
    }

    /// Handles one item of the feed; returns false once the stream is over (the client has
    /// gone, this watcher fell behind, or its history is gone).
    async fn take(&mut self, item: Result<Feed, RecvError>) -> bool {
        match item {
            Ok(Feed::Applied(applied)) => self.send_applied(&applied).await,
            Ok(Feed::Reset { from }) if from > self.next => {
                let reason = format!(
                    "this node installed a snapshot up to revision {}: the changes from \
                     revision {} are not available here; re-read and watch again from \
                     revision {from}",
                    from - 1,
                    self.next
                );
                let _ = self.out.send(Ok(canceled(from, reason))).await;
                false
            }
            Ok(Feed::Reset { .. }) => true,
            Err(RecvError::Lagged(missed)) => {
                let status = Status::resource_exhausted(format!(
                    "this watcher fell {missed} changes behind and was cancelled; \
                     watch again with start_revision {}",
                    self.next
                ));
                let _ = self.out.send(Err(status)).await;
                false
            }
            Err(RecvError::Closed) => false,
        }
    }

    /// Sends one entry's watched changes; returns false once the client has gone.
    async fn send_applied(&mut self, applied: &Applied) -> bool {
        if applied.revision < self.next {
            return true;
        }
        self.next = applied.revision + 1;
        match self.filter.response(applied) {
            Some(response) => self.out.send(Ok(response)).await.is_ok(),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(start: &str, end: &str, prefix: &str) -> pb::WatchRequest {
        pb::WatchRequest {
            start: start.into(),
            end: end.into(),
            prefix: prefix.into(),
            ..Default::default()
        }
    }

    const LIMITS: Limits = Limits {
        max_key_bytes: 16,
        max_value_bytes: 16,
    };

    #[test]
    fn keys_are_a_key_a_prefix_or_a_range() {
        let one = Keys::of(&request("a", "", ""), &LIMITS).unwrap();
        assert!(one.contains("a") && !one.contains("ab"));
        let prefix = Keys::of(&request("x", "", "a/"), &LIMITS).unwrap();
        assert!(prefix.contains("a/b") && !prefix.contains("a"));
        let range = Keys::of(&request("b", "d", ""), &LIMITS).unwrap();
        assert!(range.contains("b") && range.contains("c9") && !range.contains("d"));
        for bad in [
            request("", "", ""),
            request("d", "b", ""),
            request(&"k".repeat(17), "", ""),
        ] {
            assert!(Keys::of(&bad, &LIMITS).is_err(), "{bad:?}");
        }
    }
}
