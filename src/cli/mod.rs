//! The `raftkv` command line: `serve` runs a node, `playground` runs three, every other
//! subcommand is a client. [`Cli`] is what clap parses, [`run`] runs it; each command lives in
//! a file of its own under [`commands`].

pub mod client;
pub mod commands;
pub mod session;
pub mod token;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use tonic::transport::ClientTlsConfig;

use self::client::CliError;
use crate::server::config::ServeArgs;
use crate::text::parse_duration;

/// Exit codes shared by every client command, so scripts can tell outcomes apart.
pub mod exit {
    pub const OK: u8 = 0;
    /// A key was not found.
    pub const NOT_FOUND: u8 = 1;
    /// Bad usage: a wrong flag, input the server rejected as invalid, or a missing or wrong
    /// bearer token (UNAUTHENTICATED).
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
    Serve(Box<ServeArgs>),
    /// Start a three-node cluster on 127.0.0.1 (ports 7001-7003) for trying raftkv out.
    Playground(commands::PlaygroundArgs),
    /// Write one key, or several keys atomically.
    Put(commands::PutArgs),
    /// Read one key (raw value), or several keys at once.
    Get(commands::GetArgs),
    /// Delete one key, or several keys atomically.
    Del(commands::DelArgs),
    /// List keys in a range or under a prefix, following pages to the end.
    Scan(commands::ScanArgs),
    /// Print each change to a key, a prefix or a range as it happens.
    Watch(commands::WatchArgs),
    /// Write or delete a key only if its revision or value is the expected one.
    Cas(commands::CasArgs),
    /// Leases: TTLs kept alive by clients, with keys attached (grant, revoke, ttl, list,
    /// keepalive).
    #[command(subcommand)]
    Lease(commands::LeaseCommand),
    /// Run a command while holding a cluster-wide lock; the lock goes with this client.
    Lock(commands::LockArgs),
    /// Campaign to lead a name, printing the leader's value each time it changes.
    Elect(commands::ElectArgs),
    /// One node's counters and Raft state.
    Metrics(commands::MetricsArgs),
    /// Cluster status and membership changes.
    #[command(subcommand)]
    Cluster(commands::ClusterCommand),
    /// Show a node's view of the cluster (same as `raftkv cluster status`).
    Status(commands::StatusArgs),
    /// Exit 0 when the node reports SERVING (a member of a cluster with a leader), 3 otherwise.
    /// Meant for container healthchecks: it asks only that one node and never retries.
    Health(commands::HealthArgs),
    /// Load a cluster and report throughput and latency percentiles.
    Bench(commands::BenchArgs),
    /// Certificates for trying TLS (`raftkv certs init DIR`).
    #[command(subcommand)]
    Certs(commands::CertsCommand),
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

    #[command(flatten)]
    pub tls: TlsOpts,

    #[command(flatten)]
    pub token: TokenOpts,
}

/// The bearer token for nodes started with `--auth-token-file`, sent on every call.
#[derive(Args, Debug, Clone, Default)]
pub struct TokenOpts {
    /// File holding the bearer token to send (its first line that is not blank or a # comment).
    #[arg(
        long = "token-file",
        id = "token_file",
        value_name = "PATH",
        env = "RAFTKV_TOKEN_FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,

    /// Bearer token to send. Prefer --token-file: a token on the command line is visible to
    /// every user of the machine in `ps`.
    #[arg(
        long = "token",
        id = "token",
        value_name = "TOKEN",
        env = "RAFTKV_TOKEN",
        hide_env_values = true,
        value_parser = token::Secret::parse
    )]
    pub token: Option<token::Secret>,
}

impl TokenOpts {
    /// What to send with every call: the token of --token-file or --token, or nothing.
    pub fn load(&self) -> Result<token::SendToken, CliError> {
        token::SendToken::load(self.token_file.as_deref(), self.token.as_ref())
    }
}

/// TLS for client commands, with etcdctl's flag names.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsOpts {
    /// PEM CA certificate the nodes' certificates are verified against; switches TLS on.
    #[arg(
        long = "cacert",
        id = "tls_cacert",
        value_name = "PATH",
        env = "RAFTKV_CACERT"
    )]
    pub cacert: Option<PathBuf>,

    /// PEM client certificate, for nodes started with --client-cert-auth (needs --key).
    #[arg(
        long = "cert",
        id = "tls_cert",
        value_name = "PATH",
        env = "RAFTKV_CERT",
        requires_all = ["tls_key", "tls_cacert"]
    )]
    pub cert: Option<PathBuf>,

    /// PEM private key of --cert.
    #[arg(
        long = "key",
        id = "tls_key",
        value_name = "PATH",
        env = "RAFTKV_KEY",
        requires = "tls_cert"
    )]
    pub key: Option<PathBuf>,
}

impl TlsOpts {
    /// The TLS the flags ask for, read from their files; `None` without --cacert.
    pub fn load(&self) -> Result<Option<ClientTlsConfig>, CliError> {
        let Some(ca) = &self.cacert else {
            return Ok(None);
        };
        let identity = self.cert.as_deref().zip(self.key.as_deref());
        crate::transport::client_tls(ca, identity, ["--cacert", "--cert", "--key"])
            .map(Some)
            .map_err(|e| CliError::new(exit::USAGE, e))
    }
}

/// Runs one parsed command.
pub async fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Serve(args) => commands::serve(*args).await,
        Command::Playground(args) => commands::playground(args).await,
        Command::Put(args) => commands::put(args).await,
        Command::Get(args) => commands::get(args).await,
        Command::Del(args) => commands::del(args).await,
        Command::Scan(args) => commands::scan(args).await,
        Command::Watch(args) => commands::watch(args).await,
        Command::Cas(args) => commands::cas(args).await,
        Command::Lease(command) => commands::lease(command).await,
        Command::Lock(args) => commands::lock(args).await,
        Command::Elect(args) => commands::elect(args).await,
        Command::Metrics(args) => commands::metrics(args).await,
        Command::Cluster(command) => commands::cluster(command).await,
        Command::Status(args) => commands::status(args).await,
        Command::Health(args) => commands::health(args).await,
        Command::Bench(args) => commands::bench(args).await,
        Command::Certs(command) => commands::certs(command).await,
    }
}
