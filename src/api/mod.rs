//! The gRPC services clients call (`raftkv.v1.KV`, `raftkv.v1.Lease`, `raftkv.v1.Cluster`) and
//! the internal `Forward` service through which followers hand client calls to the leader. Each
//! service checks its input ([`limits`]), converts between protobuf and [`crate::types`], and
//! leaves the meeting with Raft to [`crate::replica`]; [`watch`] streams applied changes.
//! [`auth`] holds the bearer tokens the client services may require (`--auth-token-file`).

pub mod auth;
pub mod cluster;
pub mod forward;
pub mod kv;
pub mod lease;
pub mod limits;
pub mod watch;

pub use cluster::ClusterService;
pub use forward::ForwardService;
pub use kv::KvService;
pub use lease::LeaseService;
pub use limits::Limits;
