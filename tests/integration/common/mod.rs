//! Test harness: real `raftkv serve` processes on loopback with temporary sled data dirs.
//!
//! Every node is a child process killed by PID when the cluster is dropped, including when a
//! test fails; on failure the tail of each node's log is printed. Every wait is bounded.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use raftkv::proto::v1::cluster_client::ClusterClient;
use raftkv::proto::v1::kv_client::KvClient;
use raftkv::proto::v1::{
    Consistency, DeleteRequest, GetRequest, GetResponse, PutRequest, ScanRequest, StatusRequest,
    StatusResponse,
};
use tempfile::TempDir;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

/// The raftkv binary built by cargo for these tests.
pub const RAFTKV: &str = env!("CARGO_BIN_EXE_raftkv");

/// Upper bound for any single test's cluster operations.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs a test body with a hard time bound, so a hung cluster fails the test instead of CI.
pub async fn bounded<F: Future<Output = ()>>(body: F) {
    bounded_within(TEST_TIMEOUT, body).await
}

/// [`bounded`] with a bound of the test's own choosing.
pub async fn bounded_within<F: Future<Output = ()>>(limit: Duration, body: F) {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("test exceeded its time bound of {limit:?}"));
}

/// Ports handed out by [`free_port`]: below Linux's ephemeral range (32768-60999 by default).
/// A node's port must stay free while the node is down for a restart, and any outgoing
/// connection (another test's client, a peer's retry) may otherwise be given that very port as
/// its local end, after which the restarted node cannot listen on it ("Address already in use").
const TEST_PORTS: std::ops::Range<u16> = 12_000..32_000;

/// A free TCP port on 127.0.0.1 from [`TEST_PORTS`] (checked by binding it, then released; the
/// node binds it right after). Successive calls in one test process walk the range from a start
/// that depends on the process id, so parallel tests and test binaries do not race for one port.
pub fn free_port() -> u16 {
    free_port_on(Ipv4Addr::LOCALHOST)
}

/// Like [`free_port`], for a port free on `ip` (a loopback address) and on 127.0.0.1 both.
pub fn free_port_on(ip: Ipv4Addr) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = TEST_PORTS.start + offset as u16;
        if TcpListener::bind((ip, port)).is_ok()
            && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}");
}

/// A channel to one node; connects eagerly so an unreachable node fails fast.
pub async fn channel_to(address: &str) -> Result<Channel, Status> {
    channel_with(address, None).await
}

/// [`channel_to`] over TLS when `tls` is given.
pub async fn channel_with(address: &str, tls: Option<&ClientTlsConfig>) -> Result<Channel, Status> {
    endpoint(address, tls)?
        .connect()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))
}

/// The endpoint of a node's client port, over TLS when `tls` is given.
pub fn endpoint(address: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, Status> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Channel::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(15));
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.clone())
            .map_err(|e| Status::invalid_argument(e.to_string())),
        None => Ok(endpoint),
    }
}

/// One Put to the node at `address`.
pub async fn put_at(address: &str, key: &str, value: &[u8]) -> Result<u64, Status> {
    put_on(channel_to(address).await?, key, value).await
}

/// One Put through `channel`.
pub async fn put_on(channel: Channel, key: &str, value: &[u8]) -> Result<u64, Status> {
    let request = PutRequest {
        lease: 0,
        key: key.to_string(),
        value: value.to_vec(),
        ttl_ms: 0,
    };
    let mut client = KvClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    Ok(client.put(request).await?.into_inner().revision)
}

pub struct TestNode {
    pub id: u64,
    /// The client port (`--listen`).
    pub address: String,
    /// The peer port (`--peer-listen`), on the same IP.
    pub peer_address: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Started with `--join <the other nodes>` instead of `--initial-cluster`.
    pub joins: bool,
    /// Address of the node's HTTP gateway (`--http-listen`), when it serves one.
    pub http: Option<String>,
    child: Option<Child>,
}

impl TestNode {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The loopback IP this node listens on.
    pub fn ip(&self) -> Ipv4Addr {
        self.address
            .rsplit_once(':')
            .and_then(|(ip, _)| ip.parse().ok())
            .expect("node address is ip:port")
    }
}

/// How [`TestCluster::start_with`] starts its nodes.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Every node also serves the HTTP gateway on its own port.
    pub http: bool,
    /// Node `i` listens on 127.0.0.`i+1` instead of 127.0.0.1, so that a firewall rule can cut
    /// the traffic between two nodes by address (its peer connections leave from that address).
    pub own_ips: bool,
    /// `--election-timeout-ms` of every node.
    pub election_timeout_ms: u64,
    /// `--heartbeat-ms` of every node; openraft 0.9 also bounds each AppendEntries by it.
    pub heartbeat_ms: u64,
    /// TLS with client certificates on every client port and mutual TLS on every peer port,
    /// from certificates `raftkv certs init` writes for the test; the harness's clients use them.
    pub tls: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            http: false,
            own_ips: false,
            election_timeout_ms: 1000,
            heartbeat_ms: 100,
            tls: false,
        }
    }
}

impl ClusterOptions {
    /// The client and peer addresses node `id` listens on.
    fn addresses(&self, id: u64) -> (String, String) {
        let ip = if self.own_ips {
            let last = u8::try_from(id + 1).expect("at most 254 nodes with own IPs");
            Ipv4Addr::new(127, 0, 0, last)
        } else {
            Ipv4Addr::LOCALHOST
        };
        (
            format!("{ip}:{}", free_port_on(ip)),
            format!("{ip}:{}", free_port_on(ip)),
        )
    }

    fn node(&self, dir: &Path, id: u64, joins: bool) -> TestNode {
        let (address, peer_address) = self.addresses(id);
        TestNode {
            id,
            address,
            peer_address,
            data_dir: dir.join(format!("node{id}")),
            log: dir.join(format!("node{id}.log")),
            joins,
            http: (self.http && !joins).then(|| format!("127.0.0.1:{}", free_port())),
            child: None,
        }
    }
}

pub struct TestCluster {
    pub dir: TempDir,
    pub nodes: Vec<TestNode>,
    initial_cluster: String,
    extra_args: Vec<String>,
    /// Environment given to one node's process on every start: (node id, name, value).
    node_env: Vec<(u64, String, String)>,
    options: ClusterOptions,
    /// With [`ClusterOptions::tls`]: the certificates and the clients' TLS.
    pub tls: Option<TestTls>,
}

/// Certificates of a TLS test cluster (`raftkv certs init`, one per node id up to
/// [`TestTls::NODES`], valid for 127.0.0.1-127.0.0.9) and the TLS its clients use.
pub struct TestTls {
    pub certs: PathBuf,
    pub client: ClientTlsConfig,
}

impl TestTls {
    pub const NODES: u64 = 8;

    fn init(dir: &Path) -> Self {
        let certs = dir.join("certs");
        let hosts = (1..=9)
            .map(|i| format!("127.0.0.{i}"))
            .chain(["localhost".to_string()])
            .collect::<Vec<_>>()
            .join(",");
        let out = Command::new(RAFTKV)
            .args(["certs", "init"])
            .arg(&certs)
            .args(["--nodes", &Self::NODES.to_string(), "--hosts", &hosts])
            .output()
            .expect("run raftkv certs init");
        assert!(
            out.status.success(),
            "certs init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let client = raftkv::transport::client_tls(
            &certs.join("ca.pem"),
            Some((&certs.join("client.pem"), &certs.join("client-key.pem"))),
            ["ca.pem", "client.pem", "client-key.pem"],
        )
        .expect("client TLS");
        Self { certs, client }
    }

    /// The `raftkv serve` flags of node `id`: both ports TLS, client certificates required.
    fn serve_args(&self, id: u64) -> Vec<String> {
        assert!(id <= Self::NODES, "no certificate for node {id}");
        let file = |name: String| self.certs.join(name).display().to_string();
        let (cert, key, ca) = (
            file(format!("node{id}.pem")),
            file(format!("node{id}-key.pem")),
            file("ca.pem".into()),
        );
        [
            ("--cert-file", &cert),
            ("--key-file", &key),
            ("--trusted-ca-file", &ca),
            ("--peer-cert-file", &cert),
            ("--peer-key-file", &key),
            ("--peer-trusted-ca-file", &ca),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value.clone()])
        .chain(["--client-cert-auth".to_string()])
        .collect()
    }
}

impl TestCluster {
    /// Starts `size` nodes with `extra_args` added to every `raftkv serve` and waits for a leader.
    pub async fn start(size: u64, extra_args: &[&str]) -> Self {
        Self::start_with(size, extra_args, ClusterOptions::default()).await
    }

    /// Like [`TestCluster::start`], and every node also serves the HTTP gateway on its own port.
    pub async fn start_with_http(size: u64, extra_args: &[&str]) -> Self {
        let options = ClusterOptions {
            http: true,
            ..ClusterOptions::default()
        };
        Self::start_with(size, extra_args, options).await
    }

    /// Like [`TestCluster::start`], with `env` set for every node process at every (re)start
    /// (for example `RAFTKV_FAILPOINTS`, which needs a build with `--features failpoints`).
    pub async fn start_with_env(size: u64, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::start_with_node_env(size, extra_args, |_| env.clone()).await
    }

    /// Like [`TestCluster::start`], and node `id` also gets the environment `env(id)` (for
    /// example `RAFTKV_FAILPOINTS`) on this and every later start.
    pub async fn start_with_node_env(
        size: u64,
        extra_args: &[&str],
        env: impl Fn(u64) -> Vec<(String, String)>,
    ) -> Self {
        let node_env = (1..=size)
            .flat_map(|id| env(id).into_iter().map(move |(k, v)| (id, k, v)))
            .collect();
        Self::launch_with(size, extra_args, ClusterOptions::default(), node_env).await
    }

    /// Like [`TestCluster::start`], with the given [`ClusterOptions`].
    pub async fn start_with(size: u64, extra_args: &[&str], options: ClusterOptions) -> Self {
        Self::launch_with(size, extra_args, options, Vec::new()).await
    }

    async fn launch_with(
        size: u64,
        extra_args: &[&str],
        options: ClusterOptions,
        node_env: Vec<(u64, String, String)>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let tls = options.tls.then(|| TestTls::init(dir.path()));
        let nodes: Vec<TestNode> = (1..=size)
            .map(|id| options.node(dir.path(), id, false))
            .collect();
        let initial_cluster = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_address))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            dir,
            nodes,
            initial_cluster,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            node_env,
            options,
            tls,
        };
        for id in 1..=size {
            cluster.start_node(id);
        }
        cluster.wait_for_leader(Duration::from_secs(30)).await;
        cluster.wait_for_published(Duration::from_secs(30)).await;
        cluster
    }

    /// Waits until every node's view of the membership names every voter's client address: the
    /// members of a new cluster publish theirs (one membership entry each) just after the first
    /// election, and a test that counts log entries must not see those land midway.
    pub async fn wait_for_published(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let mut published = true;
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                published &= match self.status(node.id).await {
                    Ok(status) => status.voters.iter().all(|m| !m.address.is_empty()),
                    Err(_) => false,
                };
            }
            if published {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the members did not publish their client addresses within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn node_mut(&mut self, id: u64) -> &mut TestNode {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("node id in cluster")
    }

    pub fn node(&self, id: u64) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("node id in cluster")
    }

    /// (Re)starts a node's process on its address and data dir.
    pub fn start_node(&mut self, id: u64) {
        let initial_cluster = self.initial_cluster.clone();
        let founders = self
            .nodes
            .iter()
            .filter(|n| !n.joins)
            .map(|n| n.peer_address.clone())
            .collect::<Vec<_>>()
            .join(",");
        let extra_args = self.extra_args.clone();
        let env: Vec<(String, String)> = self
            .node_env
            .iter()
            .filter(|(node, ..)| *node == id)
            .map(|(_, k, v)| (k.clone(), v.clone()))
            .collect();
        let election_timeout_ms = self.options.election_timeout_ms.to_string();
        let heartbeat_ms = self.options.heartbeat_ms.to_string();
        let tls_args = self
            .tls
            .as_ref()
            .map(|tls| tls.serve_args(id))
            .unwrap_or_default();
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "node {id} is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("node log file");
        let membership = if node.joins {
            ["--join", &founders]
        } else {
            ["--initial-cluster", &initial_cluster]
        };
        let child = Command::new(RAFTKV)
            .arg("serve")
            .args(["--id", &id.to_string()])
            .args(["--listen", &node.address])
            .args(["--peer-listen", &node.peer_address])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(membership)
            .args(
                node.http
                    .iter()
                    .flat_map(|http| ["--http-listen", http.as_str()]),
            )
            .args(["--heartbeat-ms", &heartbeat_ms])
            .args(["--election-timeout-ms", &election_timeout_ms])
            .args(&tls_args)
            .args(&extra_args)
            .env("RAFTKV_LOG", "info")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn raftkv serve");
        node.child = Some(child);
    }

    /// Sets the environment variable `name` for node `id`'s later starts.
    pub fn set_node_env(&mut self, id: u64, name: &str, value: &str) {
        self.node_env
            .retain(|(node, k, _)| !(*node == id && k == name));
        self.node_env
            .push((id, name.to_string(), value.to_string()));
    }

    /// Adds and starts a new, empty node that joins the running cluster with `--join`.
    pub fn start_joining_node(&mut self) -> u64 {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let node = self.options.node(self.dir.path(), id, true);
        self.nodes.push(node);
        self.start_node(id);
        id
    }

    /// The exit status of node `id` if its process ended by itself (a crash, a port it could not
    /// bind) while the test thought it running.
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let child = self.node_mut(id).child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// SIGKILL: the process gets no chance to flush or say goodbye.
    pub fn kill(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether node `id`'s process ended by itself (it is still counted as started).
    pub fn has_exited(&mut self, id: u64) -> bool {
        matches!(
            self.node_mut(id).child.as_mut().map(Child::try_wait),
            Some(Ok(Some(_)))
        )
    }

    /// Forgets the process of a node that ended by itself, so that it can be started again.
    pub fn forget_exited(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process keeps its sockets open but answers nothing, as a node cut off the
    /// network does from its peers' side. Undo with [`TestCluster::resume`]; a paused node is
    /// still killed on drop.
    pub fn pause(&self, id: u64) {
        self.signal(id, nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT for a node stopped by [`TestCluster::pause`].
    pub fn resume(&self, id: u64) {
        self.signal(id, nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, id: u64, signal: nix::sys::signal::Signal) {
        let pid = self.node(id).pid().expect("node is running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .unwrap_or_else(|e| panic!("{signal} to node {id}: {e}"));
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns whether it exited by itself.
    pub fn stop(&mut self, id: u64) -> bool {
        let node = self.node_mut(id);
        let Some(mut child) = node.child.take() else {
            return true;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.address.clone()).collect()
    }

    pub async fn channel(&self, id: u64) -> Result<Channel, Status> {
        channel_with(&self.node(id).address, self.client_tls()).await
    }

    /// The TLS the harness's clients use, for a TLS cluster.
    pub fn client_tls(&self) -> Option<&ClientTlsConfig> {
        self.tls.as_ref().map(|tls| &tls.client)
    }

    pub async fn kv(&self, id: u64) -> Result<KvClient<Channel>, Status> {
        Ok(KvClient::new(self.channel(id).await?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    pub async fn status(&self, id: u64) -> Result<StatusResponse, Status> {
        let mut client = ClusterClient::new(self.channel(id).await?);
        Ok(client.status(StatusRequest {}).await?.into_inner())
    }

    pub async fn put(&self, id: u64, key: &str, value: &[u8]) -> Result<u64, Status> {
        put_on(self.channel(id).await?, key, value).await
    }

    pub async fn get(
        &self,
        id: u64,
        key: &str,
        consistency: Consistency,
    ) -> Result<GetResponse, Status> {
        let request = GetRequest {
            key: key.to_string(),
            consistency: consistency as i32,
        };
        Ok(self.kv(id).await?.get(request).await?.into_inner())
    }

    pub async fn delete(&self, id: u64, key: &str) -> Result<(bool, u64), Status> {
        let request = DeleteRequest {
            key: key.to_string(),
        };
        let reply = self.kv(id).await?.delete(request).await?.into_inner();
        Ok((reply.deleted, reply.revision))
    }

    /// Every key of node `id`'s map with its value and revision, read page by page with
    /// `consistency` (STALE: this node's own copy, whatever it has applied).
    pub async fn scan_all(
        &self,
        id: u64,
        consistency: Consistency,
    ) -> Result<BTreeMap<String, (Vec<u8>, u64)>, Status> {
        let mut client = self.kv(id).await?;
        let mut map = BTreeMap::new();
        let mut start = String::new();
        loop {
            let request = ScanRequest {
                start: start.clone(),
                limit: 10_000,
                consistency: consistency as i32,
                ..ScanRequest::default()
            };
            let page = client.scan(request).await?.into_inner();
            for kv in page.kvs {
                map.insert(kv.key, (kv.value, kv.revision));
            }
            if !page.more {
                return Ok(map);
            }
            if page.next_start <= start {
                return Err(Status::internal(format!(
                    "scan on node {id} does not advance: next_start {:?} after start {start:?}",
                    page.next_start
                )));
            }
            start = page.next_start;
        }
    }

    /// A put retried on UNAVAILABLE (no leader yet) until `within` has passed.
    pub async fn put_retrying(&self, id: u64, key: &str, value: &[u8], within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            match self.put(id, key, value).await {
                Ok(revision) => return revision,
                Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(status) => panic!("put {key} on node {id} failed: {status}"),
            }
        }
    }

    /// A get retried on UNAVAILABLE (an election in progress) until `within` has passed.
    pub async fn get_retrying(
        &self,
        id: u64,
        key: &str,
        consistency: Consistency,
        within: Duration,
    ) -> Result<GetResponse, Status> {
        let deadline = Instant::now() + within;
        loop {
            match self.get(id, key, consistency).await {
                Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                result => return result,
            }
        }
    }

    /// Waits until a running node names a leader that every running node agrees on.
    pub async fn wait_for_leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                leaders.push(self.status(node.id).await.map(|s| s.leader_id).unwrap_or(0));
            }
            let first = leaders.first().copied().unwrap_or(0);
            let agreed =
                first != 0 && leaders.iter().all(|l| *l == first) && self.node(first).is_running();
            if agreed {
                return first;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {within:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until node `id` has applied at least up to `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, within: Duration) -> StatusResponse {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(status) = self.status(id).await {
                if status.last_applied_index >= index {
                    return status;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {id} applied only {} of {index} within {within:?}",
                    status.last_applied_index
                );
            } else {
                assert!(
                    Instant::now() < deadline,
                    "node {id} did not answer within {within:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ids of running nodes other than `id`.
    pub fn others(&self, id: u64) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.id != id && n.is_running())
            .map(|n| n.id)
            .collect()
    }

    /// Prints each node's state and log tail; a node that exited on its own (a port it could
    /// not bind, a panic) is named as such, since its log may end long before the failure.
    fn dump_logs(&mut self) {
        for node in &mut self.nodes {
            let state = match node.child.as_mut().map(Child::try_wait) {
                None => "not running (stopped by the test)".to_string(),
                Some(Ok(None)) => "running".to_string(),
                Some(Ok(Some(status))) => format!("EXITED by itself: {status}"),
                Some(Err(e)) => format!("unknown ({e})"),
            };
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!(
                "----- node {} ({state}) log (last {} lines) -----",
                node.id,
                tail.len()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
