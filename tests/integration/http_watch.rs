//! `GET /watch` (Server-Sent Events) on real `raftkv serve` processes, read by a real HTTP client
//! as the bytes arrive: a watcher on a follower's gateway gets exactly the changes made through
//! gRPC and HTTP (puts, a batch, deletes), in order, one message per revision with `id` = that
//! revision, the same JSON objects `raftkv watch --json` prints; a watch from the past replays
//! them; `Last-Event-ID` resumes after it; a start older than `--watch-history` is 410 naming the
//! oldest revision; bad queries are 400 with the gRPC texts; progress messages; and a node
//! stopping ends open streams (plain HTTP and HTTPS) instead of hanging. The bearer token on
//! `/watch` is tested with the others in `auth.rs`.

use std::time::{Duration, Instant};

use raftkv::proto::v1::{batch_op, BatchOp, BatchRequest, DeleteRequest, PutRequest, WatchRequest};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{bounded, ClusterOptions, TestCluster, RAFTKV};

/// One SSE message: its `event`, `id` and `data` fields.
#[derive(Debug, Clone, PartialEq)]
struct Message {
    event: String,
    id: Option<String>,
    data: String,
}

impl Message {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("data is not JSON ({e}): {self:?}"))
    }
}

/// An open `/watch` response, read message by message.
struct Events {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

/// A client without an overall timeout (it would cut streams off); each read is bounded instead.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

fn url(cluster: &TestCluster, id: u64, path: &str) -> String {
    let http = cluster.node(id).http.as_deref().expect("node serves HTTP");
    format!("http://{http}{path}")
}

/// `GET url` with optional headers; the answer's headers are in when this returns.
async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    tokio::time::timeout(Duration::from_secs(20), request.send())
        .await
        .unwrap_or_else(|_| panic!("GET {url}: no answer within 20 s"))
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Opens a watch that must stream: 200 with `text/event-stream`.
async fn open(url: &str, headers: &[(&str, &str)]) -> Events {
    let response = get(url, headers).await;
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    if status != StatusCode::OK {
        let body = response.text().await.unwrap_or_default();
        panic!("GET {url}: {status} {body}");
    }
    assert_eq!(content_type.as_deref(), Some("text/event-stream"), "{url}");
    Events {
        response,
        buffer: Vec::new(),
    }
}

/// Reads a whole non-streaming answer.
async fn answer(url: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let response = get(url, headers).await;
    let status = response.status();
    let body = tokio::time::timeout(Duration::from_secs(20), response.text())
        .await
        .unwrap_or_else(|_| panic!("GET {url}: the body did not end within 20 s"))
        .expect("body");
    (status, body)
}

impl Events {
    /// The next message, skipping comments (keep-alives); `None` once the stream has ended.
    async fn next(&mut self) -> Option<Message> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("SSE is UTF-8");
                if let Some(message) = parse(&block) {
                    return Some(message);
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no complete message within 30 s; have {:?}",
                        String::from_utf8_lossy(&self.buffer)
                    )
                });
            match chunk {
                Ok(Some(bytes)) => self.buffer.extend_from_slice(&bytes),
                Ok(None) => {
                    assert!(
                        self.buffer.iter().all(u8::is_ascii_whitespace),
                        "stream ended inside a message: {:?}",
                        String::from_utf8_lossy(&self.buffer)
                    );
                    return None;
                }
                Err(e) => panic!("reading the stream: {e}"),
            }
        }
    }

    /// The next `count` messages, which must all come.
    async fn take(&mut self, count: usize) -> Vec<Message> {
        let mut messages = Vec::new();
        while messages.len() < count {
            match self.next().await {
                Some(message) => messages.push(message),
                None => panic!("the stream ended after {messages:?}"),
            }
        }
        messages
    }
}

/// One SSE block (lines up to a blank line); `None` for a comment-only block.
fn parse(block: &str) -> Option<Message> {
    let (mut event, mut id, mut data) = (None, None, Vec::new());
    for line in block
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(':'))
    {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match field {
            "event" => event = Some(value),
            "id" => id = Some(value),
            "data" => data.push(value),
            other => panic!("unexpected SSE field {other:?} in {block:?}"),
        }
    }
    if event.is_none() && id.is_none() && data.is_empty() {
        return None;
    }
    Some(Message {
        event: event.unwrap_or_else(|| "message".into()),
        id,
        data: data.join("\n"),
    })
}

/// Asserts that `messages` are `change` messages for exactly `expected` (revision, events), in
/// order, each with its revision as id.
fn assert_changes(messages: &[Message], expected: &[(u64, Value)]) {
    let got: Vec<(String, Option<String>, Value)> = messages
        .iter()
        .map(|m| (m.event.clone(), m.id.clone(), m.json()))
        .collect();
    let want: Vec<(String, Option<String>, Value)> = expected
        .iter()
        .map(|(revision, events)| {
            (
                "change".to_string(),
                Some(revision.to_string()),
                json!({ "revision": revision, "events": events }),
            )
        })
        .collect();
    assert_eq!(got, want);
}

fn put(key: &str, value: &[u8]) -> PutRequest {
    PutRequest {
        lease: 0,
        key: key.into(),
        value: value.to_vec(),
        ttl_ms: 0,
    }
}

/// `PUT /kv/{key}` or `DELETE /kv/{key}` through a node's gateway; the write's revision.
async fn http_write(cluster: &TestCluster, id: u64, key: &str, value: Option<&str>) -> u64 {
    let url = url(cluster, id, &format!("/kv/{key}"));
    let request = match value {
        Some(value) => client().put(&url).body(value.to_string()),
        None => client().delete(&url),
    };
    let response = request
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(response.status(), StatusCode::OK, "{url}");
    let body = response.bytes().await.expect("reply");
    let reply: Value = serde_json::from_slice(&body).expect("JSON reply");
    reply["revision"].as_u64().expect("revision")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_carries_exactly_the_changes_in_order_with_revisions_as_ids() {
    bounded(async {
        let cluster = TestCluster::start_with_http(3, &[]).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let (follower, third) = (cluster.others(leader)[0], cluster.others(leader)[1]);
        // From now on, on a follower's gateway; once the headers are in, the watcher is there.
        let mut live = open(
            &url(&cluster, follower, "/watch?prefix=w/&rev=0&prev=true"),
            &[],
        )
        .await;
        let mut grpc = cluster.kv(leader).await.expect("gRPC client");

        let r1 = grpc.put(put("w/a", b"1")).await.unwrap().into_inner().revision;
        http_write(&cluster, third, "other", Some("not watched")).await;
        let r2 = http_write(&cluster, third, "w/a", Some("2")).await;
        let batch = BatchRequest {
            ops: vec![
                BatchOp {
                    op: Some(batch_op::Op::Put(put("w/b", &[0xff, 0x00]))),
                },
                BatchOp {
                    op: Some(batch_op::Op::Delete(DeleteRequest { key: "w/a".into() })),
                },
            ],
        };
        let rb = grpc.batch(batch).await.unwrap().into_inner().revision;
        let rd = http_write(&cluster, leader, "w/b", None).await;
        // The last one: nothing may come between the others and it.
        let rz = grpc.put(put("w/z", b"end")).await.unwrap().into_inner().revision;

        let utf8 = |value: &str, revision: u64| {
            json!({ "value": value, "encoding": "utf8", "revision": revision })
        };
        let expected = vec![
            (
                r1,
                json!([{"type": "PUT", "key": "w/a", "value": "1", "encoding": "utf8",
                        "revision": r1}]),
            ),
            (
                r2,
                json!([{"type": "PUT", "key": "w/a", "value": "2", "encoding": "utf8",
                        "revision": r2, "prev": utf8("1", r1)}]),
            ),
            (
                rb,
                json!([
                    {"type": "PUT", "key": "w/b", "value": "/wA=", "encoding": "base64",
                     "revision": rb},
                    {"type": "DELETE", "key": "w/a", "revision": rb, "prev": utf8("2", r2)},
                ]),
            ),
            (
                rd,
                json!([{"type": "DELETE", "key": "w/b", "revision": rd,
                        "prev": {"value": "/wA=", "encoding": "base64", "revision": rb}}]),
            ),
            (
                rz,
                json!([{"type": "PUT", "key": "w/z", "value": "end", "encoding": "utf8",
                        "revision": rz}]),
            ),
        ];
        assert_changes(&live.take(5).await, &expected);

        // From the past, on the third node: the same messages.
        let from = format!("/watch?prefix=w/&rev={r1}&prev=true");
        let mut past = open(&url(&cluster, third, &from), &[]).await;
        assert_changes(&past.take(5).await, &expected);

        // EventSource's reconnect: Last-Event-ID resumes after it, with or without `rev` in
        // the URL (it reconnects to the URL it was opened with).
        let last = r2.to_string();
        for path in ["/watch?prefix=w/&prev=true", from.as_str()] {
            let mut resumed = open(&url(&cluster, leader, path), &[("Last-Event-ID", &last)]).await;
            assert_changes(&resumed.take(3).await, &expected[2..]);
        }

        // `raftkv watch --json` prints the same event objects.
        let mut child = tokio::process::Command::new(RAFTKV)
            .args(["watch", "--prefix", "w/", "--prev", "--json", "--rev"])
            .arg(r1.to_string())
            .arg("--endpoints")
            .arg(cluster.endpoints().join(","))
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn raftkv watch");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let events: Vec<Value> = expected
            .iter()
            .flat_map(|(_, events)| events.as_array().expect("events").clone())
            .collect();
        for (i, want) in events.iter().enumerate() {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("raftkv watch printed only {i} lines in 20 s"))
                .expect("read stdout")
                .expect("a line");
            let got: Value = serde_json::from_str(&line).expect("a JSON line");
            assert_eq!(&got, want, "line {i}");
        }
        let _ = child.kill().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_starts_bad_queries_and_progress() {
    bounded(async {
        let cluster = TestCluster::start_with_http(
            1,
            &["--watch-history", "3", "--watch-progress-interval", "300ms"],
        )
        .await;
        let mut revisions = Vec::new();
        for i in 0..8 {
            revisions.push(cluster.put(1, &format!("h/{i}"), b"v").await.unwrap());
        }

        // Older than the history (the last 3 writes): 410 naming the oldest revision.
        let path = format!("/watch?prefix=h/&rev={}", revisions[0]);
        let (status, body) = answer(&url(&cluster, 1, &path), &[]).await;
        assert_eq!(status, StatusCode::GONE, "{body}");
        let gone: Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(gone["compact_revision"], revisions[5], "{gone}");
        let reason = gone["reason"].as_str().expect("reason");
        assert!(
            reason.contains(&format!("watch again from revision {}", revisions[5])),
            "{reason}"
        );
        // From that revision it streams.
        let path = format!("/watch?prefix=h/&rev={}", revisions[5]);
        let mut events = open(&url(&cluster, 1, &path), &[]).await;
        let ids: Vec<Option<String>> = events.take(3).await.into_iter().map(|m| m.id).collect();
        let want: Vec<Option<String>> =
            revisions[5..].iter().map(|r| Some(r.to_string())).collect();
        assert_eq!(ids, want);

        // Bad queries: 400 with the text gRPC gives, or the gateway's own for HTTP-only mistakes.
        let mut grpc = cluster.kv(1).await.expect("gRPC client");
        let long_key = "k".repeat(5000);
        let long_query = format!("?prefix={long_key}");
        for (query, request) in [
            ("", WatchRequest::default()),
            (
                "?key=b&end=a",
                WatchRequest {
                    start: "b".into(),
                    end: "a".into(),
                    ..Default::default()
                },
            ),
            (
                long_query.as_str(),
                WatchRequest {
                    prefix: long_key.clone(),
                    ..Default::default()
                },
            ),
        ] {
            let (status, body) = answer(&url(&cluster, 1, &format!("/watch{query}")), &[]).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
            let Err(refused) = grpc.watch(request).await else {
                panic!("{query}: gRPC accepts it");
            };
            assert_eq!(refused.code(), tonic::Code::InvalidArgument);
            assert_eq!(body, refused.message(), "{query}");
        }
        for (query, headers, names) in [
            ("?key=a&prefix=h/", &[][..], "not several"),
            ("?prefix=h/&rev=soon", &[][..], "rev"),
            ("?prefx=h/", &[][..], "prefx"),
            (
                "?prefix=h/",
                &[("Last-Event-ID", "seven")][..],
                "Last-Event-ID",
            ),
        ] {
            let (status, body) =
                answer(&url(&cluster, 1, &format!("/watch{query}")), headers).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
            assert!(body.contains(names), "{query}: {body}");
        }

        // Progress: an idle watch hears the current revision, as the id to resume after.
        let mut idle = open(&url(&cluster, 1, "/watch?key=quiet&progress=true"), &[]).await;
        let progress = idle.next().await.expect("a progress message");
        assert_eq!(progress.event, "progress", "{progress:?}");
        let revision = progress.json()["revision"].as_u64().expect("revision");
        assert!(revision >= revisions[7], "{progress:?}");
        assert_eq!(progress.id, Some(revision.to_string()));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_ends_its_streams_and_exits() {
    bounded(async {
        let mut cluster = TestCluster::start_with_http(1, &[]).await;
        let mut events = open(&url(&cluster, 1, "/watch?all=true"), &[]).await;
        let revision = cluster.put(1, "k", b"v").await.unwrap();
        let change = events.next().await.expect("the change");
        assert_eq!(change.id, Some(revision.to_string()));

        let stopping = Instant::now();
        assert!(
            cluster.stop(1),
            "the node did not exit within 10 s of SIGTERM"
        );
        let took = stopping.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "the node took {took:?} to exit"
        );
        let error = events.next().await.expect("a last message");
        assert_eq!(error.event, "error", "{error:?}");
        assert!(error.data.contains("this node is stopping"), "{error:?}");
        assert!(
            error
                .data
                .contains(&format!("start_revision {}", revision + 1)),
            "{error:?}"
        );
        assert_eq!(events.next().await, None, "the stream ends");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_over_https_and_its_end_when_the_node_stops() {
    bounded(async {
        let options = ClusterOptions {
            http: true,
            tls: true,
            ..ClusterOptions::default()
        };
        let mut cluster = TestCluster::start_with(1, &[], options).await;
        let revision = cluster.put(1, "s/1", b"secure").await.unwrap();
        let certs = cluster.tls.as_ref().expect("TLS cluster").certs.clone();
        let pem = |name: &str| certs.join(name).display().to_string();
        let http = cluster.node(1).http.clone().expect("node serves HTTP");
        let mut curl = tokio::process::Command::new("curl")
            .args(["-sS", "-N", "--max-time", "60", "--noproxy", "*"])
            .args(["--cacert", &pem("ca.pem")])
            .args([
                "--cert",
                &pem("client.pem"),
                "--key",
                &pem("client-key.pem"),
            ])
            .arg(format!("https://{http}/watch?prefix=s/&rev={revision}"))
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run curl (Debian package curl)");
        let mut lines = BufReader::new(curl.stdout.take().expect("stdout")).lines();
        let mut read = Vec::new();
        while !read.iter().any(|l: &String| l.starts_with("data: ")) {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no message over HTTPS within 20 s: {read:?}"))
                .expect("read curl's output")
                .unwrap_or_else(|| panic!("curl ended: {read:?}"));
            read.push(line);
        }
        assert_eq!(read[..2], ["event: change", &*format!("id: {revision}")]);
        let data: Value = serde_json::from_str(&read[2]["data: ".len()..]).expect("JSON");
        assert_eq!(data["events"][0]["value"], "secure", "{data}");

        let stopping = Instant::now();
        assert!(
            cluster.stop(1),
            "the node did not exit within 10 s of SIGTERM"
        );
        let took = stopping.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "the node took {took:?} to exit"
        );
        let mut rest = Vec::new();
        while let Some(line) = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("curl's stream ends")
            .expect("read curl's output")
        {
            rest.push(line);
        }
        assert!(
            rest.iter().any(|l| l == "event: error"),
            "the stream ends with an error message: {rest:?}"
        );
        let status = tokio::time::timeout(Duration::from_secs(10), curl.wait())
            .await
            .expect("curl exits")
            .expect("curl's status");
        assert!(status.success(), "the response ended cleanly: {status:?}");
    })
    .await
}
