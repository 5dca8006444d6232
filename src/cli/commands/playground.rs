//! `raftkv playground`: a three-node cluster on one machine, no Docker needed.
//!
//! The nodes are child processes of this one running `raftkv serve`, each with its own data
//! directory and log file under one directory, so re-running resumes with the same data. Ctrl-C
//! (or SIGTERM) stops all three with SIGTERM and waits for them.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cli::client::CliError;
use crate::cli::exit;
use crate::proto::v1::cluster_client::ClusterClient;
use crate::proto::v1::StatusRequest;
use crate::transport;
use tonic::transport::ClientTlsConfig;

#[derive(Args, Debug)]
pub struct PlaygroundArgs {
    /// Directory for the three nodes' data and logs; reused on the next run.
    #[arg(
        long,
        env = "RAFTKV_PLAYGROUND_DIR",
        default_value = "raftkv-playground"
    )]
    pub dir: PathBuf,

    /// gRPC client port of node 1; nodes 2 and 3 use the next two.
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,

    /// Peer port (replication between the nodes) of node 1; nodes 2 and 3 use the next two.
    #[arg(long, default_value_t = 9001)]
    pub peer_base_port: u16,

    /// HTTP gateway port of node 1; nodes 2 and 3 use the next two.
    #[arg(long, default_value_t = 8001)]
    pub http_base_port: u16,

    /// How long to wait for a leader before giving up.
    #[arg(long, default_value = "30s", value_parser = crate::text::parse_duration)]
    pub wait: Duration,

    /// Serve gRPC and the HTTP gateway over TLS with client certificates required
    /// (--client-cert-auth), and mutual TLS between the nodes, using the certificates in
    /// DIR/certs, written there with
    /// `raftkv certs init` on first use.
    #[arg(long)]
    pub tls: bool,
}

struct Nodes {
    children: Vec<(u64, Child)>,
}

impl Nodes {
    /// SIGTERM to each node, then SIGKILL to any still running after a grace period.
    fn stop(&mut self) {
        for (_, child) in &self.children {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (id, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        eprintln!("node {id} did not stop in time; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.children.clear();
    }

    /// Every node that has exited, with how it ended.
    fn all_exited(&mut self) -> Vec<(u64, String)> {
        self.children
            .iter_mut()
            .filter_map(|(id, child)| match child.try_wait() {
                Ok(Some(status)) => Some((*id, status.to_string())),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts node `id` with gRPC on `ports.0 + id - 1`, HTTP on `ports.1 + id - 1` and its peer
/// port on `ports.2 + id - 1`.
fn spawn_node(
    exe: &Path,
    dir: &Path,
    id: u64,
    ports: (u16, u16, u16),
    cluster: &str,
    certs: Option<&Path>,
) -> Result<Child, CliError> {
    let fail = |what: String| CliError::new(exit::UNAVAILABLE, what);
    let log_path = dir.join(format!("node{id}.log"));
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| fail(format!("cannot open {}: {e}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(|e| fail(format!("cannot open {}: {e}", log_path.display())))?;
    let offset = id as u16 - 1;
    let (port, http_port, peer_port) = (ports.0 + offset, ports.1 + offset, ports.2 + offset);
    let mut command = Command::new(exe);
    command
        .arg("serve")
        .args(["--id", &id.to_string()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--peer-listen", &format!("127.0.0.1:{peer_port}")])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .arg("--data-dir")
        .arg(dir.join(format!("node{id}")))
        .args(["--initial-cluster", cluster]);
    if let Some(certs) = certs {
        command
            .arg("--cert-file")
            .arg(certs.join(format!("node{id}.pem")))
            .arg("--key-file")
            .arg(certs.join(format!("node{id}-key.pem")))
            .arg("--trusted-ca-file")
            .arg(certs.join("ca.pem"))
            .arg("--client-cert-auth")
            .arg("--peer-cert-file")
            .arg(certs.join(format!("node{id}.pem")))
            .arg("--peer-key-file")
            .arg(certs.join(format!("node{id}-key.pem")))
            .arg("--peer-trusted-ca-file")
            .arg(certs.join("ca.pem"));
    }
    command
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| fail(format!("cannot start node {id}: {e}")))
}

/// How the user runs this very binary from the directory they started it in: `raftkv` when
/// that is what their PATH finds, else its path (relative to that directory when inside it),
/// quoted for the shell when needed. A hint naming a `raftkv` that is not on PATH would not run.
fn invocation() -> String {
    let Ok(exe) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return "raftkv".to_string();
    };
    let first_on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("raftkv"))
            .find(|candidate| candidate.is_file())
    });
    if first_on_path.and_then(|p| p.canonicalize().ok()).as_ref() == Some(&exe) {
        return "raftkv".to_string();
    }
    let relative = std::env::current_dir()
        .and_then(|dir| dir.canonicalize())
        .ok()
        .and_then(|dir| exe.strip_prefix(dir).ok().map(Path::to_path_buf));
    let shown = match relative {
        Some(path) if path.components().count() == 1 => format!("./{}", path.display()),
        Some(path) => path.display().to_string(),
        None => exe.display().to_string(),
    };
    shell_word(&shown)
}

/// `word` as the shell reads it back: itself when plain, else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+".contains(c);
    if word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

async fn leader_of(endpoint: &str, tls: Option<&ClientTlsConfig>) -> Option<u64> {
    let channel = transport::connect(endpoint, Duration::from_secs(1), tls)
        .await
        .ok()?;
    let mut client = ClusterClient::new(channel);
    let status = client.status(StatusRequest {}).await.ok()?.into_inner();
    (status.leader_id != 0).then_some(status.leader_id)
}

pub async fn run(args: PlaygroundArgs) -> Result<(), CliError> {
    let fail = |what: String| CliError::new(exit::UNAVAILABLE, what);
    for (flag, port) in [
        ("--base-port", args.base_port),
        ("--http-base-port", args.http_base_port),
        ("--peer-base-port", args.peer_base_port),
    ] {
        if port == 0 || port > u16::MAX - 2 {
            return Err(CliError::new(
                exit::USAGE,
                format!("{flag} must be between 1 and 65533"),
            ));
        }
    }
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", args.dir.display())))?;
    let dir = args
        .dir
        .canonicalize()
        .map_err(|e| fail(format!("cannot resolve {}: {e}", args.dir.display())))?;
    let exe = std::env::current_exe().map_err(|e| fail(format!("cannot find own binary: {e}")))?;
    let endpoints: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.1:{}", args.base_port + i))
        .collect();
    let cluster = (0..3)
        .map(|i| format!("{}=127.0.0.1:{}", i + 1, args.peer_base_port + i))
        .collect::<Vec<_>>()
        .join(",");

    let certs = dir.join("certs");
    let client_tls = if args.tls {
        if !certs.join("ca.pem").exists() {
            let summary = super::certs::generate(&certs, 3, &super::certs::default_hosts(3))?;
            println!("{summary}");
        }
        let tls = transport::client_tls(
            &certs.join("ca.pem"),
            Some((&certs.join("client.pem"), &certs.join("client-key.pem"))),
            ["ca.pem", "client.pem", "client-key.pem"],
        )
        .map_err(fail)?;
        Some(tls)
    } else {
        None
    };

    let mut nodes = Nodes {
        children: Vec::new(),
    };
    // Installed before the nodes start: Ctrl-C while they come up must stop them too, not kill
    // this process and leave them running.
    let signal = |kind| {
        tokio::signal::unix::signal(kind)
            .map_err(|e| fail(format!("cannot install signal handler: {e}")))
    };
    let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate())?;
    for id in 1..=3 {
        let child = spawn_node(
            &exe,
            &dir,
            id,
            (args.base_port, args.http_base_port, args.peer_base_port),
            &cluster,
            args.tls.then_some(certs.as_path()),
        )?;
        nodes.children.push((id, child));
    }

    let deadline = Instant::now() + args.wait;
    let leader = loop {
        if let Some((id, status)) = nodes.all_exited().into_iter().next() {
            return Err(fail(format!(
                "node {id} exited ({status}); see {}",
                dir.join(format!("node{id}.log")).display()
            )));
        }
        if let Some(leader) = leader_of(&endpoints[0], client_tls.as_ref()).await {
            break leader;
        }
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "no leader elected within {:?}; see the node logs in {}",
                args.wait,
                dir.display()
            )));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            // Dropping `nodes` stops them.
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
        }
    };

    let list = endpoints.join(",");
    println!("raftkv playground: 3 nodes running, leader is node {leader}");
    println!("  data and logs: {}", dir.display());
    // With TLS the HTTP gateway serves HTTPS with the node's certificate, and asks for the
    // client certificate like the gRPC port.
    let scheme = if args.tls { "https" } else { "http" };
    for (i, endpoint) in endpoints.iter().enumerate() {
        println!(
            "  node {}: gRPC {endpoint}  HTTP {scheme}://127.0.0.1:{}",
            i + 1,
            args.http_base_port + i as u16
        );
    }
    println!();
    let raftkv = invocation();
    // With TLS every client command and grpcurl call names the CA and the client certificate.
    let shown = |file: &str| shell_word(&certs.join(file).display().to_string());
    let (cli_tls, grpcurl_tls, curl_tls) = if args.tls {
        (
            format!(
                " --cacert {} --cert {} --key {}",
                shown("ca.pem"),
                shown("client.pem"),
                shown("client-key.pem")
            ),
            format!(
                "-cacert {} -cert {} -key {}",
                shown("ca.pem"),
                shown("client.pem"),
                shown("client-key.pem")
            ),
            format!(
                "--cacert {} --cert {} --key {} ",
                shown("ca.pem"),
                shown("client.pem"),
                shown("client-key.pem")
            ),
        )
    } else {
        (String::new(), "-plaintext".to_string(), String::new())
    };
    println!("Try:");
    println!("  {raftkv} put greeting hello --endpoints {list}{cli_tls}");
    println!("  {raftkv} get greeting --endpoints {list}{cli_tls}");
    println!("  {raftkv} status --endpoints {}{cli_tls}", endpoints[1]);
    println!("  grpcurl {grpcurl_tls} {} list", endpoints[0]);
    println!(
        "  grpcurl {grpcurl_tls} -d '{{\"key\":\"greeting\",\"value\":\"aGVsbG8=\"}}' {} raftkv.v1.KV/Put",
        endpoints[0]
    );
    println!(
        "  grpcurl {grpcurl_tls} -d '{{\"key\":\"greeting\"}}' {} raftkv.v1.KV/Get",
        endpoints[1]
    );
    println!(
        "  curl {curl_tls}-X PUT --data-binary hello {scheme}://127.0.0.1:{}/kv/greeting",
        args.http_base_port
    );
    println!(
        "  curl {curl_tls}{scheme}://127.0.0.1:{}/kv/greeting",
        args.http_base_port + 1
    );
    println!();
    println!("Press Ctrl-C to stop all three nodes.");

    // A node that dies (say, killed to try a failover) is reported once; the other two keep
    // serving until Ctrl-C, and the next run brings it back on its data.
    let mut reported = std::collections::BTreeSet::new();
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = check.tick() => {
                for (id, status) in nodes.all_exited() {
                    if reported.insert(id) {
                        eprintln!(
                            "node {id} exited ({status}); the others keep serving. Log: {}",
                            dir.join(format!("node{id}.log")).display()
                        );
                    }
                }
            }
        }
    }
    println!("stopping the playground nodes…");
    nodes.stop();
    println!("stopped; data kept in {}", dir.display());
    Ok(())
}
