//! Forwarding of writes and linearizable reads from a follower to the leader.
//!
//! A forwarded request carries the [`FORWARDED_BY`] header; a node that receives one and is not
//! the leader answers UNAVAILABLE instead of forwarding again, so a request never loops while
//! leadership moves.
//!
//! Single-key calls (Put, Get, Delete, Batch, CompareAndSwap) are not forwarded one RPC each:
//! per leader address a task gathers the calls waiting to go and sends them together through the
//! internal `Forward.Calls` RPC (see [`crate::api::forward`]), at most [`BATCHES_IN_FLIGHT`]
//! messages at a time. Under load most writes reach the leader through a follower, and one RPC
//! per write cost the leader as much HTTP/2 work as the write itself. BatchGet and Scan, whose
//! answers can be large, go one `Forward.Call` each, as do membership changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::gather::Gatherer;
use crate::proto::raft_v1::forward_client::ForwardClient;
use crate::proto::raft_v1::{ForwardedCall, ForwardedCalls, KvMethod};
use crate::raft::NodeId;
use crate::transport::Dialer;

/// Calls sent in one `Forward.Calls` message at most. Each answer is at most one value, so a
/// message's answers stay far below [`FORWARD_MESSAGE_LIMIT`].
pub const MAX_CALLS_PER_BATCH: usize = 64;
/// Request bytes after which no further call joins a message (a larger single call goes alone).
const BATCH_BYTES: usize = 1024 * 1024;
/// Messages under way to one leader at a time; calls arriving meanwhile gather for the next.
const BATCHES_IN_FLIGHT: usize = 4;
/// gRPC size limit of `Forward.Calls` messages both ways.
pub const FORWARD_MESSAGE_LIMIT: usize = 256 * 1024 * 1024;

/// One call waiting to be forwarded and where its answer goes.
struct Queued {
    call: ForwardedCall,
    reply: oneshot::Sender<Result<Vec<u8>, Status>>,
}

/// Metadata key naming the node that forwarded a request.
pub const FORWARDED_BY: &str = "raftkv-forwarded-by";

/// KV clients to leaders, one reused channel per address.
#[derive(Clone)]
pub struct Forwarder {
    own_id: NodeId,
    message_limit: usize,
    timeout: Duration,
    /// How leaders are reached (source address, TLS).
    dialer: Dialer,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    queues: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Queued>>>>,
}

impl Forwarder {
    pub fn new(own_id: NodeId, message_limit: usize, timeout: Duration, dialer: Dialer) -> Self {
        Self {
            own_id,
            message_limit,
            timeout,
            dialer,
            channels: Arc::default(),
            queues: Arc::default(),
        }
    }

    /// Forwards one call to the leader at `address` together with whatever else is waiting to
    /// go there, and returns the leader's answer (or its error status) for this call alone.
    ///
    /// The client's idempotency key travels with the call, so that the leader recognises a
    /// retry whichever node it came through.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        address: &str,
        method: KvMethod,
        request: &Req,
        idempotency_key: Option<String>,
    ) -> Result<Resp, Status> {
        let (reply, answer) = oneshot::channel();
        let call = ForwardedCall {
            method: method as i32,
            request: request.encode_to_vec(),
            idempotency_key: idempotency_key.unwrap_or_default(),
        };
        self.queue(address)?
            .send(Queued { call, reply })
            .map_err(|_| Status::unavailable("this node is shutting down"))?;
        let bytes = answer
            .await
            .map_err(|_| Status::unavailable("this node is shutting down"))??;
        Resp::decode(bytes.as_slice())
            .map_err(|e| Status::internal(format!("undecodable answer from the leader: {e}")))
    }

    /// The queue of calls to `address`, started on first use.
    fn queue(&self, address: &str) -> Result<mpsc::UnboundedSender<Queued>, Status> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = queues.get(address).filter(|q| !q.is_closed()) {
            return Ok(queue.clone());
        }
        let client = ForwardClient::new(self.channel(address)?)
            .max_decoding_message_size(FORWARD_MESSAGE_LIMIT)
            .max_encoding_message_size(FORWARD_MESSAGE_LIMIT);
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(send_batches(client, self.own_id, self.timeout, pending));
        queues.insert(address.to_string(), queue.clone());
        Ok(queue)
    }

    /// The reused channel to `address`.
    pub fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        match channels.get(address) {
            Some(channel) => Ok(channel.clone()),
            None => {
                let channel = self
                    .dialer
                    .lazy_channel(address)
                    .map_err(Status::unavailable)?;
                channels.insert(address.to_string(), channel.clone());
                Ok(channel)
            }
        }
    }

    /// Forwards one call by itself (`Forward.Call`) to the leader at `address` and returns its
    /// answer, waiting at most the request timeout.
    pub async fn call_alone<Req: Message, Resp: Message + Default>(
        &self,
        address: &str,
        method: KvMethod,
        request: &Req,
    ) -> Result<Resp, Status> {
        self.call_alone_within(address, method, request, self.timeout)
            .await
    }

    /// [`Forwarder::call_alone`] with its own time limit (a membership change may wait for a
    /// learner to catch up).
    pub async fn call_alone_within<Req: Message, Resp: Message + Default>(
        &self,
        address: &str,
        method: KvMethod,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, Status> {
        let mut client = ForwardClient::new(self.channel(address)?)
            .max_decoding_message_size(self.message_limit)
            .max_encoding_message_size(self.message_limit);
        let call = ForwardedCall {
            method: method as i32,
            request: request.encode_to_vec(),
            idempotency_key: String::new(),
        };
        let mut request = tonic::Request::new(call);
        request.set_timeout(timeout);
        if let Ok(value) = self.own_id.to_string().parse() {
            request.metadata_mut().insert(FORWARDED_BY, value);
        }
        let reply = client.call(request).await?.into_inner();
        if reply.code != 0 {
            return Err(Status::new(Code::from_i32(reply.code), reply.message));
        }
        Resp::decode(reply.response.as_slice())
            .map_err(|e| Status::internal(format!("undecodable answer from the leader: {e}")))
    }

    /// Turns a failed call to the leader into the client's answer: the leader's own verdict
    /// (NOT_FOUND, INVALID_ARGUMENT, …) passes through; a transport failure becomes
    /// UNAVAILABLE naming the leader.
    pub fn failure(leader: &str, status: Status) -> Status {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                Status::unavailable(format!(
                    "forwarding to leader {leader} failed: {}",
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

/// Sends the calls queued for one leader, gathered into messages, until every sender is gone.
async fn send_batches(
    client: ForwardClient<Channel>,
    own_id: NodeId,
    timeout: Duration,
    pending: mpsc::UnboundedReceiver<Queued>,
) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let mut gatherer = Gatherer::new(pending, MAX_CALLS_PER_BATCH, BATCH_BYTES);
    loop {
        // Wait for a free slot first, so that calls arriving meanwhile join one message.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(batch) = gatherer
            .next_batch(|queued| queued.call.request.len())
            .await
        else {
            return;
        };
        let mut client = client.clone();
        tokio::spawn(async move {
            send_batch(&mut client, own_id, timeout, batch).await;
            drop(slot);
        });
    }
}

/// Sends one message of calls and hands each caller its own answer.
async fn send_batch(
    client: &mut ForwardClient<Channel>,
    own_id: NodeId,
    timeout: Duration,
    mut batch: Vec<Queued>,
) {
    // A caller that stopped waiting (its client gave up or disconnected while the call queued,
    // e.g. behind messages stuck on a leader that went away) must not have its write applied
    // later: its call is dropped unsent.
    batch.retain(|queued| !queued.reply.is_closed());
    if batch.is_empty() {
        return;
    }
    let (calls, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|q| (q.call, q.reply)).unzip();
    let mut request = tonic::Request::new(ForwardedCalls { calls });
    request.set_timeout(timeout);
    if let Ok(value) = own_id.to_string().parse() {
        request.metadata_mut().insert(FORWARDED_BY, value);
    }
    match client.calls(request).await {
        Ok(answer) if answer.get_ref().replies.len() == replies.len() => {
            for (reply, answer) in replies.into_iter().zip(answer.into_inner().replies) {
                let result = match answer.code {
                    0 => Ok(answer.response),
                    code => Err(Status::new(Code::from_i32(code), answer.message)),
                };
                let _ = reply.send(result);
            }
        }
        Ok(answer) => {
            let status = Status::internal(format!(
                "the leader answered {} of {} forwarded calls",
                answer.get_ref().replies.len(),
                replies.len()
            ));
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
        Err(status) => {
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
    }
}
