//! Client commands: put, get, del, scan, cas, metrics, status, cluster membership and health.
//!
//! Each command parses its arguments into a request, sends it through [`Client`] (which fails
//! over between endpoints) and prints the answer: plain text for people, or with `--json` one
//! JSON document on stdout for scripts. Errors are returned as [`CliError`]; `main` prints them
//! as one `error: …` line on stderr and exits with their code (see [`super::exit`]).

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};
use serde_json::{json, Map, Value};
use tonic::transport::Channel;

use super::client::{request, CliError, Client};
use super::{exit, parse_duration, values, ClientOpts};
use crate::proto::v1::batch_op::Op;
use crate::proto::v1::cluster_client::ClusterClient;
use crate::proto::v1::compare_and_swap_request::Expected;
use crate::proto::v1::kv_client::KvClient;
use crate::proto::v1::{
    AddLearnerRequest, BatchGetRequest, BatchOp, BatchRequest, CompareAndSwapRequest,
    CompareAndSwapResponse, Consistency, DeleteRequest, GetRequest, KeyResult, KeyValue, Member,
    MembershipResponse, MetricsRequest, MetricsResponse, PromoteRequest, PutRequest,
    RemoveNodeRequest, ScanRequest, StatusRequest, StatusResponse,
};

// ---------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------

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

    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
One KEY without --json: prints the raw value and a newline (exactly the stored bytes), or exits 1
with `error: key not found: KEY`.

Several keys (one BatchGet): prints `key: value` lines in the order asked, and `key: (not found)`
for a missing key. A value prints as itself when it is UTF-8 text; quoted with escapes (\"a\\nb\")
when it contains line breaks or other control characters; as `<N bytes, not UTF-8>` when it is
not UTF-8 (use --json to get its bytes). Exits 1 when any key is missing.

With --json (one or several keys): {\"results\": [{\"key\", \"found\": true, \"value\",
\"encoding\", \"revision\", \"ttl_ms\"} | {\"key\", \"found\": false}, ...]}. A value has
\"encoding\": \"utf8\" when it is valid UTF-8 (\"value\" is the text), \"base64\" otherwise
(\"value\" is standard base64). ttl_ms is 0 for a key without TTL. Exits 1 when any key is
missing.")]
pub struct GetArgs {
    /// The keys to read.
    #[arg(value_name = "KEY", required = true, num_args = 1..)]
    pub keys: Vec<String>,

    /// Read the answering node's local copy instead of confirming with the leader (faster,
    /// may be behind).
    #[arg(long)]
    pub stale: bool,

    /// Print one JSON document (its shape is described in --help).
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub client: ClientOpts,
}

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

#[derive(Args, Debug)]
#[command(after_long_help = "\
Reads page after page (following the server's next_start) until the range is exhausted or --limit
keys have been printed. Each page is read on its own (linearizable unless --stale), so a scan that
runs while keys change is not one snapshot. --timeout bounds each page, not the whole scan.

Text: `key: value` lines in key order (just `key` with --keys-only); values print as in
`raftkv get` with several keys. When --limit stops the scan early, a note on stderr says where
to continue (--start NEXT).

With --json: {\"kvs\": [{\"key\", \"value\", \"encoding\", \"revision\", \"ttl_ms\"}, ...],
\"count\", \"more\", \"next_start\"}; with --keys-only entries have no value or encoding.
\"encoding\" is \"utf8\" (value is the text) or \"base64\" (value is standard base64). \"more\" is
true when --limit stopped the scan before the end; continue with --start <next_start>.")]
pub struct ScanArgs {
    /// Only keys that begin with this prefix (may be combined with --start, not with --end).
    #[arg(long, conflicts_with = "end")]
    pub prefix: Option<String>,

    /// First key of the range (inclusive).
    #[arg(long)]
    pub start: Option<String>,

    /// End of the range (exclusive); default: to the last key.
    #[arg(long)]
    pub end: Option<String>,

    /// Print at most this many keys in all (default: every key in the range).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,

    /// Print keys only, without values.
    #[arg(long)]
    pub keys_only: bool,

    /// Read the answering node's local copy instead of confirming with the leader.
    #[arg(long)]
    pub stale: bool,

    /// Print one JSON document (its shape is described in --help).
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
#[command(
    group(ArgGroup::new("expected").required(true).args(["expect_revision", "expect_value"])),
    after_long_help = "\
Forms:
  raftkv cas KEY --expect-revision N VALUE     write VALUE if KEY's revision is N (0: KEY absent)
  raftkv cas KEY --expect-value OLD VALUE      write VALUE if KEY's value is OLD
  raftkv cas KEY --expect-... --delete         delete KEY under the same conditions

Prints `OK revision=N` when the swap happened (exit 0). When the condition did not hold it prints
the key's current state, `current revision=N value=V` or `key does not exist`, and exits 1.

A compare-and-swap is never retried once sent: if the answer is lost (timeout, leader change)
the command exits 3 saying the outcome is unknown; read the key before trying again.")]
pub struct CasArgs {
    /// The key to swap.
    pub key: String,

    /// The new value (not with --delete).
    #[arg(required_unless_present = "delete", conflicts_with = "delete")]
    pub value: Option<String>,

    /// Swap only if the key's current revision is N; 0 means the key must not exist.
    #[arg(long, value_name = "N")]
    pub expect_revision: Option<u64>,

    /// Swap only if the key's current value is exactly this (a missing key never matches).
    #[arg(long, value_name = "OLD")]
    pub expect_value: Option<String>,

    /// Delete the key instead of writing a value.
    #[arg(long)]
    pub delete: bool,

    /// Expire the written value after this long (e.g. 30s).
    #[arg(long, value_parser = parse_duration, conflicts_with = "delete")]
    pub ttl: Option<Duration>,

    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
Asks the first endpoint that answers and names it. Operation counters count client requests that
node received since it started. Follower progress is known only on the leader.

With --json: one JSON object with every field of the Metrics response (node_id, keys,
value_bytes, get_ops, put_ops, delete_ops, batch_ops, cas_ops, scan_ops, batch_get_ops, term,
leader_id, commit_index, applied_index, is_leader, followers: [{id, matched_index}]) plus
\"endpoint\", the address that answered.")]
pub struct MetricsArgs {
    /// Print one JSON document (its shape is described in --help).
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
With --json: one JSON object with every field of the Status response (id, address, role,
leader_id, leader_address, term, last_log_index, commit_index, last_applied_index,
snapshot_index, purged_index, voters and learners as [{id, address}]) plus \"endpoint\", the
address that answered.")]
pub struct StatusArgs {
    /// Print one JSON document (its shape is described in --help).
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub client: ClientOpts,
}

/// `raftkv cluster …`: inspection and membership changes. A new node joins in two steps: add
/// it as a learner (it receives the log without voting), then promote it to voter.
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show a node's view of the cluster: leader, term, indexes, members.
    Status(StatusArgs),
    /// Add a node as a learner and wait until it has caught up with the log.
    AddLearner(AddLearnerArgs),
    /// Make learners voters.
    Promote(PromoteArgs),
    /// Remove a voter or a learner from the cluster.
    Remove(RemoveArgs),
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
The node must be running (started with `raftkv serve` without --initial-cluster) and reachable
at ADDRESS. Prints `OK revision=N` and the new membership. An invalid ADDRESS or ID exits 2.
Waiting for a large catch-up may need a longer --timeout.")]
pub struct AddLearnerArgs {
    /// The new node's id (a positive integer unused in the cluster).
    pub id: u64,
    /// host:port of the new node's gRPC server, as other nodes will reach it.
    pub address: String,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct PromoteArgs {
    /// Ids of learners to make voters.
    #[arg(value_name = "ID", required = true, num_args = 1..)]
    pub ids: Vec<u64>,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// Id of the voter or learner to remove.
    pub id: u64,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The node to check, host:port.
    #[arg(long, env = "RAFTKV_HEALTH_ENDPOINT", default_value = "127.0.0.1:7001")]
    pub endpoint: String,

    /// Give up after this long.
    #[arg(long, default_value = "2s", value_parser = super::parse_duration)]
    pub timeout: std::time::Duration,
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

fn kv(channel: Channel) -> KvClient<Channel> {
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

fn members_text(list: &[Member]) -> String {
    if list.is_empty() {
        "-".to_string()
    } else {
        list.iter()
            .map(|m| format!("{}={}", m.id, m.address))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn members_json(list: &[Member]) -> Value {
    Value::Array(
        list.iter()
            .map(|m| json!({"id": m.id, "address": m.address}))
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// put
// ---------------------------------------------------------------------------------------------

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
    let ttl_ms = ttl_ms(args.ttl);
    let client = Client::new(&args.client)?;
    match plan {
        PutPlan::One { key, value } => {
            let value = read_value(&key, value)?;
            put_one(&client, key, value, ttl_ms).await
        }
        PutPlan::Many(pairs) => put_many(&client, pairs, ttl_ms).await,
    }
}

async fn put_one(
    client: &Client,
    key: String,
    value: Vec<u8>,
    ttl_ms: u64,
) -> Result<(), CliError> {
    let response = client
        .call(|channel, remaining| {
            let message = PutRequest {
                key: key.clone(),
                value: value.clone(),
                ttl_ms,
            };
            async move { kv(channel).put(request(message, remaining)).await }
        })
        .await?;
    emit_line(&format!("OK revision={}", response.into_inner().revision))
}

async fn put_many(
    client: &Client,
    pairs: Vec<(String, String)>,
    ttl_ms: u64,
) -> Result<(), CliError> {
    let count = pairs.len();
    let ops: Vec<BatchOp> = pairs
        .into_iter()
        .map(|(key, value)| BatchOp {
            op: Some(Op::Put(PutRequest {
                key,
                value: value.into_bytes(),
                ttl_ms,
            })),
        })
        .collect();
    let response = batch(client, ops).await?;
    emit_line(&format!("OK revision={} keys={count}", response.revision))
}

/// One atomic Batch; retried on failover like Put (applying the same ops twice is harmless).
async fn batch(
    client: &Client,
    ops: Vec<BatchOp>,
) -> Result<crate::proto::v1::BatchResponse, CliError> {
    let response = client
        .call(|channel, remaining| {
            let message = BatchRequest { ops: ops.clone() };
            async move { kv(channel).batch(request(message, remaining)).await }
        })
        .await?;
    Ok(response.into_inner())
}

// ---------------------------------------------------------------------------------------------
// get
// ---------------------------------------------------------------------------------------------

pub async fn get(args: GetArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    match args.keys.as_slice() {
        [key] if !args.json => get_raw(&client, key, args.stale).await,
        keys => {
            let results = batch_get(&client, keys, args.stale).await?;
            if args.json {
                emit_json(
                    &json!({ "results": results.iter().map(key_result_json).collect::<Vec<_>>() }),
                )?;
            } else {
                let text: String = results.iter().map(key_result_line).collect();
                emit(text.as_bytes())?;
            }
            missing_keys(&results)
        }
    }
}

/// The single-key form scripts rely on: the stored bytes and a newline, nothing else.
async fn get_raw(client: &Client, key: &str, stale: bool) -> Result<(), CliError> {
    let response = client
        .call(|channel, remaining| {
            let message = GetRequest {
                key: key.to_string(),
                consistency: consistency(stale),
            };
            async move { kv(channel).get(request(message, remaining)).await }
        })
        .await?
        .into_inner();
    let mut bytes = response.value;
    bytes.push(b'\n');
    emit(&bytes)
}

async fn batch_get(
    client: &Client,
    keys: &[String],
    stale: bool,
) -> Result<Vec<KeyResult>, CliError> {
    let response = client
        .call(|channel, remaining| {
            let message = BatchGetRequest {
                keys: keys.to_vec(),
                consistency: consistency(stale),
            };
            async move { kv(channel).batch_get(request(message, remaining)).await }
        })
        .await?;
    Ok(response.into_inner().results)
}

fn key_result_line(result: &KeyResult) -> String {
    if result.found {
        format!("{}: {}\n", result.key, values::text(&result.value))
    } else {
        format!("{}: (not found)\n", result.key)
    }
}

fn key_result_json(result: &KeyResult) -> Value {
    let mut object = Map::new();
    object.insert("key".into(), json!(result.key));
    object.insert("found".into(), json!(result.found));
    if result.found {
        values::insert_json(&mut object, &result.value);
        object.insert("revision".into(), json!(result.revision));
        object.insert("ttl_ms".into(), json!(result.ttl_ms));
    }
    Value::Object(object)
}

/// Exit 1 naming the missing keys when any was not found.
fn missing_keys(results: &[KeyResult]) -> Result<(), CliError> {
    let missing: Vec<&str> = results
        .iter()
        .filter(|r| !r.found)
        .map(|r| r.key.as_str())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(CliError::new(
        exit::NOT_FOUND,
        format!(
            "{} of {} keys not found: {}",
            missing.len(),
            results.len(),
            missing.join(", ")
        ),
    ))
}

// ---------------------------------------------------------------------------------------------
// del
// ---------------------------------------------------------------------------------------------

pub async fn del(args: DelArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    match args.keys.as_slice() {
        [key] => del_one(&client, key).await,
        keys => del_many(&client, keys).await,
    }
}

async fn del_one(client: &Client, key: &str) -> Result<(), CliError> {
    let response = client
        .call(|channel, remaining| {
            let message = DeleteRequest {
                key: key.to_string(),
            };
            async move { kv(channel).delete(request(message, remaining)).await }
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

// ---------------------------------------------------------------------------------------------
// scan
// ---------------------------------------------------------------------------------------------

/// Keys asked for per page: the server's default page size.
const SCAN_PAGE: u64 = 1_000;

/// Where a scan stopped: whether keys remain past what was printed, and the first of them.
struct ScanEnd {
    count: u64,
    more: bool,
    next_start: String,
}

pub async fn scan(args: ScanArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let mut collected = Vec::new();
    let end = scan_pages(&client, &args, |page| {
        if args.json {
            collected.extend(page.iter().map(|kv| key_value_json(kv, args.keys_only)));
            Ok(())
        } else {
            let text: String = page
                .iter()
                .map(|kv| key_value_line(kv, args.keys_only))
                .collect();
            emit(text.as_bytes())
        }
    })
    .await?;
    if args.json {
        return emit_json(&json!({
            "kvs": collected,
            "count": end.count,
            "more": end.more,
            "next_start": end.next_start,
        }));
    }
    if end.more {
        eprintln!(
            "note: stopped at --limit; more keys follow, continue with --start {:?}",
            end.next_start
        );
    }
    Ok(())
}

/// Requests pages until the range is exhausted or `--limit` keys were seen, handing each page
/// to `sink` as it arrives (so text output streams instead of waiting for the whole range).
async fn scan_pages(
    client: &Client,
    args: &ScanArgs,
    mut sink: impl FnMut(&[KeyValue]) -> Result<(), CliError>,
) -> Result<ScanEnd, CliError> {
    let mut start = args.start.clone().unwrap_or_default();
    let mut count = 0u64;
    loop {
        let want = args
            .limit
            .map_or(SCAN_PAGE, |limit| (limit - count).min(SCAN_PAGE));
        let page = scan_page(client, args, &start, want).await?;
        count += page.kvs.len() as u64;
        sink(&page.kvs)?;
        let capped = args.limit.is_some_and(|limit| count >= limit);
        if !page.more || capped {
            return Ok(ScanEnd {
                count,
                more: page.more,
                next_start: page.next_start,
            });
        }
        // The server must move forward, or paging would never end.
        if page.kvs.is_empty() || page.next_start <= start {
            return Err(CliError::new(
                exit::UNAVAILABLE,
                format!(
                    "the server's scan did not advance past {start:?} (next_start {:?})",
                    page.next_start
                ),
            ));
        }
        start = page.next_start;
    }
}

async fn scan_page(
    client: &Client,
    args: &ScanArgs,
    start: &str,
    limit: u64,
) -> Result<crate::proto::v1::ScanResponse, CliError> {
    let message = ScanRequest {
        start: start.to_string(),
        end: args.end.clone().unwrap_or_default(),
        prefix: args.prefix.clone().unwrap_or_default(),
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
        keys_only: args.keys_only,
        consistency: consistency(args.stale),
    };
    let response = client
        .call(|channel, remaining| {
            let message = message.clone();
            async move { kv(channel).scan(request(message, remaining)).await }
        })
        .await?;
    Ok(response.into_inner())
}

fn key_value_line(kv: &KeyValue, keys_only: bool) -> String {
    if keys_only {
        format!("{}\n", kv.key)
    } else {
        format!("{}: {}\n", kv.key, values::text(&kv.value))
    }
}

fn key_value_json(kv: &KeyValue, keys_only: bool) -> Value {
    let mut object = Map::new();
    object.insert("key".into(), json!(kv.key));
    if !keys_only {
        values::insert_json(&mut object, &kv.value);
    }
    object.insert("revision".into(), json!(kv.revision));
    object.insert("ttl_ms".into(), json!(kv.ttl_ms));
    Value::Object(object)
}

// ---------------------------------------------------------------------------------------------
// cas
// ---------------------------------------------------------------------------------------------

/// The CompareAndSwap request for the arguments (clap guarantees exactly one expectation).
fn cas_request(args: &CasArgs) -> Result<CompareAndSwapRequest, CliError> {
    let expected = match (args.expect_revision, &args.expect_value) {
        (Some(revision), None) => Expected::ExpectedRevision(revision),
        (None, Some(value)) => Expected::ExpectedValue(value.clone().into_bytes()),
        _ => {
            return Err(usage(
                "give exactly one of --expect-revision and --expect-value",
            ))
        }
    };
    Ok(CompareAndSwapRequest {
        key: args.key.clone(),
        expected: Some(expected),
        value: args.value.clone().unwrap_or_default().into_bytes(),
        delete: args.delete,
        ttl_ms: ttl_ms(args.ttl),
    })
}

pub async fn cas(args: CasArgs) -> Result<(), CliError> {
    let message = cas_request(&args)?;
    let client = Client::new(&args.client)?;
    // Not `call`: a CAS must not be re-sent after an ambiguous failure (see the method).
    let response = client
        .call_at_most_once(|channel, remaining| {
            let message = message.clone();
            async move {
                kv(channel)
                    .compare_and_swap(request(message, remaining))
                    .await
            }
        })
        .await?
        .into_inner();
    if response.succeeded {
        return emit_line(&format!("OK revision={}", response.revision));
    }
    emit_line(&cas_current_state(&response))?;
    Err(CliError::new(
        exit::NOT_FOUND,
        format!(
            "compare-and-swap of {} failed: the condition did not hold",
            args.key
        ),
    ))
}

fn cas_current_state(response: &CompareAndSwapResponse) -> String {
    if response.found {
        format!(
            "current revision={} value={}",
            response.current_revision,
            values::text(&response.current_value)
        )
    } else {
        "key does not exist".to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// metrics
// ---------------------------------------------------------------------------------------------

pub async fn metrics(args: MetricsArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let (endpoint, response) = client
        .call_answered(|channel, remaining| async move {
            kv(channel)
                .metrics(request(MetricsRequest {}, remaining))
                .await
        })
        .await?;
    let metrics = response.into_inner();
    if args.json {
        emit_json(&metrics_json(&endpoint, &metrics))
    } else {
        emit(format_metrics(&endpoint, &metrics).as_bytes())
    }
}

/// Aligned `field: value` lines for a human, naming the endpoint that answered.
pub fn format_metrics(endpoint: &str, m: &MetricsResponse) -> String {
    let leader = if m.leader_id == 0 {
        "none".to_string()
    } else {
        m.leader_id.to_string()
    };
    let followers = if m.followers.is_empty() {
        "-".to_string()
    } else {
        m.followers
            .iter()
            .map(|f| format!("{}@{}", f.id, f.matched_index))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let role = if m.is_leader { "leader" } else { "not leader" };
    aligned(&[
        ("node", format!("{} (answered at {endpoint})", m.node_id)),
        ("role", role.to_string()),
        ("leader", leader),
        ("term", m.term.to_string()),
        ("commit index", m.commit_index.to_string()),
        ("applied index", m.applied_index.to_string()),
        ("followers", followers),
        ("keys", m.keys.to_string()),
        ("value bytes", m.value_bytes.to_string()),
        ("get ops", m.get_ops.to_string()),
        ("batch get ops", m.batch_get_ops.to_string()),
        ("scan ops", m.scan_ops.to_string()),
        ("put ops", m.put_ops.to_string()),
        ("delete ops", m.delete_ops.to_string()),
        ("batch ops", m.batch_ops.to_string()),
        ("cas ops", m.cas_ops.to_string()),
    ])
}

fn metrics_json(endpoint: &str, m: &MetricsResponse) -> Value {
    let followers: Vec<Value> = m
        .followers
        .iter()
        .map(|f| json!({"id": f.id, "matched_index": f.matched_index}))
        .collect();
    json!({
        "endpoint": endpoint,
        "node_id": m.node_id,
        "keys": m.keys,
        "value_bytes": m.value_bytes,
        "get_ops": m.get_ops,
        "put_ops": m.put_ops,
        "delete_ops": m.delete_ops,
        "batch_ops": m.batch_ops,
        "cas_ops": m.cas_ops,
        "scan_ops": m.scan_ops,
        "batch_get_ops": m.batch_get_ops,
        "term": m.term,
        "leader_id": m.leader_id,
        "commit_index": m.commit_index,
        "applied_index": m.applied_index,
        "is_leader": m.is_leader,
        "followers": followers,
    })
}

// ---------------------------------------------------------------------------------------------
// status and cluster membership
// ---------------------------------------------------------------------------------------------

pub async fn status(args: StatusArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let (endpoint, response) = client
        .call_answered(|channel, remaining| async move {
            ClusterClient::new(channel)
                .status(request(StatusRequest {}, remaining))
                .await
        })
        .await?;
    let status = response.into_inner();
    if args.json {
        emit_json(&status_json(&endpoint, &status))
    } else {
        emit(format_status(&status).as_bytes())
    }
}

/// Aligned `field: value` lines for a human.
pub fn format_status(s: &StatusResponse) -> String {
    let leader = if s.leader_id == 0 {
        "none".to_string()
    } else {
        format!("{} ({})", s.leader_id, s.leader_address)
    };
    aligned(&[
        ("node", format!("{} ({})", s.id, s.address)),
        ("role", s.role.clone()),
        ("leader", leader),
        ("term", s.term.to_string()),
        ("last log index", s.last_log_index.to_string()),
        ("commit index", s.commit_index.to_string()),
        ("applied index", s.last_applied_index.to_string()),
        ("snapshot index", s.snapshot_index.to_string()),
        ("purged index", s.purged_index.to_string()),
        ("voters", members_text(&s.voters)),
        ("learners", members_text(&s.learners)),
    ])
}

fn status_json(endpoint: &str, s: &StatusResponse) -> Value {
    json!({
        "endpoint": endpoint,
        "id": s.id,
        "address": s.address,
        "role": s.role,
        "leader_id": s.leader_id,
        "leader_address": s.leader_address,
        "term": s.term,
        "last_log_index": s.last_log_index,
        "commit_index": s.commit_index,
        "last_applied_index": s.last_applied_index,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "voters": members_json(&s.voters),
        "learners": members_json(&s.learners),
    })
}

pub async fn cluster(command: ClusterCommand) -> Result<(), CliError> {
    match command {
        ClusterCommand::Status(args) => status(args).await,
        ClusterCommand::AddLearner(args) => add_learner(args).await,
        ClusterCommand::Promote(args) => promote(args).await,
        ClusterCommand::Remove(args) => remove(args).await,
    }
}

// Membership changes go through the retrying `Client::call`: each names a target (this node is
// a learner / a voter / gone), so repeating one whose answer was lost changes nothing more.

async fn add_learner(args: AddLearnerArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let response = client
        .call(|channel, remaining| {
            let message = AddLearnerRequest {
                id: args.id,
                address: args.address.clone(),
            };
            async move {
                ClusterClient::new(channel)
                    .add_learner(request(message, remaining))
                    .await
            }
        })
        .await?;
    emit(format_membership(&response.into_inner()).as_bytes())
}

async fn promote(args: PromoteArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let response = client
        .call(|channel, remaining| {
            let message = PromoteRequest {
                ids: args.ids.clone(),
            };
            async move {
                ClusterClient::new(channel)
                    .promote(request(message, remaining))
                    .await
            }
        })
        .await?;
    emit(format_membership(&response.into_inner()).as_bytes())
}

async fn remove(args: RemoveArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let response = client
        .call(|channel, remaining| {
            let message = RemoveNodeRequest { id: args.id };
            async move {
                ClusterClient::new(channel)
                    .remove_node(request(message, remaining))
                    .await
            }
        })
        .await?;
    emit(format_membership(&response.into_inner()).as_bytes())
}

/// `OK revision=N` and the membership that the change produced.
fn format_membership(m: &MembershipResponse) -> String {
    format!(
        "OK revision={}\n{}",
        m.revision,
        aligned(&[
            ("voters", members_text(&m.voters)),
            ("learners", members_text(&m.learners)),
        ])
    )
}

// ---------------------------------------------------------------------------------------------
// health
// ---------------------------------------------------------------------------------------------

pub async fn health(args: HealthArgs) -> Result<(), CliError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let unavailable = |what: String| CliError::new(exit::UNAVAILABLE, what);
    let check = async {
        let channel = Client::connect(&args.endpoint).await?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
    };
    let response = tokio::time::timeout(args.timeout, check)
        .await
        .map_err(|_| {
            unavailable(format!(
                "{}: no answer within {:?}",
                args.endpoint, args.timeout
            ))
        })?
        .map_err(|status| unavailable(format!("{}: {}", args.endpoint, status.message())))?
        .into_inner();
    match ServingStatus::try_from(response.status) {
        Ok(ServingStatus::Serving) => emit_line("SERVING"),
        Ok(other) => Err(unavailable(format!(
            "{}: {} (no leader known yet)",
            args.endpoint,
            other.as_str_name()
        ))),
        Err(_) => Err(unavailable(format!(
            "{}: unknown health status {}",
            args.endpoint, response.status
        ))),
    }
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

    #[test]
    fn aligned_rows_line_up() {
        let text = aligned(&[("a", "1".into()), ("long name", "2".into())]);
        assert_eq!(text, "a:         1\nlong name: 2\n");
    }
}
