//! Bearer tokens (`--auth-token-file`) and the HTTPS gateway, on real `raftkv serve` processes
//! on loopback: gRPC through tonic clients, the CLI as a user runs it, HTTP through reqwest and
//! HTTPS through curl, with certificates from `raftkv certs init`.
//!
//! Tokens: calls to KV and Cluster without a token or with a wrong one are refused with
//! UNAUTHENTICATED (HTTP 401) and change nothing; the right token works over gRPC, the CLI and
//! HTTP (`/watch` included); health and reflection stay open; a SIGHUP reloads the file, and a reload that fails
//! keeps the old tokens. HTTPS: the gateway of a TLS node speaks only HTTPS with the node's
//! certificate, and requires the client certificate under `--client-cert-auth`.
//!
//! Every node is killed by PID when its test ends, also when it fails; every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use raftkv::proto::v1::cluster_client::ClusterClient;
use raftkv::proto::v1::kv_client::KvClient;
use raftkv::proto::v1::{Consistency, GetRequest, PutRequest, StatusRequest};
use reqwest::StatusCode;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::common::{bounded, channel_to, free_port, RAFTKV};

/// The nodes a test started, killed by PID when it ends, also when it fails; on failure the
/// tail of each node's log is printed.
struct Nodes(Vec<(Child, PathBuf)>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for (child, log) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("----- {} (last {} lines) -----", log.display(), tail.len());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl Nodes {
    fn pid(&self, index: usize) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.0[index].0.id() as i32)
    }

    fn sighup(&self, index: usize) {
        nix::sys::signal::kill(self.pid(index), nix::sys::signal::Signal::SIGHUP)
            .expect("send SIGHUP");
    }

    fn is_running(&mut self, index: usize) -> bool {
        matches!(self.0[index].0.try_wait(), Ok(None))
    }

    fn log(&self, index: usize) -> String {
        std::fs::read_to_string(&self.0[index].1).unwrap_or_default()
    }

    /// Waits until node `index`'s log holds `count` lines containing `needle`.
    async fn wait_for_log(&self, index: usize, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let found = self
                .log(index)
                .lines()
                .filter(|l| l.contains(needle))
                .count();
            if found >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node log has {found} of {count} lines with {needle:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One node of a cluster on 127.0.0.1: `raftkv serve` with `extra` flags, logging to a file
/// beside its data dir.
struct Spec<'a> {
    id: u64,
    port: u16,
    /// The peer port; `cluster` names the members by theirs.
    peer_port: u16,
    http: Option<u16>,
    cluster: &'a str,
    extra: Vec<String>,
}

fn spawn(dir: &Path, spec: Spec<'_>) -> (Child, PathBuf) {
    let data = dir.join(format!("node{}-{}", spec.id, spec.port));
    let log_path = data.with_extension("log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut command = std::process::Command::new(RAFTKV);
    command
        .args(["serve", "--id", &spec.id.to_string()])
        .args(["--listen", &format!("127.0.0.1:{}", spec.port)])
        .args(["--peer-listen", &format!("127.0.0.1:{}", spec.peer_port)])
        .arg("--data-dir")
        .arg(&data)
        .args(["--initial-cluster", spec.cluster])
        .args(["--heartbeat-ms", "100", "--election-timeout-ms", "500"])
        .args(&spec.extra)
        .env("RAFTKV_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log);
    if let Some(http) = spec.http {
        command.args(["--http-listen", &format!("127.0.0.1:{http}")]);
    }
    (command.spawn().expect("spawn raftkv serve"), log_path)
}

/// A client command as a user runs it, with no RAFTKV_* settings from the environment.
async fn raftkv(args: &[&str]) -> Output {
    tokio::process::Command::new(RAFTKV)
        .args(args)
        .env_remove("RAFTKV_ENDPOINTS")
        .env_remove("RAFTKV_TOKEN")
        .env_remove("RAFTKV_TOKEN_FILE")
        .output()
        .await
        .expect("run raftkv")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Waits until `raftkv health` (which sends no token) reports the node SERVING.
async fn wait_serving(endpoint: &str, extra: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut args = vec!["health", "--endpoint", endpoint];
        args.extend(extra);
        let out = raftkv(&args).await;
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} not serving within 40 s: {}",
            text(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A request carrying `authorization: <authorization>` when given.
fn with_auth<T>(message: T, authorization: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("ASCII header"));
    }
    request
}

async fn kv(address: &str) -> KvClient<Channel> {
    KvClient::new(channel_to(address).await.expect("connect"))
}

async fn put(address: &str, key: &str, value: &str, auth: Option<&str>) -> Result<u64, Status> {
    let request = PutRequest {
        lease: 0,
        key: key.into(),
        value: value.into(),
        ttl_ms: 0,
    };
    let reply = kv(address).await.put(with_auth(request, auth)).await?;
    Ok(reply.into_inner().revision)
}

/// The value of `key` (linearizable), `None` when absent.
async fn get(address: &str, key: &str, auth: Option<&str>) -> Result<Option<String>, Status> {
    let request = GetRequest {
        key: key.into(),
        consistency: Consistency::Linearizable as i32,
    };
    match kv(address).await.get(with_auth(request, auth)).await {
        Ok(reply) => Ok(Some(text(&reply.into_inner().value))),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(status),
    }
}

fn assert_refused<T: std::fmt::Debug>(outcome: Result<T, Status>, what: &str) {
    let status = outcome.expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status}");
    assert!(
        status.message().contains("bearer token"),
        "{what}: a message saying what is missing: {}",
        status.message()
    );
}

/// The services that reflection lists, asked without a token.
async fn reflected_services(address: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let mut client = ServerReflectionClient::new(channel_to(address).await.expect("connect"));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection answers without a token")
        .into_inner();
    let reply = replies
        .message()
        .await
        .expect("reflection reply")
        .expect("one reply");
    match reply.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection reply: {other:?}"),
    }
}

/// A three-node cluster, each node with its HTTP gateway, all requiring the tokens of
/// `tokens_file`.
struct TokenCluster {
    nodes: Nodes,
    grpc: Vec<String>,
    http: Vec<String>,
}

impl TokenCluster {
    fn start(dir: &Path, tokens_file: &Path) -> Self {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let http: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let cluster = (0..3)
            .map(|i| format!("{}=127.0.0.1:{}", i + 1, peer_ports[i]))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = Nodes(
            (0..3)
                .map(|i| {
                    spawn(
                        dir,
                        Spec {
                            id: i as u64 + 1,
                            port: ports[i],
                            peer_port: peer_ports[i],
                            http: Some(http[i]),
                            cluster: &cluster,
                            extra: vec!["--auth-token-file".into(), path(tokens_file).into()],
                        },
                    )
                })
                .collect(),
        );
        Self {
            nodes,
            grpc: ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            http: http
                .iter()
                .map(|p| format!("http://127.0.0.1:{p}"))
                .collect(),
        }
    }

    fn endpoints(&self) -> String {
        self.grpc.join(",")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_guard_kv_cluster_and_the_gateway_but_not_health() {
    bounded(async {
        let dir = tempfile::tempdir().expect("temporary directory");
        let tokens = dir.path().join("tokens");
        std::fs::write(
            &tokens,
            "# tokens of the test cluster\n\n   alpha-token-1  \nbeta-token-2\n",
        )
        .expect("write token file");
        let client_token = dir.path().join("client-token");
        std::fs::write(&client_token, "alpha-token-1\n").expect("write client token file");
        let cluster = TokenCluster::start(dir.path(), &tokens);
        let endpoints = cluster.endpoints();
        let (alpha, beta) = (Some("Bearer alpha-token-1"), Some("Bearer beta-token-2"));

        // Health needs no token: `raftkv health` sends none.
        for endpoint in &cluster.grpc {
            wait_serving(endpoint, &[]).await;
        }
        // The CLI with --token-file writes, through any node.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = raftkv(&[
                "put",
                "k",
                "v1",
                "--endpoints",
                &endpoints,
                "--token-file",
                path(&client_token),
            ])
            .await;
            if out.status.success() {
                break;
            }
            // Exit 2 (refused, not retryable) never passes by itself; 3 does while no leader.
            assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
            assert!(Instant::now() < deadline, "no write: {}", text(&out.stderr));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // gRPC: no token, a wrong token, another scheme, on a follower and the leader alike.
        for address in &cluster.grpc {
            assert_refused(
                put(address, "k", "changed", None).await,
                "put without a token",
            );
            for wrong in [
                "Bearer wrong-token",
                "Bearer alpha-token",
                "Basic alpha-token-1",
            ] {
                assert_refused(put(address, "k", "changed", Some(wrong)).await, wrong);
            }
            assert_refused(get(address, "k", None).await, "get without a token");
            let status = ClusterClient::new(channel_to(address).await.expect("connect"))
                .status(with_auth(StatusRequest {}, None))
                .await;
            assert_refused(status, "cluster status without a token");
            let status = ClusterClient::new(channel_to(address).await.expect("connect"))
                .status(with_auth(StatusRequest {}, alpha))
                .await;
            assert!(status.is_ok(), "cluster status with a token: {status:?}");
        }
        for address in &cluster.grpc {
            assert_eq!(
                get(address, "k", beta).await.expect("get with a token"),
                Some("v1".into()),
                "the refused puts changed nothing"
            );
        }
        // The right token writes over gRPC (through a follower too: forwarding needs none).
        for (i, address) in cluster.grpc.iter().enumerate() {
            put(address, &format!("grpc-{i}"), "yes", beta)
                .await
                .unwrap_or_else(|e| panic!("put with a token on {address}: {e}"));
        }
        // Scan is forwarded to the leader's peer port too, so it works through every node.
        for address in &cluster.grpc {
            let out = raftkv(&[
                "scan",
                "--prefix",
                "grpc-",
                "--endpoints",
                address,
                "--token-file",
                path(&client_token),
            ])
            .await;
            assert!(
                out.status.success(),
                "scan via {address}: {}",
                text(&out.stderr)
            );
            assert_eq!(
                text(&out.stdout).lines().count(),
                3,
                "{}",
                text(&out.stdout)
            );
        }
        // Reflection stays open, and lists the guarded services.
        let services = reflected_services(&cluster.grpc[0]).await;
        assert!(
            services.iter().any(|s| s == "raftkv.v1.KV"),
            "reflection without a token: {services:?}"
        );

        // The CLI: refused at once (no retries until its timeout), with a hint; a token works.
        let started = Instant::now();
        let out = raftkv(&[
            "put",
            "k",
            "cli-none",
            "--endpoints",
            &endpoints,
            "--timeout",
            "20s",
        ])
        .await;
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("not authenticated") && stderr.contains("--token-file"),
            "a clear message: {stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "UNAUTHENTICATED is not retried: took {:?}",
            started.elapsed()
        );
        let out = raftkv(&[
            "put",
            "k",
            "cli-wrong",
            "--endpoints",
            &endpoints,
            "--token",
            "wrong-token",
        ])
        .await;
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let out = raftkv(&[
            "get",
            "k",
            "--endpoints",
            &cluster.grpc[2],
            "--token-file",
            path(&client_token),
        ])
        .await;
        assert_eq!(text(&out.stdout), "v1\n", "{}", text(&out.stderr));
        let out = tokio::process::Command::new(RAFTKV)
            .args(["cluster", "status", "--endpoints", &cluster.grpc[1]])
            .env("RAFTKV_TOKEN", "beta-token-2")
            .env_remove("RAFTKV_TOKEN_FILE")
            .output()
            .await
            .expect("run raftkv");
        assert!(out.status.success(), "RAFTKV_TOKEN: {}", text(&out.stderr));

        // HTTP: 401 with WWW-Authenticate without the token or with a wrong one; /health open.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("HTTP client");
        let base = &cluster.http[1];
        let refusals = [
            http.get(format!("{base}/kv/k")),
            http.put(format!("{base}/kv/k")).body("http-none"),
            http.put(format!("{base}/kv/k"))
                .header("authorization", "Bearer wrong-token")
                .body("http-wrong"),
            http.get(format!("{base}/kv?prefix=")),
            http.get(format!("{base}/metrics")),
            http.get(format!("{base}/watch?prefix=")),
            http.get(format!("{base}/watch?key=k"))
                .header("authorization", "Bearer wrong-token"),
        ];
        for request in refusals {
            let reply = request.send().await.expect("HTTP answer");
            assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
            let challenge = reply
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            assert!(challenge.starts_with("Bearer"), "challenge {challenge:?}");
            let body = reply.text().await.expect("body");
            assert!(body.contains("bearer token"), "{body}");
        }
        let health = http
            .get(format!("{base}/health"))
            .send()
            .await
            .expect("health");
        assert_eq!(health.status(), StatusCode::OK, "/health needs no token");
        let read = http
            .get(format!("{base}/kv/k"))
            .header("authorization", "Bearer alpha-token-1")
            .send()
            .await
            .expect("HTTP answer");
        assert_eq!(read.status(), StatusCode::OK);
        assert_eq!(read.text().await.expect("body"), "v1", "nothing changed k");
        let write = http
            .put(format!("{base}/kv/http"))
            .header("authorization", "bearer beta-token-2")
            .body("by-http")
            .send()
            .await
            .expect("HTTP answer");
        assert_eq!(write.status(), StatusCode::OK, "{:?}", write.text().await);
        let written: serde_json::Value =
            serde_json::from_slice(&write.bytes().await.expect("body")).expect("JSON");
        let revision = written["revision"].as_u64().expect("revision");
        let mut watch = http
            .get(format!("{base}/watch?key=http&rev={revision}"))
            .header("authorization", "Bearer alpha-token-1")
            .send()
            .await
            .expect("HTTP answer");
        assert_eq!(
            watch.status(),
            StatusCode::OK,
            "/watch with a token streams"
        );
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("\"value\":\"by-http\"") {
            let chunk = watch.chunk().await.expect("the stream").expect("not ended");
            seen.extend_from_slice(&chunk);
        }
        let metrics = http
            .get(format!("{base}/metrics"))
            .header("authorization", "Bearer beta-token-2")
            .send()
            .await
            .expect("HTTP answer");
        assert_eq!(metrics.status(), StatusCode::OK);
        assert_eq!(
            get(&cluster.grpc[0], "http", alpha).await.expect("get"),
            Some("by-http".into())
        );
        for key in ["grpc-0", "grpc-1", "grpc-2"] {
            assert_eq!(
                get(&cluster.grpc[0], key, alpha).await.expect("get"),
                Some("yes".into())
            );
        }
        let log = cluster.nodes.log(0);
        for secret in ["alpha-token-1", "beta-token-2"] {
            assert!(!log.contains(secret), "a token in the node's log");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_tokens_and_a_bad_file_keeps_the_old_ones() {
    bounded(async {
        let dir = tempfile::tempdir().expect("temporary directory");
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "first-token\n").expect("write token file");
        let (port, peer_port) = (free_port(), free_port());
        let address = format!("127.0.0.1:{port}");
        let cluster = format!("1=127.0.0.1:{peer_port}");
        let mut nodes = Nodes(vec![spawn(
            dir.path(),
            Spec {
                id: 1,
                port,
                peer_port,
                http: None,
                cluster: &cluster,
                extra: vec!["--auth-token-file".into(), path(&tokens).into()],
            },
        )]);
        wait_serving(&address, &[]).await;
        let (first, second) = (Some("Bearer first-token"), Some("Bearer second-token"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(status) = put(&address, "k", "1", first).await {
            assert!(Instant::now() < deadline, "no write: {status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_refused(put(&address, "k", "x", second).await, "not loaded yet");

        // Rewritten and reloaded: the new token works, the removed one is refused.
        std::fs::write(&tokens, "# rotated\nsecond-token\n").expect("write token file");
        nodes.sighup(0);
        nodes.wait_for_log(0, "1 token(s) loaded", 1).await;
        put(&address, "k", "2", second)
            .await
            .expect("the new token");
        assert_refused(put(&address, "k", "x", first).await, "the removed token");

        // An emptied file, then a missing one: each reload fails and keeps the loaded token.
        std::fs::write(&tokens, "# nothing left\n\n").expect("write token file");
        nodes.sighup(0);
        nodes
            .wait_for_log(0, "keeping the 1 token(s) loaded before", 1)
            .await;
        put(&address, "k", "3", second)
            .await
            .expect("kept after an empty file");
        std::fs::remove_file(&tokens).expect("remove token file");
        nodes.sighup(0);
        nodes
            .wait_for_log(0, "keeping the 1 token(s) loaded before", 2)
            .await;
        put(&address, "k", "4", second)
            .await
            .expect("kept after a missing file");
        assert_refused(put(&address, "k", "x", first).await, "still refused");
        assert_refused(put(&address, "k", "x", None).await, "still refused");
        assert_eq!(
            get(&address, "k", second).await.expect("get"),
            Some("4".into())
        );
        assert!(nodes.is_running(0), "SIGHUP never stops the node");
        assert!(
            !nodes.log(0).contains("second-token"),
            "a token in the node's log"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_file_stops_the_node_at_start_with_one_line() {
    bounded(async {
        let dir = tempfile::tempdir().expect("temporary directory");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# no tokens yet\n\n").expect("write token file");
        let spaced = dir.path().join("spaced");
        std::fs::write(&spaced, "two words\n").expect("write token file");
        let missing = dir.path().join("missing");
        for (file, expected) in [
            (&empty, "holds no token"),
            (&missing, "cannot read --auth-token-file"),
            (&spaced, "line 1 is not a token"),
        ] {
            let port = free_port();
            let out = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::process::Command::new(RAFTKV)
                    .args([
                        "serve",
                        "--id",
                        "1",
                        "--listen",
                        &format!("127.0.0.1:{port}"),
                    ])
                    .args(["--initial-cluster", &format!("1=127.0.0.1:{port}")])
                    .arg("--data-dir")
                    .arg(dir.path().join(format!("data-{port}")))
                    .args(["--auth-token-file", path(file)])
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .expect("the node stops by itself")
            .expect("run raftkv serve");
            let stderr = text(&out.stderr);
            assert!(!out.status.success(), "{file:?} was accepted");
            let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
            assert_eq!(error.len(), 1, "one error line: {stderr}");
            assert!(
                error[0].contains("--auth-token-file") && error[0].contains(expected),
                "{stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    })
    .await;
}

/// `curl -sS` with `args`, bounded in time; returns (success, stdout, stderr).
async fn curl(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--noproxy", "*"])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run curl (Debian package curl)");
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_https_with_the_node_certificate() {
    bounded(async {
        let dir = tempfile::tempdir().expect("temporary directory");
        let certs = dir.path().join("certs");
        let out = raftkv(&["certs", "init", path(&certs), "--nodes", "2"]).await;
        assert!(out.status.success(), "certs init: {}", text(&out.stderr));
        let pem = |name: &str| path(&certs.join(name)).to_string();
        let (ca, cert, key) = (pem("ca.pem"), pem("client.pem"), pem("client-key.pem"));
        // Two single-node clusters: one serving TLS, one also requiring client certificates.
        let (ports, http): (Vec<u16>, Vec<u16>) =
            (0..2).map(|_| (free_port(), free_port())).unzip();
        let peer_ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
        let clusters: Vec<String> = peer_ports
            .iter()
            .map(|p| format!("1=127.0.0.1:{p}"))
            .collect();
        let mut nodes = Nodes(
            (0..2)
                .map(|i| {
                    let mut extra: Vec<String> = vec![
                        "--cert-file".into(),
                        pem(&format!("node{}.pem", i + 1)),
                        "--key-file".into(),
                        pem(&format!("node{}-key.pem", i + 1)),
                        "--trusted-ca-file".into(),
                        ca.clone(),
                    ];
                    if i == 1 {
                        extra.push("--client-cert-auth".into());
                    }
                    spawn(
                        dir.path(),
                        Spec {
                            id: 1,
                            port: ports[i],
                            peer_port: peer_ports[i],
                            http: Some(http[i]),
                            cluster: &clusters[i],
                            extra,
                        },
                    )
                })
                .collect(),
        );
        let https: Vec<String> = http
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect();
        let with_cert = ["--cacert", &ca, "--cert", &cert, "--key", &key];
        for (i, endpoint) in ports.iter().enumerate() {
            let endpoint = format!("127.0.0.1:{endpoint}");
            let tls: &[&str] = if i == 0 { &with_cert[..2] } else { &with_cert };
            wait_serving(&endpoint, tls).await;
        }

        // Server certificate only: curl with the CA writes and reads over HTTPS.
        let (ok, _, err) = curl(&[
            "--cacert",
            &ca,
            "-f",
            "-X",
            "PUT",
            "--data-binary",
            "hello",
            &format!("{}/kv/x", https[0]),
        ])
        .await;
        assert!(ok, "HTTPS put: {err}");
        let (ok, body, err) = curl(&["--cacert", &ca, "-f", &format!("{}/kv/x", https[0])]).await;
        assert!(ok, "HTTPS get: {err}");
        assert_eq!(body, "hello");
        // curl offers HTTP/2 through ALPN; HTTP/1.1 works as well.
        let (ok, body, err) = curl(&[
            "--cacert",
            &ca,
            "--http1.1",
            "-f",
            &format!("{}/kv/x", https[0]),
        ])
        .await;
        assert!(ok && body == "hello", "HTTPS over HTTP/1.1: {err}");
        // Plain HTTP to the same port fails and writes nothing; so does an unverified server.
        let plain = format!("http://127.0.0.1:{}", http[0]);
        let (ok, body, _) = curl(&[
            "-f",
            "-X",
            "PUT",
            "--data-binary",
            "plain",
            &format!("{plain}/kv/plain"),
        ])
        .await;
        assert!(!ok, "plain HTTP to the HTTPS port answered: {body}");
        let (ok, _, _) = curl(&[&format!("{}/kv/x", https[0])]).await;
        assert!(
            !ok,
            "curl without --cacert must not trust the node's certificate"
        );
        let (ok, body, err) = curl(&[
            "--cacert",
            &ca,
            "-w",
            "%{http_code}",
            &format!("{}/kv/plain", https[0]),
        ])
        .await;
        assert!(ok, "{err}");
        assert!(body.ends_with("404"), "the plain PUT wrote nothing: {body}");

        // A SIGHUP (nothing to reload without tokens) leaves the node serving.
        nodes.sighup(0);
        nodes.wait_for_log(0, "SIGHUP received", 1).await;
        let (ok, body, err) = curl(&["--cacert", &ca, "-f", &format!("{}/kv/x", https[0])]).await;
        assert!(ok && body == "hello", "after SIGHUP: {err}");
        assert!(nodes.is_running(0));

        // --client-cert-auth: refused without the client certificate, served with it.
        let (ok, _, _) = curl(&[
            "--cacert",
            &ca,
            "-f",
            "-X",
            "PUT",
            "--data-binary",
            "no",
            &format!("{}/kv/refused", https[1]),
        ])
        .await;
        assert!(!ok, "HTTPS without a client certificate was served");
        let (ok, _, _) = curl(&["--cacert", &ca, "-f", &format!("{}/health", https[1])]).await;
        assert!(
            !ok,
            "even /health needs the client certificate under --client-cert-auth"
        );
        let (ok, _, err) = curl(&[
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "-f",
            "-X",
            "PUT",
            "--data-binary",
            "with-cert",
            &format!("{}/kv/y", https[1]),
        ])
        .await;
        assert!(ok, "HTTPS with the client certificate: {err}");
        let (ok, body, err) = curl(&[
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "-f",
            &format!("{}/kv/y", https[1]),
        ])
        .await;
        assert!(ok, "{err}");
        assert_eq!(body, "with-cert");
        let (ok, body, err) = curl(&[
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "-w",
            "%{http_code}",
            &format!("{}/kv/refused", https[1]),
        ])
        .await;
        assert!(ok, "{err}");
        assert!(
            body.ends_with("404"),
            "the refused PUT wrote nothing: {body}"
        );
    })
    .await;
}
