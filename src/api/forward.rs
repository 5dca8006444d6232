//! The leader's side of batched forwarding: the internal `Forward.Calls` RPC.
//!
//! Each call of a message is decoded and handed to this node's own KV service exactly as if it
//! had arrived on its own, marked as forwarded (so it is not forwarded again nor counted twice),
//! and all calls of a message run concurrently: writes among them join the same group commit.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::join_all;
use prost::Message;
use tonic::{Request, Response, Status};

use super::kv::KvService;
use crate::proto::raft_v1::forward_server::{Forward, ForwardServer};
use crate::proto::raft_v1::{
    ForwardedCall, ForwardedCalls, ForwardedReplies, ForwardedReply, KvMethod,
};
use crate::proto::v1::kv_server::Kv;
use crate::replica::forward::{FORWARDED_BY, FORWARD_MESSAGE_LIMIT};
use crate::replica::idempotency;

pub struct ForwardService {
    kv: Arc<KvService>,
}

impl ForwardService {
    pub fn server(kv: Arc<KvService>) -> ForwardServer<Self> {
        ForwardServer::new(Self { kv })
            .max_decoding_message_size(FORWARD_MESSAGE_LIMIT)
            .max_encoding_message_size(FORWARD_MESSAGE_LIMIT)
    }

    /// Runs one forwarded call through the KV service and encodes its outcome.
    async fn answer(&self, forwarded_by: &str, call: ForwardedCall) -> ForwardedReply {
        let kv = &*self.kv;
        let call = &call;
        let outcome = match KvMethod::try_from(call.method) {
            Ok(KvMethod::Put) => run(forwarded_by, call, |r| kv.put(r)).await,
            Ok(KvMethod::Get) => run(forwarded_by, call, |r| kv.get(r)).await,
            Ok(KvMethod::Delete) => run(forwarded_by, call, |r| kv.delete(r)).await,
            Ok(KvMethod::Batch) => run(forwarded_by, call, |r| kv.batch(r)).await,
            Ok(KvMethod::CompareAndSwap) => {
                run(forwarded_by, call, |r| kv.compare_and_swap(r)).await
            }
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
    forwarded_by: &str,
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
    if let Ok(value) = forwarded_by.parse() {
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
        // A call without the header still must not be forwarded again: mark it with "?".
        let forwarded_by = request
            .metadata()
            .get(FORWARDED_BY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string();
        let calls = request.into_inner().calls;
        let replies = join_all(
            calls
                .into_iter()
                .map(|call| self.answer(&forwarded_by, call)),
        )
        .await;
        Ok(Response::new(ForwardedReplies { replies }))
    }
}
