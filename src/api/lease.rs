//! The `raftkv.v1.Lease` service.
//!
//! Grant and Revoke are writes: they go through the KV service's write path (forwarded to the
//! leader, group-committed, idempotency keys honoured). A renewal and TimeToLive are answered
//! by the leader alone, because a lease's countdown runs on the leader's clock
//! ([`crate::lease`]); a follower forwards each renewal of a KeepAlive stream to the leader as
//! it arrives. The leader confirms its leadership (a linearizable read) before it renews, so a
//! deposed leader never promises a holder time that the new leader does not grant.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::kv::{lease_not_found, unexpected, KvService};
use crate::lease::{LeaseClocks, NotLeader};
use crate::proto::raft_v1::KvMethod;
use crate::proto::v1 as pb;
use crate::proto::v1::lease_server::{Lease, LeaseServer};
use crate::replica::forward::{is_forwarded, Forwarder};
use crate::replica::idempotency;
use crate::storage::KvReader;
use crate::types::{Command, CommandResult};

/// Shortest TTL a lease may have: below it a holder's renewals (every third of the TTL) would
/// compete with heartbeats, and an election would outlast the TTL.
pub const MIN_TTL_MS: u64 = 1000;
/// Longest TTL a lease may have (one year).
pub const MAX_TTL_MS: u64 = 365 * 24 * 3600 * 1000;
/// Renewal answers buffered per KeepAlive stream before reading its next request waits.
const STREAM_BUFFER: usize = 16;

#[derive(Clone)]
pub struct LeaseService {
    kv: Arc<KvService>,
    clocks: Arc<LeaseClocks>,
    reader: KvReader,
    /// Set when the node stops: every KeepAlive stream then ends, as the servers wait for open
    /// streams before they stop.
    stopping: Arc<watch::Sender<bool>>,
}

pub type KeepAliveStream = ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

impl LeaseService {
    pub fn new(kv: Arc<KvService>, clocks: Arc<LeaseClocks>, reader: KvReader) -> Self {
        Self {
            kv,
            clocks,
            reader,
            stopping: Arc::new(watch::channel(false).0),
        }
    }

    /// Ends every KeepAlive stream (with UNAVAILABLE, so that clients renew elsewhere) and any
    /// opened later.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    pub fn server(service: Arc<Self>) -> LeaseServer<Self> {
        LeaseServer::from_arc(service)
    }

    /// Runs `local` on the leader once it has confirmed its leadership (the KV service's
    /// linearizable read path); a follower forwards the request (with `Forward.Calls` when
    /// `batched`, else `Forward.Call`).
    async fn on_leader<Req, Resp>(
        &self,
        forwarded: bool,
        req: Req,
        method: KvMethod,
        batched: bool,
        local: impl FnOnce(Req) -> Result<Resp, Status>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Message + Send + 'static,
        Resp: Message + Default,
    {
        let forward = move |f: Forwarder, leader: String, r: Req| async move {
            if batched {
                f.call(&leader, method, &r, None).await
            } else {
                f.call_alone(&leader, method, &r).await
            }
        };
        let linearizable = pb::Consistency::Linearizable as i32;
        self.kv
            .read(forwarded, req, linearizable, local, forward)
            .await
    }

    /// One renewal, as a KeepAlive stream's request or as a forwarded call.
    pub async fn renew(
        &self,
        request: Request<pb::LeaseKeepAliveRequest>,
    ) -> Result<Response<pb::LeaseKeepAliveResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        self.on_leader(forwarded, req, KvMethod::LeaseKeepAlive, true, |req| {
            let ttl_ms = self.clocks.renew(req.id).map_err(lost_leadership)?;
            Ok(pb::LeaseKeepAliveResponse {
                id: req.id,
                ttl_ms: ttl_ms.unwrap_or(0),
            })
        })
        .await
    }

    /// Answers a KeepAlive stream's renewals in order until the client closes it, a renewal
    /// fails (the client then retries, maybe through another node) or the node stops.
    async fn run_keep_alive(
        self,
        mut inbound: Streaming<pb::LeaseKeepAliveRequest>,
        answers: mpsc::Sender<Result<pb::LeaseKeepAliveResponse, Status>>,
    ) {
        let mut stopping = self.stopping.subscribe();
        let stopped = async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stopped);
        loop {
            let next = tokio::select! {
                biased;
                () = &mut stopped => break,
                next = inbound.message() => next,
            };
            let req = match next {
                Ok(Some(req)) => req,
                Ok(None) | Err(_) => return,
            };
            let answer = tokio::select! {
                biased;
                () = &mut stopped => break,
                answer = self.renew(Request::new(req)) => answer.map(Response::into_inner),
            };
            let failed = answer.is_err();
            if answers.send(answer).await.is_err() || failed {
                return;
            }
        }
        let _ = answers
            .send(Err(Status::unavailable(
                "this node is stopping; keep the lease alive through another node",
            )))
            .await;
    }
}

fn lost_leadership(_: NotLeader) -> Status {
    Status::unavailable("this node stopped leading while renewing; retry")
}

type Forwarded<Resp> = Pin<Box<dyn Future<Output = Result<Resp, Status>> + Send>>;

/// Forwards a write to the leader with the client's idempotency key.
fn forward_write<Req, Resp>(
    method: KvMethod,
) -> impl FnOnce(Forwarder, String, Req, Option<String>) -> Forwarded<Resp>
where
    Req: Message + Send + 'static,
    Resp: Message + Default + 'static,
{
    move |f, leader, r, key| Box::pin(async move { f.call(&leader, method, &r, key).await })
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let key = idempotency::key_of(request.metadata())?;
        let req = request.into_inner();
        if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&req.ttl_ms) {
            return Err(Status::invalid_argument(format!(
                "ttl_ms is {}; a lease's TTL is {MIN_TTL_MS} ms to {MAX_TTL_MS} ms (one year)",
                req.ttl_ms
            )));
        }
        let tag = idempotency::tag(key, "LeaseGrant", &req);
        self.kv
            .write(
                forwarded,
                tag,
                req,
                |req, _| Command::LeaseGrant { ttl_ms: req.ttl_ms },
                |result| match result {
                    CommandResult::LeaseGranted {
                        revision,
                        id,
                        ttl_ms,
                    } => Ok(pb::LeaseGrantResponse {
                        id,
                        ttl_ms,
                        revision,
                    }),
                    other => Err(unexpected(&other)),
                },
                forward_write(KvMethod::LeaseGrant),
            )
            .await
    }

    async fn revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let key = idempotency::key_of(request.metadata())?;
        let req = request.into_inner();
        let tag = idempotency::tag(key, "LeaseRevoke", &req);
        self.kv
            .write(
                forwarded,
                tag,
                req,
                |req, _| Command::LeaseRevoke { id: req.id },
                |result| match result {
                    CommandResult::LeaseRevoked { revision, deleted } => {
                        Ok(pb::LeaseRevokeResponse { revision, deleted })
                    }
                    other => Err(unexpected(&other)),
                },
                forward_write(KvMethod::LeaseRevoke),
            )
            .await
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let (answers, stream) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(self.clone().run_keep_alive(request.into_inner(), answers));
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        self.on_leader(forwarded, req, KvMethod::LeaseTimeToLive, false, |req| {
            let (left, granted) = self
                .clocks
                .remaining(req.id)
                .map_err(lost_leadership)?
                .ok_or_else(|| lease_not_found(req.id))?;
            let keys = self
                .reader
                .lease(req.id, req.keys)
                .map(|(_, keys)| keys)
                .unwrap_or_default();
            Ok(pb::LeaseTimeToLiveResponse {
                id: req.id,
                ttl_ms: left.as_millis() as u64,
                granted_ttl_ms: granted,
                keys,
            })
        })
        .await
    }

    async fn leases(
        &self,
        request: Request<pb::LeaseListRequest>,
    ) -> Result<Response<pb::LeaseListResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        self.on_leader(forwarded, req, KvMethod::LeaseList, false, |_| {
            let leases = self
                .reader
                .leases()
                .into_iter()
                .map(|lease| pb::LeaseStatus {
                    id: lease.id,
                    granted_ttl_ms: lease.ttl_ms,
                    keys: lease.keys,
                })
                .collect();
            Ok(pb::LeaseListResponse { leases })
        })
        .await
    }
}
