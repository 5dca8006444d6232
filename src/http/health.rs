//! `GET /health`: a readiness check for load balancers and orchestrators: 200 `ok` when a stale
//! read served by this node right now would be current, 503 with a one-line reason otherwise.
//!
//! "Knows a leader" alone is not enough, for two reasons explained below: a removed node keeps
//! naming its old leader, and a leader cut off from its peers keeps naming itself (openraft has
//! no check-quorum), so membership is checked and a leader confirms itself with a quorum. The
//! node must also have applied everything it knows to be committed, after a short grace
//! ([`APPLY_GRACE`]) so the few milliseconds of lag under a steady write load do not read as
//! unhealthy.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use openraft::error::{CheckIsLeaderError, RaftError};

use super::{Failure, Gateway};
use crate::raft::Raft;
use crate::storage::log_store::DurableIndex;

/// How long `/health` waits for this node to apply entries already known to be committed.
/// Under a steady write load the applied index trails the commit index by a few milliseconds;
/// the grace keeps that from reading as unhealthy, while a node that is really behind still is.
const APPLY_GRACE: Duration = Duration::from_secs(1);

/// `GET /health`: 200 `ok` when this node is a cluster member, sees a leader (confirmed by a
/// quorum, if it is the leader itself) and has applied everything it knows to be committed (so
/// a stale read here is current); 503 with a one-line reason otherwise.
pub(super) async fn health(State(gateway): State<Gateway>) -> Response {
    match readiness(&gateway.raft, gateway.kv.durable()).await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(reason) => Failure::new(StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

async fn readiness(raft: &Raft, durable: &DurableIndex) -> Result<(), String> {
    let (id, leader, is_member) = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        (
            metrics.id,
            metrics.current_leader,
            membership.get_node(&metrics.id).is_some(),
        )
    };
    // A removed node keeps naming its old leader (nothing tells it otherwise), so the leader
    // check alone would call it healthy; same rule as the gRPC health service.
    if !is_member {
        return Err("this node is not a cluster member (removed, or not joined yet)".to_string());
    }
    match leader {
        None => return Err("no leader".to_string()),
        Some(leader) if leader == id => confirm_leadership(raft).await?,
        Some(_) => {}
    }
    let committed = crate::replica::commit_index(raft, durable)
        .await
        .map_err(|status| status.message().to_string())?;
    if committed == 0 {
        return Ok(());
    }
    let caught_up = raft
        .wait(Some(APPLY_GRACE))
        .applied_index_at_least(Some(committed), "health")
        .await;
    if caught_up.is_ok() {
        return Ok(());
    }
    let applied = raft.metrics().borrow().last_applied.map(|l| l.index);
    Err(format!(
        "applied {} of {committed} committed entries",
        applied.unwrap_or(0)
    ))
}

/// A leader cut off from its peers does not step down by itself (openraft has no check-quorum),
/// so it would keep naming itself leader; one heartbeat round to a quorum tells it apart.
async fn confirm_leadership(raft: &Raft) -> Result<(), String> {
    match tokio::time::timeout(APPLY_GRACE, raft.get_read_log_id()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => Err(format!(
            "this node leads but cannot reach a quorum: only nodes {:?} answered",
            e.got
        )),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
            Err("this node just lost its leadership".to_string())
        }
        Ok(Err(RaftError::Fatal(e))) => Err(format!("raft is not running on this node: {e}")),
        Err(_) => Err(format!(
            "this node leads but no quorum confirmed it within {} ms",
            APPLY_GRACE.as_millis()
        )),
    }
}
