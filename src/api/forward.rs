//! Forwarding of writes and linearizable reads from a follower to the leader.
//!
//! A forwarded request carries the [`FORWARDED_BY`] header; a node that receives one and is not
//! the leader answers UNAVAILABLE instead of forwarding again, so a request never loops while
//! leadership moves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::Channel;
use tonic::Status;

use crate::network::lazy_channel;
use crate::proto::v1::kv_client::KvClient;
use crate::types::NodeId;

/// Metadata key naming the node that forwarded a request.
pub const FORWARDED_BY: &str = "raftkv-forwarded-by";

/// KV clients to leaders, one reused channel per address.
#[derive(Clone)]
pub struct Forwarder {
    own_id: NodeId,
    message_limit: usize,
    timeout: Duration,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Forwarder {
    pub fn new(own_id: NodeId, message_limit: usize, timeout: Duration) -> Self {
        Self {
            own_id,
            message_limit,
            timeout,
            channels: Arc::default(),
        }
    }

    /// The reused channel to `address`.
    pub fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        match channels.get(address) {
            Some(channel) => Ok(channel.clone()),
            None => {
                let channel = lazy_channel(address).map_err(Status::unavailable)?;
                channels.insert(address.to_string(), channel.clone());
                Ok(channel)
            }
        }
    }

    pub fn client(&self, address: &str) -> Result<KvClient<Channel>, Status> {
        let channel = self.channel(address)?;
        Ok(KvClient::new(channel)
            .max_decoding_message_size(self.message_limit)
            .max_encoding_message_size(self.message_limit))
    }

    /// Wraps a request for the leader: marks it forwarded and bounds it in time.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        if let Ok(value) = self.own_id.to_string().parse() {
            request.metadata_mut().insert(FORWARDED_BY, value);
        }
        request
    }

    /// Turns a failed call to the leader into the client's answer: the leader's own verdict
    /// (NOT_FOUND, INVALID_ARGUMENT, …) passes through; a transport failure becomes
    /// UNAVAILABLE naming the leader.
    pub fn failure(leader: NodeId, address: &str, status: Status) -> Status {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                Status::unavailable(format!(
                    "forwarding to leader {leader} at {address} failed: {}",
                    status.message()
                ))
            }
            _ => status,
        }
    }
}

/// Whether a request was already forwarded by another node.
pub fn is_forwarded<T>(request: &tonic::Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_BY)
}
