//! The `raftkv.v1.KV` service: Put, Get, Delete.
//!
//! Writes go through `Raft::client_write` and are answered once committed and applied.
//! Linearizable reads confirm leadership with `ensure_linearizable` and then read the local map;
//! stale reads read the local map directly. A follower forwards writes and linearizable reads to
//! the leader, so every node accepts every request.

use std::future::Future;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::errors::{read_error, timed_out, write_error, Redirect};
use super::forward::{is_forwarded, Forwarder};
use super::limits::Limits;
use crate::proto::v1::kv_client::KvClient;
use crate::proto::v1::kv_server::{Kv, KvServer};
use crate::proto::v1::{
    Consistency, DeleteRequest, DeleteResponse, GetRequest, GetResponse, PutRequest, PutResponse,
};
use crate::storage::KvReader;
use crate::types::{Command, CommandResult, Raft};

pub struct KvService {
    raft: Raft,
    reader: KvReader,
    limits: Limits,
    forwarder: Forwarder,
    timeout: Duration,
}

impl KvService {
    pub fn server(
        raft: Raft,
        reader: KvReader,
        limits: Limits,
        forwarder: Forwarder,
        timeout: Duration,
    ) -> KvServer<Self> {
        let message_limit = limits.grpc_message_limit();
        KvServer::new(Self {
            raft,
            reader,
            limits,
            forwarder,
            timeout,
        })
        .max_decoding_message_size(message_limit)
        .max_encoding_message_size(message_limit)
    }

    /// The leader this node knows of, unless it is this node itself.
    fn remote_leader(&self) -> Option<Redirect> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        if leader == metrics.id {
            return None;
        }
        let node = metrics.membership_config.membership().get_node(&leader)?;
        Some(Redirect::Leader {
            id: leader,
            address: node.addr.clone(),
        })
    }

    /// Proposes a command and waits until it is committed and applied; `Err(Redirect)` when
    /// this node is not the leader or the cluster cannot commit it.
    async fn propose(&self, command: Command) -> Result<CommandResult, Redirect> {
        match tokio::time::timeout(self.timeout, self.raft.client_write(command)).await {
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(e)) => Err(write_error(e)),
            Err(_) => Err(Redirect::Fail(timed_out(
                "write",
                self.timeout.as_millis() as u64,
            ))),
        }
    }

    /// Waits until this node may serve a linearizable read from its map.
    async fn linearize(&self) -> Result<(), Redirect> {
        match tokio::time::timeout(self.timeout, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(read_error(e)),
            Err(_) => Err(Redirect::Fail(timed_out(
                "linearizable read",
                self.timeout.as_millis() as u64,
            ))),
        }
    }

    /// Serves a redirect: calls the leader with `call` unless the request was itself forwarded.
    async fn redirect<T, F, Fut>(
        &self,
        redirect: Redirect,
        forwarded: bool,
        call: F,
    ) -> Result<T, Status>
    where
        F: FnOnce(KvClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        match redirect {
            Redirect::Fail(status) => Err(status),
            Redirect::Leader { id, address } if forwarded => Err(Status::unavailable(format!(
                "this node is not the leader (node {id} at {address} is); leadership moved while forwarding, retry"
            ))),
            Redirect::Leader { id, address } => {
                let client = self.forwarder.client(&address)?;
                call(client)
                    .await
                    .map(Response::into_inner)
                    .map_err(|status| Forwarder::failure(id, &address, status))
            }
        }
    }
}

/// A proposal this node took as leader but could not commit: the request has been consumed, so
/// rather than forward it the client is told to retry (it will reach the new leader).
fn moved(redirect: Redirect) -> Status {
    match redirect {
        Redirect::Fail(status) => status,
        Redirect::Leader { id, address } => Status::unavailable(format!(
            "leadership moved to node {id} at {address} while proposing; retry"
        )),
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        self.limits.check_key(&req.key)?;
        self.limits.check_value(&req.value)?;
        if let Some(redirect) = self.remote_leader() {
            let request = self.forwarder.request(req);
            return self
                .redirect(redirect, forwarded, |mut leader| async move {
                    leader.put(request).await
                })
                .await
                .map(Response::new);
        }
        let command = Command::Put {
            key: req.key,
            value: req.value,
        };
        match self.propose(command).await {
            Ok(result) => Ok(Response::new(PutResponse {
                revision: result.revision,
            })),
            Err(redirect) => Err(moved(redirect)),
        }
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        self.limits.check_key(&req.key)?;
        let stale = req.consistency == Consistency::Stale as i32;
        if !stale {
            if let Err(redirect) = self.linearize().await {
                let request = self.forwarder.request(req);
                return self
                    .redirect(redirect, forwarded, |mut leader| async move {
                        leader.get(request).await
                    })
                    .await
                    .map(Response::new);
            }
        }
        match self.reader.get(&req.key) {
            Some(stored) => Ok(Response::new(GetResponse {
                value: stored.value,
                revision: stored.revision,
            })),
            None => Err(Status::not_found(format!("key not found: {}", req.key))),
        }
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        self.limits.check_key(&req.key)?;
        if let Some(redirect) = self.remote_leader() {
            let request = self.forwarder.request(req);
            return self
                .redirect(redirect, forwarded, |mut leader| async move {
                    leader.delete(request).await
                })
                .await
                .map(Response::new);
        }
        match self.propose(Command::Delete { key: req.key }).await {
            Ok(result) => Ok(Response::new(DeleteResponse {
                deleted: result.existed,
                revision: result.revision,
            })),
            Err(redirect) => Err(moved(redirect)),
        }
    }
}
