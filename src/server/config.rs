//! `raftkv serve` settings: flags (each also read from a `RAFTKV_…` env var), their parsing and
//! the checks that turn a wrong setting into a one-line message instead of a failure later.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::raft::member::DEFAULT_PEER_PORT_OFFSET;
use crate::raft::{NodeId, RaftSettings};
use crate::text::parse_duration;
use crate::transport::{self, parse_host_port};
use crate::watch::HistoryLimits;
use tonic::transport::{ClientTlsConfig, ServerTlsConfig};

/// Settings of one node.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// This node's id: a positive integer, unique in the cluster.
    #[arg(long, env = "RAFTKV_ID")]
    pub id: NodeId,

    /// Address of the client port: the gRPC services clients use (KV, Cluster, health,
    /// reflection).
    #[arg(long, env = "RAFTKV_LISTEN", default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,

    /// Address of the peer port: the internal services other nodes use (Raft replication,
    /// forwarding to the leader), never served on the client port. [default: --listen's address
    /// with its port + 2000, e.g. 127.0.0.1:9001]
    #[arg(long, env = "RAFTKV_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,

    /// Address of the HTTP gateway (curl-friendly /kv, /metrics, /health). Off unless set.
    #[arg(long, env = "RAFTKV_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// Join a running cluster instead of initialising one: the peer endpoints (host:port,
    /// comma-separated) of its members. The node asks to be added as a learner, catches up, and
    /// is promoted to voter. Ignored once the node has Raft state (a restart).
    #[arg(
        long,
        env = "RAFTKV_JOIN",
        value_delimiter = ',',
        conflicts_with = "initial_cluster"
    )]
    pub join: Vec<String>,

    /// host:port that clients use to reach this node's client port. Defaults to --listen, or,
    /// when that is a wildcard (0.0.0.0), to the --peer-advertise host with --listen's port.
    #[arg(long, env = "RAFTKV_ADVERTISE", value_parser = parse_host_port)]
    pub advertise: Option<String>,

    /// host:port that peers use to reach this node's peer port. Defaults to this node's entry
    /// in --initial-cluster, else to --peer-listen.
    #[arg(long, env = "RAFTKV_PEER_ADVERTISE", value_parser = parse_host_port)]
    pub peer_advertise: Option<String>,

    /// Directory holding this node's sled database (log, vote, snapshots). Created if missing.
    #[arg(long, env = "RAFTKV_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Skip the fdatasync after each log, vote and purge flush (etcd's flag). UNSAFE: a killed
    /// process still loses nothing acknowledged, but after a power loss or kernel crash the node
    /// may come back without writes it acknowledged, or with an older vote and vote twice in a
    /// term. For tests and throwaway clusters only.
    #[arg(long, env = "RAFTKV_UNSAFE_NO_FSYNC")]
    pub unsafe_no_fsync: bool,

    /// PEM certificate of this node's client port: with --key-file, the client port (and the
    /// HTTP gateway) speak only TLS. It must name the address clients use.
    #[arg(long, env = "RAFTKV_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,

    /// PEM private key of --cert-file.
    #[arg(long, env = "RAFTKV_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,

    /// PEM CA certificate that client certificates must be signed by (--client-cert-auth).
    #[arg(long, env = "RAFTKV_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Refuse clients without a certificate signed by --trusted-ca-file.
    #[arg(long, env = "RAFTKV_CLIENT_CERT_AUTH", requires = "trusted_ca_file")]
    pub client_cert_auth: bool,

    /// PEM certificate of this node's peer port: with --peer-key-file and
    /// --peer-trusted-ca-file, the peer port speaks only mutual TLS. The node presents it both
    /// as a server and when it dials its peers, so it must name the --peer-advertise host and be
    /// valid for server and client use.
    #[arg(long, env = "RAFTKV_PEER_CERT_FILE", requires_all = ["peer_key_file", "peer_trusted_ca_file"])]
    pub peer_cert_file: Option<PathBuf>,

    /// PEM private key of --peer-cert-file.
    #[arg(long, env = "RAFTKV_PEER_KEY_FILE", requires = "peer_cert_file")]
    pub peer_key_file: Option<PathBuf>,

    /// PEM CA certificate of the peers: every peer must present a certificate it signed, and
    /// every peer this node dials must serve one.
    #[arg(long, env = "RAFTKV_PEER_TRUSTED_CA_FILE", requires = "peer_cert_file")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Revisions of changes kept in memory for watchers that start in the past (`raftkv watch
    /// --rev N`); a watch from an older revision is told the oldest it can start from.
    #[arg(long, env = "RAFTKV_WATCH_HISTORY", default_value_t = 10_000)]
    pub watch_history: usize,

    /// Most bytes of keys and values that history holds (the oldest go first).
    #[arg(long, env = "RAFTKV_WATCH_HISTORY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub watch_history_bytes: usize,

    /// How often an idle watch that asked for progress notifications hears the current revision.
    #[arg(long, env = "RAFTKV_WATCH_PROGRESS_INTERVAL", default_value = "5s",
        value_parser = parse_duration)]
    pub watch_progress_interval: Duration,

    /// Members of a new cluster as `id=host:port,…`, naming each member's peer address (its
    /// --peer-advertise). A node whose data dir is empty initialises the cluster with them; a
    /// node that already has state ignores this.
    #[arg(long, env = "RAFTKV_INITIAL_CLUSTER", value_parser = parse_initial_cluster)]
    pub initial_cluster: Option<InitialCluster>,

    /// Threads of the async runtime serving gRPC, HTTP and Raft. Defaults to half the cores
    /// (at least one): every write crosses several tasks (client handler, proposer, Raft core,
    /// log flusher, replication, state machine), and when they sit on different threads each
    /// handoff is a futex wake-up; on a small machine those wake-ups, not the work, were the
    /// bottleneck (see BENCHMARKS.md).
    #[arg(long, env = "RAFTKV_WORKER_THREADS", default_value_t = default_worker_threads())]
    pub worker_threads: usize,

    /// Leader heartbeat period in milliseconds.
    #[arg(long, env = "RAFTKV_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,

    /// Election timeout: a random time in [min, 2×min) milliseconds. A follower campaigns once the
    /// old leader's lease (2×min) and then such a timeout have passed without a heartbeat, so a
    /// leader failure costs about 3-4×min. Must be well above the heartbeat plus one disk flush.
    #[arg(long, env = "RAFTKV_ELECTION_TIMEOUT_MS", default_value_t = 1000)]
    pub election_timeout_ms: u64,

    /// Build a snapshot after this many entries have been applied since the last one.
    #[arg(long, env = "RAFTKV_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,

    /// Log entries kept behind a snapshot, so slightly lagging followers catch up from the log
    /// rather than by a full snapshot.
    #[arg(long, env = "RAFTKV_LOGS_KEPT", default_value_t = 1_000)]
    pub logs_kept: u64,

    /// Largest key accepted, in bytes.
    #[arg(long, env = "RAFTKV_MAX_KEY_BYTES", default_value_t = 4096)]
    pub max_key_bytes: usize,

    /// Largest value accepted, in bytes.
    #[arg(long, env = "RAFTKV_MAX_VALUE_BYTES", default_value_t = 1024 * 1024)]
    pub max_value_bytes: usize,

    /// How long a write or a linearizable read may wait for the cluster before failing with
    /// UNAVAILABLE, in milliseconds.
    #[arg(long, env = "RAFTKV_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// How long a write's idempotency key is remembered (e.g. 30s, 10m, 1h): a retry with the
    /// same key within this time, counted from the first attempt by the leader's clock, gets the
    /// first attempt's answer instead of being applied again.
    #[arg(long, env = "RAFTKV_IDEMPOTENCY_WINDOW", default_value = "10m",
        value_parser = parse_duration)]
    pub idempotency_window: Duration,

    /// Most idempotency keys remembered; when full, the oldest are forgotten first (counted in
    /// the metrics as evictions). Each key holds its first answer, a few dozen bytes (a failed
    /// compare-and-swap also holds the value it found).
    #[arg(long, env = "RAFTKV_IDEMPOTENCY_MAX_KEYS", default_value_t = 100_000)]
    pub idempotency_max_keys: u64,

    /// File of bearer tokens, one per line (blank lines and # comments ignored). Every call to
    /// the KV and Cluster services, and every /kv and /metrics request, must then send
    /// `authorization: Bearer <token>` with one of them; health, reflection and the peer
    /// services stay open. Re-read on SIGHUP. Use with TLS: without it tokens travel in clear.
    #[arg(long, env = "RAFTKV_AUTH_TOKEN_FILE", value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,
}

/// The `--initial-cluster` members: id → address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialCluster(pub BTreeMap<NodeId, String>);

/// Parses `id=host:port,id=host:port,…`.
pub fn parse_initial_cluster(text: &str) -> Result<InitialCluster, String> {
    let mut members = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, address) = item
            .split_once('=')
            .ok_or_else(|| format!("member {item:?} is not of the form id=host:port"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| format!("member {item:?}: id {id:?} is not a positive integer"))?;
        if id == 0 {
            return Err(format!(
                "member {item:?}: node id 0 is reserved; use 1 or more"
            ));
        }
        let address =
            parse_host_port(address.trim()).map_err(|e| format!("member {item:?}: {e}"))?;
        if members.insert(id, address).is_some() {
            return Err(format!("node id {id} appears twice"));
        }
    }
    if members.is_empty() {
        return Err("no members given; expected id=host:port,…".to_string());
    }
    Ok(InitialCluster(members))
}

/// Half the cores this process may use, at least one (see `ServeArgs::worker_threads`).
fn default_worker_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .max(1)
}

/// A node's TLS: what each of its two ports presents and asks for, and how it dials its peers.
#[derive(Default)]
pub struct NodeTls {
    /// The client port's (and HTTP gateway's), with --cert-file.
    pub client: Option<ServerTlsConfig>,
    /// The peer port's, with --peer-cert-file: it always asks peers for a certificate.
    pub peer: Option<ServerTlsConfig>,
    /// How this node dials its peers: verifying them, presenting its peer certificate.
    pub dial_peers: Option<ClientTlsConfig>,
}

/// Where this node is reached: what it tells clients and peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    /// `--advertise`: the client port as clients reach it.
    pub client: String,
    /// `--peer-advertise`: the peer port as peers reach it.
    pub peer: String,
    /// The address the peer port binds.
    pub peer_listen: SocketAddr,
}

impl ServeArgs {
    /// The TLS settings the flags ask for, read from their files.
    pub fn tls(&self) -> Result<NodeTls, String> {
        let mut tls = NodeTls::default();
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let client_ca = match (self.client_cert_auth, &self.trusted_ca_file) {
                    (true, Some(ca)) => Some(ca.as_path()),
                    _ => None,
                };
                tls.client = Some(transport::server_tls(
                    cert,
                    key,
                    client_ca,
                    ["--cert-file", "--key-file", "--trusted-ca-file"],
                )?);
            }
            _ if self.client_cert_auth => {
                return Err("--client-cert-auth needs --cert-file and --key-file".into())
            }
            _ => {}
        }
        if let (Some(cert), Some(key), Some(ca)) = (
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
        ) {
            let flags = [
                "--peer-cert-file",
                "--peer-key-file",
                "--peer-trusted-ca-file",
            ];
            tls.peer = Some(transport::server_tls(cert, key, Some(ca), flags)?);
            tls.dial_peers = Some(transport::client_tls(
                ca,
                Some((cert, key)),
                [flags[2], flags[0], flags[1]],
            )?);
        }
        Ok(tls)
    }

    /// `--watch-history` and `--watch-history-bytes`.
    pub fn watch_history_limits(&self) -> HistoryLimits {
        HistoryLimits {
            max_revisions: self.watch_history,
            max_bytes: self.watch_history_bytes,
        }
    }

    /// The flags that tune openraft.
    pub fn raft_settings(&self) -> RaftSettings {
        RaftSettings {
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_ms: self.election_timeout_ms,
            snapshot_every: self.snapshot_every,
            logs_kept: self.logs_kept,
        }
    }

    /// Cross-flag checks clap cannot express. Returns where this node is reached.
    pub fn validate(&self) -> Result<Addresses, String> {
        if self.id == 0 {
            return Err("--id 0 is reserved; use 1 or more".into());
        }
        if self.worker_threads == 0 {
            return Err("--worker-threads must be at least 1".into());
        }
        if self.heartbeat_ms == 0 {
            return Err("--heartbeat-ms must be at least 1".into());
        }
        if self.election_timeout_ms < 3 * self.heartbeat_ms {
            return Err(format!(
                "--election-timeout-ms ({}) must be at least 3 × --heartbeat-ms ({})",
                self.election_timeout_ms, self.heartbeat_ms
            ));
        }
        if self.snapshot_every == 0 {
            return Err("--snapshot-every must be at least 1".into());
        }
        if self.idempotency_window < Duration::from_secs(1) || self.idempotency_max_keys == 0 {
            return Err(
                "--idempotency-window must be at least 1s and --idempotency-max-keys at least 1"
                    .into(),
            );
        }
        if self.watch_progress_interval < Duration::from_millis(100) {
            return Err("--watch-progress-interval must be at least 100ms".into());
        }
        if self.max_key_bytes == 0 || self.max_value_bytes == 0 {
            return Err("--max-key-bytes and --max-value-bytes must be at least 1".into());
        }
        self.addresses()
    }

    /// The ports and addresses, each defaulted from the others as the flags' help says.
    fn addresses(&self) -> Result<Addresses, String> {
        let peer_listen = match self.peer_listen {
            Some(addr) => addr,
            None if self.listen.port() == 0 => SocketAddr::new(self.listen.ip(), 0),
            None => {
                let port = self
                    .listen
                    .port()
                    .checked_add(DEFAULT_PEER_PORT_OFFSET)
                    .ok_or_else(|| {
                        format!(
                            "--listen port {} + {DEFAULT_PEER_PORT_OFFSET} is not a port: give --peer-listen",
                            self.listen.port()
                        )
                    })?;
                SocketAddr::new(self.listen.ip(), port)
            }
        };
        if peer_listen == self.listen && self.listen.port() != 0 {
            return Err(format!(
                "--peer-listen {peer_listen} is the client port: peers and clients need a port each"
            ));
        }
        let own_entry = match &self.initial_cluster {
            Some(cluster) => Some(cluster.0.get(&self.id).cloned().ok_or_else(|| {
                format!(
                    "--initial-cluster does not list this node's id {}; members are {:?}",
                    self.id,
                    cluster.0.keys().collect::<Vec<_>>()
                )
            })?),
            None => None,
        };
        if let (Some(advertise), Some(entry)) = (&self.peer_advertise, &own_entry) {
            if advertise != entry {
                return Err(format!(
                    "--peer-advertise {advertise} differs from this node's --initial-cluster entry {entry}"
                ));
            }
        }
        let peer = match (&self.peer_advertise, own_entry) {
            (Some(advertise), _) => advertise.clone(),
            (None, Some(entry)) => entry,
            (None, None) if peer_listen.ip().is_unspecified() => {
                return Err(format!(
                    "--peer-advertise is required when the peer port listens on {peer_listen} \
                     without --initial-cluster: peers need a reachable address"
                ))
            }
            (None, None) => peer_listen.to_string(),
        };
        let client = match &self.advertise {
            Some(advertise) => advertise.clone(),
            None if !self.listen.ip().is_unspecified() => self.listen.to_string(),
            None => match peer.rsplit_once(':') {
                Some((host, _)) => format!("{host}:{}", self.listen.port()),
                None => return Err("--advertise is required with a wildcard --listen".into()),
            },
        };
        Ok(Addresses {
            client,
            peer,
            peer_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_initial_cluster() {
        let c = parse_initial_cluster("1=a:1, 2=b:2,3=127.0.0.1:7003").unwrap();
        assert_eq!(c.0.len(), 3);
        assert_eq!(c.0[&3], "127.0.0.1:7003");
    }

    #[test]
    fn rejects_bad_initial_cluster() {
        for bad in [
            "",
            "1",
            "x=a:1",
            "0=a:1",
            "1=a",
            "1=:5",
            "1=a:0",
            "1=a:99999",
            "1=a:1,1=b:2",
        ] {
            assert!(
                parse_initial_cluster(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
