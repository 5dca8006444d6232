//! `raftkv scan`: lists the keys in a range or under a prefix, in key order.
//!
//! The server answers one page per request, so the command follows `next_start` page after page
//! until the range is exhausted or `--limit` keys were printed, and text output is written as
//! each page arrives rather than after the whole range. Each page is a read of its own
//! (linearizable unless `--stale`, bounded by `--timeout`), so a scan that runs while keys change
//! is not one snapshot. A server page that does not move forward is reported as an error instead
//! of paging forever.

use clap::Args;
use serde_json::{json, Map, Value};

use super::{consistency, emit, emit_json, kv};
use crate::cli::client::{request, CliError, Client};
use crate::cli::{exit, ClientOpts};
use crate::proto::v1::{KeyValue, ScanRequest};
use crate::text::values;

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

/// Keys asked for per page: the server's default page size.
const SCAN_PAGE: u64 = 1_000;

/// Where a scan stopped: whether keys remain past what was printed, and the first of them.
struct ScanEnd {
    count: u64,
    more: bool,
    next_start: String,
}

/// What a scan reads page after page, and how: `raftkv scan`'s flags, and what `lock` and
/// `elect` read of their prefix.
pub(crate) struct Range {
    pub start: String,
    pub end: String,
    pub prefix: String,
    pub limit: Option<u64>,
    pub keys_only: bool,
    pub stale: bool,
}

impl Range {
    fn of(args: &ScanArgs) -> Self {
        Self {
            start: args.start.clone().unwrap_or_default(),
            end: args.end.clone().unwrap_or_default(),
            prefix: args.prefix.clone().unwrap_or_default(),
            limit: args.limit,
            keys_only: args.keys_only,
            stale: args.stale,
        }
    }

    /// Every key under `prefix`, with values, read linearizably.
    pub(crate) fn prefix(prefix: &str) -> Self {
        Self {
            start: String::new(),
            end: String::new(),
            prefix: prefix.to_string(),
            limit: None,
            keys_only: false,
            stale: false,
        }
    }
}

/// Every key of `range` (a page per request), in key order.
pub(crate) async fn scan_all(client: &Client, range: &Range) -> Result<Vec<KeyValue>, CliError> {
    let mut all = Vec::new();
    scan_pages(client, range, |page| {
        all.extend_from_slice(page);
        Ok(())
    })
    .await?;
    Ok(all)
}

pub async fn scan(args: ScanArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let mut collected = Vec::new();
    let end = scan_pages(&client, &Range::of(&args), |page| {
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
    args: &Range,
    mut sink: impl FnMut(&[KeyValue]) -> Result<(), CliError>,
) -> Result<ScanEnd, CliError> {
    let mut start = args.start.clone();
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
    args: &Range,
    start: &str,
    limit: u64,
) -> Result<crate::proto::v1::ScanResponse, CliError> {
    let message = ScanRequest {
        start: start.to_string(),
        end: args.end.clone(),
        prefix: args.prefix.clone(),
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
