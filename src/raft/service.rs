//! The server side of replication: decodes a peer's openraft RPC, hands it to the local Raft and
//! returns openraft's result, errors included, so the sender sees exactly what the receiver said.

use std::sync::Mutex;

use openraft::raft::InstallSnapshotRequest;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::proto::raft_v1::raft_server::{Raft as RaftRpc, RaftServer};
use crate::proto::raft_v1::RaftMessage;
use crate::raft::codec;
use crate::raft::network::MAX_RAFT_MESSAGE_BYTES;
use crate::raft::{Raft, TypeConfig};
use crate::storage::snapshot_mark::SnapshotMark;

pub struct RaftService {
    raft: Raft,
    /// Told of a snapshot's last chunk before openraft installs it (see `snapshot_mark`).
    snapshot_mark: SnapshotMark,
    /// The snapshot being received and how many bytes of it have arrived.
    receiving: Mutex<Option<(String, u64)>>,
}

impl RaftService {
    pub fn server(raft: Raft, snapshot_mark: SnapshotMark) -> RaftServer<Self> {
        RaftServer::new(Self {
            raft,
            snapshot_mark,
            receiving: Mutex::default(),
        })
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }
}

/// Largest snapshot image accepted from a peer: what the codec decodes at most, so a larger
/// image could never be installed, and a peer cannot make the receive buffer grow past it.
const MAX_SNAPSHOT_BYTES: u64 = 1 << 32;

impl RaftService {
    /// Refuses a chunk that would leave a gap in the snapshot being received.
    ///
    /// openraft writes a chunk at the offset the sender names, into an in-memory image: a chunk
    /// far past what has arrived would make it allocate up to that offset (a hostile or broken
    /// peer could name 2^40). A sender only ever continues where the receiver is, or repeats a
    /// chunk after a timeout, so any offset beyond the bytes received of the same snapshot is
    /// refused before openraft sees it. Another snapshot id, or offset 0, is openraft's to judge
    /// (it restarts or refuses the stream).
    fn check_snapshot_offset(&self, id: &str, offset: u64) -> Result<(), Status> {
        let receiving = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        let received = match receiving.as_ref() {
            Some((current, received)) if current == id => *received,
            _ => 0,
        };
        if offset > received {
            return Err(Status::invalid_argument(format!(
                "snapshot {id}: chunk at offset {offset}, but only {received} bytes have arrived"
            )));
        }
        Ok(())
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
        let request: InstallSnapshotRequest<TypeConfig> = decode(request)?;
        let (id, offset) = (request.meta.snapshot_id.clone(), request.offset);
        let end = offset.saturating_add(request.data.len() as u64);
        self.check_snapshot_offset(&id, offset)?;
        if end > MAX_SNAPSHOT_BYTES {
            return Err(Status::invalid_argument(format!(
                "snapshot {id}: chunk ends at byte {end}, past the largest snapshot accepted \
                 ({MAX_SNAPSHOT_BYTES} bytes)"
            )));
        }
        if request.done {
            if let Some(last) = request.meta.last_log_id {
                self.snapshot_mark.announce_incoming(last.index);
            }
        }
        let result = self.raft.install_snapshot(request).await;
        if result.is_ok() {
            let mut receiving = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
            match receiving.as_mut() {
                Some((current, received)) if *current == id && offset > 0 => {
                    *received = (*received).max(end)
                }
                _ => *receiving = Some((id, end)),
            }
        }
        reply(&result)
    }
}
