//! The `raftkv.v1.Cluster` service: this node's view of the cluster, and membership changes.
//!
//! Membership changes run on the leader (a follower forwards them). Adding a node is two steps,
//! as in etcd: it joins as a learner, which receives the log (or a snapshot) without voting, and
//! is promoted to voter once it has caught up, so a slow new node never stalls the quorum.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::proto::v1 as pb;
use crate::proto::v1::cluster_client::ClusterClient;
use crate::proto::v1::cluster_server::{Cluster, ClusterServer};
use crate::raft::{Node, NodeId, Raft};
use crate::replica::errors::{write_error, Redirect};
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
    pub fn server(
        raft: Raft,
        address: String,
        forwarder: Forwarder,
        timeout: Duration,
        durable: DurableIndex,
    ) -> ClusterServer<Self> {
        ClusterServer::new(Self {
            raft,
            address,
            forwarder,
            timeout,
            durable,
        })
    }

    /// Runs a membership change here if this node leads, else forwards it to the leader.
    async fn change<Req, Fut>(
        &self,
        request: Request<Req>,
        change: impl Future<Output = ChangeResult>,
        forward: impl FnOnce(ClusterClient<Channel>, Request<Req>) -> Fut,
    ) -> Result<Response<pb::MembershipResponse>, Status>
    where
        Fut: Future<Output = Result<Response<pb::MembershipResponse>, Status>>,
    {
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
                Redirect::Leader { id, address } if forwarded => Err(Status::unavailable(format!(
                    "this node is not the leader (node {id} at {address} is); retry"
                ))),
                Redirect::Leader { id, address } => {
                    let client = ClusterClient::new(self.forwarder.channel(&address)?);
                    let mut forwarded = self.forwarder.request(request.into_inner());
                    forwarded.set_timeout(self.timeout);
                    forward(client, forwarded)
                        .await
                        .map_err(|status| Forwarder::failure(id, &address, status))
                }
            },
        }
    }
}

/// Voters and learners of a membership, with addresses.
fn members(membership: Option<&Membership>) -> (Vec<pb::Member>, Vec<pb::Member>) {
    let Some(membership) = membership else {
        return (Vec::new(), Vec::new());
    };
    let member = |id: NodeId| pb::Member {
        id,
        address: membership
            .get_node(&id)
            .map(|n| n.addr.clone())
            .unwrap_or_default(),
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
                .map(|n| n.addr.clone())
                .unwrap_or_default(),
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
        let address = parse_host_port(&req.address).map_err(Status::invalid_argument)?;
        let change = self.raft.add_learner(req.id, Node::new(address), true);
        self.change(
            request,
            change,
            |mut c, r| async move { c.add_learner(r).await },
        )
        .await
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
        self.change(
            request,
            change,
            |mut c, r| async move { c.promote(r).await },
        )
        .await
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
        self.change(
            request,
            change,
            |mut c, r| async move { c.remove_node(r).await },
        )
        .await
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
