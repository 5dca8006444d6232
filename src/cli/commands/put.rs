//! `raftkv put`: writes one key, or several KEY=VALUE pairs in one atomic Batch (all or none).
//!
//! Which form was meant is decided from the arguments alone, by [`plan_put`], before anything is
//! read or sent: a mix of forms is a usage error (exit 2) instead of a guess that writes the
//! wrong key. The value of a single key may come from stdin or `--file`, byte for byte, which is
//! how binary values, values starting with `-` and the literal value `-` get in. Puts and
//! batches are retried on failover (`Client::call`): writing the same values again leaves the
//! same state.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::lease::parse_lease_id;
use super::{batch, emit_line, kv, ttl_ms, usage};
use crate::cli::client::{idempotency_key, write_request, CliError, Client};
use crate::cli::ClientOpts;
use crate::proto::v1::batch_op::Op;
use crate::proto::v1::{BatchOp, PutRequest};
use crate::text::parse_duration;

#[derive(Args, Debug)]
#[command(after_long_help = "\
Forms:
  raftkv put KEY VALUE            write one key
  raftkv put KEY [-]              write one key, value read from stdin (binary-safe)
  raftkv put KEY --file PATH      write one key, value read from PATH (binary-safe)
  raftkv put K1=V1 K2=V2 ...      write several keys in one atomic batch (all or none)

The arguments are KEY=VALUE pairs when every one of them contains '='; each is split at its first
'=', so values may contain '=' and keys may not. Otherwise the first argument is the KEY, taken
literally. So `raftkv put a=1 b=2` writes two keys, while `raftkv put a=1 b` writes the key \"a=1\".
To write one key named with '=' and a value containing '=', give the value on stdin or with
--file. A value starting with '-' goes after `--`: `raftkv put -- KEY -5`. A literal value \"-\"
has to come from stdin or a file.

--file takes exactly one argument, the KEY. Any other mix (pairs with plain words, pairs with
--file, more than KEY VALUE) is rejected with exit code 2.

--ttl and --lease apply to every key the command writes.

Prints `OK revision=N` (`OK revision=N keys=M` for a batch): N is the Raft log index that applied
the write.")]
pub struct PutArgs {
    /// KEY [VALUE | -], or KEY=VALUE pairs (see the forms below).
    #[arg(value_name = "ARGS", required = true, num_args = 1..)]
    pub args: Vec<String>,

    /// Read the value of KEY from this file, byte for byte.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// Expire every key written after this long (e.g. 500ms, 30s, 5m, 1h).
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,

    /// Attach every key written to lease ID (`raftkv lease grant`): they are deleted when it
    /// expires or is revoked. A lease that does not exist exits 1 and writes nothing.
    #[arg(long, value_name = "ID", value_parser = parse_lease_id)]
    pub lease: Option<u64>,

    #[command(flatten)]
    pub client: ClientOpts,
}

/// Where the value of a single-key put comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum ValueSource {
    Arg(String),
    Stdin,
    File(PathBuf),
}

/// What `raftkv put` was asked to do, decided from its arguments alone.
#[derive(Debug, PartialEq, Eq)]
pub enum PutPlan {
    /// One key: a plain Put.
    One { key: String, value: ValueSource },
    /// Several KEY=VALUE pairs: one atomic Batch.
    Many(Vec<(String, String)>),
}

/// Applies the grammar documented in `raftkv put --help`; a mix of forms is a usage error.
pub fn plan_put(args: &[String], file: Option<&Path>) -> Result<PutPlan, String> {
    if let Some(path) = file {
        return match args {
            [key] => Ok(PutPlan::One {
                key: key.clone(),
                value: ValueSource::File(path.to_path_buf()),
            }),
            _ => Err(format!(
                "--file gives the value: name only the KEY (got {} arguments)",
                args.len()
            )),
        };
    }
    if !args.is_empty() && args.iter().all(|a| a.contains('=')) {
        let mut pairs: Vec<(String, String)> = args
            .iter()
            .filter_map(|a| a.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if pairs.len() == 1 {
            let (key, value) = pairs.remove(0);
            return Ok(PutPlan::One {
                key,
                value: ValueSource::Arg(value),
            });
        }
        return Ok(PutPlan::Many(pairs));
    }
    match args {
        [key] => Ok(PutPlan::One {
            key: key.clone(),
            value: ValueSource::Stdin,
        }),
        [key, dash] if dash == "-" => Ok(PutPlan::One {
            key: key.clone(),
            value: ValueSource::Stdin,
        }),
        [key, value] => Ok(PutPlan::One {
            key: key.clone(),
            value: ValueSource::Arg(value.clone()),
        }),
        _ if args.iter().any(|a| a.contains('=')) => Err(format!(
            "cannot mix KEY=VALUE pairs with other arguments: give every key as KEY=VALUE, \
             or one KEY VALUE (got {} arguments)",
            args.len()
        )),
        _ => Err(format!(
            "too many arguments: expected KEY VALUE, or KEY=VALUE pairs (got {})",
            args.len()
        )),
    }
}

/// Reads a value from stdin or a file, byte for byte.
fn read_value(key: &str, source: ValueSource) -> Result<Vec<u8>, CliError> {
    match source {
        ValueSource::Arg(value) => Ok(value.into_bytes()),
        ValueSource::File(path) => std::fs::read(&path)
            .map_err(|e| usage(format!("cannot read --file {}: {e}", path.display()))),
        ValueSource::Stdin => {
            let mut stdin = std::io::stdin().lock();
            if stdin.is_terminal() {
                eprintln!("reading the value of {key:?} from stdin; end it with Ctrl-D");
            }
            let mut value = Vec::new();
            stdin
                .read_to_end(&mut value)
                .map_err(|e| usage(format!("cannot read the value from stdin: {e}")))?;
            Ok(value)
        }
    }
}

pub async fn put(args: PutArgs) -> Result<(), CliError> {
    let plan = plan_put(&args.args, args.file.as_deref()).map_err(usage)?;
    let attach = Attach {
        ttl_ms: ttl_ms(args.ttl),
        lease: args.lease.unwrap_or(0),
    };
    let client = Client::new(&args.client)?;
    match plan {
        PutPlan::One { key, value } => {
            let value = read_value(&key, value)?;
            put_one(&client, key, value, attach).await
        }
        PutPlan::Many(pairs) => put_many(&client, pairs, attach).await,
    }
}

/// What every key of one `raftkv put` gets besides its value: a TTL and a lease (0: none).
#[derive(Debug, Clone, Copy)]
struct Attach {
    ttl_ms: u64,
    lease: u64,
}

async fn put_one(
    client: &Client,
    key: String,
    value: Vec<u8>,
    attach: Attach,
) -> Result<(), CliError> {
    let idempotency = idempotency_key();
    let response = client
        .call(|channel, remaining| {
            let message = PutRequest {
                lease: attach.lease,
                key: key.clone(),
                value: value.clone(),
                ttl_ms: attach.ttl_ms,
            };
            let idempotency = &idempotency;
            async move {
                kv(channel)
                    .put(write_request(message, remaining, idempotency))
                    .await
            }
        })
        .await?;
    emit_line(&format!("OK revision={}", response.into_inner().revision))
}

async fn put_many(
    client: &Client,
    pairs: Vec<(String, String)>,
    attach: Attach,
) -> Result<(), CliError> {
    let count = pairs.len();
    let ops: Vec<BatchOp> = pairs
        .into_iter()
        .map(|(key, value)| BatchOp {
            op: Some(Op::Put(PutRequest {
                lease: attach.lease,
                key,
                value: value.into_bytes(),
                ttl_ms: attach.ttl_ms,
            })),
        })
        .collect();
    let response = batch(client, ops).await?;
    emit_line(&format!("OK revision={} keys={count}", response.revision))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn one(key: &str, value: ValueSource) -> PutPlan {
        PutPlan::One {
            key: key.into(),
            value,
        }
    }

    #[test]
    fn put_forms() {
        let plan = |args: &[&str]| plan_put(&strings(args), None);
        assert_eq!(
            plan(&["k", "v"]),
            Ok(one("k", ValueSource::Arg("v".into())))
        );
        assert_eq!(
            plan(&["k", "v=1"]),
            Ok(one("k", ValueSource::Arg("v=1".into())))
        );
        assert_eq!(
            plan(&["a=1", "b"]),
            Ok(one("a=1", ValueSource::Arg("b".into())))
        );
        assert_eq!(plan(&["k"]), Ok(one("k", ValueSource::Stdin)));
        assert_eq!(plan(&["k", "-"]), Ok(one("k", ValueSource::Stdin)));
        assert_eq!(plan(&["a=1"]), Ok(one("a", ValueSource::Arg("1".into()))));
        assert_eq!(
            plan(&["a=1", "b=x=y", "c="]),
            Ok(PutPlan::Many(vec![
                ("a".into(), "1".into()),
                ("b".into(), "x=y".into()),
                ("c".into(), "".into()),
            ]))
        );
        assert!(plan(&["a=1", "b=2", "c"])
            .unwrap_err()
            .contains("cannot mix"));
        assert!(plan(&["a", "b", "c"]).unwrap_err().contains("too many"));
    }

    #[test]
    fn put_file_form_takes_only_the_key() {
        let path = Path::new("/tmp/v");
        assert_eq!(
            plan_put(&strings(&["a=1"]), Some(path)),
            Ok(one("a=1", ValueSource::File(path.into())))
        );
        assert!(plan_put(&strings(&["k", "v"]), Some(path))
            .unwrap_err()
            .contains("--file"));
    }
}
