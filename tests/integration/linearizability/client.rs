//! A client of the workload: random put / get / compare-and-swap / delete on a few keys, each
//! through a node picked at random, with every outcome classified as ok, certainly failed or
//! ambiguous (see [`classify_write`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftkv::proto::v1::compare_and_swap_request::Expected;
use raftkv::proto::v1::kv_client::KvClient;
use raftkv::proto::v1::{
    CompareAndSwapRequest, Consistency, DeleteRequest, GetRequest, PutRequest,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::checker::{Call, Ret, Value};
use super::history::{Outcome, Recorder};
use super::rng::Rng;

/// A client gives up on an operation after this long (the nodes' own request timeout is
/// shorter); the operation is then ambiguous.
pub const OP_TIMEOUT: Duration = Duration::from_millis(2500);

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

/// A client to every node over lazily connected channels from 127.0.0.1.
pub fn connect(addresses: &[(u64, String)]) -> Vec<(u64, KvClient<Channel>)> {
    addresses
        .iter()
        .map(|(id, address)| {
            let channel = Endpoint::from_shared(format!("http://{address}"))
                .expect("node address")
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

    /// Does one operation through node number `node` and records it.
    async fn perform(&mut self, node: usize, key: &str, call: Call) -> Outcome {
        let (node_id, mut kv) = self.nodes[node].clone();
        let label = format!("c{}/n{node_id}", self.id);
        let invoke = self.recorder.now();
        let outcome = match tokio::time::timeout(OP_TIMEOUT, send(&mut kv, key, &call)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Ambiguous(format!("no answer within {OP_TIMEOUT:?}")),
        };
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
            .record(key, call, label, invoke, outcome.clone());
        outcome
    }
}

/// One RPC for `call`.
async fn send(kv: &mut KvClient<Channel>, key: &str, call: &Call) -> Outcome {
    let key = key.to_string();
    match call {
        Call::Put(value) => {
            let request = PutRequest {
                key,
                value: encode(*value),
                ttl_ms: 0,
            };
            match kv.put(request).await {
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
        Call::Delete => match kv.delete(DeleteRequest { key }).await {
            Ok(reply) => Outcome::Ok(Ret::Delete(reply.get_ref().deleted)),
            Err(status) => classify_write(&status),
        },
        Call::Cas { expected, new } => {
            let request = CompareAndSwapRequest {
                key,
                expected: Some(match expected {
                    Some(v) => Expected::ExpectedValue(encode(*v)),
                    None => Expected::ExpectedRevision(0),
                }),
                value: encode(*new),
                delete: false,
                ttl_ms: 0,
            };
            match kv.compare_and_swap(request).await {
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
