//! A node's place in the cluster at start: it gives up a leadership restored from disk,
//! initialises a pristine cluster from `--initial-cluster`, or asks to be added with `--join`;
//! then it keeps its own addresses in the membership right.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use prost::Message;
use tonic::transport::Channel;

use super::config::{Addresses, ServeArgs};
use crate::api::ClusterService;
use crate::proto::raft_v1::forward_client::ForwardClient;
use crate::proto::raft_v1::{ForwardedCall, KvMethod};
use crate::proto::v1::{AddLearnerRequest, PromoteRequest};
use crate::raft::{Node, NodeId, Raft};
use crate::storage;

/// How long one `--join` step may take: adding a learner waits until it has caught up.
const JOIN_STEP_TIMEOUT: Duration = Duration::from_secs(120);

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
///
/// `--initial-cluster` names peer addresses only, and the entry must be identical on every
/// member, so the members' client addresses start empty; each member then publishes its own
/// (see [`publish_addresses`]).
pub async fn initialise_if_pristine(
    raft: &Raft,
    args: &ServeArgs,
    addresses: &Addresses,
) -> anyhow::Result<()> {
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
        .map(|(id, peer)| (*id, Node::new(peer.clone(), "")))
        .collect();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(members = ?cluster.0, client = %addresses.client,
            "initialised a new cluster"),
        Err(openraft::error::RaftError::APIError(
            openraft::error::InitializeError::NotAllowed(e),
        )) => {
            tracing::info!("cluster already initialised: {e}")
        }
        Err(e) => return Err(anyhow!("cannot initialise the cluster: {e}")),
    }
    Ok(())
}

/// Keeps this node's entry in the membership equal to the addresses it was started with: when
/// the entry differs (a member of a new cluster, whose client address nobody else knew, or a
/// node restarted with other addresses), the node asks the leader to record its own. Runs until
/// the node stops; retries with backoff while there is no leader or the change fails.
pub async fn publish_addresses(raft: Raft, id: NodeId, own: Node, cluster: Arc<ClusterService>) {
    let mut metrics = raft.metrics();
    let mut backoff = Duration::from_millis(200);
    loop {
        let recorded = {
            let now = metrics.borrow_and_update();
            let recorded = now.membership_config.membership().get_node(&id).cloned();
            now.current_leader.and(recorded)
        };
        match recorded {
            Some(recorded) if recorded != own => {
                let request = tonic::Request::new(AddLearnerRequest {
                    id,
                    address: own.client_address.clone(),
                    peer_address: own.peer_address.clone(),
                });
                match cluster.publish_addresses(request).await {
                    Ok(_) => {
                        tracing::info!(%own, "published this node's addresses");
                        backoff = Duration::from_millis(200);
                    }
                    Err(status) => {
                        tracing::debug!(
                            "cannot publish this node's addresses yet: {}",
                            status.message()
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                continue;
            }
            // No leader yet, not (yet) a member, or already right: wait for a change.
            _ => {
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// `--join`: asks the cluster, through one of the members' peer ports, to add this node as a
/// learner (the leader replicates the log or a snapshot to it and answers once it has caught
/// up), then to promote it to voter. Retries with backoff until both steps succeed, because the
/// cluster may be mid-election when we start. The member called forwards each step to the leader.
pub async fn join_cluster(
    raft: Raft,
    id: NodeId,
    own: Node,
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
    let add = AddLearnerRequest {
        id,
        address: own.client_address.clone(),
        peer_address: own.peer_address.clone(),
    };
    let promote = PromoteRequest { ids: vec![id] };
    let mut backoff = Duration::from_millis(200);
    let mut step_done = false;
    loop {
        for endpoint in &endpoints {
            let Ok(channel) = dialer.lazy_channel(endpoint) else {
                tracing::error!(endpoint, "--join: not a host:port address");
                continue;
            };
            let mut client = ForwardClient::new(channel);
            if !step_done {
                match direct_call(&mut client, KvMethod::AddLearner, &add).await {
                    Ok(()) => {
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
            match direct_call(&mut client, KvMethod::Promote, &promote).await {
                Ok(()) => {
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

/// One `Forward.Call` made by this node on its own behalf (no forwarded-by header, so the member
/// called may hand it on to the leader).
async fn direct_call(
    client: &mut ForwardClient<Channel>,
    method: KvMethod,
    request: &impl Message,
) -> Result<(), tonic::Status> {
    let call = ForwardedCall {
        method: method as i32,
        request: request.encode_to_vec(),
        idempotency_key: String::new(),
    };
    let mut call = tonic::Request::new(call);
    call.set_timeout(JOIN_STEP_TIMEOUT);
    let reply = client.call(call).await?.into_inner();
    match reply.code {
        0 => Ok(()),
        code => Err(tonic::Status::new(
            tonic::Code::from_i32(code),
            reply.message,
        )),
    }
}
