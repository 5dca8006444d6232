//! What each of a node's two gRPC ports serves. The client port: KV, Lease and Cluster (behind the
//! bearer-token check when `--auth-token-file` is set), health and reflection. The peer port:
//! Raft replication and forwarding, and nothing a client calls; each side answers UNIMPLEMENTED
//! for the other's services.

use anyhow::anyhow;
use tonic::transport::server::Router;
use tonic::transport::ServerTlsConfig;
use tonic_health::pb::health_server::{Health, HealthServer};

use crate::api::auth::{self, Tokens};
use crate::api::{ClusterService, ForwardService, KvService, LeaseService};
use crate::proto::raft_v1::forward_server::ForwardServer;
use crate::proto::raft_v1::raft_server::RaftServer;
use crate::proto::v1::cluster_server::ClusterServer;
use crate::proto::v1::kv_server::KvServer;
use crate::proto::v1::lease_server::LeaseServer;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::raft::service::RaftService;
use crate::transport;

/// The services reflection lists: the client port's own, not the peer services that share the
/// descriptor set.
const LISTED: [&str; 4] = [
    "raftkv.v1.KV",
    "raftkv.v1.Lease",
    "raftkv.v1.Cluster",
    "grpc.health.v1.Health",
];

pub fn client(
    tls: Option<ServerTlsConfig>,
    tokens: &Tokens,
    kv: KvServer<KvService>,
    lease: LeaseServer<LeaseService>,
    cluster: ClusterServer<ClusterService>,
    health: HealthServer<impl Health>,
) -> anyhow::Result<Router> {
    let reflection = || {
        LISTED.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(*name),
        )
    };
    Ok(transport::server(tls)
        .map_err(|e| anyhow!(e))?
        .add_service(auth::require(tokens.clone(), kv))
        .add_service(auth::require(tokens.clone(), lease))
        .add_service(auth::require(tokens.clone(), cluster))
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?))
}

pub fn peer(
    tls: Option<ServerTlsConfig>,
    raft: RaftServer<RaftService>,
    forward: ForwardServer<ForwardService>,
) -> anyhow::Result<Router> {
    Ok(transport::server(tls)
        .map_err(|e| anyhow!(e))?
        .add_service(raft)
        .add_service(forward))
}
