//! The `raftkv.v1.Cluster` service: this node's view of the cluster, and membership changes.
//!
//! Membership changes run on the leader (a follower forwards them). Adding a node is two steps,
//! as in etcd: it joins as a learner, which receives the log (or a snapshot) without voting, and
//! is promoted to voter once it has caught up, so a slow new node never stalls the quorum.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::proto::raft_v1::KvMethod;
use crate::proto::v1 as pb;
use crate::proto::v1::cluster_server::{Cluster, ClusterServer};
use crate::raft::member::{offset_port, DEFAULT_PEER_PORT_OFFSET};
use crate::raft::{Node, NodeId, Raft};
use crate::replica::errors::{leader_label, write_error, Redirect};
use crate::replica::forward::{is_forwarded, Forwarder};
use crate::storage::log_store::DurableIndex;
use crate::transport::parse_host_port;

pub struct ClusterService {
    raft: Raft,
    address: String,
    forwarder: Forwarder,
    /// Bound on a membership change; adding a learner waits for it to catch up.
    timeout: Duration,
    /// Which of this node's log entries are on its disk, for the commit index it reports.
    durable: DurableIndex,
}

type Membership = openraft::Membership<NodeId, Node>;
type ChangeResult = Result<
    openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>,
    RaftError<NodeId, ClientWriteError<NodeId, Node>>,
>;

impl ClusterService {
    pub fn new(
        raft: Raft,
        address: String,
        forwarder: Forwarder,
        timeout: Duration,
        durable: DurableIndex,
    ) -> Self {
        Self {
            raft,
            address,
            forwarder,
            timeout,
            durable,
        }
    }

    pub fn server(service: Arc<Self>) -> ClusterServer<Self> {
        ClusterServer::from_arc(service)
    }

    /// Runs a membership change here if this node leads, else forwards it to the leader as
    /// `method` (through the leader's peer port).
    async fn change<Req: Message>(
        &self,
        request: Request<Req>,
        change: impl Future<Output = ChangeResult>,
        method: KvMethod,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let outcome = match tokio::time::timeout(self.timeout, change).await {
            Ok(outcome) => outcome,
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "membership change did not complete within {:?}; check `raftkv cluster status`",
                    self.timeout
                )))
            }
        };
        match outcome {
            Ok(response) => {
                let (voters, learners) = members(response.membership.as_ref());
                Ok(Response::new(pb::MembershipResponse {
                    revision: response.log_id.index,
                    voters,
                    learners,
                }))
            }
            Err(e) => match write_error(e) {
                Redirect::Fail(status) => Err(status),
                Redirect::Leader { id, member } if forwarded => Err(Status::unavailable(format!(
                    "this node is not the leader ({} is); retry",
                    leader_label(id, &member)
                ))),
                Redirect::Leader { id, member } => self
                    .forwarder
                    .call_alone_within(
                        &member.peer_address,
                        method,
                        request.get_ref(),
                        self.timeout,
                    )
                    .await
                    .map(Response::new)
                    .map_err(|status| Forwarder::failure(&leader_label(id, &member), status)),
            },
        }
    }

    /// Records a member's own addresses in the membership (`KV_METHOD_PUBLISH_ADDRESSES`, sent
    /// by the member itself through its peers; never on the client port). Changes no voter.
    pub async fn publish_addresses(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let req = request.get_ref().clone();
        check_id(req.id)?;
        let member = member_of(&req)?;
        let known = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&req.id)
            .is_some();
        if !known {
            return Err(Status::not_found(format!(
                "node {} is not a member of this cluster",
                req.id
            )));
        }
        let change = self.raft.change_membership(
            ChangeMembers::SetNodes(BTreeMap::from([(req.id, member)])),
            false,
        );
        self.change(request, change, KvMethod::PublishAddresses)
            .await
    }
}

/// The member an AddLearnerRequest names; its peer address defaults to the client port + 2000.
fn member_of(req: &pb::AddLearnerRequest) -> Result<Node, Status> {
    let client = parse_host_port(&req.address)
        .map_err(|e| Status::invalid_argument(format!("address: {e}")))?;
    let peer = match req.peer_address.as_str() {
        "" => offset_port(&client, DEFAULT_PEER_PORT_OFFSET as i32).ok_or_else(|| {
            Status::invalid_argument(format!(
                "address {client}: its port + {DEFAULT_PEER_PORT_OFFSET} is not a port; give peer_address"
            ))
        })?,
        peer => parse_host_port(peer)
            .map_err(|e| Status::invalid_argument(format!("peer_address: {e}")))?,
    };
    Ok(Node::new(peer, client))
}

/// Voters and learners of a membership, with addresses.
fn members(membership: Option<&Membership>) -> (Vec<pb::Member>, Vec<pb::Member>) {
    let Some(membership) = membership else {
        return (Vec::new(), Vec::new());
    };
    let member = |id: NodeId| {
        let node = membership.get_node(&id).cloned().unwrap_or_default();
        pb::Member {
            id,
            address: node.client_address,
            peer_address: node.peer_address,
        }
    };
    (
        membership.voter_ids().map(member).collect(),
        membership.learner_ids().map(member).collect(),
    )
}

fn check_id(id: NodeId) -> Result<(), Status> {
    if id == 0 {
        return Err(Status::invalid_argument(
            "id 0 is reserved; node ids start at 1",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let commit_index = crate::replica::commit_index(&self.raft, &self.durable).await?;
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let (voters, learners) = members(Some(membership));
        let leader = metrics.current_leader.map(|id| pb::Member {
            id,
            address: membership
                .get_node(&id)
                .map(|n| n.client_address.clone())
                .unwrap_or_default(),
            peer_address: String::new(),
        });
        Ok(Response::new(pb::StatusResponse {
            id: metrics.id,
            address: self.address.clone(),
            leader_id: leader.as_ref().map(|m| m.id).unwrap_or(0),
            leader_address: leader.map(|m| m.address).unwrap_or_default(),
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            commit_index,
            last_applied_index: metrics.last_applied.map(|id| id.index).unwrap_or(0),
            voters,
            learners,
            role: format!("{:?}", metrics.state),
            snapshot_index: metrics.snapshot.map(|id| id.index).unwrap_or(0),
            purged_index: metrics.purged.map(|id| id.index).unwrap_or(0),
        }))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let req = request.get_ref().clone();
        check_id(req.id)?;
        let member = member_of(&req)?;
        let change = self.raft.add_learner(req.id, member, true);
        self.change(request, change, KvMethod::AddLearner).await
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let ids: BTreeSet<NodeId> = request.get_ref().ids.iter().copied().collect();
        if ids.is_empty() {
            return Err(Status::invalid_argument(
                "ids is empty: name the learners to promote",
            ));
        }
        for id in &ids {
            check_id(*id)?;
        }
        let change = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(ids), false);
        self.change(request, change, KvMethod::Promote).await
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let id = request.get_ref().id;
        check_id(id)?;
        let is_voter = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id);
        let ids = BTreeSet::from([id]);
        let change = if is_voter {
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        let change = self.raft.change_membership(change, false);
        self.change(request, change, KvMethod::RemoveNode).await
    }

    async fn snapshot(
        &self,
        _: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let applied = self.raft.metrics().borrow().last_applied;
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Status::unavailable(format!("raft is not running on this node: {e}")))?;
        // The snapshot covers at least what was applied when it was asked for.
        let built = self
            .raft
            .wait(Some(self.timeout))
            .metrics(
                |m| m.snapshot.map(|s| s.index) >= applied.map(|a| a.index),
                "snapshot built",
            )
            .await
            .map_err(|e| Status::unavailable(format!("snapshot not built: {e}")))?;
        Ok(Response::new(pb::SnapshotResponse {
            id: built.id,
            snapshot_index: built.snapshot.map(|s| s.index).unwrap_or(0),
            purged_index: built.purged.map(|p| p.index).unwrap_or(0),
        }))
    }
}
