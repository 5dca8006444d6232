//! The server side of replication: decodes a peer's openraft RPC, hands it to the local Raft and
//! returns openraft's result, errors included, so the sender sees exactly what the receiver said.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::network::MAX_RAFT_MESSAGE_BYTES;
use crate::proto::raft_v1::raft_server::{Raft as RaftRpc, RaftServer};
use crate::proto::raft_v1::RaftMessage;
use crate::storage::codec;
use crate::types::Raft;

pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    pub fn server(raft: Raft) -> RaftServer<Self> {
        RaftServer::new(Self { raft })
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftMessage>) -> Result<T, Status> {
    codec::decode(&request.into_inner().payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn reply<T: Serialize>(result: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = codec::encode(result)
        .map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))?;
    Ok(Response::new(RaftMessage { payload }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let result = self.raft.append_entries(decode(request)?).await;
        reply(&result)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let result = self.raft.vote(decode(request)?).await;
        reply(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let result = self.raft.install_snapshot(decode(request)?).await;
        reply(&result)
    }
}
