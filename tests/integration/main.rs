//! Every integration test in one binary, each file a module: real `raftkv serve` processes on
//! loopback (started and killed by PID through [`common`]), real sled directories, real gRPC and
//! HTTP. Tests that drive failpoints need `--features failpoints`.
//!
//! Run one file's tests with its module name, e.g. `cargo test --test integration cluster::`.

mod common;

mod auth;
mod cli;
mod cli_ops;
mod cluster;
#[cfg(feature = "failpoints")]
mod crash_restart;
mod hostile_peer;
mod http;
mod http_watch;
#[cfg(feature = "failpoints")]
mod idempotency;
mod lease;
mod linearizability;
mod lock;
mod ops;
#[cfg(feature = "failpoints")]
mod snapshot_install_crash;
mod store_suite;
mod tls;
#[cfg(feature = "failpoints")]
mod ttl_across_leaders;
mod watch;
