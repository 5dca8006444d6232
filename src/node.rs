//! `raftkv serve`: opens the data dir, starts openraft and the gRPC server, initialises a
//! pristine cluster once, keeps the health status current, and stops cleanly on a signal.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use openraft::{Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::api::counters::OpCounters;
use crate::api::forward::Forwarder;
use crate::api::{ClusterService, KvService, Limits};
use crate::config::ServeArgs;
use crate::network::{source_ip, NetworkFactory};
use crate::proto::v1::kv_server::KvServer;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::raft_service::RaftService;
use crate::types::{Node, Raft};
use crate::{expiry, storage};

/// Entries per AppendEntries message. Large enough to catch up quickly on small values; the
/// network layer additionally caps each message by bytes (see `network::APPEND_BYTES_BUDGET`).
const MAX_PAYLOAD_ENTRIES: u64 = 512;

/// Snapshot chunk size for InstallSnapshot: far below any gRPC message limit.
const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;

/// openraft settings for a log that waits on disk.
///
/// openraft's defaults (heartbeat 50 ms, election 150–300 ms) assume an in-memory log; here every
/// append waits for a sled flush, and a busy two-core machine can stall a process for tens of
/// milliseconds, which at those defaults starts needless elections. The defaults chosen here are
/// etcd's: heartbeat 100 ms, election timeout 1–2 s. A leader failure costs 3–5 s of writes,
/// because openraft 0.9 lets a follower campaign only after the old leader's lease (the maximum
/// election timeout) and then a random election timeout have passed.
pub fn raft_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let config = Config {
        cluster_name: "raftkv".to_string(),
        heartbeat_interval: args.heartbeat_ms,
        election_timeout_min: args.election_timeout_ms,
        election_timeout_max: args.election_timeout_ms * 2,
        install_snapshot_timeout: 10_000.max(args.election_timeout_ms),
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(args.snapshot_every),
        max_in_snapshot_log_to_keep: args.logs_kept,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        // Purge at most every 64 entries, and never wait for more entries than a snapshot covers.
        purge_batch_size: args.snapshot_every.min(64),
        ..Default::default()
    };
    config
        .validate()
        .map_err(|e| anyhow!("invalid raft settings: {e}"))
}

/// Runs a node until `shutdown` resolves.
pub async fn serve(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = args.validate().map_err(|e| anyhow!(e))?;
    crate::failpoints::configure_from_env().map_err(|e| anyhow!(e))?;
    let config = Arc::new(raft_config(&args)?);
    crate::memory::tune_allocator();
    if !crate::runtime::lifo_slot_disabled() {
        tracing::warn!(
            "built without --cfg tokio_unstable: responses are written one system call each, \
             which costs write throughput (see src/runtime.rs)"
        );
    }

    let (log_store, state_machine) = storage::open(&args.data_dir, !args.unsafe_no_fsync).await?;
    log_store.set_node_id(args.id);
    let reader = state_machine.reader();
    give_up_restored_leadership(args.id, &log_store).await?;

    // Bind before starting Raft, so a busy port is reported before anything else happens.
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let http_listener = match args.http_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--http-listen)"))?,
        ),
        None => None,
    };

    let durable = log_store.durable_index();
    let snapshot_mark = log_store.snapshot_mark();
    let raft = Raft::new(
        args.id,
        config,
        NetworkFactory::new(durable.clone(), source_ip(args.listen)),
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| {
        anyhow!(
            "cannot start raft on data dir {}: {e}",
            args.data_dir.display()
        )
    })?;

    initialise_if_pristine(&raft, &args).await?;

    let (health, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(track_health(raft.clone(), health));

    let limits = Limits {
        max_key_bytes: args.max_key_bytes,
        max_value_bytes: args.max_value_bytes,
    };
    let timeout = Duration::from_millis(args.request_timeout_ms);
    let forwarder = Forwarder::new(
        args.id,
        limits.grpc_message_limit(),
        timeout,
        source_ip(args.listen),
    );
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    tracing::info!(id = args.id, listen = %args.listen, advertise = %address,
        data_dir = %args.data_dir.display(), "raftkv node serving");

    let counters = Arc::new(OpCounters::default());
    let kv = Arc::new(KvService::new(
        raft.clone(),
        reader.clone(),
        limits,
        forwarder.clone(),
        timeout,
        counters,
        durable.clone(),
    ));
    let membership_timeout = (timeout * 6).max(Duration::from_secs(60));
    tokio::spawn(expiry::run(raft.clone(), reader));

    // One stop signal for both front doors.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let http = http_listener.map(|listener| {
        let gateway = crate::http::Gateway {
            kv: kv.clone(),
            raft: raft.clone(),
        };
        tracing::info!(http = %args.http_listen.map(|a| a.to_string()).unwrap_or_default(), "HTTP gateway serving");
        tokio::spawn(crate::http::serve(listener, gateway, stopped()))
    });
    if !args.join.is_empty() {
        tokio::spawn(join_cluster(
            raft.clone(),
            args.id,
            address.clone(),
            args.join.clone(),
            source_ip(args.listen),
        ));
    }

    let server = tonic::transport::Server::builder()
        .add_service(KvService::server(kv.clone()))
        .add_service(crate::api::forward_service::ForwardService::server(
            kv.clone(),
        ))
        .add_service(ClusterService::server(
            raft.clone(),
            address,
            forwarder,
            membership_timeout,
            durable,
        ))
        .add_service(RaftService::server(raft.clone(), snapshot_mark))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // Nagle's algorithm on accepted sockets adds ~40 ms (delayed ACK) to small replies.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped(),
        );
    let served = server.await;
    if let Some(http) = http {
        match http.await {
            Ok(Err(e)) => tracing::warn!("HTTP gateway failed: {e}"),
            Err(e) => tracing::warn!("HTTP gateway task failed: {e}"),
            Ok(Ok(())) => {}
        }
    }

    tracing::info!("shutting down raft");
    if let Err(e) = raft.shutdown().await {
        tracing::warn!("raft did not shut down cleanly: {e}");
    }
    served.context("gRPC server failed")?;
    Ok(())
}

/// A node that led when it stopped campaigns in a new term instead of resuming the old one
/// (Log Matching; see `LogStore::give_up_restored_leadership`).
async fn give_up_restored_leadership(
    id: crate::types::NodeId,
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
async fn initialise_if_pristine(raft: &Raft, args: &ServeArgs) -> anyhow::Result<()> {
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

/// Reports SERVING once this node is a member of a cluster that has a leader, NOT_SERVING
/// otherwise (before it joins, during elections, and after it has been removed).
async fn track_health(raft: Raft, health: HealthReporter) {
    let mut metrics = raft.metrics();
    let mut last = None;
    let mut was_member = false;
    loop {
        let (has_leader, is_member) = {
            let m = metrics.borrow();
            let is_member = m.membership_config.membership().get_node(&m.id).is_some();
            (m.current_leader.is_some(), is_member)
        };
        if was_member && !is_member {
            was_member = false;
            tracing::warn!(
                "this node was removed from the cluster; it no longer serves. Stop it, or wipe \
                 its data dir and --join again to rejoin"
            );
        }
        was_member |= is_member;
        let serving = has_leader && is_member;
        if last != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            health
                .set_service_status(
                    <KvServer<KvService> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            last = Some(serving);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// `--join`: asks the cluster to add this node as a learner (the leader replicates the log or a
/// snapshot to it and answers once it has caught up), then to promote it to voter. Retries with
/// backoff until both steps succeed, because the cluster may be mid-election when we start.
async fn join_cluster(
    raft: Raft,
    id: crate::types::NodeId,
    address: String,
    endpoints: Vec<String>,
    source: Option<std::net::IpAddr>,
) {
    use crate::proto::v1::cluster_client::ClusterClient;
    use crate::proto::v1::{AddLearnerRequest, PromoteRequest};

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
            let Ok(channel) = crate::network::lazy_channel(endpoint, source) else {
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
