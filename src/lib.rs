//! raftkv: a Raft-replicated key-value store.
//!
//! # Layout
//!
//! The modules follow a request from the wire to the disk and back:
//!
//! - [`cli`]: the `raftkv` command line; [`cli::commands`] holds one file per subcommand.
//! - [`server`]: one node's lifecycle (`raftkv serve`): [`server::Node`] starts everything,
//!   runs until the stop signal, and stops it; its flags, membership at start, health, TTL
//!   expiry and the tokio runtime.
//! - [`http`]: the HTTP gateway, a thin translation onto the KV service.
//! - [`api`]: the gRPC services; they check input and convert between protobuf and [`types`].
//! - [`replica`]: how a request meets Raft: group commit of writes, read-index waits for
//!   linearizable reads, forwarding from followers to the leader, and Raft's errors as statuses.
//! - [`lease`]: the leader's countdown of every lease, which decides when a lease expires.
//! - [`watch`]: the applied changes watchers read, with their recent history.
//! - [`raft`]: openraft's type configuration and settings, the codec, and both ends of the
//!   replication RPCs between nodes.
//! - [`storage`]: the sled log store, the state machine (an in-memory map) and its snapshots.
//! - [`types`]: what the log carries: commands, their results, stored values.
//! - [`transport`]: every gRPC channel and server is built there.
//! - [`op`], [`text`], [`memory`], [`failpoints`], [`proto`]: small pieces several layers share.
//!
//! A layer imports only from layers below it in this list; `docs/architecture.md` walks a
//! write and a read through the files.

pub mod api;
pub mod cli;
pub mod failpoints;
pub mod http;
pub mod lease;
pub mod memory;
pub mod op;
pub mod proto;
pub mod raft;
pub mod replica;
pub mod server;
pub mod storage;
pub mod text;
pub mod transport;
pub mod types;
pub mod watch;
