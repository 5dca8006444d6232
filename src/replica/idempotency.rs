//! Exactly-once writes: a client's `idempotency-key` becomes part of the write's log entry.
//!
//! The leader wraps a keyed write in `Command::Idempotent`, with a fingerprint of the request and
//! the end of its window computed here, once: everything that decides whether a later entry with
//! the same key is a retry is then in the log, so every replica decides alike (DESIGN.md,
//! invariant 5), and the state machine's table (`storage::kv_map::idempotency`) answers a retry
//! with the first attempt's result instead of applying it again. A retry that arrives while the
//! first attempt is still in flight is ordered after it by the log, so it too gets that result.

use std::time::Duration;

use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::types::{fingerprint, Command, CommandResult, IdempotentCommand};

/// The gRPC metadata key (and, case-insensitively, the HTTP header) carrying the client's key.
pub const METADATA_KEY: &str = "idempotency-key";

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// The message of a conflict, as clients see it (FAILED_PRECONDITION, HTTP 422).
pub const REUSED: &str = "idempotency key reused with a different request";

/// A write's key and the fingerprint of its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub fingerprint: u64,
}

/// The operator's settings: how long a key is remembered and how many keys at most.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub window: Duration,
    pub max_keys: u64,
}

/// Checks a key: 1 to [`MAX_KEY_BYTES`] printable ASCII bytes, no spaces.
pub fn check_key(key: &str) -> Result<(), Status> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Status::invalid_argument(format!(
            "{METADATA_KEY} must be 1 to {MAX_KEY_BYTES} bytes, got {}",
            key.len()
        )));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Status::invalid_argument(format!(
            "{METADATA_KEY} may hold only printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

/// The key a request carries, if any, checked.
pub fn key_of(metadata: &MetadataMap) -> Result<Option<String>, Status> {
    let Some(value) = metadata.get(METADATA_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| Status::invalid_argument(format!("{METADATA_KEY} must be printable ASCII")))?;
    check_key(key)?;
    Ok(Some(key.to_string()))
}

/// Puts `key` into a request's metadata, as a client (or a follower forwarding) sends it.
pub fn attach<T>(request: &mut tonic::Request<T>, key: &str) -> Result<(), Status> {
    let value = key
        .parse()
        .map_err(|_| Status::invalid_argument(format!("{METADATA_KEY} must be printable ASCII")))?;
    request.metadata_mut().insert(METADATA_KEY, value);
    Ok(())
}

/// The tag of a request with this key: its fingerprint covers the method and the request as
/// protobuf encodes it, so a follower that forwards the request and the leader that receives
/// it compute the same one.
pub fn tag<M: Message>(key: Option<String>, method: &str, request: &M) -> Option<Tag> {
    key.map(|key| Tag {
        key,
        fingerprint: fingerprint(method, &request.encode_to_vec()),
    })
}

impl Policy {
    /// The command a leader proposes: `command` itself, or wrapped with its tag, its window
    /// counted from the leader's stamp.
    pub fn wrap(&self, tag: Option<Tag>, stamp_ms: u64, command: Command) -> Command {
        let Some(tag) = tag else {
            return command;
        };
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        Command::Idempotent(IdempotentCommand {
            key: tag.key,
            fingerprint: tag.fingerprint,
            expires_at_ms: stamp_ms.saturating_add(window_ms),
            capacity: self.max_keys,
            command: Box::new(command),
        })
    }
}

/// The result a client gets: a retry's is the first attempt's; a conflict is an error.
pub fn answer(result: CommandResult) -> Result<CommandResult, Status> {
    match result {
        CommandResult::Replayed(first) => Ok(*first),
        CommandResult::IdempotencyConflict { .. } => Err(Status::failed_precondition(REUSED)),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PutOp;

    #[test]
    fn keys_are_checked() {
        assert!(check_key("retry-1").is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        for bad in [
            String::new(),
            "k".repeat(MAX_KEY_BYTES + 1),
            "a b".into(),
            "é".into(),
        ] {
            let status = check_key(&bad).expect_err(&bad);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().contains(METADATA_KEY),
                "{}",
                status.message()
            );
        }
    }

    #[test]
    fn a_tagged_command_carries_its_window_from_the_stamp() {
        let policy = Policy {
            window: Duration::from_secs(600),
            max_keys: 7,
        };
        let put = Command::Put(PutOp {
            key: "k".into(),
            value: b"v".to_vec(),
            expires_at_ms: None,
        });
        assert_eq!(policy.wrap(None, 1000, put.clone()), put);
        let tag = Tag {
            key: "retry".into(),
            fingerprint: 42,
        };
        match policy.wrap(Some(tag), 1000, put.clone()) {
            Command::Idempotent(idem) => {
                assert_eq!(idem.key, "retry");
                assert_eq!(idem.fingerprint, 42);
                assert_eq!(idem.expires_at_ms, 601_000);
                assert_eq!(idem.capacity, 7);
                assert_eq!(*idem.command, put);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replays_answer_as_the_first_attempt_and_conflicts_fail() {
        let first = CommandResult::Write {
            revision: 3,
            existed: false,
        };
        let replayed = answer(CommandResult::Replayed(Box::new(first.clone())));
        assert_eq!(replayed.ok(), Some(first));
        let conflict = answer(CommandResult::IdempotencyConflict { revision: 9 });
        let status = conflict.expect_err("conflict");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.message(), REUSED);
    }

    #[test]
    fn the_same_request_has_the_same_tag_and_another_has_another() {
        let put = |value: &str| crate::proto::v1::PutRequest {
            lease: 0,
            key: "k".into(),
            value: value.as_bytes().to_vec(),
            ttl_ms: 0,
        };
        let a = tag(Some("K".into()), "Put", &put("1"));
        assert_eq!(a, tag(Some("K".into()), "Put", &put("1")));
        assert_ne!(a, tag(Some("K".into()), "Put", &put("2")));
        assert_ne!(
            a.map(|t| t.fingerprint),
            tag(Some("K".into()), "Delete", &put("1")).map(|t| t.fingerprint)
        );
        assert_eq!(tag(None, "Put", &put("1")), None);
    }
}
