//! The client side of replication: openraft calls these to reach its peers over gRPC.
//!
//! One lazily connected tonic channel per peer is kept for the life of the node and reused by
//! every replication stream, so a leader change or a retry never pays a new TCP handshake.
//! Transport failures are reported as `Unreachable`, which makes openraft back off instead of
//! retrying in a tight loop; reachability changes are logged once each, not per RPC.
//!
//! An AppendEntries tells a follower the leader's commit index only once the leader has its log
//! on disk up to that index: the leader acknowledges its own appends before flushing them (see
//! `storage::log_store::durable`), and a follower must never apply what the leader could lose.
//! It waits for that flush for a quarter of the RPC's time limit at most, and then repeats the
//! last commit index it told that follower: openraft gives an AppendEntries one heartbeat
//! interval, and a disk that stalls for longer would otherwise fail the heartbeats that confirm
//! leadership for linearizable reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::transport::Dialer;

use crate::proto::raft_v1::raft_client::RaftClient;
use crate::proto::raft_v1::RaftMessage;
use crate::raft::codec;
use crate::raft::{LogId, Node, NodeId, TypeConfig};
use crate::storage::log_store::DurableIndex;

/// Largest replication message accepted either way: an AppendEntries is capped near
/// `APPEND_BYTES_BUDGET` unless a single entry is bigger (a value up to `--max-value-bytes`),
/// and snapshot chunks are 1 MiB.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Most entry bytes sent in one AppendEntries.
///
/// openraft 0.9 bounds an AppendEntries by entry count (`max_payload_entries`) and gives it only
/// one heartbeat interval to complete. With megabyte values a full batch cannot be sent, written
/// and flushed in that time, so it would time out and be resent forever. Sending a prefix of at
/// most this many bytes (at least one entry) and answering `PartialSuccess` keeps every message
/// small enough to finish in time; openraft sends the rest next.
const APPEND_BYTES_BUDGET: u64 = 2 * 1024 * 1024;

/// A peer's channel and whether the last RPC to it got through.
#[derive(Clone)]
struct Peer {
    address: String,
    channel: Result<Channel, String>,
    reachable: Arc<AtomicBool>,
}

/// Creates per-peer connections for openraft, reusing channels across calls.
#[derive(Clone)]
pub struct NetworkFactory {
    peers: Arc<Mutex<HashMap<NodeId, Peer>>>,
    durable: DurableIndex,
    /// How peers are reached (source address, TLS).
    dialer: Dialer,
}

impl NetworkFactory {
    /// A factory whose AppendEntries tell followers only commit indexes up to which this
    /// node's log is on disk (see [`CommitGate`]), and whose connections leave from `source`
    /// (see [`crate::transport::source_ip`]).
    pub fn new(durable: DurableIndex, dialer: Dialer) -> Self {
        Self {
            peers: Arc::default(),
            durable,
            dialer,
        }
    }

    fn peer(&self, target: NodeId, address: &str) -> Peer {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(peer) = peers.get(&target) {
            if peer.address == address {
                return peer.clone();
            }
        }
        let peer = Peer {
            address: address.to_string(),
            channel: self.dialer.lazy_channel(address),
            reachable: Arc::new(AtomicBool::new(true)),
        };
        peers.insert(target, peer.clone());
        peer
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        PeerConnection {
            target,
            peer: self.peer(target, &node.peer_address),
            commits: CommitGate::new(self.durable.clone()),
        }
    }
}

/// The connection openraft uses to send one peer its RPCs.
pub struct PeerConnection {
    target: NodeId,
    peer: Peer,
    commits: CommitGate,
}

/// Decides which commit index each AppendEntries to one follower may carry.
struct CommitGate {
    durable: DurableIndex,
    /// The last commit index told to this follower; commits only grow, so it stays true.
    told: Option<LogId>,
}

impl CommitGate {
    fn new(durable: DurableIndex) -> Self {
        Self {
            durable,
            told: None,
        }
    }

    /// [`Self::commit_to_tell`] after waiting at most `patience` for the entries up to
    /// `committed` to reach the disk: normally a fraction of one flush.
    async fn settle(
        &mut self,
        committed: Option<LogId>,
        patience: Duration,
    ) -> Result<Option<LogId>, String> {
        if let Some(id) = committed {
            // A timeout or a failure is decided below; this only gives the flush its chance.
            let _ = tokio::time::timeout(patience, self.durable.wait_for(id.index)).await;
        }
        self.commit_to_tell(committed)
    }

    /// `committed` if every entry up to it is on this node's disk, else the last commit index
    /// told. Fails only once the log cannot be flushed any more.
    fn commit_to_tell(&mut self, committed: Option<LogId>) -> Result<Option<LogId>, String> {
        let Some(id) = committed else {
            return Ok(self.told);
        };
        if self.durable.is_settled_through(id.index)? {
            self.told = self.told.max(Some(id));
        }
        Ok(self.told)
    }
}

#[derive(Clone, Copy, Debug)]
enum RaftRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &self,
        rpc: RaftRpc,
        request: &Req,
        option: RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = self
            .peer
            .channel
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?;
        let payload =
            codec::encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut message = tonic::Request::new(RaftMessage { payload });
        message.set_timeout(option.hard_ttl());
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        let reply = match rpc {
            RaftRpc::AppendEntries => client.append_entries(message).await,
            RaftRpc::Vote => client.vote(message).await,
            RaftRpc::InstallSnapshot => client.install_snapshot(message).await,
        };
        let reply = match reply {
            Ok(reply) => {
                self.mark_reachable(true, None);
                reply.into_inner()
            }
            Err(status) => {
                self.mark_reachable(false, Some(&status));
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                        RPCError::Unreachable(Unreachable::new(&status))
                    }
                    _ => RPCError::Network(NetworkError::new(&status)),
                });
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                Node::new(self.peer.address.clone(), ""),
                e,
            ))
        })
    }

    /// Logs a change of reachability once, instead of an error per heartbeat.
    fn mark_reachable(&self, reachable: bool, status: Option<&tonic::Status>) {
        let was = self.peer.reachable.swap(reachable, Ordering::Relaxed);
        match (was, reachable) {
            (true, false) => tracing::warn!(
                peer = self.target,
                address = %self.peer.address,
                error = %status.map(|s| s.message()).unwrap_or_default(),
                "cannot reach peer; retrying with backoff"
            ),
            (false, true) => tracing::info!(
                peer = self.target,
                address = %self.peer.address,
                "peer reachable again"
            ),
            _ => {}
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        // Usually the whole commit index at once: the follower acknowledgement that let the
        // entry commit took longer than the leader's own flush. A quarter of the RPC's time
        // limit at most is spent waiting for that flush.
        rpc.leader_commit = self
            .commits
            .settle(rpc.leader_commit, option.hard_ttl() / 4)
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        let sent = entries_within_budget(&rpc.entries, APPEND_BYTES_BUDGET);
        if sent == rpc.entries.len() {
            return self.call(RaftRpc::AppendEntries, &rpc, option).await;
        }
        rpc.entries.truncate(sent);
        let last_sent = rpc.entries.last().map(|entry| entry.log_id);
        let response = self.call(RaftRpc::AppendEntries, &rpc, option).await?;
        Ok(match response {
            AppendEntriesResponse::Success => AppendEntriesResponse::PartialSuccess(last_sent),
            other => other,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RaftRpc::InstallSnapshot, &rpc, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(RaftRpc::Vote, &rpc, option).await
    }
}

/// How many leading entries fit in `budget` encoded bytes; always at least one, so a single
/// entry larger than the budget still goes through.
fn entries_within_budget(entries: &[crate::raft::Entry], budget: u64) -> usize {
    let mut total = 0u64;
    for (count, entry) in entries.iter().enumerate() {
        total = total.saturating_add(codec::encoded_len(entry));
        if total > budget {
            return count.max(1);
        }
    }
    entries.len()
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::raft::Entry;
    use crate::types::{Command, Proposal, PutOp};

    fn put(index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal {
                stamp_ms: 0,
                command: Command::Put(PutOp {
                    key: format!("k{index}"),
                    value: vec![0; bytes],
                    expires_at_ms: None,
                }),
            }),
        }
    }

    fn committed(index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(1, 1), index))
    }

    #[test]
    fn a_commit_index_is_told_only_once_the_leader_has_it_on_disk() {
        let durable = DurableIndex::new(3);
        let mut gate = CommitGate::new(durable.clone());
        assert_eq!(gate.commit_to_tell(committed(3)), Ok(committed(3)));
        durable.acknowledge_early(6);
        assert_eq!(
            gate.commit_to_tell(committed(5)),
            Ok(committed(3)),
            "4 and 5 are not flushed yet: repeat the last one told"
        );
        durable.advance(5);
        assert_eq!(gate.commit_to_tell(committed(5)), Ok(committed(5)));
        assert_eq!(gate.commit_to_tell(None), Ok(committed(5)));
        durable.fail("disk gone".into());
        assert!(gate.commit_to_tell(committed(6)).is_err());
    }

    #[test]
    fn budget_keeps_a_prefix_and_at_least_one_entry() {
        let small: Vec<Entry> = (1..=10).map(|i| put(i, 10)).collect();
        assert_eq!(entries_within_budget(&small, 1 << 20), 10);

        let big: Vec<Entry> = (1..=10).map(|i| put(i, 1 << 20)).collect();
        assert_eq!(entries_within_budget(&big, 2 * (1 << 20) + 1024), 2);
        assert_eq!(
            entries_within_budget(&big, 10),
            1,
            "one oversized entry still goes"
        );
        assert_eq!(entries_within_budget(&[], 10), 0);
    }
}
