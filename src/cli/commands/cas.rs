//! `raftkv cas`: writes or deletes a key only if its current revision or value is the expected
//! one.
//!
//! Every attempt carries the command's idempotency key, so a swap whose answer was lost
//! (timeout, leader change) is retried safely: the cluster answers the retry with the first
//! attempt's outcome rather than evaluating the condition again. A condition that did not hold
//! prints the key's current state and exits 1.

use std::time::Duration;

use clap::{ArgGroup, Args};

use super::lease::parse_lease_id;
use super::{emit_line, kv, ttl_ms, usage};
use crate::cli::client::{idempotency_key, write_request, CliError, Client};
use crate::cli::{exit, ClientOpts};
use crate::proto::v1::compare_and_swap_request::Expected;
use crate::proto::v1::{CompareAndSwapRequest, CompareAndSwapResponse};
use crate::text::{parse_duration, values};

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

    /// Attach the written key to lease ID (`raftkv lease grant`): it is deleted when the lease
    /// expires or is revoked. A lease that does not exist exits 1 and writes nothing.
    #[arg(long, value_name = "ID", value_parser = parse_lease_id, conflicts_with = "delete")]
    pub lease: Option<u64>,

    #[command(flatten)]
    pub client: ClientOpts,
}

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
        lease: args.lease.unwrap_or(0),
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
    let key = idempotency_key();
    let response = client
        .call(|channel, remaining| {
            let message = message.clone();
            let key = &key;
            async move {
                kv(channel)
                    .compare_and_swap(write_request(message, remaining, key))
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
