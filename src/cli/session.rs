//! What `raftkv lease keepalive`, `raftkv lock` and `raftkv elect` share: leases granted and
//! revoked, a lease kept alive in the background ([`Keepalive`]), a key that campaigns under a
//! name with a lease ([`Campaign`]), a prefix followed through a watch and scans ([`Follower`]),
//! and the signals that end such a command ([`Interrupts`]).
//!
//! # Keeping a lease alive
//!
//! A task sends one renewal at a time on a KeepAlive stream, a third of the TTL after the last
//! confirmed one, and records the instant each confirmed renewal was *sent*. The leader counts
//! the TTL from when the renewal reached it, which is later, so `sent + TTL` is never after the
//! lease's real expiry (clocks on both ends run at about the same rate). A holder that acts only
//! before [`Liveness::safe_until`], `sent + 2/3 TTL`, keeps a third of the TTL as margin for
//! clock drift and for killing what it runs. A broken stream is reopened on the next endpoint
//! with backoff, forever: when to give up is the holder's decision, made from `safe_until`. The
//! task stops only when an answer says the lease is gone (ttl 0) or a definite error comes.
//!
//! # Following a prefix
//!
//! The watch of the prefix is opened first and the prefix read with a linearizable scan after.
//! A watch from "now" starts at the applied revision of its node when it opened, which is at
//! most the revision the later scan reads at, so every change after the scan is in the watch:
//! none is missed. The watch may also replay changes from before the scan (its node may lag
//! behind the one that served the scan). The callers tolerate that because of how the keys
//! under a campaign prefix live: each participant writes its key once, and a deleted key is
//! never written again (its name holds a lease id, and ids are never reused). So a replayed
//! DELETE removes a key the scan already lacked, and a replayed PUT can only bring back a key
//! that was created *and* deleted before the scan, whose DELETE follows in the same stream.
//! Only keys named `<prefix><lease id>` are handed on: a lock named `NAME/sub` shares the prefix
//! but not the line. When the stream breaks it is reopened on the next endpoint and the prefix
//! scanned again. A node cut off from the leader keeps the stream open but sends nothing new,
//! so the prefix is also scanned again every [`RESCAN_EVERY`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::client::{idempotency_key, write_request, CliError, Client, Connection};
use super::commands::kv;
use super::commands::scan::{scan_all, Range};
use super::commands::watch::{classify, Failed};
use super::exit;
use crate::proto::v1::lease_client::LeaseClient;
use crate::proto::v1::{
    KeyValue, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseRevokeResponse,
    PutRequest, WatchEvent, WatchRequest,
};
use crate::text::format_duration;

/// How often a followed prefix is scanned again although its watch has not broken.
pub const RESCAN_EVERY: Duration = Duration::from_secs(5);

/// How long a revoke on the way out may take: the command is ending, and a lease left behind
/// ends by itself after its TTL.
const REVOKE_ON_EXIT: Duration = Duration::from_secs(3);

pub fn lease_client(channel: Connection) -> LeaseClient<Connection> {
    LeaseClient::new(channel)
        .max_decoding_message_size(Client::max_message_bytes())
        .max_encoding_message_size(Client::max_message_bytes())
}

/// A lease this command created.
#[derive(Debug, Clone, Copy)]
pub struct Granted {
    pub id: u64,
    pub ttl: Duration,
    pub revision: u64,
    /// When the Grant was first sent: the lease's countdown started after this.
    pub sent_at: Instant,
}

/// Grants a lease of `ttl` (the server refuses less than 1 s with INVALID_ARGUMENT). Retried on
/// failover with one idempotency key; a lease granted by an attempt whose answer was lost is
/// left to expire.
pub async fn grant(client: &Client, ttl: Duration) -> Result<Granted, CliError> {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let idempotency = idempotency_key();
    let sent_at = Instant::now();
    let answer = client
        .call(|channel, remaining| {
            let message = LeaseGrantRequest { ttl_ms };
            let idempotency = &idempotency;
            async move {
                lease_client(channel)
                    .grant(write_request(message, remaining, idempotency))
                    .await
            }
        })
        .await?
        .into_inner();
    if answer.id == 0 || answer.ttl_ms == 0 {
        return Err(CliError::new(
            exit::UNAVAILABLE,
            format!(
                "the server granted lease {} with ttl {} ms: neither may be 0",
                answer.id, answer.ttl_ms
            ),
        ));
    }
    Ok(Granted {
        id: answer.id,
        ttl: Duration::from_millis(answer.ttl_ms),
        revision: answer.revision,
        sent_at,
    })
}

/// Revokes lease `id`, deleting its keys (NOT_FOUND, exit 1, when it does not exist).
pub async fn revoke(client: &Client, id: u64) -> Result<LeaseRevokeResponse, CliError> {
    let idempotency = idempotency_key();
    let answer = client
        .call(|channel, remaining| {
            let message = LeaseRevokeRequest { id };
            let idempotency = &idempotency;
            async move {
                lease_client(channel)
                    .revoke(write_request(message, remaining, idempotency))
                    .await
            }
        })
        .await?;
    Ok(answer.into_inner())
}

/// Revokes on the way out of a command, bounded by [`REVOKE_ON_EXIT`]; a failure is only
/// reported, since the lease expires by itself after its TTL.
pub async fn revoke_on_exit(client: &Client, id: u64) {
    match tokio::time::timeout(REVOKE_ON_EXIT, revoke(client, id)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.code == exit::NOT_FOUND => {}
        Ok(Err(e)) => eprintln!(
            "raftkv: could not revoke lease {id} ({}); it expires by itself",
            e.message
        ),
        Err(_) => eprintln!(
            "raftkv: could not revoke lease {id} within {}; it expires by itself",
            format_duration(REVOKE_ON_EXIT)
        ),
    }
}

/// Where keeping a lease alive stands, as the [`Keepalive`] task last saw it.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    /// When the last renewal the server confirmed was sent (for a lease this command granted,
    /// the Grant at first); `None` before any.
    pub renewed_at: Option<Instant>,
    /// The lease's TTL, as the last answer gave it.
    pub ttl: Option<Duration>,
    /// Renewals confirmed so far.
    pub renewals: u64,
    /// Set when keeping the lease alive is over, with why: the lease is gone (exit code 1) or
    /// the server refused the renewals.
    pub ended: Option<CliError>,
}

impl Liveness {
    /// Until when the lease is certainly alive on the server with a third of its TTL to spare:
    /// 2/3 TTL after the last confirmed renewal was sent. `None` before any is confirmed.
    pub fn safe_until(&self) -> Option<Instant> {
        Some(self.renewed_at? + self.ttl? * 2 / 3)
    }

    /// Whether the lease is certainly alive now (see [`Liveness::safe_until`]).
    pub fn is_safe(&self, now: Instant) -> bool {
        self.ended.is_none() && self.safe_until().is_some_and(|until| now < until)
    }

    /// When the next renewal is due: a third of the TTL after the last confirmed one was sent,
    /// or now (the first renewal, and a retry after a failed one whose time has passed).
    fn next_due(&self) -> Instant {
        match (self.renewed_at, self.ttl) {
            (Some(at), Some(ttl)) => at + ttl / 3,
            _ => Instant::now(),
        }
    }

    /// How long to wait for the answer to one renewal before trying another endpoint: a sixth
    /// of the TTL (so that two attempts fit in the 2/3 TTL a holder waits), within 250 ms..2 s.
    fn answer_budget(&self) -> Duration {
        self.ttl.map_or(Duration::from_secs(2), |ttl| {
            (ttl / 6).clamp(Duration::from_millis(250), Duration::from_secs(2))
        })
    }

    /// How long since the last confirmed renewal was sent, for messages.
    pub fn since_renewal(&self, now: Instant) -> String {
        match self.renewed_at {
            Some(at) => format_duration(now.saturating_duration_since(at)),
            None => "ever".into(),
        }
    }
}

/// A lease kept alive by a background task for as long as this handle lives.
pub struct Keepalive {
    id: u64,
    state: LivenessWatch,
    task: JoinHandle<()>,
}

impl Keepalive {
    /// Starts keeping lease `id` alive. `granted` is the lease's Grant when this command made
    /// it (its send time counts as the first renewal); without it the first renewal is sent at
    /// once and its answer gives the TTL.
    pub fn start(client: Arc<Client>, id: u64, granted: Option<&Granted>) -> Self {
        let initial = Liveness {
            renewed_at: granted.map(|g| g.sent_at),
            ttl: granted.map(|g| g.ttl),
            ..Liveness::default()
        };
        let (sender, state) = watch::channel(initial);
        let task = tokio::spawn(keep(client, id, sender));
        Self {
            id,
            state: LivenessWatch(state),
            task,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The current state.
    pub fn now(&self) -> Liveness {
        self.state.now()
    }

    /// Waits for the state to change (a renewal, or the end) and returns it. Cancel-safe.
    pub async fn changed(&mut self) -> Liveness {
        self.state.changed().await
    }

    /// Another view of the state, for a caller that holds the handle only by reference.
    pub fn subscribe(&self) -> LivenessWatch {
        LivenessWatch(self.state.0.clone())
    }
}

impl Drop for Keepalive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The state of a [`Keepalive`], as it changes.
pub struct LivenessWatch(watch::Receiver<Liveness>);

impl LivenessWatch {
    pub fn now(&self) -> Liveness {
        self.0.borrow().clone()
    }

    /// Waits for the state to change and returns it. Cancel-safe.
    pub async fn changed(&mut self) -> Liveness {
        if self.0.changed().await.is_err() {
            // The task has ended, and its last state (with `ended` set) was seen already:
            // nothing will change again.
            std::future::pending::<()>().await;
        }
        self.now()
    }
}

/// Grows from 100 ms to 1 s between rounds of failed attempts; back to 100 ms after a success.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MOST: Duration = Duration::from_secs(1);

    fn new() -> Self {
        Self(Self::FIRST)
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Self::MOST);
    }

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

/// Why one stream stopped.
enum Stop {
    /// For good: the lease is gone, the server refused, or nobody listens any more.
    Ended(Option<CliError>),
    /// This endpoint failed; the next one may serve.
    Broken(String),
}

impl From<Failed> for Stop {
    fn from(failed: Failed) -> Self {
        match failed {
            Failed::Final(error) => Stop::Ended(Some(error)),
            Failed::Retry(status) => Stop::Broken(status.message().to_string()),
        }
    }
}

/// Reports the first failure after a success, and then every 30th, so that a cluster that is
/// down for a while does not flood stderr.
struct Complaints {
    what: String,
    failures: u64,
}

impl Complaints {
    fn new(what: String) -> Self {
        Self { what, failures: 0 }
    }

    fn failed(&mut self, endpoint: &str, message: &str) {
        if self.failures % 30 == 0 {
            eprintln!(
                "raftkv: {}: {endpoint}: {message}; trying again on the next endpoint",
                self.what
            );
        }
        self.failures += 1;
    }

    fn recovered(&mut self) {
        self.failures = 0;
    }
}

/// The keepalive task: streams to one endpoint after another until the lease ends.
async fn keep(client: Arc<Client>, id: u64, state: watch::Sender<Liveness>) {
    let endpoints = client.endpoints().to_vec();
    let mut backoff = Backoff::new();
    let mut complaints = Complaints::new(format!("keeping lease {id} alive"));
    for endpoint in endpoints.iter().cycle() {
        let renewals = state.borrow().renewals;
        match keep_on(&client, endpoint, id, &state).await {
            Stop::Ended(ended) => {
                let ended = ended.unwrap_or_else(|| {
                    CliError::new(
                        exit::UNAVAILABLE,
                        format!("keeping lease {id} alive stopped"),
                    )
                });
                state.send_modify(|s| s.ended = Some(ended));
                return;
            }
            Stop::Broken(message) => {
                if state.borrow().renewals > renewals {
                    backoff.reset();
                    complaints.recovered();
                }
                complaints.failed(endpoint, &message);
                backoff.wait().await;
            }
        }
    }
}

/// Renews lease `id` on one KeepAlive stream to `endpoint`, one renewal at a time, until the
/// stream fails or the lease ends.
async fn keep_on(
    client: &Client,
    endpoint: &str,
    id: u64,
    state: &watch::Sender<Liveness>,
) -> Stop {
    let channel = match client.connect(endpoint).await {
        Ok(channel) => channel,
        Err(status) => return Stop::from(classify(status)),
    };
    let (requests, outgoing) = mpsc::channel(1);
    let mut lease = lease_client(channel);
    let due = state.borrow().next_due();
    tokio::time::sleep_until(due.into()).await;
    let mut sent_at = Instant::now();
    let mut deadline = sent_at + state.borrow().answer_budget();
    // The first renewal is queued before the call opens, so a server that waits for a request
    // before it answers the call is served as well as one that answers at once.
    if requests.try_send(LeaseKeepAliveRequest { id }).is_err() {
        return Stop::Broken("the keepalive stream did not take a request".into());
    }
    let opened = tokio::time::timeout_at(
        deadline.into(),
        lease.keep_alive(ReceiverStream::new(outgoing)),
    )
    .await;
    let mut answers = match opened {
        Ok(Ok(answers)) => answers.into_inner(),
        Ok(Err(status)) => return Stop::from(classify(status)),
        Err(_) => return Stop::Broken("no answer to the keepalive in time".into()),
    };
    loop {
        let answer = match tokio::time::timeout_at(deadline.into(), answers.message()).await {
            Ok(Ok(Some(answer))) => answer,
            Ok(Ok(None)) => return Stop::Broken("the keepalive stream ended".into()),
            Ok(Err(status)) => return Stop::from(classify(status)),
            Err(_) => return Stop::Broken("no answer to the keepalive in time".into()),
        };
        if answer.id != id && answer.id != 0 {
            return Stop::Broken(format!(
                "the server answered for lease {} on the stream of lease {id}",
                answer.id
            ));
        }
        if answer.ttl_ms == 0 {
            return Stop::Ended(Some(gone(id)));
        }
        state.send_modify(|s| {
            s.renewed_at = Some(s.renewed_at.map_or(sent_at, |at| at.max(sent_at)));
            s.ttl = Some(Duration::from_millis(answer.ttl_ms));
            s.renewals += 1;
        });
        let due = state.borrow().next_due();
        tokio::time::sleep_until(due.into()).await;
        sent_at = Instant::now();
        deadline = sent_at + state.borrow().answer_budget();
        if requests.send(LeaseKeepAliveRequest { id }).await.is_err() {
            return Stop::Broken("the keepalive stream closed".into());
        }
    }
}

/// The error of a lease that no longer exists.
pub fn gone(id: u64) -> CliError {
    CliError::new(
        exit::NOT_FOUND,
        format!("lease {id} not found (expired or revoked)"),
    )
}

/// One participant under a name (`raftkv lock`, `raftkv elect`): a lease kept alive and the
/// key `NAME/<lease id>` attached to it. The key's revision is the participant's place in line:
/// it is written once, so its revision is its creation revision.
pub struct Campaign {
    pub key: String,
    pub revision: u64,
    pub keepalive: Keepalive,
    client: Arc<Client>,
}

impl Campaign {
    /// Grants a lease of `ttl`, starts keeping it alive, and writes `prefix<lease id>` = `value`
    /// with it. A failure after the Grant revokes the lease.
    pub async fn start(
        client: &Arc<Client>,
        prefix: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<Self, CliError> {
        let granted = grant(client, ttl).await?;
        let keepalive = Keepalive::start(client.clone(), granted.id, Some(&granted));
        let key = format!("{prefix}{}", granted.id);
        let idempotency = idempotency_key();
        let put = client
            .call(|channel, remaining| {
                let message = PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    ttl_ms: 0,
                    lease: granted.id,
                };
                let idempotency = &idempotency;
                async move {
                    kv(channel)
                        .put(write_request(message, remaining, idempotency))
                        .await
                }
            })
            .await;
        match put {
            Ok(answer) => Ok(Self {
                key,
                revision: answer.into_inner().revision,
                keepalive,
                client: client.clone(),
            }),
            Err(error) => {
                revoke_on_exit(client, granted.id).await;
                Err(error)
            }
        }
    }

    pub fn lease(&self) -> u64 {
        self.keepalive.id()
    }

    /// Ends the campaign: revokes the lease, which deletes the key (best effort, bounded).
    pub async fn resign(self) {
        revoke_on_exit(&self.client, self.lease()).await;
    }
}

/// Whether `key` is a participant's key under `prefix`: `prefix<lease id>`. Other keys under
/// the prefix (those of a lock named `NAME/sub`, say, or written by hand) are not in line.
pub fn is_participant(prefix: &str, key: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

/// What a [`Follower`] hands on: only participants' keys (see [`is_participant`]).
#[derive(Debug)]
pub enum Update {
    /// Every key under the prefix, read linearizably after the watch was open: replaces what
    /// was known. Always the first update, and again after each reopening and rescan.
    Snapshot(Vec<KeyValue>),
    /// Changes under the prefix, of one revision, in order (see the module docs for replays).
    Events(Vec<WatchEvent>),
}

/// A prefix followed by a background task: watch, then scan, then the watch's events.
pub struct Follower {
    updates: mpsc::Receiver<Result<Update, CliError>>,
    task: JoinHandle<()>,
}

impl Follower {
    pub fn start(client: Arc<Client>, prefix: String) -> Self {
        let (sender, updates) = mpsc::channel(16);
        let task = tokio::spawn(follow(client, prefix, sender));
        Self { updates, task }
    }

    /// The next update, or the error that ended following (a definite one: retryable failures
    /// are retried for ever). Cancel-safe.
    pub async fn next(&mut self) -> Result<Update, CliError> {
        match self.updates.recv().await {
            Some(update) => update,
            None => Err(CliError::new(
                exit::UNAVAILABLE,
                "following the prefix stopped",
            )),
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The follower task: opens the watch and scans, on one endpoint after another.
async fn follow(client: Arc<Client>, prefix: String, out: mpsc::Sender<Result<Update, CliError>>) {
    let endpoints = client.endpoints().to_vec();
    let mut backoff = Backoff::new();
    let mut complaints = Complaints::new(format!("watching {prefix}"));
    for endpoint in endpoints.iter().cycle() {
        let mut delivered = false;
        match follow_on(&client, endpoint, &prefix, &out, &mut delivered).await {
            Stop::Ended(error) => {
                if let Some(error) = error {
                    let _ = out.send(Err(error)).await;
                }
                return;
            }
            Stop::Broken(message) => {
                if delivered {
                    backoff.reset();
                    complaints.recovered();
                }
                complaints.failed(endpoint, &message);
                backoff.wait().await;
            }
        }
    }
}

/// Watches `prefix` on `endpoint`, scans it, and hands on what follows, until the stream fails.
async fn follow_on(
    client: &Client,
    endpoint: &str,
    prefix: &str,
    out: &mpsc::Sender<Result<Update, CliError>>,
    delivered: &mut bool,
) -> Stop {
    let channel = match client.connect(endpoint).await {
        Ok(channel) => channel,
        Err(status) => return Stop::from(classify(status)),
    };
    let request = WatchRequest {
        prefix: prefix.to_string(),
        start_revision: 0,
        progress_notify: true,
        ..Default::default()
    };
    let opened = tokio::time::timeout(Duration::from_secs(2), kv(channel).watch(request)).await;
    let mut stream = match opened {
        Ok(Ok(stream)) => stream.into_inner(),
        Ok(Err(status)) => return Stop::from(classify(status)),
        Err(_) => return Stop::Broken("the watch did not open in time".into()),
    };
    loop {
        // The watch is open: what the scan misses, it has.
        let snapshot = match scan_all(client, &Range::prefix(prefix)).await {
            Ok(mut snapshot) => {
                snapshot.retain(|kv| is_participant(prefix, &kv.key));
                snapshot
            }
            Err(error) if error.code == exit::UNAVAILABLE => {
                return Stop::Broken(format!("scan: {}", error.message))
            }
            Err(error) => return Stop::Ended(Some(error)),
        };
        if out.send(Ok(Update::Snapshot(snapshot))).await.is_err() {
            return Stop::Ended(None);
        }
        *delivered = true;
        let rescan = tokio::time::sleep(RESCAN_EVERY);
        tokio::pin!(rescan);
        loop {
            let item = tokio::select! {
                item = stream.message() => item,
                () = &mut rescan => break,
            };
            let response = match item {
                Ok(Some(response)) => response,
                Ok(None) => return Stop::Broken("the watch stream ended".into()),
                Err(status) => return Stop::from(classify(status)),
            };
            if response.canceled {
                // Fell behind the node's history, or the node installed a snapshot: watching
                // again from now and scanning again covers it.
                return Stop::from(Failed::Retry(Status::unavailable(response.cancel_reason)));
            }
            let mut events = response.events;
            events.retain(|e| is_participant(prefix, &e.key));
            if !events.is_empty() && out.send(Ok(Update::Events(events))).await.is_err() {
                return Stop::Ended(None);
            }
        }
    }
}

/// The signals that end a long-running client command, each with the shell's exit code for it
/// (128 + the signal number).
pub struct Interrupts {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Interrupts {
    /// Catches SIGINT, SIGTERM and SIGHUP from now on.
    pub fn catch() -> Result<Self, CliError> {
        let install = |kind: SignalKind| {
            signal(kind)
                .map_err(|e| CliError::new(exit::UNAVAILABLE, format!("cannot catch signals: {e}")))
        };
        Ok(Self {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
            hangup: install(SignalKind::hangup())?,
        })
    }

    /// Waits for one of them; returns its exit code (130, 143, 129). Cancel-safe.
    pub async fn recv(&mut self) -> u8 {
        tokio::select! {
            _ = self.interrupt.recv() => 128 + libc::SIGINT as u8,
            _ = self.terminate.recv() => 128 + libc::SIGTERM as u8,
            _ = self.hangup.recv() => 128 + libc::SIGHUP as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_named_by_a_lease_id_take_part() {
        assert!(is_participant("L/", "L/7"));
        assert!(is_participant("L/", "L/18446744073709551615"));
        for other in ["L/", "L/sub/7", "L/7x", "Lx/7", "M/7"] {
            assert!(!is_participant("L/", other), "{other}");
        }
    }

    #[test]
    fn a_lease_is_safe_for_two_thirds_of_its_ttl_after_the_renewal_was_sent() {
        let sent = Instant::now();
        let mut liveness = Liveness {
            renewed_at: Some(sent),
            ttl: Some(Duration::from_secs(9)),
            ..Liveness::default()
        };
        assert_eq!(liveness.safe_until(), Some(sent + Duration::from_secs(6)));
        assert_eq!(liveness.next_due(), sent + Duration::from_secs(3));
        assert!(liveness.is_safe(sent + Duration::from_millis(5_999)));
        assert!(!liveness.is_safe(sent + Duration::from_secs(6)));
        liveness.ended = Some(gone(7));
        assert!(!liveness.is_safe(sent), "an ended lease is never safe");
        assert!(!Liveness::default().is_safe(sent), "nor one never renewed");
    }

    #[test]
    fn a_failed_renewal_leaves_time_for_another_endpoint() {
        // A renewal is sent at 1/3 TTL; if its answer does not come within the budget, one
        // more attempt on another endpoint still fits before the 2/3 TTL a holder waits.
        for secs in [3, 10, 60] {
            let ttl = Duration::from_secs(secs);
            let liveness = Liveness {
                ttl: Some(ttl),
                ..Liveness::default()
            };
            assert!(
                ttl / 3 + liveness.answer_budget() * 2 <= ttl * 2 / 3,
                "{ttl:?}"
            );
        }
        let shortest = Liveness {
            ttl: Some(Duration::from_secs(1)),
            ..Liveness::default()
        };
        assert_eq!(shortest.answer_budget(), Duration::from_millis(250));
        assert_eq!(Liveness::default().answer_budget(), Duration::from_secs(2));
    }
}
