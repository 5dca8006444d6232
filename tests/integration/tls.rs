//! TLS end to end on real processes and real certificates from `raftkv certs init`: a
//! three-node cluster whose gRPC ports speak only TLS and require client certificates
//! (`--client-cert-auth`), driven through the CLI. Verified clients are served; plaintext, a
//! missing client certificate, a certificate from another CA and a server verified against the
//! wrong CA are refused with nothing written; a node whose certificates come from another CA
//! cannot join.

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

/// Starts node `id` with TLS from `certs` (its own node certificate, that CA).
fn serve(id: u32, port: u16, data: &Path, certs: &Path, cluster_or_join: [&str; 2]) -> Child {
    let log = std::fs::File::create(data.with_extension("log")).expect("log file");
    Command::new(RAFTKV)
        .args(["serve", "--id", &id.to_string()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
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

    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let cluster = (0..3)
        .map(|i| format!("{}=127.0.0.1:{}", i + 1, ports[i]))
        .collect::<Vec<_>>()
        .join(",");
    let endpoints = (0..3)
        .map(|i| format!("127.0.0.1:{}", ports[i]))
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
    let node3 = format!("127.0.0.1:{}", ports[2]);
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
    let node1 = format!("127.0.0.1:{}", ports[0]);
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
        ["--join", &endpoints],
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
}
