//! The `raftkv.v1.Cluster` service: this node's view of the cluster.

use tonic::{Request, Response, Status};

use crate::proto::v1::cluster_server::{Cluster, ClusterServer};
use crate::proto::v1::{Member, StatusRequest, StatusResponse};
use crate::types::{NodeId, Raft};

pub struct ClusterService {
    raft: Raft,
    address: String,
}

impl ClusterService {
    pub fn server(raft: Raft, address: String) -> ClusterServer<Self> {
        ClusterServer::new(Self { raft, address })
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let commit_index = self
            .raft
            .with_raft_state(|state| state.committed.map(|id| id.index))
            .await
            .map_err(|e| Status::unavailable(format!("raft is not running on this node: {e}")))?
            .unwrap_or(0);
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let member = |id: &NodeId| Member {
            id: *id,
            address: membership
                .get_node(id)
                .map(|node| node.addr.clone())
                .unwrap_or_default(),
        };
        let voters: Vec<Member> = membership.voter_ids().map(|id| member(&id)).collect();
        let learners: Vec<Member> = membership.learner_ids().map(|id| member(&id)).collect();
        let leader = metrics.current_leader.map(|id| member(&id));
        Ok(Response::new(StatusResponse {
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
}
