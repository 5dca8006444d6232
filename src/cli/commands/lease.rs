//! `raftkv lease …`: grant, revoke, inspect and keep alive the cluster's leases.
//!
//! A lease is a TTL that clients keep alive, with keys attached (`raftkv put --lease ID`): when
//! no keepalive reaches the leader for a whole TTL, or the lease is revoked, its keys are
//! deleted together in one revision. Expiry runs on the leader, so what this command prints of
//! a lease's remaining time is the leader's view when it answered. `lease keepalive` keeps a
//! lease alive with the same background task as `raftkv lock` and `raftkv elect`
//! ([`crate::cli::session::Keepalive`]): one renewal every third of the TTL, and a new stream on
//! the next endpoint when one breaks.

use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{emit_json, emit_line};
use crate::cli::client::{request, CliError, Client};
use crate::cli::session::{self, lease_client, Interrupts, Keepalive};
use crate::cli::{exit, ClientOpts};
use crate::proto::v1::{LeaseListRequest, LeaseTimeToLiveRequest};
use crate::text::{format_duration, parse_duration};

/// Reads a lease id: a decimal number above 0 (0 means "no lease" in the API).
pub fn parse_lease_id(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("a lease id is never 0".into()),
        Ok(id) => Ok(id),
        Err(_) => Err(format!(
            "{text:?} is not a lease id (a decimal number, as `raftkv lease grant` prints)"
        )),
    }
}

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Create a lease that ends unless kept alive for TTL (e.g. 10s; at least 1s).
    Grant(GrantArgs),
    /// End a lease now and delete the keys attached to it.
    Revoke(RevokeArgs),
    /// A lease's remaining time, granted TTL and, with --keys, its keys.
    Ttl(TtlArgs),
    /// Every lease, in id order, with its TTL and number of keys.
    List(ListArgs),
    /// Keep a lease alive until interrupted (or once, with --once).
    #[command(name = "keepalive")]
    KeepAlive(KeepAliveArgs),
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
Prints `lease ID granted with ttl TTL`; with --json {\"id\", \"ttl_ms\", \"revision\"}. Attach keys
with `raftkv put KEY VALUE --lease ID` and keep the lease alive with `raftkv lease keepalive ID`:
without keepalives it ends after TTL and its keys are deleted.")]
pub struct GrantArgs {
    /// Time to live without keepalives (e.g. 10s, 1m; at least 1s).
    #[arg(value_parser = parse_duration)]
    pub ttl: std::time::Duration,

    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
Prints `lease ID revoked; N keys deleted`; with --json {\"revision\", \"deleted\"}. A lease that
does not exist (never granted, expired, or revoked already) exits 1.")]
pub struct RevokeArgs {
    /// The lease id.
    #[arg(value_parser = parse_lease_id)]
    pub id: u64,

    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
Prints `lease ID: TTL left of GRANTED`, then with --keys one attached key per line. With --json
{\"id\", \"ttl_ms\", \"granted_ttl_ms\", \"keys\": [...]}. A lease that does not exist exits 1.")]
pub struct TtlArgs {
    /// The lease id.
    #[arg(value_parser = parse_lease_id)]
    pub id: u64,

    /// Also list the keys attached to the lease.
    #[arg(long)]
    pub keys: bool,

    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
Prints one line per lease, `ID ttl TTL keys N`, in id order; with --json
{\"leases\": [{\"id\", \"granted_ttl_ms\", \"keys\"}, ...]}.")]
pub struct ListArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
Renews the lease every third of its TTL (learnt from the first answer) and prints a line per
renewal, `lease ID kept alive; ttl TTL`. When the node it talks to fails it goes on through the
next endpoint, with backoff, for as long as it takes; a renewal that comes too late to save the
lease is answered with ttl 0, and then it stops.

Exit codes: 0 on Ctrl-C or SIGTERM (the lease is left to run out its TTL; revoke it with
`raftkv lease revoke`), 1 when the lease does not exist (it expired or was revoked), 3 with
--once when no node answered within --timeout.")]
pub struct KeepAliveArgs {
    /// The lease id.
    #[arg(value_parser = parse_lease_id)]
    pub id: u64,

    /// Renew once, print the answer and exit.
    #[arg(long)]
    pub once: bool,

    #[command(flatten)]
    pub client: ClientOpts,
}

pub async fn lease(command: LeaseCommand) -> Result<(), CliError> {
    match command {
        LeaseCommand::Grant(args) => grant(args).await,
        LeaseCommand::Revoke(args) => revoke(args).await,
        LeaseCommand::Ttl(args) => ttl(args).await,
        LeaseCommand::List(args) => list(args).await,
        LeaseCommand::KeepAlive(args) => keepalive(args).await,
    }
}

async fn grant(args: GrantArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let granted = session::grant(&client, args.ttl).await?;
    if args.json {
        let ttl_ms = u64::try_from(granted.ttl.as_millis()).unwrap_or(u64::MAX);
        return emit_json(&json!({
            "id": granted.id,
            "ttl_ms": ttl_ms,
            "revision": granted.revision,
        }));
    }
    emit_line(&format!(
        "lease {} granted with ttl {}",
        granted.id,
        format_duration(granted.ttl)
    ))
}

async fn revoke(args: RevokeArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let answer = session::revoke(&client, args.id).await?;
    if args.json {
        return emit_json(&json!({"revision": answer.revision, "deleted": answer.deleted}));
    }
    emit_line(&format!(
        "lease {} revoked; {} deleted",
        args.id,
        count(answer.deleted, "key", "keys")
    ))
}

async fn ttl(args: TtlArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let message = LeaseTimeToLiveRequest {
        id: args.id,
        keys: args.keys,
    };
    let answer = client
        .call(|channel, remaining| async move {
            lease_client(channel)
                .time_to_live(request(message, remaining))
                .await
        })
        .await?
        .into_inner();
    if args.json {
        return emit_json(&json!({
            "id": answer.id,
            "ttl_ms": answer.ttl_ms,
            "granted_ttl_ms": answer.granted_ttl_ms,
            "keys": answer.keys,
        }));
    }
    let mut text = format!(
        "lease {}: {} left of {}\n",
        args.id,
        format_duration(std::time::Duration::from_millis(answer.ttl_ms)),
        format_duration(std::time::Duration::from_millis(answer.granted_ttl_ms))
    );
    for key in &answer.keys {
        text.push_str(key);
        text.push('\n');
    }
    super::emit(text.as_bytes())
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let answer = client
        .call(|channel, remaining| async move {
            lease_client(channel)
                .leases(request(LeaseListRequest {}, remaining))
                .await
        })
        .await?
        .into_inner();
    if args.json {
        let leases: Vec<_> = answer
            .leases
            .iter()
            .map(|l| json!({"id": l.id, "granted_ttl_ms": l.granted_ttl_ms, "keys": l.keys}))
            .collect();
        return emit_json(&json!({ "leases": leases }));
    }
    let text: String = answer
        .leases
        .iter()
        .map(|l| {
            format!(
                "{} ttl {} keys {}\n",
                l.id,
                format_duration(std::time::Duration::from_millis(l.granted_ttl_ms)),
                l.keys
            )
        })
        .collect();
    super::emit(text.as_bytes())
}

async fn keepalive(args: KeepAliveArgs) -> Result<(), CliError> {
    let mut interrupts = Interrupts::catch()?;
    let client = Arc::new(Client::new(&args.client)?);
    let mut keepalive = Keepalive::start(client, args.id, None);
    let give_up = Instant::now() + args.client.timeout;
    let mut printed = 0;
    loop {
        let state = tokio::select! {
            state = keepalive.changed() => state,
            _ = interrupts.recv() => return Ok(()),
            () = tokio::time::sleep_until(give_up.into()), if args.once => {
                return Err(CliError::new(
                    exit::UNAVAILABLE,
                    format!(
                        "no node renewed lease {} within {}",
                        args.id,
                        format_duration(args.client.timeout)
                    ),
                ));
            }
        };
        if let Some(ended) = state.ended {
            return Err(ended);
        }
        if state.renewals > printed {
            printed = state.renewals;
            let ttl = state.ttl.map_or_else(|| "?".into(), format_duration);
            emit_line(&format!("lease {} kept alive; ttl {ttl}", args.id))?;
            if args.once {
                return Ok(());
            }
        }
    }
}

/// `1 key`, `2 keys`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_decimal_and_never_zero() {
        assert_eq!(parse_lease_id("7"), Ok(7));
        assert!(parse_lease_id("0").unwrap_err().contains("never 0"));
        assert!(parse_lease_id("0x7")
            .unwrap_err()
            .contains("not a lease id"));
        assert!(parse_lease_id("-1").is_err());
    }

    #[test]
    fn counts_agree_with_their_number() {
        assert_eq!(count(1, "key", "keys"), "1 key");
        assert_eq!(count(2, "key", "keys"), "2 keys");
        assert_eq!(count(0, "key", "keys"), "0 keys");
    }
}
