//! A client of the workload: random put / get / compare-and-swap / delete on a few keys, each
//! through a node picked at random, with every outcome classified as ok, certainly failed or
//! ambiguous (see [`classify_write`]).
//!
//! Every write carries an idempotency key of its own. A write whose outcome is ambiguous is
//! sent again, the same request with the same key, through another node (see [`RETRIES`]):
//! the cluster applies it at most once and answers every attempt with the first outcome, so the
//! attempts are one operation, invoked when the first was sent and complete at the first
//! definite answer. Only if no attempt gets one does the write stay ambiguous.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftkv::proto::v1::compare_and_swap_request::Expected;
use raftkv::proto::v1::kv_client::KvClient;
use raftkv::proto::v1::{
    CompareAndSwapRequest, Consistency, DeleteRequest, GetRequest, PutRequest,
};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Code, Request, Status};

use super::checker::{Call, Ret, Value};
use super::history::{Outcome, Recorder};
use super::rng::Rng;

/// A client gives up on an operation after this long (the nodes' own request timeout is
/// shorter); the operation is then ambiguous.
pub const OP_TIMEOUT: Duration = Duration::from_millis(2500);

/// Most further attempts of a write whose outcome is ambiguous, each through another node.
const RETRIES: u32 = 7;
/// No retry starts this long after the write's first attempt was sent: long enough to outlast
/// the nemesis's faults (1-4 s), so that most ambiguous writes get a definite answer.
const RETRY_WITHIN: Duration = OP_TIMEOUT.saturating_mul(3);
/// The pause before the first retry; doubled before each later one up to
/// [`RETRY_BACKOFF_MAX_MS`] (plus up to as much again at random, so that clients do not retry
/// in step).
const RETRY_BACKOFF_MS: u64 = 100;
const RETRY_BACKOFF_MAX_MS: u64 = 1_000;

/// The gRPC metadata that carries a write's idempotency key.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The keys in play: `slots` keys at a time, each replaced by a fresh one after
/// `ops_per_key` operations, so that every key's history stays small enough to check quickly
/// while all clients keep contending on the same few keys.
pub struct Keys {
    issued: Vec<AtomicU64>,
    ops_per_key: u64,
}

impl Keys {
    pub fn new(slots: usize, ops_per_key: u64) -> Self {
        Self {
            issued: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            ops_per_key,
        }
    }

    /// The current key of `slot`, counting one operation on it.
    fn next(&self, slot: usize) -> String {
        let n = self.issued[slot].fetch_add(1, Ordering::Relaxed);
        key_name(slot, n / self.ops_per_key)
    }

    /// Every key used so far.
    pub fn all(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (slot, issued) in self.issued.iter().enumerate() {
            let issued = issued.load(Ordering::Relaxed);
            keys.extend((0..issued.div_ceil(self.ops_per_key)).map(|g| key_name(slot, g)));
        }
        keys
    }

    pub fn slots(&self) -> usize {
        self.issued.len()
    }
}

/// Keys of the workload all start with this prefix.
pub const KEY_PREFIX: &str = "lin-";

fn key_name(slot: usize, generation: u64) -> String {
    format!("{KEY_PREFIX}{slot}-{generation:04}")
}

/// A client to every node over lazily connected channels from 127.0.0.1 (TLS with `tls`).
pub fn connect(
    addresses: &[(u64, String)],
    tls: Option<&ClientTlsConfig>,
) -> Vec<(u64, KvClient<Channel>)> {
    addresses
        .iter()
        .map(|(id, address)| {
            let channel = crate::common::endpoint(address, tls)
                .expect("node address")
                .timeout(Duration::from_secs(3600))
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .connect_lazy();
            (*id, KvClient::new(channel))
        })
        .collect()
}

pub struct Client {
    pub id: usize,
    pub nodes: Vec<(u64, KvClient<Channel>)>,
    pub rng: Rng,
    pub recorder: Arc<Recorder>,
    pub keys: Arc<Keys>,
    /// Source of unique values, shared by all clients.
    pub values: Arc<AtomicU64>,
    /// The last value this client saw on each key: what its compare-and-swaps expect.
    pub seen: HashMap<String, Option<Value>>,
    /// Writes this client has sent, for their idempotency keys.
    pub writes: u64,
}

impl Client {
    /// Runs random operations until `until`; returns how many it did.
    pub async fn run(mut self, until: Instant) -> usize {
        let mut done = 0;
        while Instant::now() < until {
            let slot = self.rng.below(self.keys.slots() as u64) as usize;
            let key = self.keys.next(slot);
            let call = self.choose(&key);
            let node = self.rng.below(self.nodes.len() as u64) as usize;
            let outcome = self.perform(node, &key, call).await;
            done += 1;
            if !matches!(outcome, Outcome::Ok(_)) {
                let pause = self.rng.between(20, 100);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
        done
    }

    /// A linearizable read of `key`, retried (each attempt recorded) until one succeeds or
    /// `within` has passed; returns whether one did.
    pub async fn final_read(&mut self, key: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let node = self.rng.below(self.nodes.len() as u64) as usize;
            if let Outcome::Ok(_) = self.perform(node, key, Call::Get).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn choose(&mut self, key: &str) -> Call {
        let value = self.values.fetch_add(1, Ordering::Relaxed);
        match self.rng.below(100) {
            0..40 => Call::Get,
            40..65 => Call::Put(value),
            65..90 => Call::Cas {
                // Now and then "create if absent"; otherwise the last value this client saw.
                expected: match self.rng.below(5) {
                    0 => None,
                    _ => self.seen.get(key).copied().flatten(),
                },
                new: value,
            },
            _ => Call::Delete,
        }
    }

    /// Does one operation through node number `node` and records it; an ambiguous write is
    /// retried with its idempotency key through other nodes (see the module doc).
    async fn perform(&mut self, node: usize, key: &str, call: Call) -> Outcome {
        let (node_id, mut kv) = self.nodes[node].clone();
        let mut label = format!("c{}/n{node_id}", self.id);
        // Unique in the run: a fresh cluster, and this client's own count of writes.
        let idempotency = (call != Call::Get).then(|| {
            self.writes += 1;
            format!("c{}-w{}", self.id, self.writes)
        });
        let invoke = self.recorder.now();
        let sent = Instant::now();
        let mut outcome = attempt(&mut kv, key, &call, idempotency.as_deref(), &label).await;
        let (mut node, mut attempts) = (node, 1);
        while let Some(idempotency) = &idempotency {
            let again = matches!(outcome, Outcome::Ambiguous(_))
                && attempts <= RETRIES
                && sent.elapsed() < RETRY_WITHIN;
            if !again {
                break;
            }
            let backoff = (RETRY_BACKOFF_MS << (attempts - 1)).min(RETRY_BACKOFF_MAX_MS);
            let pause = backoff + self.rng.below(backoff + 1);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let others = self.nodes.len() as u64 - 1;
            node = (node + 1 + self.rng.below(others) as usize) % self.nodes.len();
            let (node_id, retry_kv) = self.nodes[node].clone();
            kv = retry_kv;
            label += &format!("+n{node_id}");
            attempts += 1;
            // A retry refused before anything was proposed says nothing of the attempts before
            // it, one of which may have been applied: the write stays ambiguous.
            outcome = match attempt(&mut kv, key, &call, Some(idempotency), &label).await {
                Outcome::Failed(why) => Outcome::Ambiguous(format!("retry refused, {why}")),
                other => other,
            };
        }
        match &outcome {
            Outcome::Ok(Ret::Get(read)) => {
                self.seen.insert(key.to_string(), *read);
            }
            Outcome::Ok(Ret::Cas { succeeded, current }) => {
                let now = match &call {
                    Call::Cas { new, .. } if *succeeded => Some(*new),
                    _ => *current,
                };
                self.seen.insert(key.to_string(), now);
            }
            Outcome::Ok(Ret::Put) => {
                if let Call::Put(v) = call {
                    self.seen.insert(key.to_string(), Some(v));
                }
            }
            _ => {}
        }
        self.recorder
            .record(key, call, label, invoke, attempts, outcome.clone());
        outcome
    }
}

/// One attempt of `call`, given up after [`OP_TIMEOUT`]. Every write has a key of its own and
/// its retries are the same request: a refusal of the key as reused is a bug.
async fn attempt(
    kv: &mut KvClient<Channel>,
    key: &str,
    call: &Call,
    idempotency: Option<&str>,
    label: &str,
) -> Outcome {
    let outcome = match tokio::time::timeout(OP_TIMEOUT, send(kv, key, call, idempotency)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Ambiguous(format!("no answer within {OP_TIMEOUT:?}")),
    };
    if let Outcome::Failed(why) = &outcome {
        assert!(
            !why.contains("idempotency key reused"),
            "{label}: {call:?} on {key} with key {idempotency:?} refused as a reuse: {why}"
        );
    }
    outcome
}

/// `message` with `idempotency` as its idempotency key, if any.
fn keyed<T>(message: T, idempotency: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(idempotency) = idempotency {
        let value = AsciiMetadataValue::try_from(idempotency).expect("printable ASCII");
        request.metadata_mut().insert(IDEMPOTENCY_KEY, value);
    }
    request
}

/// One RPC for `call`, a write with `idempotency` as its key.
async fn send(
    kv: &mut KvClient<Channel>,
    key: &str,
    call: &Call,
    idempotency: Option<&str>,
) -> Outcome {
    let key = key.to_string();
    match call {
        Call::Put(value) => {
            let request = PutRequest {
                lease: 0,
                key,
                value: encode(*value),
                ttl_ms: 0,
            };
            match kv.put(keyed(request, idempotency)).await {
                Ok(_) => Outcome::Ok(Ret::Put),
                Err(status) => classify_write(&status),
            }
        }
        Call::Get => {
            let request = GetRequest {
                key,
                consistency: Consistency::Linearizable as i32,
            };
            match kv.get(request).await {
                Ok(reply) => Outcome::Ok(Ret::Get(Some(decode(&reply.get_ref().value)))),
                Err(status) if status.code() == Code::NotFound => Outcome::Ok(Ret::Get(None)),
                // A failed read had no effect either way: it is dropped.
                Err(status) => {
                    Outcome::Ambiguous(format!("{:?}: {}", status.code(), status.message()))
                }
            }
        }
        Call::Delete => match kv.delete(keyed(DeleteRequest { key }, idempotency)).await {
            Ok(reply) => Outcome::Ok(Ret::Delete(reply.get_ref().deleted)),
            Err(status) => classify_write(&status),
        },
        Call::Cas { expected, new } => {
            let request = CompareAndSwapRequest {
                lease: 0,
                key,
                expected: Some(match expected {
                    Some(v) => Expected::ExpectedValue(encode(*v)),
                    None => Expected::ExpectedRevision(0),
                }),
                value: encode(*new),
                delete: false,
                ttl_ms: 0,
            };
            match kv.compare_and_swap(keyed(request, idempotency)).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    Outcome::Ok(Ret::Cas {
                        succeeded: reply.succeeded,
                        current: reply.found.then(|| decode(&reply.current_value)),
                    })
                }
                Err(status) => classify_write(&status),
            }
        }
    }
}

/// Whether a failed write certainly had no effect.
///
/// Certain: the request was refused before anything was proposed, by the node's own checks or
/// because it never left this process (no connection). openraft answers ForwardToLeader both
/// for a write it never appended and for one whose entry was truncated (so it never commits):
/// raftkv turns those into the "no leader is elected" and "while proposing" messages, and a
/// forwarded write that found no leader into "this node is not the leader". Everything else
/// (a timeout, a connection lost after sending, a leader replaced while we waited) may have
/// been applied or may be applied later.
fn classify_write(status: &Status) -> Outcome {
    let message = status.message();
    let refused = match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => true,
        Code::Unavailable => [
            "no leader is elected right now",
            "while proposing; retry",
            "this node is not the leader",
            "tcp connect error",
        ]
        .iter()
        .any(|m| message.contains(m)),
        _ => false,
    };
    let why = format!("{:?}: {message}", status.code());
    if refused {
        Outcome::Failed(why)
    } else {
        Outcome::Ambiguous(why)
    }
}

fn encode(value: Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// A value as written by [`encode`]; anything else becomes `u64::MAX`, which no client writes,
/// so the checker reports it.
fn decode(bytes: &[u8]) -> Value {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}
