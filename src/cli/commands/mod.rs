//! Every subcommand: `serve` and `playground` run nodes, `bench` loads a cluster, the rest are
//! client commands (put, get, del, scan, cas, watch, metrics, status, cluster membership, health,
//! leases, and `lock` and `elect`, which build on leases through [`crate::cli::session`]).
//!
//! Each command parses its arguments into a request, sends it through [`Client`] (which fails
//! over between endpoints) and prints the answer: plain text for people, or with `--json` one
//! JSON document on stdout for scripts. Errors are returned as [`CliError`]; `main` prints them
//! as one `error: …` line on stderr and exits with their code (see [`super::exit`]).
//!
//! One file per command (or family of commands), as in mini-redis; each holds the command's
//! arguments, its request building and its output. This module keeps only what several of them
//! share: the gRPC client setup, conversions of common flags into request fields, the one atomic
//! Batch that `put` and `del` both send, and the stdout writers. The commands and their argument
//! types are re-exported, so `commands::put` and `commands::PutArgs` name them.

pub mod bench;
mod cas;
mod certs;
mod cluster;
mod del;
mod elect;
mod get;
mod health;
mod lease;
mod lock;
mod metrics;
mod playground;
mod put;
pub(crate) mod scan;
mod serve;
pub(crate) mod watch;

pub use bench::{run as bench, BenchArgs};
pub use cas::{cas, CasArgs};
pub use certs::{certs, CertsCommand};
pub use cluster::{
    cluster, format_status, status, AddLearnerArgs, ClusterCommand, PromoteArgs, RemoveArgs,
    StatusArgs,
};
pub use del::{del, DelArgs};
pub use elect::{elect, ElectArgs};
pub use get::{get, GetArgs};
pub use health::{health, HealthArgs};
pub use lease::{lease, LeaseCommand};
pub use lock::{lock, LockArgs};
pub use metrics::{format_metrics, metrics, MetricsArgs};
pub use playground::{run as playground, PlaygroundArgs};
pub use put::{plan_put, put, PutArgs, PutPlan, ValueSource};
pub use scan::{scan, ScanArgs};
pub use serve::serve;
pub use watch::{watch, WatchArgs};

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use super::client::{idempotency_key, write_request, CliError, Client, Connection};
use super::exit;
use crate::proto::v1::kv_client::KvClient;
use crate::proto::v1::{BatchOp, BatchRequest, Consistency};

pub(crate) fn kv(channel: Connection) -> KvClient<Connection> {
    KvClient::new(channel)
        .max_decoding_message_size(Client::max_message_bytes())
        .max_encoding_message_size(Client::max_message_bytes())
}

fn consistency(stale: bool) -> i32 {
    if stale {
        Consistency::Stale as i32
    } else {
        Consistency::Linearizable as i32
    }
}

/// A TTL in the API's milliseconds; 0 (no TTL) when absent.
fn ttl_ms(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn usage(message: impl Into<String>) -> CliError {
    CliError::new(exit::USAGE, message)
}

/// Writes to stdout without panicking (`println!` panics when stdout is gone). A closed pipe
/// (`raftkv scan | head`) ends the output quietly, as it does for other Unix tools; any other
/// write failure is an error.
fn emit(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|_| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::new(
            exit::UNAVAILABLE,
            format!("cannot write to stdout: {e}"),
        )),
    }
}

fn emit_line(line: &str) -> Result<(), CliError> {
    emit(format!("{line}\n").as_bytes())
}

/// Prints one JSON document on one line.
fn emit_json(document: &Value) -> Result<(), CliError> {
    emit_line(&document.to_string())
}

/// `name: value` rows with the values lined up, as `raftkv status` prints them.
fn aligned(rows: &[(&str, String)]) -> String {
    let width = rows
        .iter()
        .map(|(name, _)| name.len() + 1)
        .max()
        .unwrap_or(0);
    rows.iter()
        .map(|(name, value)| format!("{:<width$} {value}\n", format!("{name}:")))
        .collect()
}

/// One atomic Batch; retried on failover with one idempotency key, so it applies once.
async fn batch(
    client: &Client,
    ops: Vec<BatchOp>,
) -> Result<crate::proto::v1::BatchResponse, CliError> {
    let idempotency = idempotency_key();
    let response = client
        .call(|channel, remaining| {
            let message = BatchRequest { ops: ops.clone() };
            let idempotency = &idempotency;
            async move {
                kv(channel)
                    .batch(write_request(message, remaining, idempotency))
                    .await
            }
        })
        .await?;
    Ok(response.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_rows_line_up() {
        let text = aligned(&[("a", "1".into()), ("long name", "2".into())]);
        assert_eq!(text, "a:         1\nlong name: 2\n");
    }
}
