//! `raftkv watch`: prints each change to a key, a prefix or a range as the cluster applies it,
//! one line per event, and follows on to another node when the one it reads from fails.
//!
//! Every response says which revision it is current to, so the command always knows where to
//! resume: after a failure it watches again, on the next endpoint, from the revision after the
//! last one it printed or heard of. Each node sends changes in revision order from its own
//! applied log, so nothing is printed twice and nothing is skipped.

use std::time::Duration;

use clap::Args;
use tokio_stream::StreamExt;
use tonic::{Code, Status};

use super::{emit_json, emit_line, kv, usage};
use crate::cli::client::{CliError, Client};
use crate::cli::exit;
use crate::cli::ClientOpts;
use crate::proto::v1::{watch_event::Kind, WatchEvent, WatchRequest, WatchResponse};
use crate::text::{event_json, values};

#[derive(Args, Debug)]
#[command(after_long_help = "\
Prints one line per change: `PUT KEY VALUE revision=N` or `DELETE KEY revision=N` (with --prev,
` prev=VALUE` too); the changes of one write (a batch, an expiry) share a revision. With --json
one object per line: {\"type\": \"PUT\"|\"DELETE\", \"key\", \"value\", \"encoding\",
\"revision\", \"prev\": {\"value\", \"encoding\", \"revision\"}}.

Runs until interrupted. When the node it reads from fails or stops, it goes on from the next
revision on another endpoint. A --rev older than the nodes' watch history (--watch-history)
exits 1 naming the oldest revision it can start from.")]
pub struct WatchArgs {
    /// The key to watch (or, with --end, the start of a range).
    #[arg(required_unless_present_any = ["prefix", "all"])]
    pub key: Option<String>,

    /// Watch the range [KEY, END).
    #[arg(long, requires = "key")]
    pub end: Option<String>,

    /// Watch every key starting with this prefix.
    #[arg(long, conflicts_with_all = ["key", "all"])]
    pub prefix: Option<String>,

    /// Watch every key.
    #[arg(long, conflicts_with = "key")]
    pub all: bool,

    /// First revision to print (0: changes from now on).
    #[arg(long, default_value_t = 0)]
    pub rev: u64,

    /// Also print the value each change replaced or deleted.
    #[arg(long)]
    pub prev: bool,

    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub client: ClientOpts,
}

pub async fn watch(args: WatchArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let endpoints = client.endpoints().to_vec();
    let mut next = args.rev;
    let mut last_error = String::new();
    let mut failures = 0u32;
    loop {
        for endpoint in &endpoints {
            match watch_on(&client, endpoint, &args, &mut next).await {
                Ok(()) => return Ok(()),
                Err(Failed::Final(error)) => return Err(error),
                Err(Failed::Retry(status)) => {
                    last_error = format!("{endpoint}: {}", status.message());
                    failures += 1;
                }
            }
        }
        if failures > 0 && failures % 30 == 0 {
            eprintln!("raftkv watch: still retrying; last error from {last_error}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How a watch failed: for good, or in a way another try (on another endpoint) may get past.
pub(crate) enum Failed {
    Final(CliError),
    Retry(Status),
}

/// Watches on one endpoint until the stream fails; `next` is kept at the revision to resume at.
async fn watch_on(
    client: &Client,
    endpoint: &str,
    args: &WatchArgs,
    next: &mut u64,
) -> Result<(), Failed> {
    let channel = client.connect(endpoint).await.map_err(Failed::Retry)?;
    let request = WatchRequest {
        start: args.key.clone().unwrap_or_default(),
        end: args.end.clone().unwrap_or_default(),
        prefix: args.prefix.clone().unwrap_or_default(),
        all: args.all || args.prefix.as_deref() == Some(""),
        start_revision: *next,
        prev_kv: args.prev,
        progress_notify: true,
        ..Default::default()
    };
    let mut stream = kv(channel)
        .watch(request)
        .await
        .map_err(classify)?
        .into_inner();
    while let Some(item) = stream.next().await {
        let response = item.map_err(classify)?;
        if response.canceled {
            let code = if response.compact_revision > 0 {
                exit::NOT_FOUND
            } else {
                exit::UNAVAILABLE
            };
            return Err(Failed::Final(CliError::new(code, response.cancel_reason)));
        }
        print(&response, args).map_err(Failed::Final)?;
        *next = (*next).max(response.revision + 1);
    }
    Err(Failed::Retry(Status::unavailable("the watch stream ended")))
}

/// Whether to try again (the node failed, stopped, or this watcher fell behind) or give up.
/// Also how `lock`, `elect` and `lease keepalive` judge their streams' failures.
pub(crate) fn classify(status: Status) -> Failed {
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::ResourceExhausted
        | Code::Internal => Failed::Retry(status),
        Code::InvalidArgument => Failed::Final(usage(status.message().to_string())),
        _ => Failed::Final(CliError::from_status(&status)),
    }
}

fn print(response: &WatchResponse, args: &WatchArgs) -> Result<(), CliError> {
    for event in &response.events {
        if args.json {
            emit_json(&event_json(event))?;
        } else {
            emit_line(&event_line(event, args.prev))?;
        }
    }
    Ok(())
}

fn event_line(event: &WatchEvent, prev: bool) -> String {
    let mut line = match Kind::try_from(event.kind) {
        Ok(Kind::Delete) => format!("DELETE {} revision={}", event.key, event.revision),
        _ => format!(
            "PUT {} {} revision={}",
            event.key,
            values::text(&event.value),
            event.revision
        ),
    };
    if prev {
        match &event.prev {
            Some(prev) => line.push_str(&format!(" prev={}", values::text(&prev.value))),
            None => line.push_str(" prev=(none)"),
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::KeyValue;

    #[test]
    fn events_print_as_one_line_each() {
        let put = WatchEvent {
            kind: Kind::Put as i32,
            key: "k".into(),
            value: b"v2".to_vec(),
            revision: 7,
            prev: Some(KeyValue {
                value: b"v1".to_vec(),
                revision: 5,
                ..Default::default()
            }),
        };
        assert_eq!(event_line(&put, false), "PUT k v2 revision=7");
        assert_eq!(event_line(&put, true), "PUT k v2 revision=7 prev=v1");
        let delete = WatchEvent {
            kind: Kind::Delete as i32,
            key: "k".into(),
            revision: 8,
            ..Default::default()
        };
        assert_eq!(event_line(&delete, true), "DELETE k revision=8 prev=(none)");
        assert_eq!(
            event_json(&put).to_string(),
            r#"{"encoding":"utf8","key":"k","prev":{"encoding":"utf8","revision":5,"value":"v1"},"revision":7,"type":"PUT","value":"v2"}"#
        );
    }
}
