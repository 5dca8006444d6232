//! The client-facing gRPC services and the rules they share: input limits, how Raft errors
//! become gRPC statuses, and forwarding to the leader.

pub mod cluster;
pub mod counters;
pub mod errors;
pub mod forward;
pub mod kv;
pub mod limits;
pub mod proposer;
pub mod read_index;

pub use cluster::ClusterService;
pub use kv::KvService;
pub use limits::Limits;
