//! Input limits. Checked before anything is proposed, so a rejected request changes nothing.

use tonic::Status;

/// Configured size limits (`--max-key-bytes`, `--max-value-bytes`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Limits {
    pub fn check_key(&self, key: &str) -> Result<(), Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument("key cannot be empty"));
        }
        if key.len() > self.max_key_bytes {
            return Err(Status::invalid_argument(format!(
                "key is {} bytes, over the limit of {} bytes (--max-key-bytes)",
                key.len(),
                self.max_key_bytes
            )));
        }
        Ok(())
    }

    pub fn check_value(&self, value: &[u8]) -> Result<(), Status> {
        if value.len() > self.max_value_bytes {
            return Err(Status::invalid_argument(format!(
                "value is {} bytes, over the limit of {} bytes (--max-value-bytes)",
                value.len(),
                self.max_value_bytes
            )));
        }
        Ok(())
    }

    /// Batches and multi-key reads hold at most this many items.
    pub const MAX_BATCH_ITEMS: usize = 10_000;
    /// A scan page holds this many keys unless asked otherwise, and never more than the max.
    pub const DEFAULT_SCAN_LIMIT: usize = 1_000;
    pub const MAX_SCAN_LIMIT: usize = 10_000;

    pub fn check_batch_len(&self, field: &str, len: usize) -> Result<(), Status> {
        if len > Self::MAX_BATCH_ITEMS {
            return Err(Status::invalid_argument(format!(
                "{field} has {len} items, over the limit of {}",
                Self::MAX_BATCH_ITEMS
            )));
        }
        Ok(())
    }

    /// The page size for a scan's `limit` (0 = default).
    pub fn scan_limit(&self, limit: u32) -> Result<usize, Status> {
        match limit as usize {
            0 => Ok(Self::DEFAULT_SCAN_LIMIT),
            n if n > Self::MAX_SCAN_LIMIT => Err(Status::invalid_argument(format!(
                "limit {n} is over the maximum of {}",
                Self::MAX_SCAN_LIMIT
            ))),
            n => Ok(n),
        }
    }

    /// gRPC message size that admits any valid request with room for framing, so an oversized
    /// value still reaches [`Limits::check_value`] and gets its clear message.
    pub fn grpc_message_limit(&self) -> usize {
        (self.max_key_bytes + self.max_value_bytes)
            .saturating_mul(2)
            .max(64 * 1024 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_key_bytes: 4,
        max_value_bytes: 8,
    };

    #[test]
    fn empty_and_long_keys_are_rejected_with_the_limit_named() {
        assert_eq!(
            LIMITS.check_key("").unwrap_err().message(),
            "key cannot be empty"
        );
        let err = LIMITS.check_key("abcde").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("limit of 4 bytes"),
            "{}",
            err.message()
        );
        assert!(LIMITS.check_key("abcd").is_ok());
    }

    #[test]
    fn long_values_are_rejected_with_the_limit_named() {
        let err = LIMITS.check_value(&[0; 9]).unwrap_err();
        assert!(
            err.message().contains("limit of 8 bytes"),
            "{}",
            err.message()
        );
        assert!(LIMITS.check_value(&[0; 8]).is_ok());
        assert!(LIMITS.check_value(&[]).is_ok());
    }
}
