//! `raftkv serve`: one node's lifecycle.
//!
//! [`Node::start`] opens the data dir, binds the listeners, starts openraft and every task;
//! [`Node::run`] serves until the stop signal (or until a front door fails); [`Node::stop`]
//! closes the front doors, waits for them, shuts Raft down and ends the background tasks.
//! Every task the node starts is in one of its two `JoinSet`s, so none outlives it.

pub mod config;
pub mod expiry;
pub mod health;
pub mod lease_expiry;
pub mod membership;
pub mod routers;
pub mod runtime;
pub mod security;
pub mod shutdown;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use self::config::{Addresses, ServeArgs};
use self::shutdown::StopSignal;
use crate::api::kv::KvSettings;
use crate::api::{ClusterService, ForwardService, KvService, LeaseService, Limits};
use crate::lease::LeaseClocks;
use crate::op::OpCounters;
use crate::raft::network::NetworkFactory;
use crate::raft::service::RaftService;
use crate::raft::{raft_config, Node as Member, Raft};
use crate::replica::forward::Forwarder;
use crate::replica::idempotency;
use crate::storage;
use crate::transport::{self, source_ip, Dialer};
use crate::watch::WatchHub;

/// A running node.
pub struct Node {
    raft: Raft,
    /// Ended first when the node stops: open watch streams would hold the servers open.
    watch: Arc<WatchHub>,
    /// Ended first too, for its open KeepAlive streams.
    lease: Option<Arc<LeaseService>>,
    stop: StopSignal,
    /// The gRPC server and the HTTP gateway: they end when the stop signal is given.
    front_doors: JoinSet<anyhow::Result<()>>,
    /// Health, TTL and lease expiry, `--join`: they run until the node stops, and are ended
    /// then.
    background: JoinSet<()>,
}

/// Runs a node until `shutdown` resolves.
pub async fn serve(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Node::start(args).await?.run(shutdown).await
}

/// The listeners, bound before Raft starts so that a busy port is reported before anything
/// else happens.
struct Listeners {
    client: TcpListener,
    peer: TcpListener,
    http: Option<(SocketAddr, TcpListener)>,
}

impl Listeners {
    async fn bind(args: &ServeArgs, addresses: &Addresses) -> anyhow::Result<Self> {
        let client = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
        let peer = TcpListener::bind(addresses.peer_listen)
            .await
            .with_context(|| {
                format!("cannot listen on {} (--peer-listen)", addresses.peer_listen)
            })?;
        let http = match args.http_listen {
            Some(addr) => Some((
                addr,
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (--http-listen)"))?,
            )),
            None => None,
        };
        Ok(Self { client, peer, http })
    }
}

impl Node {
    /// Opens the data dir and starts Raft, the servers and the background tasks.
    pub async fn start(args: ServeArgs) -> anyhow::Result<Node> {
        let addresses = args.validate().map_err(|e| anyhow!(e))?;
        let tls = args.tls().map_err(|e| anyhow!(e))?;
        let tokens = security::tokens(&args).map_err(|e| anyhow!(e))?;
        let http_tls = security::http_tls(&args).map_err(|e| anyhow!(e))?;
        // Installed now, so that from here on a SIGHUP reloads tokens and never stops the node.
        let sighup = crate::api::auth::reload_on_sighup(tokens.clone())
            .context("cannot listen for SIGHUP")?;
        crate::failpoints::configure_from_env().map_err(|e| anyhow!(e))?;
        let raft_settings = Arc::new(raft_config(&args.raft_settings())?);
        crate::memory::tune_allocator();
        if !runtime::lifo_slot_disabled() {
            tracing::warn!(
                "built without --cfg tokio_unstable: responses are written one system call \
                 each, which costs write throughput (see src/server/runtime.rs)"
            );
        }

        let (log_store, state_machine) =
            storage::open(&args.data_dir, !args.unsafe_no_fsync).await?;
        log_store.set_node_id(args.id);
        let reader = state_machine.reader();
        let watch = state_machine.watch_hub();
        watch.set_limits(args.watch_history_limits());
        membership::give_up_restored_leadership(args.id, &log_store).await?;
        let listeners = Listeners::bind(&args, &addresses).await?;

        let durable = log_store.durable_index();
        let snapshot_mark = log_store.snapshot_mark();
        let dialer = Dialer {
            source: source_ip(addresses.peer_listen),
            tls: tls.dial_peers,
        };
        let raft = Raft::new(
            args.id,
            raft_settings,
            NetworkFactory::new(durable.clone(), dialer.clone()),
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
        membership::initialise_if_pristine(&raft, &args, &addresses).await?;

        let limits = Limits {
            max_key_bytes: args.max_key_bytes,
            max_value_bytes: args.max_value_bytes,
        };
        let timeout = Duration::from_millis(args.request_timeout_ms);
        let forwarder = Forwarder::new(
            args.id,
            limits.grpc_message_limit(),
            timeout,
            dialer.clone(),
        );
        let settings = KvSettings {
            limits,
            timeout,
            idempotency: idempotency::Policy {
                window: args.idempotency_window,
                max_keys: args.idempotency_max_keys,
            },
            watch_progress: args.watch_progress_interval,
        };
        let kv = Arc::new(KvService::new(
            raft.clone(),
            reader.clone(),
            forwarder.clone(),
            Arc::new(OpCounters::default()),
            durable.clone(),
            watch.clone(),
            settings,
        ));
        let (health, health_service) = tonic_health::server::health_reporter();

        let mut node = Node {
            raft: raft.clone(),
            watch,
            lease: None,
            stop: StopSignal::new(),
            front_doors: JoinSet::new(),
            background: JoinSet::new(),
        };
        node.background
            .spawn(health::track_health(raft.clone(), health));
        node.background
            .spawn(expiry::run(raft.clone(), reader.clone()));
        // At least the longest election timeout: see `crate::lease`.
        let lease_grace = Duration::from_millis(args.election_timeout_ms * 2);
        let clocks = Arc::new(LeaseClocks::new(raft.clone(), reader.clone(), lease_grace));
        node.background
            .spawn(lease_expiry::run(raft.clone(), clocks.clone()));
        let lease = Arc::new(LeaseService::new(kv.clone(), clocks, reader));
        node.lease = Some(lease.clone());
        node.background.spawn(sighup);
        let membership_timeout = (timeout * 6).max(Duration::from_secs(60));
        let cluster = Arc::new(ClusterService::new(
            raft.clone(),
            addresses.client.clone(),
            forwarder,
            membership_timeout,
            durable,
        ));
        let own_member = Member::new(addresses.peer.clone(), addresses.client.clone());
        if args.join.is_empty() {
            node.background.spawn(membership::publish_addresses(
                raft.clone(),
                args.id,
                own_member,
                cluster.clone(),
            ));
        } else {
            node.background.spawn(membership::join_cluster(
                raft.clone(),
                args.id,
                own_member,
                args.join.clone(),
                dialer,
            ));
        }

        if let Some((addr, listener)) = listeners.http {
            let gateway = crate::http::Gateway {
                kv: kv.clone(),
                raft: raft.clone(),
                tokens: tokens.clone(),
            };
            let https = http_tls.is_some();
            let (stopped, stopped_too) = (node.stop.stopped(), node.stop.stopped());
            // A failed gateway is reported and leaves gRPC serving.
            node.front_doors.spawn(async move {
                if let Err(e) = crate::http::serve(listener, gateway, http_tls, stopped).await {
                    tracing::warn!("HTTP gateway failed: {e}");
                    stopped_too.await;
                }
                Ok(())
            });
            tracing::info!(http = %addr, https, "HTTP gateway serving");
        }

        let (client_tls, peer_tls) = (tls.client.is_some(), tls.peer.is_some());
        if client_tls && !peer_tls {
            tracing::warn!(
                "the client port speaks TLS but the peer port does not: give --peer-cert-file, \
                 --peer-key-file and --peer-trusted-ca-file too, or keep the peer port on a \
                 private network"
            );
        }
        let client_router = routers::client(
            tls.client,
            &tokens,
            KvService::server(kv.clone()),
            LeaseService::server(lease.clone()),
            ClusterService::server(cluster.clone()),
            health_service,
        )?;
        let peer_router = routers::peer(
            tls.peer,
            RaftService::server(raft, snapshot_mark),
            ForwardService::server(kv, cluster, lease),
        )?;
        let stopped = node.stop.stopped();
        node.front_doors.spawn(async move {
            transport::serve(client_router, listeners.client, stopped)
                .await
                .context("gRPC server (client port) failed")
        });
        let stopped = node.stop.stopped();
        node.front_doors.spawn(async move {
            transport::serve(peer_router, listeners.peer, stopped)
                .await
                .context("gRPC server (peer port) failed")
        });

        tracing::info!(id = args.id, listen = %args.listen, advertise = %addresses.client,
            peer_listen = %addresses.peer_listen, peer_advertise = %addresses.peer,
            client_tls, peer_tls, tokens = tokens.required(),
            data_dir = %args.data_dir.display(), "raftkv node serving");
        Ok(node)
    }

    /// Serves until `shutdown` resolves or a front door fails, then stops the node.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let failed = tokio::select! {
            () = shutdown => None,
            Some(ended) = self.front_doors.join_next() => Some(flatten(ended)),
        };
        let stopped = self.stop().await;
        match failed {
            Some(Err(e)) => Err(e),
            _ => stopped,
        }
    }

    /// Closes the front doors and waits for them, shuts Raft down, then ends the background
    /// tasks. Returns the first front door's failure, if any.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.watch.stop();
        if let Some(lease) = &self.lease {
            lease.stop();
        }
        self.stop.give();
        let mut first_failure = Ok(());
        while let Some(ended) = self.front_doors.join_next().await {
            if let Err(e) = flatten(ended) {
                tracing::warn!("{e:#}");
                if first_failure.is_ok() {
                    first_failure = Err(e);
                }
            }
        }
        tracing::info!("shutting down raft");
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft did not shut down cleanly: {e}");
        }
        self.background.shutdown().await;
        first_failure
    }
}

/// A front door's outcome, a panic of its task included.
fn flatten(ended: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    ended.map_err(|e| anyhow!("server task failed: {e}"))?
}
