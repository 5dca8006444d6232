//! The client commands of the `raftkv` binary against a real three-node cluster: multi-key put,
//! get and del, binary values from stdin and files, scan paging, compare-and-swap, metrics,
//! status and membership changes, `--json` output and exit codes (0 ok, 1 not found or CAS
//! failed, 2 bad usage, 3 unavailable).

use crate::common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bounded, free_port, TestCluster, RAFTKV};
use serde_json::Value;

/// A bound on one CLI run: generous, because other suites share this small machine.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Runs `raftkv args…` to completion (bounded), feeding `stdin` when given. Blocking.
fn raftkv(endpoints: &str, args: &[String], stdin: Option<Vec<u8>>) -> Output {
    let mut child = Command::new(RAFTKV)
        .args(args)
        .env("RAFTKV_ENDPOINTS", endpoints)
        .env("RAFTKV_TIMEOUT", "20s")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn raftkv");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        // A thread, so a child that does not read cannot block this one.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    // Drained while the child runs: a scan prints more than a pipe buffer holds.
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll raftkv") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("raftkv {args:?} did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Reads a pipe to its end on a thread of its own.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Runs the CLI against one cluster, off the async runtime.
#[derive(Clone)]
struct Cli {
    endpoints: String,
}

impl Cli {
    fn new(cluster: &TestCluster) -> Self {
        Self {
            endpoints: cluster.endpoints().join(","),
        }
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, None).await
    }

    async fn run_with(&self, args: &[&str], stdin: Option<Vec<u8>>) -> Output {
        let endpoints = self.endpoints.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || raftkv(&endpoints, &args, stdin))
            .await
            .expect("CLI thread")
    }

    /// Runs and checks the exit code, showing both streams when it differs.
    async fn expect(&self, code: i32, args: &[&str]) -> Output {
        let output = self.run(args).await;
        assert_code(&output, code, args);
        output
    }

    /// Runs with `--json`, expecting `code`, and parses stdout as one JSON document.
    async fn json(&self, code: i32, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let output = self.expect(code, &all).await;
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{all:?}: stdout is not JSON ({e}): {}", out(&output)))
    }
}

fn out(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn err(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_code(output: &Output, code: i32, args: &[&str]) {
    let mut stdout = out(output);
    if stdout.len() > 2000 {
        let mut cut = 2000;
        while !stdout.is_char_boundary(cut) {
            cut -= 1;
        }
        stdout.truncate(cut);
        stdout.push('…');
    }
    assert_eq!(
        output.status.code(),
        Some(code),
        "raftkv {args:?}\nstdout: {stdout}\nstderr: {}",
        err(output)
    );
    assert!(!err(output).contains("panicked"), "{}", err(output));
}

/// An error is one `error: …` line on stderr.
fn assert_one_error_line(output: &Output, expected: &str) {
    let text = err(output);
    assert_eq!(text.lines().count(), 1, "one line expected: {text}");
    assert!(text.starts_with("error: "), "{text}");
    assert!(text.contains(expected), "expected {expected:?} in {text}");
}

/// Standard base64 decoding, written independently of the CLI's encoder.
fn base64_decode(text: &str) -> Vec<u8> {
    let digit = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c:?}"),
        }
    };
    let mut bytes = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|c| *c != b'=').collect();
        let n = data
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | (digit(*c) << (18 - 6 * i)));
        for i in 0..data.len().saturating_sub(1) {
            bytes.push((n >> (16 - 8 * i)) as u8);
        }
    }
    bytes
}

/// Every byte value, including NUL, bytes that are never UTF-8 and a newline.
fn binary_value() -> Vec<u8> {
    let mut value: Vec<u8> = (0..=255u8).collect();
    value.extend_from_slice(b"\x00\xff\xfe tail\n");
    value
}

/// The value of `key` from `get --json` output, decoded per its encoding.
fn json_value(result: &Value) -> Vec<u8> {
    let text = result["value"].as_str().expect("value string");
    match result["encoding"].as_str() {
        Some("utf8") => text.as_bytes().to_vec(),
        Some("base64") => base64_decode(text),
        other => panic!("unknown encoding {other:?} in {result}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_del_forms_atomicity_and_exit_codes() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let cli = Cli::new(&cluster);

        // The single-pair forms keep their output.
        let put = cli.expect(0, &["put", "colour", "teal"]).await;
        assert!(out(&put).starts_with("OK revision="), "{}", out(&put));
        let get = cli.expect(0, &["get", "colour"]).await;
        assert_eq!(out(&get), "teal\n");
        cli.expect(0, &["put", "eq=key", "plain"]).await;
        assert_eq!(out(&cli.expect(0, &["get", "eq=key"]).await), "plain\n");
        cli.expect(0, &["put", "--", "neg", "-5"]).await;
        assert_eq!(out(&cli.expect(0, &["get", "neg"]).await), "-5\n");

        // Several pairs: one batch, one revision for all of them.
        let batch = cli
            .expect(0, &["put", "a=1", "b=two=2", "c=", "d=multi\nline"])
            .await;
        assert!(out(&batch).starts_with("OK revision="), "{}", out(&batch));
        assert!(
            out(&batch).trim_end().ends_with("keys=4"),
            "{}",
            out(&batch)
        );
        let doc = cli.json(0, &["get", "a", "b", "c", "d"]).await;
        let results = doc["results"].as_array().expect("results");
        assert_eq!(results.len(), 4);
        let revisions: BTreeSet<u64> = results
            .iter()
            .map(|r| r["revision"].as_u64().expect("revision"))
            .collect();
        assert_eq!(revisions.len(), 1, "one batch, one revision: {doc}");
        assert_eq!(json_value(&results[1]), b"two=2");
        assert_eq!(json_value(&results[2]), b"");

        // Text form: `key: value`, control characters escaped, missing keys named, exit 1.
        let text = cli.expect(1, &["get", "a", "nope", "d", "c"]).await;
        assert_eq!(
            out(&text),
            "a: 1\nnope: (not found)\nd: \"multi\\nline\"\nc: \n"
        );
        assert_one_error_line(&text, "1 of 4 keys not found: nope");
        cli.expect(0, &["get", "a", "b", "--stale"]).await;

        // A batch with one invalid op applies nothing: atomic, and exit 2.
        let rejected = cli
            .expect(2, &["put", "x1=new", "=empty-key", "a=changed"])
            .await;
        assert_one_error_line(&rejected, "key cannot be empty");
        cli.expect(1, &["get", "x1"]).await;
        assert_eq!(out(&cli.expect(0, &["get", "a"]).await), "1\n");

        // Missing keys: the single form keeps its message; --json reports found=false.
        let missing = cli.expect(1, &["get", "no-such-key"]).await;
        assert_eq!(err(&missing).trim(), "error: key not found: no-such-key");
        let doc = cli.json(1, &["get", "no-such-key"]).await;
        assert_eq!(doc["results"][0]["found"], Value::Bool(false));
        assert_eq!(doc["results"][0]["key"], "no-such-key");

        // Mixed or malformed forms: exit 2 with one line, nothing sent.
        for args in [
            &["put", "a=1", "b=2", "c"][..],
            &["put", "k", "v", "w"][..],
            &["put", "k", "v", "--file", "/dev/null"][..],
            &["put", "k", "v", "--ttl", "soon"][..],
            &["get", "a", ""][..],
        ] {
            let output = cli.expect(2, args).await;
            assert!(
                err(&output).starts_with("error:"),
                "{args:?}: {}",
                err(&output)
            );
        }
        let gone_file = cli
            .expect(2, &["put", "k", "--file", "/nonexistent/raftkv-value"])
            .await;
        assert_one_error_line(&gone_file, "cannot read --file");

        // TTL applies to every key of a batch.
        cli.expect(0, &["put", "t1=x", "t2=y", "--ttl", "2s"]).await;
        let doc = cli.json(0, &["get", "t1", "t2"]).await;
        for result in doc["results"].as_array().expect("results") {
            let ttl = result["ttl_ms"].as_u64().expect("ttl_ms");
            assert!(ttl > 0 && ttl <= 2000, "{result}");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = cli.run(&["get", "t1", "t2"]).await;
            if output.status.code() == Some(1) && out(&output).matches("(not found)").count() == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "TTL keys never expired: {}",
                out(&output)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }

        // Deleting: the single form keeps its output; several keys are one batch.
        let del = cli.expect(0, &["del", "colour"]).await;
        assert!(out(&del).starts_with("deleted revision="), "{}", out(&del));
        let del = cli.expect(0, &["del", "colour"]).await;
        assert!(out(&del).starts_with("not found, nothing deleted revision="));
        let del = cli.expect(0, &["del", "a", "ghost", "b"]).await;
        let text = out(&del);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("deleted 2 of 3 keys revision="),
            "{lines:?}"
        );
        assert_eq!(
            &lines[1..],
            ["a: deleted", "ghost: not found", "b: deleted"]
        );
        cli.expect(1, &["get", "a"]).await;
        cli.expect(1, &["get", "b"]).await;

        // Nobody listening: exit 3 for every command.
        let nobody = Cli {
            endpoints: format!("127.0.0.1:{}", free_port()),
        };
        for args in [
            &["get", "a", "b", "--timeout", "1s"][..],
            &["put", "a=1", "b=2", "--timeout", "1s"][..],
            &["del", "a", "b", "--timeout", "1s"][..],
            &["scan", "--timeout", "1s"][..],
            &["metrics", "--timeout", "1s"][..],
            &["cluster", "status", "--timeout", "1s"][..],
        ] {
            let output = nobody.expect(3, args).await;
            assert_one_error_line(&output, "cluster unavailable");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_values_from_stdin_and_files_round_trip() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let cli = Cli::new(&cluster);
        let value = binary_value();

        // `put KEY` and `put KEY -` read stdin; the single-key get prints the bytes exactly.
        for args in [&["put", "bin1"][..], &["put", "bin2", "-"][..]] {
            let put = cli.run_with(args, Some(value.clone())).await;
            assert_code(&put, 0, args);
        }
        for key in ["bin1", "bin2"] {
            let get = cli.expect(0, &["get", key]).await;
            let mut expected = value.clone();
            expected.push(b'\n');
            assert_eq!(get.stdout, expected, "{key}");
        }

        // --file, with a larger value.
        let big: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("value.bin");
        std::fs::write(&path, &big).expect("write value file");
        let path = path.to_str().expect("utf-8 temp path");
        cli.expect(0, &["put", "bin3", "--file", path]).await;
        // With --file the one argument is the key, '=' and all.
        cli.expect(0, &["put", "k=with-eq", "--file", path]).await;

        // --json gives base64 for what is not UTF-8, text otherwise.
        let doc = cli
            .json(
                1,
                &["get", "bin1", "bin3", "k=with-eq", "neverset", "--stale"],
            )
            .await;
        assert_eq!(doc["results"][3]["found"], Value::Bool(false), "{doc}");
        let results = doc["results"].as_array().expect("results");
        assert_eq!(results[0]["encoding"], "base64");
        assert_eq!(json_value(&results[0]), value);
        assert_eq!(json_value(&results[1]), big);
        assert_eq!(json_value(&results[2]), big);

        // Text lists show the size of a binary value instead of its bytes.
        let text = cli.expect(0, &["get", "bin1", "bin2"]).await;
        let n = value.len();
        assert_eq!(
            out(&text),
            format!("bin1: <{n} bytes, not UTF-8>\nbin2: <{n} bytes, not UTF-8>\n")
        );

        // Scan --json round-trips them too.
        let doc = cli.json(0, &["scan", "--prefix", "bin"]).await;
        let kvs = doc["kvs"].as_array().expect("kvs");
        assert_eq!(kvs.len(), 3, "{doc}");
        assert_eq!(json_value(&kvs[0]), value);
        assert_eq!(json_value(&kvs[2]), big);

        // A UTF-8 value from stdin comes back as text.
        cli.run_with(&["put", "utf"], Some("héllo\n".as_bytes().to_vec()))
            .await;
        let doc = cli.json(0, &["get", "utf"]).await;
        assert_eq!(doc["results"][0]["encoding"], "utf8");
        assert_eq!(doc["results"][0]["value"], "héllo\n");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_pages_through_every_key_exactly_once() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let cli = Cli::new(&cluster);
        const KEYS: usize = 2500;
        let key = |i: usize| format!("item:{i:04}");
        let pairs: Vec<String> = (0..KEYS).map(|i| format!("{}=v{i}", key(i))).collect();
        for chunk in pairs.chunks(900) {
            let mut args = vec!["put"];
            args.extend(chunk.iter().map(String::as_str));
            let output = cli.run(&args).await;
            assert_code(&output, 0, &["put", "<900 pairs>"]);
        }
        // Neighbours just outside the prefix.
        cli.expect(0, &["put", "item=x", "item;=y", "iten=z"]).await;
        let expected: Vec<String> = (0..KEYS).map(key).collect();

        // Everything under the prefix, across three pages, each key once and in order.
        let doc = cli.json(0, &["scan", "--prefix", "item:"]).await;
        let kvs = doc["kvs"].as_array().expect("kvs");
        let keys: Vec<&str> = kvs
            .iter()
            .map(|kv| kv["key"].as_str().expect("key"))
            .collect();
        assert_eq!(keys, expected);
        assert_eq!(doc["count"], KEYS);
        assert_eq!(doc["more"], false);
        for (i, kv) in kvs.iter().enumerate() {
            assert_eq!(kv["value"], format!("v{i}"));
            assert_eq!(kv["encoding"], "utf8");
            assert!(kv["revision"].as_u64().expect("revision") > 0);
        }

        // Text, keys only.
        let text = cli
            .expect(0, &["scan", "--prefix", "item:", "--keys-only"])
            .await;
        let lines: Vec<&str> = std::str::from_utf8(&text.stdout)
            .expect("utf-8")
            .lines()
            .collect();
        assert_eq!(lines, expected);

        // Text with values; stale reads page too.
        let text = cli
            .expect(0, &["scan", "--prefix", "item:", "--stale"])
            .await;
        let stdout = out(&text);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), KEYS);
        assert_eq!(lines[1234], "item:1234: v1234");

        // The whole key space: the neighbours too.
        let all = cli.expect(0, &["scan", "--keys-only"]).await;
        assert_eq!(out(&all).lines().count(), KEYS + 3);

        // --limit caps the total across pages and says where to go on.
        let doc = cli
            .json(
                0,
                &[
                    "scan",
                    "--prefix",
                    "item:",
                    "--limit",
                    "1500",
                    "--keys-only",
                ],
            )
            .await;
        assert_eq!(doc["count"], 1500);
        assert_eq!(doc["kvs"].as_array().expect("kvs").len(), 1500);
        assert!(
            doc["kvs"][0].get("value").is_none(),
            "keys only: {}",
            doc["kvs"][0]
        );
        assert_eq!(doc["more"], true);
        assert_eq!(doc["next_start"], "item:1500");
        let rest = cli
            .json(0, &["scan", "--prefix", "item:", "--start", "item:1500"])
            .await;
        assert_eq!(rest["count"], KEYS - 1500);
        assert_eq!(rest["kvs"][0]["key"], "item:1500");
        let capped = cli
            .expect(0, &["scan", "--prefix", "item:", "--limit", "100"])
            .await;
        assert_eq!(out(&capped).lines().count(), 100);
        assert!(
            err(&capped).contains("--start \"item:0100\""),
            "{}",
            err(&capped)
        );

        // A range [start, end).
        let range = cli
            .expect(
                0,
                &[
                    "scan",
                    "--start",
                    "item:0100",
                    "--end",
                    "item:0200",
                    "--keys-only",
                ],
            )
            .await;
        let lines: Vec<String> = out(&range).lines().map(String::from).collect();
        assert_eq!(lines, expected[100..200]);

        // Bad usage.
        cli.expect(2, &["scan", "--prefix", "a", "--end", "b"])
            .await;
        cli.expect(2, &["scan", "--limit", "0"]).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_succeeds_fails_and_reports_the_current_state() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let cli = Cli::new(&cluster);

        // Revision 0: create only if absent.
        let created = cli
            .expect(0, &["cas", "lock", "--expect-revision", "0", "owner-a"])
            .await;
        let revision: u64 = out(&created)
            .trim()
            .strip_prefix("OK revision=")
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("{}", out(&created)));
        let again = cli
            .expect(1, &["cas", "lock", "--expect-revision", "0", "owner-b"])
            .await;
        assert_eq!(
            out(&again).trim(),
            format!("current revision={revision} value=owner-a")
        );
        assert_one_error_line(&again, "condition did not hold");

        // By revision, with a TTL.
        let rev = revision.to_string();
        cli.expect(
            0,
            &[
                "cas",
                "lock",
                "--expect-revision",
                &rev,
                "owner-c",
                "--ttl",
                "1h",
            ],
        )
        .await;
        let doc = cli.json(0, &["get", "lock"]).await;
        assert_eq!(doc["results"][0]["value"], "owner-c");
        assert!(doc["results"][0]["ttl_ms"].as_u64().expect("ttl") > 3_000_000);
        cli.expect(1, &["cas", "lock", "--expect-revision", &rev, "late"])
            .await;

        // By value.
        cli.expect(1, &["cas", "lock", "--expect-value", "owner-a", "x"])
            .await;
        cli.expect(0, &["cas", "lock", "--expect-value", "owner-c", "owner-d"])
            .await;
        assert_eq!(out(&cli.expect(0, &["get", "lock"]).await), "owner-d\n");

        // Delete under a condition.
        cli.expect(1, &["cas", "lock", "--expect-value", "nope", "--delete"])
            .await;
        let deleted = cli
            .expect(0, &["cas", "lock", "--expect-value", "owner-d", "--delete"])
            .await;
        assert!(out(&deleted).starts_with("OK revision="));
        cli.expect(1, &["get", "lock"]).await;
        let absent = cli
            .expect(1, &["cas", "lock", "--expect-value", "owner-d", "y"])
            .await;
        assert_eq!(out(&absent).trim(), "key does not exist");

        // Bad usage: no condition, two conditions, value with --delete, no value.
        for args in [
            &["cas", "lock", "v"][..],
            &[
                "cas",
                "lock",
                "--expect-revision",
                "1",
                "--expect-value",
                "a",
                "v",
            ][..],
            &["cas", "lock", "--expect-revision", "1", "--delete", "v"][..],
            &["cas", "lock", "--expect-revision", "1"][..],
            &["cas", "", "--expect-revision", "0", "v"][..],
        ] {
            cli.expect(2, args).await;
        }

        // Nobody listening: nothing was sent, so it is plainly unavailable.
        let nobody = Cli {
            endpoints: format!("127.0.0.1:{}", free_port()),
        };
        let down = nobody
            .expect(
                3,
                &["cas", "k", "--expect-revision", "0", "v", "--timeout", "1s"],
            )
            .await;
        assert_one_error_line(&down, "cluster unavailable");

        // A first endpoint that accepts the connection and then never answers: the CAS has been
        // sent there, and is retried on the healthy nodes behind it with the same idempotency
        // key, so it applies once.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("silent listener");
        let silent = silent.local_addr().expect("silent address").to_string();
        let black_hole = Cli {
            endpoints: format!("{silent},{}", cli.endpoints),
        };
        black_hole
            .expect(
                0,
                &[
                    "cas",
                    "once",
                    "--expect-revision",
                    "0",
                    "v",
                    "--timeout",
                    "8s",
                ],
            )
            .await;
        let got = cli.expect(0, &["get", "once"]).await;
        assert_eq!(String::from_utf8_lossy(&got.stdout), "v\n");
    })
    .await
}

/// Kills a node this test started itself, also when the test fails.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_and_membership_changes() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let cli = Cli::new(&cluster);
        let first = cluster.node(1).address.clone();
        cli.expect(0, &["put", "m1=1", "m2=2"]).await;

        // Metrics: the first endpoint answers and is named.
        let text = cli.expect(0, &["metrics"]).await;
        let text = out(&text);
        assert!(text.contains(&format!("(answered at {first})")), "{text}");
        for field in ["term:", "commit index:", "keys:", "put ops:", "cas ops:"] {
            assert!(text.contains(field), "{field} missing: {text}");
        }
        let doc = cli.json(0, &["metrics"]).await;
        assert_eq!(doc["endpoint"], first.as_str());
        assert_eq!(doc["node_id"], 1);
        assert!(doc["keys"].as_u64().expect("keys") >= 2);
        assert!(doc["applied_index"].as_u64().expect("applied") > 0);
        assert!(doc["followers"].is_array());

        // Status, top-level and under `cluster`, as text and JSON.
        let status = cli.expect(0, &["status"]).await;
        assert!(out(&status).contains("leader:"));
        let status = cli.expect(0, &["cluster", "status"]).await;
        assert!(out(&status).contains("voters:"));
        for args in [&["status"][..], &["cluster", "status"][..]] {
            let doc = cli.json(0, args).await;
            assert_eq!(doc["id"], 1);
            assert_eq!(doc["endpoint"], first.as_str());
            assert!(doc["leader_id"].as_u64().expect("leader") > 0);
            assert_eq!(doc["voters"].as_array().expect("voters").len(), 3);
            assert!(doc["learners"].as_array().expect("learners").is_empty());
        }

        // Membership changes the server refuses: exit 2.
        let bad = cli
            .expect(2, &["cluster", "add-learner", "5", "not-an-address"])
            .await;
        assert_one_error_line(&bad, "no port");
        cli.expect(2, &["cluster", "add-learner", "0", "127.0.0.1:1"])
            .await;
        cli.expect(2, &["cluster", "add-learner", "x", "127.0.0.1:1"])
            .await;
        let not_learner = cli.expect(2, &["cluster", "promote", "9"]).await;
        assert_one_error_line(&not_learner, "9");
        cli.expect(2, &["cluster", "promote"]).await;

        // A fourth node, started empty: add it as a learner, promote it, remove it.
        let address = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(cluster.dir.path().join("node4.log")).expect("log");
        let _node4 = Reaper(
            Command::new(RAFTKV)
                .args(["serve", "--id", "4", "--listen", &address, "--data-dir"])
                .arg(cluster.dir.path().join("node4"))
                .args(["--heartbeat-ms", "100", "--election-timeout-ms", "1000"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn node 4"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "node 4 never listened on {address}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let added = cli
            .expect(
                0,
                &["cluster", "add-learner", "4", &address, "--timeout", "40s"],
            )
            .await;
        let text = out(&added);
        assert!(text.starts_with("OK revision="), "{text}");
        assert!(text.contains(&format!("learners: 4={address}")), "{text}");
        let doc = cli.json(0, &["cluster", "status"]).await;
        assert_eq!(doc["learners"][0]["id"], 4);

        let promoted = cli.expect(0, &["cluster", "promote", "4"]).await;
        assert!(
            out(&promoted).contains(&format!("4={address}")),
            "{}",
            out(&promoted)
        );
        assert!(out(&promoted).contains("learners: -"), "{}", out(&promoted));
        let doc = cli.json(0, &["cluster", "status"]).await;
        assert_eq!(doc["voters"].as_array().expect("voters").len(), 4);

        let removed = cli.expect(0, &["cluster", "remove", "4"]).await;
        assert!(!out(&removed).contains("4="), "{}", out(&removed));
        let doc = cli.json(0, &["cluster", "status"]).await;
        assert_eq!(doc["voters"].as_array().expect("voters").len(), 3);

        // The remaining cluster still serves.
        assert_eq!(out(&cli.expect(0, &["get", "m1"]).await), "1\n");
    })
    .await
}

/// `cluster snapshot` compacts every node named: each answers with a snapshot covering the writes
/// made before it, the log behind it is purged down to --logs-kept entries, and a node restarted
/// afterwards still has every key (from the snapshot, the purged entries being gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_snapshot_compacts_every_node_named() {
    bounded(async {
        let mut cluster =
            TestCluster::start(3, &["--snapshot-every", "1000000", "--logs-kept", "5"]).await;
        let cli = Cli::new(&cluster);
        let mut last_revision = 0;
        // More entries than the purge batch (64), so the purge is due once the snapshot exists.
        for i in 0..120 {
            last_revision = cluster
                .put(1, &format!("snap-{i}"), format!("v{i}").as_bytes())
                .await
                .unwrap();
        }
        for id in 1..=3 {
            cluster
                .wait_applied(id, last_revision, Duration::from_secs(20))
                .await;
        }

        let output = cli.expect(0, &["cluster", "snapshot"]).await;
        let text = out(&output);
        let mut nodes = BTreeSet::new();
        for line in text.lines() {
            // node N: snapshot index S, purged index P
            let (node, rest) = line.split_once(": snapshot index ").expect(line);
            let (snapshot, purged) = rest.split_once(", purged index ").expect(line);
            let snapshot: u64 = snapshot.parse().expect(line);
            let purged: u64 = purged.parse().expect(line);
            assert!(snapshot >= last_revision, "{line}: before {last_revision}");
            assert!(purged <= snapshot, "{line}");
            nodes.insert(node.trim_start_matches("node ").to_string());
        }
        assert_eq!(nodes.len(), 3, "one line per node: {text}");

        // openraft purges right after the snapshot; wait for it to show.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = cluster.status(2).await.unwrap();
            if status.purged_index + 5 >= status.snapshot_index && status.purged_index > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "log not purged: {status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        cluster.kill(2);
        cluster.start_node(2);
        cluster
            .wait_applied(2, last_revision, Duration::from_secs(30))
            .await;
        for i in [0, 17, 119] {
            let value = cluster
                .get(
                    2,
                    &format!("snap-{i}"),
                    raftkv::proto::v1::Consistency::Stale,
                )
                .await
                .unwrap()
                .value;
            assert_eq!(value, format!("v{i}").into_bytes());
        }

        // One unreachable endpoint: the others are still compacted, and the exit code says so.
        let endpoints = format!("{},127.0.0.1:{}", cluster.node(1).address, free_port());
        let args: Vec<String> = ["cluster", "snapshot", "--timeout", "2s"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let output = tokio::task::spawn_blocking(move || raftkv(&endpoints, &args, None))
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(3), "{}", err(&output));
        assert!(
            out(&output).starts_with("node 1: snapshot index"),
            "{}",
            out(&output)
        );
        assert!(
            err(&output).contains("error: 127.0.0.1:"),
            "{}",
            err(&output)
        );
    })
    .await
}
