//! `raftkv get`: reads one key, or several at once.
//!
//! One key without `--json` prints exactly the stored bytes and a newline, nothing else, because
//! that is the form scripts capture (`value=$(raftkv get k)`). Every other form is one BatchGet,
//! printed as `key: value` lines or as one JSON document, where a value that is not UTF-8 is
//! shown as a placeholder or base64 (see [`values`]). A missing key exits 1 in every form, so a
//! script can rely on the exit code alone. Reads are linearizable unless `--stale`.

use clap::Args;
use serde_json::{json, Map, Value};

use super::{consistency, emit, emit_json, kv};
use crate::cli::client::{request, CliError, Client};
use crate::cli::{exit, ClientOpts};
use crate::proto::v1::{BatchGetRequest, GetRequest, KeyResult};
use crate::text::values;

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
