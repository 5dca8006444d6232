//! What the Raft log carries: the commands clients propose, what applying them returns, and
//! the values the state machine holds. The Raft type configuration that names these is in
//! [`crate::raft`].

use serde::{Deserialize, Serialize};

/// What a log entry carries: a command and the proposing leader's clock.
///
/// Applying must be deterministic, so time-dependent decisions (has this key expired?) use
/// `stamp_ms`, written once by the leader, never a replica's own clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Leader's wall clock in milliseconds since the Unix epoch when it proposed the command.
    pub stamp_ms: u64,
    pub command: Command,
}

/// A write replicated through the Raft log. New variants go at the end: the log and snapshots
/// encode the variant by position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put(PutOp),
    Delete {
        key: String,
    },
    /// Several puts and deletes applied as one.
    Batch(Vec<BatchOp>),
    /// A write or delete applied only if `expected` holds for `key`.
    CompareAndSwap {
        key: String,
        expected: Expected,
        action: CasAction,
    },
    /// Removes every key whose expiry is at or before the entry's stamp.
    Expire,
    /// Independent client commands that arrived together, applied in order in one entry
    /// (group commit; see `api::proposer`). Each gets its own result; all share the revision.
    Multi(Vec<Command>),
    /// A client write carrying an idempotency key: applied once per key within a window, and
    /// answered from the replicated table for every retry (see [`IdempotentCommand`]).
    Idempotent(IdempotentCommand),
    /// Creates a lease with this TTL (milliseconds); its id is one above every id granted before.
    LeaseGrant {
        ttl_ms: u64,
    },
    /// Ends a lease and deletes every key attached to it, all in this one entry: a client's
    /// revoke, or the leader's decision that the lease expired (see `crate::lease`).
    LeaseRevoke {
        id: u64,
    },
    /// A put whose key is attached to `lease`; applied only if the lease exists.
    LeasedPut {
        op: PutOp,
        lease: u64,
    },
}

/// A write (`Put`, `Delete`, `Batch` or `CompareAndSwap`) tagged with the client's idempotency
/// key.
///
/// Every replica must decide the same way whether a retry is a duplicate, a conflict or a fresh
/// write, so everything that decision depends on is in the entry: the request's fingerprint,
/// the end of the window (the leader's stamp plus its configured window) and the table's
/// capacity (the leader's configured limit). Applying consults no flag and no clock of the
/// replica; a replica configured differently, or whose clock is off, still reaches the same
/// table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotentCommand {
    /// The client's opaque key (1 to 128 printable bytes, checked by the API).
    pub key: String,
    /// [`fingerprint`] of the client's request: the same key with another fingerprint is a
    /// different request and is refused rather than answered with the first one's outcome.
    pub fingerprint: u64,
    /// When the key may be used again for a new request (ms since the Unix epoch, by the
    /// leader's clock): the entry is forgotten once the map's clock reaches it.
    pub expires_at_ms: u64,
    /// Most keys the table holds after this entry; the oldest-inserted beyond it are forgotten.
    pub capacity: u64,
    /// The write itself, applied only if the key is not in the table.
    pub command: Box<Command>,
}

impl Command {
    /// Rough payload size, used to keep grouped entries small enough to replicate in time.
    pub fn approx_bytes(&self) -> usize {
        let put = |op: &PutOp| op.key.len() + op.value.len();
        match self {
            Command::Put(op) => put(op),
            Command::Delete { key } => key.len(),
            Command::Batch(ops) => ops
                .iter()
                .map(|op| match op {
                    BatchOp::Put(op) | BatchOp::LeasedPut { op, .. } => put(op) + 8,
                    BatchOp::Delete { key } => key.len(),
                })
                .sum(),
            Command::CompareAndSwap {
                key,
                expected,
                action,
            } => {
                let expected = match expected {
                    Expected::Value(v) => v.len(),
                    Expected::Revision(_) => 8,
                };
                let action = match action {
                    CasAction::Put { value, .. } | CasAction::LeasedPut { value, .. } => {
                        value.len() + 8
                    }
                    CasAction::Delete => 0,
                };
                key.len() + expected + action
            }
            Command::Expire => 0,
            Command::Multi(commands) => commands.iter().map(Command::approx_bytes).sum(),
            // The key, then fingerprint, expiry and capacity.
            Command::Idempotent(idem) => idem.key.len() + 24 + idem.command.approx_bytes(),
            Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => 8,
            Command::LeasedPut { op, .. } => put(op) + 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutOp {
    pub key: String,
    /// Encoded as one byte string, not element by element: values are up to megabytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Absolute expiry (ms since the Unix epoch), computed by the leader from the TTL.
    pub expires_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchOp {
    Put(PutOp),
    Delete {
        key: String,
    },
    /// A put whose key is attached to `lease` (the whole batch applies only if it exists).
    LeasedPut {
        op: PutOp,
        lease: u64,
    },
}

/// The condition of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expected {
    /// The key's revision equals this; 0 means the key must not exist.
    Revision(u64),
    /// The key exists and its value equals this.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// What a successful compare-and-swap does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CasAction {
    Put {
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        expires_at_ms: Option<u64>,
    },
    Delete,
    /// A put whose key is attached to `lease`; the lease must exist, whatever the condition.
    LeasedPut {
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        expires_at_ms: Option<u64>,
        lease: u64,
    },
}

/// A value as the state machine holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredValue {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Log index of the write that set this value (etcd's mod revision).
    pub revision: u64,
    pub expires_at_ms: Option<u64>,
}

impl StoredValue {
    /// Whether the value is still alive at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now_ms)
    }

    /// Milliseconds left at `now_ms`; 0 when the value has no TTL.
    pub fn ttl_left_ms(&self, now_ms: u64) -> u64 {
        self.expires_at_ms
            .map(|at| at.saturating_sub(now_ms).max(1))
            .unwrap_or(0)
    }
}

/// What applying an entry produced. `revision` is the entry's log index, except inside
/// [`CommandResult::Replayed`], which repeats an earlier entry's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// A blank or membership entry.
    Noop {
        revision: u64,
    },
    /// A put or delete: whether the key existed (and was live) before.
    Write {
        revision: u64,
        existed: bool,
    },
    /// Per op, in order: whether its key existed before.
    Batch {
        revision: u64,
        existed: Vec<bool>,
    },
    /// `current` is the key's state when the condition failed.
    CompareAndSwap {
        revision: u64,
        succeeded: bool,
        current: Option<StoredValue>,
    },
    Expire {
        revision: u64,
        removed: u64,
    },
    /// One result per command of a `Command::Multi`, in order.
    Multi(Vec<CommandResult>),
    /// A `Command::Idempotent` whose key was already in the table with the same fingerprint:
    /// nothing was applied, and this is exactly the result the first attempt got, revision
    /// included.
    Replayed(Box<CommandResult>),
    /// A `Command::Idempotent` whose key was already in the table with another fingerprint (the
    /// key was reused for a different request): nothing was applied. `revision` is this entry's
    /// log index.
    IdempotencyConflict {
        revision: u64,
    },
    LeaseGranted {
        revision: u64,
        id: u64,
        ttl_ms: u64,
    },
    /// A lease ended, and `deleted` keys (live or expired but not yet removed) with it.
    LeaseRevoked {
        revision: u64,
        deleted: u64,
    },
    /// The lease a command named (a revoke, or a put attaching a key to it) does not exist:
    /// nothing was applied.
    LeaseNotFound {
        revision: u64,
        id: u64,
    },
}

impl CommandResult {
    pub fn revision(&self) -> u64 {
        match self {
            CommandResult::Noop { revision }
            | CommandResult::Write { revision, .. }
            | CommandResult::Batch { revision, .. }
            | CommandResult::CompareAndSwap { revision, .. }
            | CommandResult::Expire { revision, .. }
            | CommandResult::IdempotencyConflict { revision }
            | CommandResult::LeaseGranted { revision, .. }
            | CommandResult::LeaseRevoked { revision, .. }
            | CommandResult::LeaseNotFound { revision, .. } => *revision,
            // The entry's index, which every fresh result of a group carries; a group of replays
            // alone reports the newest of their original revisions.
            CommandResult::Multi(results) => results.iter().map(Self::revision).max().unwrap_or(0),
            CommandResult::Replayed(first) => first.revision(),
        }
    }
}

/// Fingerprint of a client request for the idempotency table: 64-bit FNV-1a over the length of
/// `method` (u64, little-endian), `method` and `body` (the request's bytes with the idempotency
/// key left out, best re-encoded by the node, so that field order or unknown fields a client
/// sends do not make two equal requests differ).
///
/// Fingerprints are compared across nodes, versions and restarts (they are in the log and in
/// snapshots), so the function is written out here and must never change; std's
/// `DefaultHasher` may change between Rust releases (and `RandomState` is seeded per
/// process). The length prefix keeps `("Put", b"x")` and `("Pu", b"tx")` apart. FNV is not
/// collision resistant: it tells a client's honest mistakes apart (a key reused for another
/// request), not requests crafted to collide, which only the key's owner could send anyway.
pub fn fingerprint(method: &str, body: &[u8]) -> u64 {
    let len = (method.len() as u64).to_le_bytes();
    fnv1a_64(&[&len, method.as_bytes(), body])
}

/// 64-bit FNV-1a of the concatenation of `parts`.
fn fnv1a_64(parts: &[&[u8]]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    parts
        .iter()
        .flat_map(|part| part.iter())
        .fold(OFFSET_BASIS, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        })
}

/// Milliseconds since the Unix epoch by this machine's clock (0 if the clock is before 1970).
/// The failpoint `clock-skew-ms` (`return(-10000)`) shifts it, to test a node whose clock is off.
pub fn now_ms() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    fail::fail_point!("clock-skew-ms", |skew: Option<String>| {
        let skew: i64 = skew.and_then(|s| s.parse().ok()).unwrap_or(0);
        now.saturating_add_signed(skew)
    });
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a_64(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(&[b"foobar"]), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a_64(&[b"foo", b"", b"bar"]), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn fingerprints_are_fixed_forever() {
        // A PutRequest { key: "k", value: "v" } as prost encodes it. Fingerprints are stored in
        // logs and snapshots: if this value changes, retries across an upgrade are refused.
        let body = [0x0a, 0x01, b'k', 0x12, 0x01, b'v'];
        assert_eq!(
            fingerprint("raftkv.v1.Kv/Put", &body),
            0x9dd6_589d_ac4e_73f4
        );
        assert_ne!(fingerprint("Put", b"x"), fingerprint("Pu", b"tx"));
    }

    #[test]
    fn a_replayed_result_reports_the_first_attempts_revision() {
        let first = CommandResult::Write {
            revision: 7,
            existed: false,
        };
        assert_eq!(
            CommandResult::Replayed(Box::new(first.clone())).revision(),
            7
        );
        let group = CommandResult::Multi(vec![
            CommandResult::Replayed(Box::new(first)),
            CommandResult::IdempotencyConflict { revision: 9 },
        ]);
        assert_eq!(group.revision(), 9, "a group reports its own entry's index");
    }
}
