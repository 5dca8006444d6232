//! A node's place in the cluster at start: it gives up a leadership restored from disk,
//! initialises a pristine cluster from `--initial-cluster`, or asks to be added with `--join`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::anyhow;

use super::config::ServeArgs;
use crate::proto::v1::cluster_client::ClusterClient;
use crate::proto::v1::{AddLearnerRequest, PromoteRequest};
use crate::raft::{Node, NodeId, Raft};
use crate::storage;

/// A node that led when it stopped campaigns in a new term instead of resuming the old one
/// (Log Matching; see `LogStore::give_up_restored_leadership`).
pub async fn give_up_restored_leadership(
    id: NodeId,
    log_store: &storage::LogStore,
) -> anyhow::Result<()> {
    let term = log_store
        .clone()
        .give_up_restored_leadership(id)
        .await
        .map_err(|e| anyhow!("cannot rewrite the saved vote: {e}"))?;
    if let Some(term) = term {
        tracing::info!(
            term,
            "this node led term {term} when it stopped; it will campaign in a new term"
        );
    }
    Ok(())
}

/// Initialises the cluster from `--initial-cluster` when this node has never held any Raft
/// state. Every member of a new cluster does this with the same membership, which yields the same
/// first log entry everywhere (as etcd's bootstrap does); a node with a vote or a log skips it,
/// so a restart never re-initialises.
pub async fn initialise_if_pristine(raft: &Raft, args: &ServeArgs) -> anyhow::Result<()> {
    let Some(cluster) = &args.initial_cluster else {
        return Ok(());
    };
    if raft.is_initialized().await? {
        tracing::info!("existing raft state found; rejoining without initialising");
        return Ok(());
    }
    let members: BTreeMap<_, _> = cluster
        .0
        .iter()
        .map(|(id, addr)| (*id, Node::new(addr.clone())))
        .collect();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(members = ?cluster.0, "initialised a new cluster"),
        Err(openraft::error::RaftError::APIError(
            openraft::error::InitializeError::NotAllowed(e),
        )) => {
            tracing::info!("cluster already initialised: {e}")
        }
        Err(e) => return Err(anyhow!("cannot initialise the cluster: {e}")),
    }
    Ok(())
}

/// `--join`: asks the cluster to add this node as a learner (the leader replicates the log or a
/// snapshot to it and answers once it has caught up), then to promote it to voter. Retries with
/// backoff until both steps succeed, because the cluster may be mid-election when we start.
pub async fn join_cluster(
    raft: Raft,
    id: NodeId,
    address: String,
    endpoints: Vec<String>,
    dialer: crate::transport::Dialer,
) {
    if raft.is_initialized().await.unwrap_or(true) {
        let in_membership = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some();
        if in_membership {
            tracing::info!("already a cluster member; --join ignored");
            return;
        }
    }
    let mut backoff = Duration::from_millis(200);
    let mut step_done = false;
    loop {
        for endpoint in &endpoints {
            let Ok(channel) = dialer.lazy_channel(endpoint) else {
                tracing::error!(endpoint, "--join: not a host:port address");
                continue;
            };
            let mut client = ClusterClient::new(channel);
            if !step_done {
                let request = AddLearnerRequest {
                    id,
                    address: address.clone(),
                };
                match client.add_learner(request).await {
                    Ok(_) => {
                        tracing::info!(endpoint, "joined as a learner and caught up");
                        step_done = true;
                    }
                    Err(status) => {
                        tracing::warn!(
                            endpoint,
                            "--join: add learner failed: {}",
                            status.message()
                        );
                        continue;
                    }
                }
            }
            match client.promote(PromoteRequest { ids: vec![id] }).await {
                Ok(_) => {
                    tracing::info!(endpoint, "promoted to voter");
                    return;
                }
                Err(status) => {
                    tracing::warn!(endpoint, "--join: promote failed: {}", status.message())
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
