//! The one binary encoding used for log entries, metadata, snapshots and replication messages.
//!
//! bincode is compact and fast, and openraft's types derive serde, so the same encoding serves
//! the disk and the wire. Decoding is bounded so a corrupt length prefix cannot make us allocate
//! without limit.

use bincode::Options;
use serde::de::{DeserializeOwned, Visitor};
use serde::Serialize;

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

/// [`decode`] of a value at the front of `bytes`, returning it with the bytes that follow it
/// (where [`decode`] would call them an error): for an encoding that continues only when there
/// is more to say, like a snapshot image with or without its tail.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, &[u8]), bincode::Error> {
    let mut reader = PrefixReader(bytes);
    let mut deserializer = bincode::Deserializer::with_bincode_read(&mut reader, options());
    let value = T::deserialize(&mut deserializer)?;
    Ok((value, reader.0))
}

/// A slice that bincode reads from the front, as its own slice reader does (borrowing strings
/// and byte strings rather than copying them into a buffer first), but that hands back what is
/// left when it is done.
struct PrefixReader<'a>(&'a [u8]);

impl<'a> PrefixReader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], bincode::Error> {
        if len > self.0.len() {
            let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
            return Err(Box::new(bincode::ErrorKind::Io(eof)));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }
}

impl std::io::Read for PrefixReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(out)
    }

    fn read_exact(&mut self, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read_exact(out)
    }
}

impl<'a> bincode::BincodeRead<'a> for &mut PrefixReader<'a> {
    fn forward_read_str<V: Visitor<'a>>(
        &mut self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, bincode::Error> {
        let text = std::str::from_utf8(self.take(len)?)
            .map_err(bincode::ErrorKind::InvalidUtf8Encoding)?;
        visitor.visit_borrowed_str(text)
    }

    fn get_byte_buffer(&mut self, len: usize) -> Result<Vec<u8>, bincode::Error> {
        Ok(self.take(len)?.to_vec())
    }

    fn forward_read_bytes<V: Visitor<'a>>(
        &mut self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, bincode::Error> {
        visitor.visit_borrowed_bytes(self.take(len)?)
    }
}

/// Size `value` will have once encoded, without encoding it (byte strings are not walked).
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> u64 {
    options().serialized_size(value).unwrap_or(u64::MAX)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_prefix_returns_what_follows_the_value() {
        let value = (
            7u64,
            String::from("key"),
            serde_bytes::ByteBuf::from(vec![1, 2]),
        );
        let mut bytes = encode(&value).unwrap();
        let (decoded, rest): ((u64, String, serde_bytes::ByteBuf), _) =
            decode_prefix(&bytes).unwrap();
        assert_eq!((decoded, rest), (value.clone(), &[][..]));
        bytes.extend_from_slice(b"tail");
        let (decoded, rest): ((u64, String, serde_bytes::ByteBuf), _) =
            decode_prefix(&bytes).unwrap();
        assert_eq!((decoded, rest), (value, &b"tail"[..]));
        let truncated = &bytes[..bytes.len() - 6];
        assert!(decode_prefix::<(u64, String, serde_bytes::ByteBuf)>(truncated).is_err());
        let mut bad_utf8 = encode(&(0u64, "k")).unwrap();
        *bad_utf8.last_mut().unwrap() = 0xff;
        assert!(decode_prefix::<(u64, String)>(&bad_utf8).is_err());
    }
}
