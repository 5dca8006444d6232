//! The `raftkv` binary as a user meets it: wrong flags and damaged data dirs give one clear line
//! and no panic; client exit codes; gRPC reflection and health; the playground.

use crate::common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bounded, free_port, TestCluster, RAFTKV};

fn raftkv(args: &[&str]) -> Output {
    let mut child = Command::new(RAFTKV)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn raftkv");
    // Bounded: a command that should fail fast must not hang the suite.
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("poll raftkv").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("raftkv {args:?} did not finish within 30s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("raftkv output")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A startup failure: non-zero exit, a message containing `expected`, and no panic.
fn assert_clear_failure(args: &[&str], expected: &str) {
    let output = raftkv(args);
    let text = stderr(&output);
    assert!(!output.status.success(), "raftkv {args:?} should fail");
    assert!(
        !text.contains("panicked"),
        "raftkv {args:?} panicked: {text}"
    );
    assert!(
        text.contains(expected),
        "raftkv {args:?}: expected {expected:?} in: {text}"
    );
}

/// `raftkv serve --id 1` on `listen` and `data_dir` must fail with `expected`, without panicking.
fn assert_serve_fails(listen: &str, data_dir: &str, expected: &str) {
    assert_clear_failure(
        &[
            "serve",
            "--id",
            "1",
            "--listen",
            listen,
            "--data-dir",
            data_dir,
        ],
        expected,
    );
}

#[test]
fn wrong_flags_are_reported_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let output = raftkv(&["serve", "--bogus"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--bogus"));

    assert_clear_failure(
        &["serve", "--id", "x", "--data-dir", data],
        "invalid value 'x'",
    );
    assert_clear_failure(
        &["serve", "--id", "0", "--data-dir", data],
        "--id 0 is reserved",
    );
    assert_clear_failure(
        &[
            "serve",
            "--id",
            "1",
            "--data-dir",
            data,
            "--initial-cluster",
            "1=127.0.0.1",
        ],
        "has no port",
    );
    assert_clear_failure(
        &[
            "serve",
            "--id",
            "4",
            "--data-dir",
            data,
            "--initial-cluster",
            "1=127.0.0.1:1,2=127.0.0.1:2",
        ],
        "does not list this node's id 4",
    );
    assert_clear_failure(
        &[
            "serve",
            "--id",
            "1",
            "--data-dir",
            data,
            "--listen",
            "not-an-address",
        ],
        "invalid value 'not-an-address'",
    );
    assert_clear_failure(
        &[
            "serve",
            "--id",
            "1",
            "--data-dir",
            data,
            "--heartbeat-ms",
            "500",
            "--election-timeout-ms",
            "600",
        ],
        "must be at least 3 × --heartbeat-ms",
    );
    assert!(
        !std::path::Path::new(data).exists(),
        "a rejected start creates nothing"
    );
}

#[test]
fn a_data_dir_that_is_a_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    assert_serve_fails(&listen, file.to_str().unwrap(), "is not a directory");
}

#[test]
fn a_damaged_data_dir_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    std::fs::create_dir_all(data.join("sled")).unwrap();
    // Garbage where sled expects its config and its log.
    std::fs::write(
        data.join("sled").join("conf"),
        b"\x00garbage\xff not a sled config",
    )
    .unwrap();
    std::fs::write(data.join("sled").join("db"), vec![0xAB; 4096]).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    assert_serve_fails(&listen, data.to_str().unwrap(), "cannot open the database");
}

#[test]
fn a_busy_listen_address_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    assert_serve_fails(
        &listen,
        dir.path().to_str().unwrap(),
        &format!("cannot listen on {listen}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_in_use_by_a_running_node_is_reported() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let data = cluster.node(1).data_dir.to_str().unwrap().to_string();
        let listen = format!("127.0.0.1:{}", free_port());
        let output = tokio::task::spawn_blocking(move || {
            raftkv(&[
                "serve",
                "--id",
                "1",
                "--listen",
                &listen,
                "--data-dir",
                &data,
            ])
        })
        .await
        .unwrap();
        let text = stderr(&output);
        assert!(!output.status.success());
        assert!(!text.contains("panicked"), "{text}");
        assert!(text.contains("another raftkv process"), "{text}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_and_exit_codes() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        // The first endpoint is dead: the client must move on to the next one.
        let endpoints = format!(
            "127.0.0.1:{},{}",
            free_port(),
            cluster.endpoints().join(",")
        );
        let run = move |args: Vec<String>| {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                raftkv(&args)
            })
        };
        let with = |args: &[&str]| -> Vec<String> {
            let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            all.extend(["--endpoints".to_string(), endpoints.clone()]);
            all
        };

        let put = run(with(&["put", "colour", "teal"])).await.unwrap();
        assert_eq!(put.status.code(), Some(0), "{}", stderr(&put));
        assert!(stdout(&put).starts_with("OK revision="), "{}", stdout(&put));

        let get = run(with(&["get", "colour"])).await.unwrap();
        assert_eq!(get.status.code(), Some(0), "{}", stderr(&get));
        assert_eq!(stdout(&get), "teal\n");

        let stale = run(with(&["get", "colour", "--stale"])).await.unwrap();
        assert_eq!(stale.status.code(), Some(0));

        let missing = run(with(&["get", "no-such-key"])).await.unwrap();
        assert_eq!(missing.status.code(), Some(1));
        assert_eq!(stderr(&missing).trim(), "error: key not found: no-such-key");

        let invalid = run(with(&["put", "", "x"])).await.unwrap();
        assert_eq!(invalid.status.code(), Some(2));
        assert!(stderr(&invalid).contains("key cannot be empty"));

        let del = run(with(&["del", "colour"])).await.unwrap();
        assert_eq!(del.status.code(), Some(0));
        assert!(stdout(&del).starts_with("deleted revision="));
        let gone = run(with(&["get", "colour"])).await.unwrap();
        assert_eq!(gone.status.code(), Some(1));

        let status = run(with(&["status"])).await.unwrap();
        assert_eq!(status.status.code(), Some(0));
        assert!(stdout(&status).contains("leader:"), "{}", stdout(&status));
        assert!(stdout(&status).contains("voters:"));

        let health = run(vec![
            "health".into(),
            "--endpoint".into(),
            cluster.node(2).address.clone(),
        ])
        .await
        .unwrap();
        assert_eq!(health.status.code(), Some(0), "{}", stderr(&health));

        let nobody = format!("127.0.0.1:{}", free_port());
        let down = run(vec![
            "get".into(),
            "k".into(),
            "--endpoints".into(),
            nobody,
            "--timeout".into(),
            "1s".into(),
        ])
        .await
        .unwrap();
        assert_eq!(down.status.code(), Some(3));
        assert!(
            stderr(&down).contains("cluster unavailable"),
            "{}",
            stderr(&down)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_and_health_are_served() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1 as refl_v1;
    use tonic_reflection::pb::v1alpha as refl_v1alpha;

    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let channel = cluster.channel(3).await.unwrap();

        let request = refl_v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(refl_v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
        };
        let mut client = refl_v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let mut replies = client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner();
        let reply = replies.next().await.unwrap().unwrap();
        let Some(refl_v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            reply.message_response
        else {
            panic!("unexpected v1alpha reply: {reply:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for expected in [
            "raftkv.v1.KV",
            "raftkv.v1.Lease",
            "raftkv.v1.Cluster",
            "grpc.health.v1.Health",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
        }
        // The peer services are not served here, so they are not listed either.
        assert!(!names.iter().any(|n| n.starts_with("raftkv.raft.")), "{names:?}");

        let request = refl_v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(refl_v1::server_reflection_request::MessageRequest::ListServices(String::new())),
        };
        let mut client = refl_v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let mut replies = client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner();
        assert!(replies.next().await.unwrap().is_ok(), "v1 reflection answers too");

        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    })
    .await
}

/// Reads the playground's stdout until its ready line (bounded).
fn wait_for_ready(child: &mut std::process::Child) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("Press Ctrl-C") {
                let _ = tx.send(seen.clone());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("playground ready within 60s")
}

fn interrupt_and_wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("playground did not stop within 30s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the playground if the test fails midway: Ctrl-C first, so that it stops the three
/// nodes it started (a SIGKILL would leave them running), then SIGKILL if it has not exited
/// within 15 s.
struct Reaper(Option<std::process::Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Some(child) = &mut self.0 else { return };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        // Whatever the playground left behind (it died before it could stop its nodes): its
        // nodes share its process group.
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Three consecutive free ports for the playground's nodes. `free_port` walks its range one
/// port at a time, so three calls in a row usually give a block, and taking all three from it
/// keeps the next caller from handing out the same ports again.
fn free_port_block() -> u16 {
    for _ in 0..200 {
        let base = free_port();
        if free_port() == base + 1 && free_port() == base + 2 {
            return base;
        }
    }
    panic!("no block of three free ports");
}

/// Runs, through the shell and from the directory the playground was started in, each `raftkv`
/// command its banner suggests: a newcomer pastes them as printed, so they must work as printed.
fn run_printed_hints(banner: &str, cwd: &std::path::Path) {
    let hints: Vec<&str> = banner
        .lines()
        .skip_while(|line| *line != "Try:")
        .skip(1)
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .filter(|line| !line.starts_with("grpcurl") && !line.starts_with("curl"))
        .collect();
    assert_eq!(hints.len(), 3, "put, get and status hints in:\n{banner}");
    for hint in hints {
        let out = Command::new("sh")
            .args(["-c", &format!("timeout 20 {hint}")])
            .current_dir(cwd)
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "printed hint `{hint}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_tls_playground_serves_its_printed_hints_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_block();
    let http_base = free_port_block();
    let peer_base = free_port_block();
    let mut reaper = Reaper(Some(
        Command::new(RAFTKV)
            .current_dir(dir.path())
            // Its own process group, so that the reaper can sweep up its nodes too.
            .process_group(0)
            .args(["playground", "--tls", "--base-port", &base.to_string()])
            .args(["--http-base-port", &http_base.to_string(), "--dir", "pg"])
            .args(["--peer-base-port", &peer_base.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn playground"),
    ));
    let banner = wait_for_ready(reaper.0.as_mut().unwrap());
    assert!(banner.contains("--cacert"), "{banner}");
    assert!(banner.contains("grpcurl -cacert"), "{banner}");
    assert!(
        dir.path().join("pg/certs/ca.pem").exists(),
        "certificates written on first use"
    );
    run_printed_hints(&banner, dir.path());
    let plain = raftkv(&[
        "put",
        "plain",
        "x",
        "--endpoints",
        &format!("127.0.0.1:{base}"),
        "--timeout",
        "1s",
    ]);
    assert_eq!(
        plain.status.code(),
        Some(3),
        "plaintext to a TLS playground"
    );
    let status = interrupt_and_wait(reaper.0.as_mut().unwrap());
    assert!(status.success(), "playground exits 0 on Ctrl-C: {status}");
    reaper.0 = None;
}

#[test]
fn playground_starts_serves_stops_on_ctrl_c_and_resumes_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let pg_dir = dir.path().join("pg");
    let base = free_port_block();
    let http_base = free_port_block();
    let peer_base = free_port_block();
    let endpoints = (0..3)
        .map(|i| format!("127.0.0.1:{}", base + i))
        .collect::<Vec<_>>()
        .join(",");
    let start = || {
        Command::new(RAFTKV)
            .current_dir(dir.path())
            // Its own process group, so that the reaper can sweep up its nodes too.
            .process_group(0)
            .args(["playground", "--base-port", &base.to_string()])
            .args(["--http-base-port", &http_base.to_string(), "--dir"])
            .arg(&pg_dir)
            .args(["--peer-base-port", &peer_base.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn playground")
    };

    let mut reaper = Reaper(Some(start()));
    let banner = wait_for_ready(reaper.0.as_mut().unwrap());
    assert!(banner.contains(&format!("127.0.0.1:{base}")), "{banner}");
    assert!(banner.contains("grpcurl -plaintext"), "{banner}");
    run_printed_hints(&banner, dir.path());
    let put = raftkv(&["put", "kept", "across-runs", "--endpoints", &endpoints]);
    assert_eq!(put.status.code(), Some(0), "{}", stderr(&put));
    let status = interrupt_and_wait(reaper.0.as_mut().unwrap());
    assert!(status.success(), "playground exits 0 on Ctrl-C: {status}");
    reaper.0 = None;
    for i in 0..3 {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok(),
            "node on port {} stopped with the playground",
            base + i
        );
    }

    let mut reaper = Reaper(Some(start()));
    wait_for_ready(reaper.0.as_mut().unwrap());
    let get = raftkv(&["get", "kept", "--endpoints", &endpoints, "--timeout", "20s"]);
    assert_eq!(stdout(&get), "across-runs\n", "{}", stderr(&get));
    let status = interrupt_and_wait(reaper.0.as_mut().unwrap());
    assert!(status.success());
    reaper.0 = None;
}

#[test]
fn a_corrupt_raft_record_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    {
        // A well-formed sled database whose stored vote is garbage.
        let db = sled::open(data.join("sled")).unwrap();
        db.open_tree("raft_meta")
            .unwrap()
            .insert("vote", &[0xFF, 0x01][..])
            .unwrap();
        db.flush().unwrap();
    }
    let listen = format!("127.0.0.1:{}", free_port());
    assert_serve_fails(
        &listen,
        data.to_str().unwrap(),
        "the data dir looks damaged",
    );
}

/// Ctrl-C while the playground waits for its first leader stops the three nodes it started (it
/// used to end the playground alone and leave them running). The first election takes a second
/// or more, so half a second after the start the playground is still waiting.
#[test]
fn ctrl_c_during_the_playground_start_stops_its_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (base, http_base, peer_base) = (free_port_block(), free_port_block(), free_port_block());
    let mut reaper = Reaper(Some(
        Command::new(RAFTKV)
            .current_dir(dir.path())
            .process_group(0)
            .args(["playground", "--base-port", &base.to_string()])
            .args(["--http-base-port", &http_base.to_string(), "--dir", "pg"])
            .args(["--peer-base-port", &peer_base.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn playground"),
    ));
    std::thread::sleep(Duration::from_millis(500));
    let child = reaper.0.as_mut().unwrap();
    assert!(
        child.try_wait().ok().flatten().is_none(),
        "the playground is still starting"
    );
    let status = interrupt_and_wait(child);
    assert!(
        status.success(),
        "exits 0 on Ctrl-C during its start: {status}"
    );
    // Its nodes are gone (checked before the reaper could sweep them up).
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let deadline = Instant::now() + Duration::from_secs(5);
    while nix::sys::signal::killpg(group, None).is_ok() {
        assert!(
            Instant::now() < deadline,
            "playground nodes still running after Ctrl-C during the start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    reaper.0 = None;
}
