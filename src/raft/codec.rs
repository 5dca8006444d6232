//! The one binary encoding used for log entries, metadata, snapshots and replication messages.
//!
//! bincode is compact and fast, and openraft's types derive serde, so the same encoding serves
//! the disk and the wire. Decoding is bounded so a corrupt length prefix cannot make us allocate
//! without limit.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

/// Largest value any single record may decode to (a snapshot chunk, a batch of entries).
const DECODE_LIMIT: u64 = 1 << 32;

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(DECODE_LIMIT)
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    options().serialize(value)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    options().deserialize(bytes)
}

/// [`encode`] into a caller's buffer or stream (a snapshot image is encoded into a buffer sized
/// in advance, so it is never copied while growing).
pub fn encode_into<W: std::io::Write, T: Serialize + ?Sized>(
    writer: W,
    value: &T,
) -> Result<(), bincode::Error> {
    options().serialize_into(writer, value)
}

/// [`decode`] from a stream, e.g. a snapshot read chunk by chunk. Unlike [`decode`] it cannot
/// tell whether bytes follow the value: the caller checks that the stream is at its end.
pub fn decode_from<R: std::io::Read, T: DeserializeOwned>(reader: R) -> Result<T, bincode::Error> {
    options().deserialize_from(reader)
}

/// Size `value` will have once encoded, without encoding it (byte strings are not walked).
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> u64 {
    options().serialized_size(value).unwrap_or(u64::MAX)
}
