//! The `raftkv` command line: `serve` runs a node, `playground` runs three, every other
//! subcommand is a client. One file per command family, as in mini-redis.

pub mod client;
pub mod commands;
pub mod playground;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::ServeArgs;

/// Exit codes shared by every client command, so scripts can tell outcomes apart.
pub mod exit {
    pub const OK: u8 = 0;
    /// A key was not found.
    pub const NOT_FOUND: u8 = 1;
    /// Bad usage: a wrong flag, or input the server rejected as invalid.
    pub const USAGE: u8 = 2;
    /// The cluster could not be reached or could not serve the request.
    pub const UNAVAILABLE: u8 = 3;
}

#[derive(Parser, Debug)]
#[command(
    name = "raftkv",
    version,
    about = "A Raft-replicated key-value store",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a raftkv node.
    Serve(ServeArgs),
    /// Start a three-node cluster on 127.0.0.1 (ports 7001-7003) for trying raftkv out.
    Playground(playground::PlaygroundArgs),
    /// Write a key.
    Put(commands::PutArgs),
    /// Read a key.
    Get(commands::GetArgs),
    /// Delete a key.
    Del(commands::DelArgs),
    /// Show a node's view of the cluster.
    Status(commands::StatusArgs),
    /// Exit 0 when the first endpoint reports SERVING (in a cluster with a leader), 3 otherwise.
    /// Meant for container healthchecks: it asks only that one node and never retries.
    Health(commands::HealthArgs),
}

/// Where and how long a client command tries.
#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// Nodes to try, in order: host:port, comma-separated. Any node serves any request.
    #[arg(
        long,
        env = "RAFTKV_ENDPOINTS",
        default_value = "127.0.0.1:7001",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,

    /// Give up after this long (e.g. 500ms, 5s, 1m) of trying every endpoint.
    #[arg(long, env = "RAFTKV_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Parses `250ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 30s, 5m or 1h"))?;
    let millis = match unit {
        "ms" => Some(number),
        "" | "s" => number.checked_mul(1000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(|| format!("{text:?} is not a duration like 500ms, 30s, 5m or 1h"))?;
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "s", "5x", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
