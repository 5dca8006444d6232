//! The HTTP gateway on three real `raftkv serve` processes, through a real HTTP client:
//! `/kv` reads and writes across nodes, error texts and statuses (the same as gRPC's), TTLs,
//! scan paging, `/metrics` counters and `/health`.
//!
//! Nodes come from the shared harness (`TestCluster::start_with_http`): real processes on
//! loopback, each with its own `--http-listen`, killed by PID on drop.

use crate::common;

use std::time::{Duration, Instant};

use common::{bounded, channel_to, TestCluster};
use raftkv::proto::v1::cluster_client::ClusterClient;
use raftkv::proto::v1::kv_client::KvClient;
use raftkv::proto::v1::{GetRequest, PutRequest, RemoveNodeRequest};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

const MIB: usize = 1024 * 1024;

/// A cluster whose nodes each serve the HTTP gateway on their own loopback port.
struct HttpCluster {
    nodes: TestCluster,
    client: reqwest::Client,
}

/// One HTTP answer, read in full.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_string())
    }

    fn header_u64(&self, name: &str) -> Option<u64> {
        self.header(name)
            .map(|v| v.parse().expect("numeric header"))
    }

    /// Asserts the status, showing the body when it differs.
    fn expect(self, status: StatusCode, what: &str) -> Self {
        assert_eq!(self.status, status, "{what}: body {:?}", self.text());
        self
    }
}

impl HttpCluster {
    async fn start(size: u64) -> Self {
        let nodes = TestCluster::start_with_http(size, &[]).await;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("HTTP client");
        let cluster = Self { nodes, client };
        for id in 1..=size {
            cluster
                .wait_health(id, StatusCode::OK, Duration::from_secs(60))
                .await;
        }
        cluster
    }

    fn http(&self, id: u64) -> &str {
        self.nodes
            .node(id)
            .http
            .as_deref()
            .expect("node serves HTTP")
    }

    fn grpc_address(&self, id: u64) -> &str {
        &self.nodes.node(id).address
    }

    /// (Re)starts a node's process on its addresses and data dir.
    fn spawn(&mut self, id: u64) {
        self.nodes.start_node(id);
    }

    /// SIGKILL by PID, and reap.
    fn kill(&mut self, id: u64) {
        self.nodes.kill(id);
    }

    async fn try_send(
        &self,
        method: Method,
        id: u64,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> reqwest::Result<Reply> {
        let url = format!("http://{}{path}", self.http(id));
        let mut request = self.client.request(method, url);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?.to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    async fn send(&self, method: Method, id: u64, path: &str, body: Option<Vec<u8>>) -> Reply {
        let what = format!("{method} {path} on node {id}");
        self.try_send(method, id, path, body)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    async fn get(&self, id: u64, path: &str) -> Reply {
        self.send(Method::GET, id, path, None).await
    }

    async fn put(&self, id: u64, path: &str, value: &[u8]) -> Reply {
        self.send(Method::PUT, id, path, Some(value.to_vec())).await
    }

    async fn delete(&self, id: u64, path: &str) -> Reply {
        self.send(Method::DELETE, id, path, None).await
    }

    /// Polls `/health` on a node until it answers `status`; returns that answer's body.
    async fn wait_health(&self, id: u64, status: StatusCode, within: Duration) -> String {
        self.wait_health_until(id, within, |reply| reply.status == status)
            .await
    }

    /// Polls `/health` on a node until its answer satisfies `done`; returns that answer's body.
    async fn wait_health_until(
        &self,
        id: u64,
        within: Duration,
        done: impl Fn(&Reply) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let last = match self.try_send(Method::GET, id, "/health", None).await {
                Ok(reply) if done(&reply) => return reply.text(),
                Ok(reply) => format!("{} {}", reply.status, reply.text()),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "node {id} /health did not answer as expected within {within:?}; last: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// This node's `/metrics` text, checked for the Prometheus content type.
    async fn metrics(&self, id: u64) -> String {
        let reply = self
            .get(id, "/metrics")
            .await
            .expect(StatusCode::OK, "/metrics");
        let content_type = reply.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        reply.text()
    }

    /// The leader as node `id` sees it, from its `/metrics`.
    async fn leader_seen_by(&self, id: u64) -> u64 {
        sample(&self.metrics(id).await, "raftkv_raft_leader_id")
    }

    async fn grpc(&self, id: u64) -> KvClient<tonic::transport::Channel> {
        let channel = channel_to(self.grpc_address(id))
            .await
            .expect("gRPC channel");
        KvClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }
}

/// The value of one sample (`name` including any labels) in a Prometheus text.
fn sample(text: &str, name: &str) -> u64 {
    let prefix = format!("{name} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"));
    line[prefix.len()..]
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn ops(text: &str, op: &str) -> u64 {
    sample(text, &format!("raftkv_operations_total{{op=\"{op}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_over_http_matches_grpc() {
    bounded(async {
        let cluster = HttpCluster::start(3).await;
        let mut grpc = cluster.grpc(3).await;

        // Written through node 1's gateway, read through node 2's.
        let put = cluster
            .put(1, "/kv/greeting", b"hello")
            .await
            .expect(StatusCode::OK, "put");
        let revision = put.json()["revision"].as_u64().expect("revision");
        assert!(revision > 0);
        let got = cluster
            .get(2, "/kv/greeting")
            .await
            .expect(StatusCode::OK, "get");
        assert_eq!(got.body, b"hello");
        assert_eq!(got.header_u64("x-raftkv-revision"), Some(revision));
        assert_eq!(
            got.header("content-type").as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(got.header("x-raftkv-ttl-ms"), None, "no TTL was set");

        // The same key over gRPC.
        let read = grpc
            .get(GetRequest {
                key: "greeting".into(),
                consistency: 0,
            })
            .await
            .expect("gRPC get")
            .into_inner();
        assert_eq!(
            (read.value.as_slice(), read.revision),
            (&b"hello"[..], revision)
        );

        // Keys may contain slashes and percent-encoded characters; values are raw bytes.
        let binary = [0u8, 0xff, b'\n', 0x80];
        cluster
            .put(2, "/kv/dir/sub%20key", &binary)
            .await
            .expect(StatusCode::OK, "put with slash");
        let read = grpc
            .get(GetRequest {
                key: "dir/sub key".into(),
                consistency: 0,
            })
            .await
            .expect("the key is decoded")
            .into_inner();
        assert_eq!(read.value, binary);
        // A stale read on a follower may lag: poll it until the write shows up.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = cluster.get(3, "/kv/dir/sub%20key?consistency=stale").await;
            if got.status == StatusCode::OK {
                assert_eq!(got.body, binary);
                break;
            }
            assert_eq!(got.status, StatusCode::NOT_FOUND, "{}", got.text());
            assert!(Instant::now() < deadline, "stale read never saw the write");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        errors_carry_the_grpc_message(&cluster, &mut grpc).await;
        value_size_limit(&cluster, &mut grpc).await;
        delete(&cluster).await;
        scan_pages(&cluster).await;
        ttl_expires(&cluster).await;
    })
    .await
}

async fn errors_carry_the_grpc_message(
    cluster: &HttpCluster,
    grpc: &mut KvClient<tonic::transport::Channel>,
) {
    let missing = cluster
        .get(1, "/kv/nope")
        .await
        .expect(StatusCode::NOT_FOUND, "missing key");
    assert_eq!(missing.text(), "key not found: nope");
    let status = grpc
        .get(GetRequest {
            key: "nope".into(),
            consistency: 0,
        })
        .await
        .expect_err("missing over gRPC");
    assert_eq!(missing.text(), status.message());

    let empty = cluster
        .put(1, "/kv/", b"x")
        .await
        .expect(StatusCode::BAD_REQUEST, "put empty key");
    assert_eq!(empty.text(), "key cannot be empty");
    let status = grpc
        .put(PutRequest {
            lease: 0,
            key: String::new(),
            value: b"x".to_vec(),
            ttl_ms: 0,
        })
        .await
        .expect_err("empty key over gRPC");
    assert_eq!(empty.text(), status.message());
    let empty = cluster
        .get(2, "/kv/")
        .await
        .expect(StatusCode::BAD_REQUEST, "get empty key");
    assert_eq!(empty.text(), "key cannot be empty");
    cluster
        .delete(3, "/kv/")
        .await
        .expect(StatusCode::BAD_REQUEST, "delete empty key");

    let bad = cluster
        .get(1, "/kv/greeting?consistency=eventual")
        .await
        .expect(StatusCode::BAD_REQUEST, "unknown consistency");
    assert!(bad.text().contains("\"eventual\""), "{}", bad.text());
    let bad = cluster
        .put(1, "/kv/k?ttl=soon", b"v")
        .await
        .expect(StatusCode::BAD_REQUEST, "bad ttl");
    assert!(bad.text().starts_with("ttl: "), "{}", bad.text());
    let bad = cluster
        .put(1, "/kv/k?tll=30s", b"v")
        .await
        .expect(StatusCode::BAD_REQUEST, "misspelt parameter");
    assert!(bad.text().contains("tll"), "{}", bad.text());
    let no_lease = cluster
        .put(2, "/kv/k?lease=77", b"v")
        .await
        .expect(StatusCode::NOT_FOUND, "unknown lease");
    assert_eq!(no_lease.text(), "lease 77 not found (expired or revoked)");
    cluster
        .put(1, "/kv/k?lease=soon", b"v")
        .await
        .expect(StatusCode::BAD_REQUEST, "lease not a number");
    cluster
        .get(1, "/kv/k")
        .await
        .expect(StatusCode::NOT_FOUND, "rejected puts wrote nothing");
    cluster
        .get(1, "/nowhere")
        .await
        .expect(StatusCode::NOT_FOUND, "unknown path");
    let wrong = cluster
        .send(Method::POST, 1, "/kv/greeting", Some(b"v".to_vec()))
        .await
        .expect(StatusCode::METHOD_NOT_ALLOWED, "POST on a key");
    assert!(
        wrong.text().starts_with("method POST is not allowed"),
        "{}",
        wrong.text()
    );
    for reply in [
        cluster.get(1, "/kv/greeting").await,
        cluster.get(1, "/kv/nope").await,
        cluster.put(1, "/kv/", b"").await,
    ] {
        if reply.status != StatusCode::OK {
            assert!(!reply.text().contains('\n'), "one line: {:?}", reply.text());
        }
    }
}

async fn value_size_limit(cluster: &HttpCluster, grpc: &mut KvClient<tonic::transport::Channel>) {
    let exact = vec![7u8; MIB];
    cluster
        .put(2, "/kv/big", &exact)
        .await
        .expect(StatusCode::OK, "a value of exactly the limit");
    let got = cluster
        .get(1, "/kv/big")
        .await
        .expect(StatusCode::OK, "get big");
    assert_eq!(got.body.len(), MIB);
    assert!(got.body == exact, "the 1 MiB value came back changed");

    let over = vec![7u8; MIB + 1];
    let rejected = cluster
        .put(2, "/kv/too-big", &over)
        .await
        .expect(StatusCode::BAD_REQUEST, "a value one byte over the limit");
    assert_eq!(
        rejected.text(),
        format!(
            "value is {} bytes, over the limit of {MIB} bytes (--max-value-bytes)",
            MIB + 1
        )
    );
    let status = grpc
        .put(PutRequest {
            lease: 0,
            key: "too-big".into(),
            value: over,
            ttl_ms: 0,
        })
        .await
        .expect_err("too big over gRPC");
    assert_eq!(rejected.text(), status.message());
    cluster
        .get(3, "/kv/too-big")
        .await
        .expect(StatusCode::NOT_FOUND, "nothing was written");
}

async fn delete(cluster: &HttpCluster) {
    let put = cluster
        .put(1, "/kv/doomed", b"x")
        .await
        .expect(StatusCode::OK, "put");
    let put_revision = put.json()["revision"].as_u64().expect("revision");
    let deleted = cluster
        .delete(2, "/kv/doomed")
        .await
        .expect(StatusCode::OK, "delete")
        .json();
    assert_eq!(deleted["deleted"], Value::Bool(true), "{deleted}");
    assert!(deleted["revision"].as_u64().expect("revision") > put_revision);
    cluster
        .get(3, "/kv/doomed")
        .await
        .expect(StatusCode::NOT_FOUND, "deleted key");
    let again = cluster
        .delete(3, "/kv/doomed")
        .await
        .expect(StatusCode::OK, "delete again")
        .json();
    assert_eq!(again["deleted"], Value::Bool(false), "{again}");
}

async fn scan_pages(cluster: &HttpCluster) {
    for i in 0..5 {
        cluster
            .put(
                1 + i % 3,
                &format!("/kv/scan/{i}"),
                format!("v{i}").as_bytes(),
            )
            .await
            .expect(StatusCode::OK, "put for scan");
    }
    // Just outside the prefix on either side.
    cluster
        .put(1, "/kv/scan.", b"out")
        .await
        .expect(StatusCode::OK, "put");
    cluster
        .put(1, "/kv/scan0", b"out")
        .await
        .expect(StatusCode::OK, "put");
    cluster
        .put(1, "/kv/bin/x", &[0xff, 0x00])
        .await
        .expect(StatusCode::OK, "put binary");

    let mut keys = Vec::new();
    let mut pages = Vec::new();
    let mut start = String::new();
    loop {
        let path = format!("/kv?prefix=scan/&limit=2&start={start}");
        let page = cluster
            .get(2, &path)
            .await
            .expect(StatusCode::OK, "scan")
            .json();
        let kvs = page["kvs"].as_array().expect("kvs").clone();
        pages.push(kvs.len());
        for kv in &kvs {
            let key = kv["key"].as_str().expect("key").to_string();
            let i = key.trim_start_matches("scan/");
            assert_eq!(kv["value"], Value::String(format!("v{i}")), "{kv}");
            assert!(kv.get("encoding").is_none(), "text values are plain: {kv}");
            assert!(kv["revision"].as_u64().expect("revision") > 0);
            assert_eq!(kv["ttl_ms"], 0);
            keys.push(key);
        }
        if page["more"] != Value::Bool(true) {
            break;
        }
        start = page["next_start"].as_str().expect("next_start").to_string();
        assert!(!start.is_empty(), "more without next_start: {page}");
    }
    assert_eq!(pages, [2, 2, 1]);
    assert_eq!(keys, ["scan/0", "scan/1", "scan/2", "scan/3", "scan/4"]);

    let range = cluster
        .get(
            3,
            "/kv?start=scan/1&end=scan/3&keys_only=true&consistency=stale",
        )
        .await
        .expect(StatusCode::OK, "range scan")
        .json();
    let kvs = range["kvs"].as_array().expect("kvs");
    let keys: Vec<&str> = kvs.iter().filter_map(|kv| kv["key"].as_str()).collect();
    // Stale: node 3 may not have applied the last put yet, but these were written earlier.
    assert_eq!(keys, ["scan/1", "scan/2"], "{range}");
    assert!(kvs.iter().all(|kv| kv.get("value").is_none()), "{range}");

    let binary = cluster
        .get(1, "/kv?prefix=bin/")
        .await
        .expect(StatusCode::OK, "binary scan")
        .json();
    assert_eq!(binary["kvs"][0]["value"], "/wA=", "{binary}");
    assert_eq!(binary["kvs"][0]["encoding"], "base64", "{binary}");
    assert_eq!(binary["more"], false);

    let too_many = cluster
        .get(1, "/kv?prefix=scan/&limit=20000")
        .await
        .expect(StatusCode::BAD_REQUEST, "limit over the maximum");
    assert_eq!(too_many.text(), "limit 20000 is over the maximum of 10000");
    cluster
        .get(1, "/kv?prefix=scan/&limit=lots")
        .await
        .expect(StatusCode::BAD_REQUEST, "limit not a number");
}

async fn ttl_expires(cluster: &HttpCluster) {
    let before = Instant::now();
    cluster
        .put(1, "/kv/ephemeral?ttl=1500ms", b"soon gone")
        .await
        .expect(StatusCode::OK, "put with ttl");
    let got = cluster
        .get(2, "/kv/ephemeral")
        .await
        .expect(StatusCode::OK, "get with ttl");
    let ttl = got.header_u64("x-raftkv-ttl-ms").expect("x-raftkv-ttl-ms");
    assert!(ttl > 0 && ttl <= 1500, "ttl {ttl}");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = cluster.get(3, "/kv/ephemeral").await;
        if got.status == StatusCode::NOT_FOUND {
            break;
        }
        got.expect(StatusCode::OK, "get while alive");
        assert!(Instant::now() < deadline, "the key never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lived = before.elapsed();
    assert!(
        lived >= Duration::from_millis(1400),
        "expired after only {lived:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_requests_this_node_received() {
    bounded(async {
        let cluster = HttpCluster::start(3).await;
        let leader = cluster.leader_seen_by(1).await;
        assert!(leader > 0);
        let follower = if leader == 1 { 2 } else { 1 };

        let leader_before = cluster.metrics(leader).await;
        let before = cluster.metrics(follower).await;
        for line in [
            "# HELP raftkv_operations_total ",
            "# TYPE raftkv_operations_total counter",
            "# TYPE raftkv_keys gauge",
            "# TYPE raftkv_raft_commit_index gauge",
        ] {
            assert!(
                before.lines().any(|l| l.starts_with(line)),
                "{line} in\n{before}"
            );
        }

        // Through the follower's gateway: 2 puts, 3 gets (one of a missing key), 1 delete,
        // 1 scan. The follower forwards them to the leader, which must not count them again.
        for key in ["m1", "m2"] {
            cluster
                .put(follower, &format!("/kv/{key}"), b"v")
                .await
                .expect(StatusCode::OK, "put");
        }
        cluster
            .get(follower, "/kv/m1")
            .await
            .expect(StatusCode::OK, "get");
        // A stale read may miss a write not yet applied here; it counts either way.
        cluster.get(follower, "/kv/m2?consistency=stale").await;
        cluster
            .get(follower, "/kv/absent")
            .await
            .expect(StatusCode::NOT_FOUND, "get");
        cluster
            .delete(follower, "/kv/m1")
            .await
            .expect(StatusCode::OK, "delete");
        cluster
            .get(follower, "/kv?prefix=m")
            .await
            .expect(StatusCode::OK, "scan");

        let after = cluster.metrics(follower).await;
        let leader_after = cluster.metrics(leader).await;
        for (op, expected) in [
            ("put", 2),
            ("get", 3),
            ("delete", 1),
            ("scan", 1),
            ("batch", 0),
            ("cas", 0),
            ("batch_get", 0),
        ] {
            assert_eq!(
                ops(&after, op) - ops(&before, op),
                expected,
                "{op} on node {follower}"
            );
            assert_eq!(
                ops(&leader_after, op),
                ops(&leader_before, op),
                "{op} forwarded to leader {leader} must not be counted there"
            );
        }

        assert_eq!(sample(&after, "raftkv_raft_leader_id"), leader);
        assert_eq!(sample(&after, "raftkv_raft_is_leader"), 0);
        assert!(sample(&after, "raftkv_raft_commit_index") > 0, "{after}");
        assert!(sample(&after, "raftkv_raft_term") > 0);
        assert_eq!(sample(&leader_after, "raftkv_raft_is_leader"), 1);
        let matched = leader_after
            .lines()
            .filter(|l| l.starts_with("raftkv_raft_follower_matched_index{"))
            .count();
        assert_eq!(
            matched, 2,
            "one line per follower on the leader:\n{leader_after}"
        );
        assert!(
            sample(&leader_after, "raftkv_raft_applied_index")
                >= sample(&leader_before, "raftkv_raft_applied_index") + 3,
            "the leader applied the 3 writes"
        );

        // A removed node is not healthy.
        let removed = (1..=3)
            .find(|id| ![leader, follower].contains(id))
            .expect("third node");
        let channel = channel_to(cluster.grpc_address(leader))
            .await
            .expect("channel");
        ClusterClient::new(channel)
            .remove_node(RemoveNodeRequest { id: removed })
            .await
            .expect("remove node");
        let reason = cluster
            .wait_health(
                removed,
                StatusCode::SERVICE_UNAVAILABLE,
                Duration::from_secs(30),
            )
            .await;
        // It only learns of its removal if the final membership entry reaches it before the
        // leader stops replicating to it; usually it does not, and loses its leader instead.
        assert!(
            reason.contains("not a cluster member") || reason == "no leader",
            "{reason}"
        );
        cluster
            .wait_health(follower, StatusCode::OK, Duration::from_secs(10))
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_needs_a_leader_and_a_quorum() {
    bounded(async {
        let mut cluster = HttpCluster::start(3).await;
        for id in 1..=3 {
            let reply = cluster
                .get(id, "/health")
                .await
                .expect(StatusCode::OK, "health");
            assert_eq!(reply.text(), "ok");
        }
        let leader = cluster.leader_seen_by(1).await;
        let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        let (restarted, survivor) = (followers[0], followers[1]);

        // A follower whose peers are all gone: no leader once its election timeout passes.
        cluster.kill(leader);
        cluster.kill(restarted);
        // Until its election timeout it still names the dead leader; then it has none.
        let reason = cluster
            .wait_health_until(survivor, Duration::from_secs(30), |reply| {
                reply.status == StatusCode::SERVICE_UNAVAILABLE && reply.text() == "no leader"
            })
            .await;
        assert_eq!(reason, "no leader");

        // Two of three again: a new leader, both healthy.
        cluster.spawn(restarted);
        for id in [restarted, survivor] {
            cluster
                .wait_health(id, StatusCode::OK, Duration::from_secs(60))
                .await;
        }

        // A leader whose peers are all gone keeps calling itself leader (Raft leaders do not
        // step down by themselves), but cannot get a quorum to confirm it.
        let new_leader = cluster.leader_seen_by(survivor).await;
        assert!(
            [restarted, survivor].contains(&new_leader),
            "leader {new_leader}"
        );
        let other = if new_leader == restarted {
            survivor
        } else {
            restarted
        };
        cluster.kill(other);
        let reason = cluster
            .wait_health(
                new_leader,
                StatusCode::SERVICE_UNAVAILABLE,
                Duration::from_secs(30),
            )
            .await;
        assert!(
            reason == "no leader" || reason.starts_with("this node leads but"),
            "{reason}"
        );
        assert!(!reason.contains('\n'), "{reason:?}");
    })
    .await
}
