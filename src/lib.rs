//! raftkv: a Raft-replicated key-value store.
//!
//! The data flow mirrors etcd's raftexample: the [`api`] services turn client requests into
//! [`types::Command`]s, openraft replicates them through [`network`] and persists them in the
//! sled-backed [`storage`], and the state machine applies them to an in-memory ordered map.
//! [`node`] wires these parts together for `raftkv serve`; [`cli`] is every other subcommand.

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod expiry;
pub mod failpoints;
pub mod http;
pub mod memory;
pub mod network;
pub mod node;
pub mod proto;
pub mod raft_service;
pub mod runtime;
pub mod storage;
pub mod types;
