//! Compiles `proto/` with protox (pure Rust), so `cargo build` needs no system `protoc`.
//! The encoded descriptor set is written to OUT_DIR for gRPC server reflection.

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/raftkv/v1/kv.proto",
    "proto/raftkv/v1/cluster.proto",
    "proto/raftkv/raft/v1/raft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // `compile_fds` ignores `file_descriptor_set_path`, so reflection's copy is written here.
    std::fs::write(out_dir.join("raftkv_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
