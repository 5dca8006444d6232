//! TLS end to end on real processes and real certificates from `raftkv certs init`: a
//! three-node cluster whose client ports speak only TLS and require client certificates
//! (`--client-cert-auth`) and whose peer ports speak only mutual TLS, driven through the CLI.
//! Verified clients are served; plaintext, a missing client certificate, a certificate from
//! another CA and a server verified against the wrong CA are refused with nothing written;
//! plaintext and another CA's certificate on the peer port are refused; a node whose
//! certificates come from another CA cannot join.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, RAFTKV};

/// The nodes this test started, killed by PID when it ends, also when it fails.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn raftkv(args: &[&str]) -> Output {
    Command::new(RAFTKV)
        .args(args)
        .env_remove("RAFTKV_ENDPOINTS")
        .output()
        .expect("run raftkv")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn certs_init(dir: &Path) {
    let out = raftkv(&["certs", "init", dir.to_str().unwrap(), "--nodes", "4"]);
    assert!(out.status.success(), "certs init: {}", text(&out.stderr));
}

fn pem(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}

/// Starts node `id` with TLS from `certs` (its own node certificate, that CA) on both ports.
fn serve(
    id: u32,
    (port, peer_port): (u16, u16),
    data: &Path,
    certs: &Path,
    cluster_or_join: [&str; 2],
) -> Child {
    let log = std::fs::File::create(data.with_extension("log")).expect("log file");
    Command::new(RAFTKV)
        .args(["serve", "--id", &id.to_string()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--peer-listen", &format!("127.0.0.1:{peer_port}")])
        .args(["--peer-cert-file", &pem(certs, &format!("node{id}.pem"))])
        .args(["--peer-key-file", &pem(certs, &format!("node{id}-key.pem"))])
        .args(["--peer-trusted-ca-file", &pem(certs, "ca.pem")])
        .args(["--data-dir", data.to_str().unwrap()])
        .args(cluster_or_join)
        .args(["--cert-file", &pem(certs, &format!("node{id}.pem"))])
        .args(["--key-file", &pem(certs, &format!("node{id}-key.pem"))])
        .args([
            "--trusted-ca-file",
            &pem(certs, "ca.pem"),
            "--client-cert-auth",
        ])
        .args(["--election-timeout-ms", "500"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn raftkv serve")
}

#[test]
fn a_tls_cluster_serves_verified_clients_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let other = dir.path().join("other");
    certs_init(&certs);
    certs_init(&other);
    let again = raftkv(&["certs", "init", certs.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2), "certs init never overwrites");

    let ports: Vec<(u16, u16)> = (0..4).map(|_| (free_port(), free_port())).collect();
    let cluster = (0..3)
        .map(|i| format!("{}=127.0.0.1:{}", i + 1, ports[i].1))
        .collect::<Vec<_>>()
        .join(",");
    let peer_endpoints = (0..3)
        .map(|i| format!("127.0.0.1:{}", ports[i].1))
        .collect::<Vec<_>>()
        .join(",");
    let endpoints = (0..3)
        .map(|i| format!("127.0.0.1:{}", ports[i].0))
        .collect::<Vec<_>>()
        .join(",");
    let data = |name: &str| -> PathBuf { dir.path().join(name) };
    let mut nodes = Nodes(
        (0..3)
            .map(|i| {
                let id = i as u32 + 1;
                serve(
                    id,
                    ports[i],
                    &data(&format!("n{id}")),
                    &certs,
                    ["--initial-cluster", &cluster],
                )
            })
            .collect(),
    );

    let (ca, cert, key) = (
        pem(&certs, "ca.pem"),
        pem(&certs, "client.pem"),
        pem(&certs, "client-key.pem"),
    );
    let verified = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend([
            "--endpoints",
            &endpoints,
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
        ]);
        raftkv(&all)
    };

    // The cluster comes up and serves a verified client, through any node.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let put = verified(&["put", "greeting", "hello", "--timeout", "3s"]);
        if put.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no TLS write within 40 s: {}",
            text(&put.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let node3 = format!("127.0.0.1:{}", ports[2].0);
    let get = raftkv(&[
        "get",
        "greeting",
        "--endpoints",
        &node3,
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
    ]);
    assert_eq!(text(&get.stdout), "hello\n", "{}", text(&get.stderr));
    let health = raftkv(&[
        "health",
        "--endpoint",
        &node3,
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
    ]);
    assert!(health.status.success(), "{}", text(&health.stderr));

    // Refused, each with nothing written.
    let node1 = format!("127.0.0.1:{}", ports[0].0);
    let refused: Vec<(&str, Vec<String>)> = vec![
        ("plaintext", vec![]),
        ("no client certificate", vec!["--cacert".into(), ca.clone()]),
        (
            "a client certificate from another CA",
            vec![
                "--cacert".into(),
                ca.clone(),
                "--cert".into(),
                pem(&other, "client.pem"),
                "--key".into(),
                pem(&other, "client-key.pem"),
            ],
        ),
        (
            "servers verified against another CA",
            vec![
                "--cacert".into(),
                pem(&other, "ca.pem"),
                "--cert".into(),
                cert.clone(),
                "--key".into(),
                key.clone(),
            ],
        ),
    ];
    for (i, (what, tls)) in refused.iter().enumerate() {
        let key_name = format!("refused-{i}");
        let mut args: Vec<&str> = vec![
            "put",
            &key_name,
            "x",
            "--endpoints",
            &node1,
            "--timeout",
            "1s",
        ];
        args.extend(tls.iter().map(String::as_str));
        let out = raftkv(&args);
        assert_eq!(out.status.code(), Some(3), "{what}: {}", text(&out.stderr));
        let read = verified(&["get", &key_name]);
        assert_eq!(read.status.code(), Some(1), "{what} wrote {key_name}");
    }

    // A node with certificates from another CA asks to join: the members refuse its
    // connections, so it never becomes a member.
    let intruder = data("n4");
    nodes.0.push(serve(
        4,
        ports[3],
        &intruder,
        &other,
        ["--join", &peer_endpoints],
    ));
    std::thread::sleep(Duration::from_secs(5));
    let status = verified(&["cluster", "status", "--json"]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let members: Vec<u64> = ["voters", "learners"]
        .iter()
        .flat_map(|k| status[k].as_array().cloned().unwrap_or_default())
        .filter_map(|m| m["id"].as_u64())
        .collect();
    assert!(
        !members.contains(&4),
        "node 4 joined with another CA: {status}"
    );
    let get = verified(&["get", "greeting"]);
    assert_eq!(text(&get.stdout), "hello\n", "the cluster still serves");

    // The peer port: a forged Vote for a far higher term, sent in plaintext or with another
    // CA's certificate, never reaches Raft (the term would jump if it did).
    let term = |status: &serde_json::Value| status["term"].as_u64().expect("term");
    let before = term(&status);
    let peer1 = format!("127.0.0.1:{}", ports[0].1);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let attempts = [
        ("plaintext", None),
        (
            "another CA's certificate",
            Some(
                raftkv::transport::client_tls(
                    Path::new(&ca),
                    Some((
                        Path::new(&pem(&other, "node1.pem")),
                        Path::new(&pem(&other, "node1-key.pem")),
                    )),
                    ["ca", "cert", "key"],
                )
                .expect("client TLS"),
            ),
        ),
    ];
    // The control: this CA's node certificate is served (a vote for an old term, refused by
    // Raft, changes nothing), so the refusals below are the TLS checks at work.
    let own = raftkv::transport::client_tls(
        Path::new(&ca),
        Some((
            Path::new(&pem(&certs, "node1.pem")),
            Path::new(&pem(&certs, "node1-key.pem")),
        )),
        ["ca", "cert", "key"],
    )
    .expect("client TLS");
    let control = runtime.block_on(forged_vote(&peer1, Some(own), 0));
    assert_eq!(control, Ok(()), "a peer certificate from the cluster's CA");
    for (what, tls) in attempts {
        let outcome = runtime.block_on(forged_vote(&peer1, tls, before + 100));
        assert!(outcome.is_err(), "{what} on the peer port was served");
    }
    let status = verified(&["cluster", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert!(
        term(&status) < before + 100,
        "a forged vote moved the term: {status}"
    );
}

/// Sends a Vote for `term` from a made-up candidate to the peer port at `address`.
async fn forged_vote(
    address: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    term: u64,
) -> Result<(), String> {
    use raftkv::proto::raft_v1::{raft_client::RaftClient, RaftMessage};
    let channel = raftkv::transport::connect(address, Duration::from_secs(3), tls.as_ref())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let vote = openraft::raft::VoteRequest::<u64>::new(openraft::Vote::new(term, 99), None);
    let payload = raftkv::raft::codec::encode(&vote).map_err(|e| e.to_string())?;
    RaftClient::new(channel)
        .vote(RaftMessage { payload })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
