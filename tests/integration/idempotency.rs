//! Exactly-once writes (issue 13): a write sent with the gRPC metadata `idempotency-key` is
//! applied once however often it is retried within the window, through any node, and every
//! retry gets the first attempt's answer; the same key on another request is refused.
//!
//! The hard case is a write whose leader dies after committing it and before answering: the
//! `write-answer-before=crash` failpoint (`--features failpoints`) kills the leader right
//! there, so the client sees a transport error for a write that is in the log, retries it after
//! another client's write, and must neither overwrite that write nor get a new revision.

use crate::common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::{bounded_within, TestCluster};
use raftkv::proto::v1::batch_op::Op as BatchOpKind;
use raftkv::proto::v1::compare_and_swap_request::Expected;
use raftkv::proto::v1::{
    BatchOp, BatchRequest, BatchResponse, CompareAndSwapRequest, CompareAndSwapResponse,
    Consistency, DeleteRequest, DeleteResponse, MetricsRequest, MetricsResponse, PutRequest,
};
use reqwest::{Method, StatusCode};
use tonic::metadata::AsciiMetadataValue;
use tonic::{Code, Request, Status};

/// The gRPC metadata that carries a write's idempotency key.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
const FAILPOINTS: &str = "RAFTKV_FAILPOINTS";
/// Bound of each test, cluster start included.
const TEST_BOUND: Duration = Duration::from_secs(60);
/// How long a call is retried while the cluster has no leader.
const AVAILABLE_WITHIN: Duration = Duration::from_secs(20);
/// The text of the refusal of a key reused for another request.
const REUSED: &str = "idempotency key reused with a different request";

/// `message` with `idempotency` (raw bytes, so that a test can send what a well-behaved client
/// never would) as its `idempotency-key` metadata, if any.
fn keyed<T>(message: T, idempotency: Option<&[u8]>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(idempotency) = idempotency {
        let value = AsciiMetadataValue::try_from(idempotency)
            .unwrap_or_else(|e| panic!("{idempotency:?} cannot be sent as metadata: {e}"));
        request.metadata_mut().insert(IDEMPOTENCY_KEY, value);
    }
    request
}

fn put_request(key: &str, value: &[u8]) -> PutRequest {
    PutRequest {
        lease: 0,
        key: key.to_string(),
        value: value.to_vec(),
        ttl_ms: 0,
    }
}

async fn put(
    cluster: &TestCluster,
    id: u64,
    request: PutRequest,
    idempotency: Option<&str>,
) -> Result<u64, Status> {
    let request = keyed(request, idempotency.map(str::as_bytes));
    Ok(cluster
        .kv(id)
        .await?
        .put(request)
        .await?
        .into_inner()
        .revision)
}

async fn delete(
    cluster: &TestCluster,
    id: u64,
    key: &str,
    idempotency: Option<&str>,
) -> Result<DeleteResponse, Status> {
    let request = DeleteRequest {
        key: key.to_string(),
    };
    let request = keyed(request, idempotency.map(str::as_bytes));
    Ok(cluster.kv(id).await?.delete(request).await?.into_inner())
}

async fn batch(
    cluster: &TestCluster,
    id: u64,
    ops: Vec<BatchOpKind>,
    idempotency: Option<&str>,
) -> Result<BatchResponse, Status> {
    let ops = ops.into_iter().map(|op| BatchOp { op: Some(op) }).collect();
    let request = keyed(BatchRequest { ops }, idempotency.map(str::as_bytes));
    Ok(cluster.kv(id).await?.batch(request).await?.into_inner())
}

async fn cas(
    cluster: &TestCluster,
    id: u64,
    request: CompareAndSwapRequest,
    idempotency: Option<&str>,
) -> Result<CompareAndSwapResponse, Status> {
    let request = keyed(request, idempotency.map(str::as_bytes));
    Ok(cluster
        .kv(id)
        .await?
        .compare_and_swap(request)
        .await?
        .into_inner())
}

/// A compare-and-swap of `key` to `value` if its revision is `revision`.
fn cas_request(key: &str, revision: u64, value: &[u8]) -> CompareAndSwapRequest {
    CompareAndSwapRequest {
        lease: 0,
        key: key.to_string(),
        expected: Some(Expected::ExpectedRevision(revision)),
        value: value.to_vec(),
        delete: false,
        ttl_ms: 0,
    }
}

fn batch_put(key: &str, value: &[u8]) -> BatchOpKind {
    BatchOpKind::Put(put_request(key, value))
}

fn batch_delete(key: &str) -> BatchOpKind {
    BatchOpKind::Delete(DeleteRequest {
        key: key.to_string(),
    })
}

/// A linearizable read of `key` on node `id`: its value and revision, `None` when absent.
async fn read(cluster: &TestCluster, id: u64, key: &str) -> Option<(Vec<u8>, u64)> {
    match cluster
        .get_retrying(id, key, Consistency::Linearizable, AVAILABLE_WITHIN)
        .await
    {
        Ok(reply) => Some((reply.value, reply.revision)),
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => panic!("read of {key} on node {id} failed: {status}"),
    }
}

async fn metrics(cluster: &TestCluster, id: u64) -> MetricsResponse {
    let mut kv = cluster.kv(id).await.expect("a node to ask for metrics");
    kv.metrics(MetricsRequest {})
        .await
        .unwrap_or_else(|e| panic!("metrics of node {id}: {e}"))
        .into_inner()
}

/// `call` retried while it is UNAVAILABLE (no leader right now), for [`AVAILABLE_WITHIN`].
/// Every write retried this way carries an idempotency key, or was certainly not applied.
async fn available<T, F: Future<Output = Result<T, Status>>>(
    mut call: impl FnMut() -> F,
) -> Result<T, Status> {
    let deadline = Instant::now() + AVAILABLE_WITHIN;
    loop {
        match call().await {
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            result => return result,
        }
    }
}

/// Asserts that `result` is the refusal `code` with a message containing `text`.
fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    text: &str,
    what: &str,
) {
    match result {
        Ok(answer) => panic!("{what}: expected {code:?} ({text:?}), got an answer: {answer:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {status}");
            assert!(
                status.message().contains(text),
                "{what}: the message {:?} does not say {text:?}",
                status.message()
            );
        }
    }
}

/// Waits until node `id`'s process has ended by itself, then forgets it so it can be restarted.
async fn wait_exited(cluster: &mut TestCluster, id: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while !cluster.has_exited(id) {
        assert!(
            Instant::now() < deadline,
            "node {id} is still running {within:?} after the write its failpoint crashes on"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.forget_exited(id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_leader_died_answering_is_not_applied_again() {
    const KEY: &str = "account";
    const RETRY: &str = "transfer-7f3a";
    bounded_within(TEST_BOUND, async {
        // Every node crashes on the first write it answers as leader, so the write lands on a
        // node carrying the failpoint wherever leadership is. Later starts go without it.
        let mut cluster =
            TestCluster::start_with_env(3, &[], &[(FAILPOINTS, "write-answer-before=crash")]).await;
        for id in 1..=3 {
            cluster.set_node_env(id, FAILPOINTS, "");
        }
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;

        let lost = put(&cluster, leader, put_request(KEY, b"v1"), Some(RETRY)).await;
        let status = lost.expect_err("the leader answered the write it should have crashed on");
        eprintln!("the first attempt, on leader {leader}, got: {status}");
        wait_exited(&mut cluster, leader, Duration::from_secs(10)).await;

        // The write is committed although its client got an error.
        let survivors = cluster.others(leader);
        let (value, r1) = read(&cluster, survivors[0], KEY)
            .await
            .expect("the write the leader died answering is committed");
        assert_eq!(value, b"v1");

        // Both survivors still carry the failpoint: restart every node without it.
        cluster.start_node(leader);
        for &id in &survivors {
            cluster.kill(id);
            cluster.start_node(id);
            cluster.wait_for_leader(Duration::from_secs(30)).await;
        }

        // Another client writes the key meanwhile, without a key of its own.
        let r2 = available(|| put(&cluster, survivors[1], put_request(KEY, b"v2"), None))
            .await
            .expect("the interleaved write");
        assert!(r1 < r2, "the interleaved write got revision {r2} <= {r1}");

        // The first client retries, through a follower: the first answer, nothing applied.
        let current = cluster.wait_for_leader(Duration::from_secs(30)).await;
        let follower = cluster.others(current)[0];
        let retry = available(|| put(&cluster, follower, put_request(KEY, b"v1"), Some(RETRY)))
            .await
            .expect("the retry through a follower");
        assert_eq!(
            retry, r1,
            "the retry got revision {retry}, not the {r1} its first attempt was applied at"
        );
        assert_eq!(
            read(&cluster, current, KEY).await,
            Some((b"v2".to_vec(), r2)),
            "the retry overwrote the write made after its first attempt"
        );
        let again = available(|| put(&cluster, current, put_request(KEY, b"v1"), Some(RETRY)))
            .await
            .expect("the second retry, on the leader");
        assert_eq!(again, r1, "the second retry got another revision");
        assert_eq!(
            read(&cluster, follower, KEY).await,
            Some((b"v2".to_vec(), r2))
        );

        let leader_metrics = metrics(&cluster, current).await;
        assert!(
            leader_metrics.idempotency_hits >= 2,
            "two retries answered from the table, the leader counts {} hits",
            leader_metrics.idempotency_hits
        );
        assert!(leader_metrics.idempotency_keys >= 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_key_with_another_request_is_refused_and_changes_nothing() {
    const REUSED_KEY: &str = "order-42";
    bounded_within(TEST_BOUND, async {
        let cluster = TestCluster::start(3, &[]).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        let follower = cluster.others(leader)[0];

        let r = put(&cluster, follower, put_request("a", b"x"), Some(REUSED_KEY))
            .await
            .expect("the first keyed put");
        for id in [leader, follower] {
            assert_refused(
                put(&cluster, id, put_request("a", b"y"), Some(REUSED_KEY)).await,
                Code::FailedPrecondition,
                REUSED,
                &format!("the key reused for another value, on node {id}"),
            );
        }
        let with_ttl = PutRequest {
            ttl_ms: 60_000,
            ..put_request("a", b"x")
        };
        assert_refused(
            put(&cluster, leader, with_ttl, Some(REUSED_KEY)).await,
            Code::FailedPrecondition,
            REUSED,
            "the key reused for the same value with a TTL",
        );
        assert_refused(
            put(&cluster, follower, put_request("b", b"x"), Some(REUSED_KEY)).await,
            Code::FailedPrecondition,
            REUSED,
            "the key reused for the same value on another key",
        );
        assert_refused(
            delete(&cluster, follower, "a", Some(REUSED_KEY)).await,
            Code::FailedPrecondition,
            REUSED,
            "the key reused for a delete",
        );
        assert_refused(
            batch(&cluster, leader, vec![batch_delete("a")], Some(REUSED_KEY)).await,
            Code::FailedPrecondition,
            REUSED,
            "the key reused for a batch",
        );
        assert_refused(
            cas(
                &cluster,
                leader,
                cas_request("a", r, b"z"),
                Some(REUSED_KEY),
            )
            .await,
            Code::FailedPrecondition,
            REUSED,
            "the key reused for a compare-and-swap",
        );

        for id in 1..=3 {
            assert_eq!(
                read(&cluster, id, "a").await,
                Some((b"x".to_vec(), r)),
                "a refused reuse changed a (node {id})"
            );
        }
        assert_eq!(
            read(&cluster, leader, "b").await,
            None,
            "a refused reuse wrote b"
        );
        // The refusals did not replace what the key stands for: the first request still replays.
        let replay = put(&cluster, leader, put_request("a", b"x"), Some(REUSED_KEY))
            .await
            .expect("the first request again");
        assert_eq!(replay, r);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_every_write_kind_get_the_first_answer() {
    bounded_within(TEST_BOUND, async {
        let cluster = TestCluster::start(3, &[]).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        let followers = cluster.others(leader);
        let (f1, f2) = (followers[0], followers[1]);
        // First attempt through a follower, retries through the other follower and the leader:
        // forwarding must carry the key, or the leader applies each retry afresh.
        let retry_nodes = [f2, leader];

        // Delete: the retry still reports the key as deleted, at the first revision.
        cluster.put(leader, "d", b"doomed").await.expect("put d");
        let first = delete(&cluster, f1, "d", Some("del-1"))
            .await
            .expect("keyed delete");
        assert!(first.deleted, "d existed before the first delete");
        for id in retry_nodes {
            let retry = delete(&cluster, id, "d", Some("del-1"))
                .await
                .expect("delete retry");
            assert_eq!(
                (retry.deleted, retry.revision),
                (first.deleted, first.revision),
                "a retried delete through node {id} was applied again"
            );
        }
        assert_eq!(read(&cluster, leader, "d").await, None);

        // Batch: one put survives the later write; the retry reports what the first saw.
        cluster.put(leader, "b2", b"old").await.expect("put b2");
        let ops = || vec![batch_put("b1", b"from-batch"), batch_delete("b2")];
        let first = batch(&cluster, f1, ops(), Some("batch-1"))
            .await
            .expect("keyed batch");
        assert_eq!(first.existed, vec![false, true]);
        let later = cluster.put(leader, "b1", b"later").await.expect("put b1");
        for id in retry_nodes {
            let retry = batch(&cluster, id, ops(), Some("batch-1"))
                .await
                .expect("batch retry");
            assert_eq!(
                retry, first,
                "a retried batch through node {id} got another answer"
            );
        }
        assert_eq!(
            read(&cluster, leader, "b1").await,
            Some((b"later".to_vec(), later)),
            "a retried batch overwrote the later write"
        );
        assert_eq!(read(&cluster, leader, "b2").await, None);

        // Compare-and-swap: the retry succeeds with the first revision, although the revision
        // it expects is long gone.
        let r0 = cluster.put(leader, "c", b"v0").await.expect("put c");
        let swap = || cas_request("c", r0, b"v1");
        let first = cas(&cluster, f1, swap(), Some("cas-1"))
            .await
            .expect("keyed cas");
        assert!(
            first.succeeded,
            "the first compare-and-swap failed: {first:?}"
        );
        let later = cluster.put(leader, "c", b"v2").await.expect("put c again");
        for id in retry_nodes {
            let retry = cas(&cluster, id, swap(), Some("cas-1"))
                .await
                .expect("cas retry");
            assert_eq!(
                retry, first,
                "a retried compare-and-swap through node {id} got another answer"
            );
        }
        assert_eq!(
            read(&cluster, leader, "c").await,
            Some((b"v2".to_vec(), later))
        );

        // Put: the retry does not overwrite the later write.
        let first = put(&cluster, f1, put_request("p", b"first"), Some("put-1"))
            .await
            .expect("keyed put");
        let later = cluster.put(leader, "p", b"later").await.expect("put p");
        for id in retry_nodes {
            let retry = put(&cluster, id, put_request("p", b"first"), Some("put-1"))
                .await
                .expect("put retry");
            assert_eq!(
                retry, first,
                "a retried put through node {id} was applied again"
            );
        }
        assert_eq!(
            read(&cluster, leader, "p").await,
            Some((b"later".to_vec(), later))
        );

        // Every replica applied the same entries, so every one holds the same four keys.
        let applied = cluster
            .status(leader)
            .await
            .expect("status")
            .last_applied_index;
        for id in 1..=3 {
            cluster
                .wait_applied(id, applied, Duration::from_secs(10))
                .await;
            let stats = metrics(&cluster, id).await;
            assert_eq!(stats.idempotency_keys, 4, "node {id}'s idempotency table");
            assert!(stats.idempotency_hits >= 8, "node {id}: {stats:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_idempotency_keys_are_refused() {
    bounded_within(TEST_BOUND, async {
        let cluster = TestCluster::start(3, &[]).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        let follower = cluster.others(leader)[0];

        let too_long = vec![b'k'; 129];
        let bad: [(&str, &[u8]); 6] = [
            ("empty", b""),
            ("129 bytes", &too_long),
            ("a space", b"two words"),
            ("a tab", b"tab\there"),
            ("a leading space", b" key"),
            ("bytes above 0x7e", b"caf\xc3\xa9"),
        ];
        for (i, (what, idempotency)) in bad.iter().enumerate() {
            for id in [leader, follower] {
                let key = format!("bad-{i}-{id}");
                let mut kv = cluster.kv(id).await.expect("a node");
                let request = keyed(put_request(&key, b"x"), Some(idempotency));
                assert_refused(
                    kv.put(request).await,
                    Code::InvalidArgument,
                    IDEMPOTENCY_KEY,
                    &format!("a put with {what} as its idempotency key, on node {id}"),
                );
                assert_eq!(
                    read(&cluster, leader, &key).await,
                    None,
                    "{what} wrote {key}"
                );
            }
        }

        // Every write kind checks the key, and a refused one changes nothing.
        let too_long = String::from_utf8(too_long).expect("ASCII");
        let r = cluster
            .put(leader, "kept", b"same")
            .await
            .expect("put kept");
        assert_refused(
            put(
                &cluster,
                follower,
                put_request("kept", b"other"),
                Some(&too_long),
            )
            .await,
            Code::InvalidArgument,
            "128",
            "a put with a 129-byte key",
        );
        assert_refused(
            delete(&cluster, follower, "kept", Some(&too_long)).await,
            Code::InvalidArgument,
            IDEMPOTENCY_KEY,
            "a delete with a 129-byte key",
        );
        assert_refused(
            batch(
                &cluster,
                leader,
                vec![batch_delete("kept")],
                Some(&too_long),
            )
            .await,
            Code::InvalidArgument,
            IDEMPOTENCY_KEY,
            "a batch with a 129-byte key",
        );
        assert_refused(
            cas(
                &cluster,
                leader,
                cas_request("kept", r, b"other"),
                Some(&too_long),
            )
            .await,
            Code::InvalidArgument,
            IDEMPOTENCY_KEY,
            "a compare-and-swap with a 129-byte key",
        );
        assert_eq!(
            read(&cluster, leader, "kept").await,
            Some((b"same".to_vec(), r))
        );

        // The limits are exact: 128 bytes of every printable character are a good key.
        let widest: String = (0x21u8..=0x7e).cycle().take(128).map(char::from).collect();
        let first = put(
            &cluster,
            follower,
            put_request("widest", b"1"),
            Some(&widest),
        )
        .await
        .expect("a 128-byte key of printable ASCII");
        let retry = put(&cluster, leader, put_request("widest", b"1"), Some(&widest))
            .await
            .expect("its retry");
        assert_eq!(retry, first);
        assert_eq!(metrics(&cluster, leader).await.idempotency_keys, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_gateway_replays_and_refuses_like_grpc() {
    bounded_within(TEST_BOUND, async {
        let cluster = TestCluster::start_with_http(3, &[]).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        let follower = cluster.others(leader)[0];
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("HTTP client");
        let send = |id: u64, method: Method, body: &'static [u8], key: Option<&'static str>| {
            let http = cluster.node(id).http.clone().expect("an HTTP gateway");
            let mut request = client
                .request(method, format!("http://{http}/kv/h"))
                .body(body);
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            async move {
                let reply = request.send().await.expect("an HTTP answer");
                let status = reply.status();
                let body = reply.bytes().await.expect("the body").to_vec();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        let revision = |body: &str| -> u64 {
            let json: serde_json::Value = serde_json::from_str(body).expect("a JSON answer");
            json["revision"].as_u64().expect("a revision")
        };

        let (status, body) = send(follower, Method::PUT, b"one", Some("http-1")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let first = revision(&body);
        let (status, body) = send(leader, Method::PUT, b"two", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let later = revision(&body);

        let (status, body) = send(leader, Method::PUT, b"one", Some("http-1")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            revision(&body),
            first,
            "a retried HTTP put was applied again"
        );
        assert_eq!(
            read(&cluster, leader, "h").await,
            Some((b"two".to_vec(), later))
        );

        for (method, body) in [(Method::PUT, &b"three"[..]), (Method::DELETE, b"")] {
            let (status, text) = send(follower, method.clone(), body, Some("http-1")).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{method}: {text}");
            assert!(text.contains(REUSED), "{method}: {text}");
        }
        let (status, text) = send(leader, Method::DELETE, b"", Some("two words")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains(IDEMPOTENCY_KEY), "{text}");
        assert_eq!(
            read(&cluster, leader, "h").await,
            Some((b"two".to_vec(), later)),
            "a refused HTTP write changed the key"
        );
    })
    .await;
}
