//! `raftkv del`: deletes one key with a Delete, or several keys in one atomic Batch.
//!
//! Deleting a key that does not exist is not an error (exit 0): the output says, key by key,
//! whether it existed, using the Batch's per-operation `existed` flags. That keeps `del`
//! idempotent, so it is retried on failover like a put.

use clap::Args;

use super::{batch, emit, emit_line, kv};
use crate::cli::client::{idempotency_key, write_request, CliError, Client};
use crate::cli::ClientOpts;
use crate::proto::v1::batch_op::Op;
use crate::proto::v1::{BatchOp, DeleteRequest};

#[derive(Args, Debug)]
#[command(after_long_help = "\
One key: prints `deleted revision=N`, or `not found, nothing deleted revision=N`.
Several keys (one atomic batch): prints `deleted D of K keys revision=N` and one `key: deleted` or
`key: not found` line per key. Deleting a missing key is not an error (exit 0).")]
pub struct DelArgs {
    /// The keys to delete.
    #[arg(value_name = "KEY", required = true, num_args = 1..)]
    pub keys: Vec<String>,

    #[command(flatten)]
    pub client: ClientOpts,
}

pub async fn del(args: DelArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    match args.keys.as_slice() {
        [key] => del_one(&client, key).await,
        keys => del_many(&client, keys).await,
    }
}

async fn del_one(client: &Client, key: &str) -> Result<(), CliError> {
    let idempotency = idempotency_key();
    let response = client
        .call(|channel, remaining| {
            let message = DeleteRequest {
                key: key.to_string(),
            };
            let idempotency = &idempotency;
            async move {
                kv(channel)
                    .delete(write_request(message, remaining, idempotency))
                    .await
            }
        })
        .await?
        .into_inner();
    if response.deleted {
        emit_line(&format!("deleted revision={}", response.revision))
    } else {
        emit_line(&format!(
            "not found, nothing deleted revision={}",
            response.revision
        ))
    }
}

async fn del_many(client: &Client, keys: &[String]) -> Result<(), CliError> {
    let ops: Vec<BatchOp> = keys
        .iter()
        .map(|key| BatchOp {
            op: Some(Op::Delete(DeleteRequest { key: key.clone() })),
        })
        .collect();
    let response = batch(client, ops).await?;
    let deleted = response.existed.iter().filter(|e| **e).count();
    let mut text = format!(
        "deleted {deleted} of {} keys revision={}\n",
        keys.len(),
        response.revision
    );
    for (i, key) in keys.iter().enumerate() {
        let existed = response.existed.get(i).copied().unwrap_or(false);
        let outcome = if existed { "deleted" } else { "not found" };
        text.push_str(&format!("{key}: {outcome}\n"));
    }
    emit(text.as_bytes())
}
