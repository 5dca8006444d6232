//! Code generated from `proto/` by build.rs.

/// Client API: `raftkv.v1` (KV and Cluster services).
pub mod v1 {
    tonic::include_proto!("raftkv.v1");
}

/// Internal replication service between nodes: `raftkv.raft.v1`.
pub mod raft_v1 {
    tonic::include_proto!("raftkv.raft.v1");
}

/// Encoded descriptors of every proto file, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/raftkv_descriptor.bin"));
