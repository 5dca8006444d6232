//! The leader's side of forwarding: the internal `Forward.Calls` and `Forward.Call` RPCs, served
//! on the peer port only.
//!
//! Each call is decoded and handed to this node's own KV (or Cluster) service exactly as if it
//! had arrived on its own, marked as forwarded (so it is not forwarded again nor counted twice),
//! and all calls of a message run concurrently: writes among them join the same group commit.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::join_all;
use prost::Message;
use tonic::{Request, Response, Status};

use super::cluster::ClusterService;
use super::kv::KvService;
use super::lease::LeaseService;
use crate::proto::raft_v1::forward_server::{Forward, ForwardServer};
use crate::proto::raft_v1::{
    ForwardedCall, ForwardedCalls, ForwardedReplies, ForwardedReply, KvMethod,
};
use crate::proto::v1::cluster_server::Cluster;
use crate::proto::v1::kv_server::Kv;
use crate::proto::v1::lease_server::Lease;
use crate::replica::forward::{FORWARDED_BY, FORWARD_MESSAGE_LIMIT};
use crate::replica::idempotency;

pub struct ForwardService {
    kv: Arc<KvService>,
    cluster: Arc<ClusterService>,
    lease: Arc<LeaseService>,
}

impl ForwardService {
    pub fn server(
        kv: Arc<KvService>,
        cluster: Arc<ClusterService>,
        lease: Arc<LeaseService>,
    ) -> ForwardServer<Self> {
        ForwardServer::new(Self { kv, cluster, lease })
            .max_decoding_message_size(FORWARD_MESSAGE_LIMIT)
            .max_encoding_message_size(FORWARD_MESSAGE_LIMIT)
    }

    /// Runs one forwarded call through the KV service and encodes its outcome.
    ///
    /// `forwarded_by` names the node that forwarded it; `None` for a call a peer made directly
    /// (a joining node's AddLearner), which this node may forward once to the leader.
    async fn answer(&self, forwarded_by: Option<&str>, call: ForwardedCall) -> ForwardedReply {
        let kv = &*self.kv;
        let cluster = &*self.cluster;
        let lease = &*self.lease;
        let call = &call;
        let outcome = match KvMethod::try_from(call.method) {
            Ok(KvMethod::Put) => run(forwarded_by, call, |r| kv.put(r)).await,
            Ok(KvMethod::Get) => run(forwarded_by, call, |r| kv.get(r)).await,
            Ok(KvMethod::Delete) => run(forwarded_by, call, |r| kv.delete(r)).await,
            Ok(KvMethod::Batch) => run(forwarded_by, call, |r| kv.batch(r)).await,
            Ok(KvMethod::CompareAndSwap) => {
                run(forwarded_by, call, |r| kv.compare_and_swap(r)).await
            }
            Ok(KvMethod::BatchGet) => run(forwarded_by, call, |r| kv.batch_get(r)).await,
            Ok(KvMethod::Scan) => run(forwarded_by, call, |r| kv.scan(r)).await,
            Ok(KvMethod::AddLearner) => run(forwarded_by, call, |r| cluster.add_learner(r)).await,
            Ok(KvMethod::Promote) => run(forwarded_by, call, |r| cluster.promote(r)).await,
            Ok(KvMethod::RemoveNode) => run(forwarded_by, call, |r| cluster.remove_node(r)).await,
            Ok(KvMethod::PublishAddresses) => {
                run(forwarded_by, call, |r| cluster.publish_addresses(r)).await
            }
            Ok(KvMethod::LeaseGrant) => run(forwarded_by, call, |r| lease.grant(r)).await,
            Ok(KvMethod::LeaseRevoke) => run(forwarded_by, call, |r| lease.revoke(r)).await,
            Ok(KvMethod::LeaseKeepAlive) => run(forwarded_by, call, |r| lease.renew(r)).await,
            Ok(KvMethod::LeaseTimeToLive) => {
                run(forwarded_by, call, |r| lease.time_to_live(r)).await
            }
            Ok(KvMethod::LeaseList) => run(forwarded_by, call, |r| lease.leases(r)).await,
            Ok(KvMethod::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
                "forwarded call names unknown method {}",
                call.method
            ))),
        };
        match outcome {
            Ok(response) => ForwardedReply {
                code: 0,
                message: String::new(),
                response,
            },
            Err(status) => ForwardedReply {
                code: status.code() as i32,
                message: status.message().to_string(),
                response: Vec::new(),
            },
        }
    }
}

/// Decodes `bytes` as the method's request, calls it as a forwarded request and encodes the answer.
async fn run<Req, Resp, Fut>(
    forwarded_by: Option<&str>,
    call: &ForwardedCall,
    method: impl FnOnce(Request<Req>) -> Fut,
) -> Result<Vec<u8>, Status>
where
    Req: Message + Default,
    Resp: Message,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let req = Req::decode(call.request.as_slice())
        .map_err(|e| Status::invalid_argument(format!("undecodable forwarded request: {e}")))?;
    let mut request = Request::new(req);
    if let Some(Ok(value)) = forwarded_by.map(str::parse) {
        request.metadata_mut().insert(FORWARDED_BY, value);
    }
    if !call.idempotency_key.is_empty() {
        // The KV service checks the key as it would a client's.
        let key = call.idempotency_key.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "{} must be printable ASCII",
                idempotency::METADATA_KEY
            ))
        })?;
        request
            .metadata_mut()
            .insert(idempotency::METADATA_KEY, key);
    }
    Ok(method(request).await?.into_inner().encode_to_vec())
}

#[tonic::async_trait]
impl Forward for ForwardService {
    async fn calls(
        &self,
        request: Request<ForwardedCalls>,
    ) -> Result<Response<ForwardedReplies>, Status> {
        // Batched calls always come from a forwarding node; without the header they are still
        // marked ("?"), so that they are not forwarded again.
        let forwarded_by = forwarded_by(&request).unwrap_or_else(|| "?".to_string());
        let calls = request.into_inner().calls;
        let replies = join_all(
            calls
                .into_iter()
                .map(|call| self.answer(Some(&forwarded_by), call)),
        )
        .await;
        Ok(Response::new(ForwardedReplies { replies }))
    }

    async fn call(
        &self,
        request: Request<ForwardedCall>,
    ) -> Result<Response<ForwardedReply>, Status> {
        let forwarded_by = forwarded_by(&request);
        Ok(Response::new(
            self.answer(forwarded_by.as_deref(), request.into_inner())
                .await,
        ))
    }
}

/// The node a forwarded message came from, if it says.
fn forwarded_by<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get(FORWARDED_BY)
        .map(|v| v.to_str().unwrap_or("?").to_string())
}
