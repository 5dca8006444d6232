//! Watch on real processes: a watcher sees exactly the writes made, in revision order, once each
//! (a Batch in one response, a TTL expiry as a DELETE), from now or from a past revision, on any
//! node; across a leader kill and a reconnect to another node with `last seen + 1` nothing is
//! lost or repeated; a revision older than the history is refused with the oldest available;
//! `raftkv watch` prints the same events.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raftkv::proto::v1::kv_client::KvClient;
use raftkv::proto::v1::{
    batch_op, watch_event::Kind, BatchOp, BatchRequest, DeleteRequest, PutRequest, WatchRequest,
    WatchResponse,
};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::common::{bounded, TestCluster, RAFTKV};

/// One event as the tests compare them: (revision, kind, key, value, previous value).
type Seen = (u64, &'static str, String, Vec<u8>, Option<Vec<u8>>);

async fn open(
    cluster: &TestCluster,
    id: u64,
    prefix: &str,
    start_revision: u64,
) -> Streaming<WatchResponse> {
    let request = WatchRequest {
        prefix: prefix.into(),
        start_revision,
        prev_kv: true,
        ..Default::default()
    };
    kv(cluster, id)
        .await
        .watch(request)
        .await
        .expect("watch accepted")
        .into_inner()
}

async fn kv(cluster: &TestCluster, id: u64) -> KvClient<Channel> {
    KvClient::new(cluster.channel(id).await.expect("channel"))
}

fn flatten(response: &WatchResponse) -> Vec<Seen> {
    response
        .events
        .iter()
        .map(|e| {
            let kind = if e.kind == Kind::Delete as i32 {
                "DELETE"
            } else {
                "PUT"
            };
            (
                e.revision,
                kind,
                e.key.clone(),
                e.value.clone(),
                e.prev.as_ref().map(|p| p.value.clone()),
            )
        })
        .collect()
}

/// Reads responses until `count` events have arrived (bounded), checking that revisions only
/// grow and that each response's events share its revision.
async fn collect(stream: &mut Streaming<WatchResponse>, count: usize) -> Vec<(u64, Vec<Seen>)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut responses = Vec::new();
    let mut events = 0;
    let mut last = 0;
    while events < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let item = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!("only {events} of {count} events within 30 s: {responses:?}")
            })
            .expect("stream open")
            .expect("no error");
        if item.events.is_empty() {
            continue; // progress notification
        }
        assert!(
            item.revision > last,
            "revisions grow: {last} then {}",
            item.revision
        );
        last = item.revision;
        let seen = flatten(&item);
        assert!(seen.iter().all(|e| e.0 == item.revision), "{item:?}");
        events += seen.len();
        responses.push((item.revision, seen));
    }
    responses
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        lease: 0,
        key: key.into(),
        value: value.into(),
        ttl_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_every_change_once_in_order_from_now_and_from_the_past() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let follower = cluster.others(leader)[0];
        let mut live = open(&cluster, follower, "w/", 0).await;
        let mut client = kv(&cluster, leader).await;

        let first = client
            .put(put("w/a", "1"))
            .await
            .unwrap()
            .into_inner()
            .revision;
        client.put(put("other", "x")).await.unwrap();
        client.put(put("w/a", "2")).await.unwrap();
        let batch = BatchRequest {
            ops: vec![
                BatchOp {
                    op: Some(batch_op::Op::Put(put("w/b", "3"))),
                },
                BatchOp {
                    op: Some(batch_op::Op::Delete(DeleteRequest { key: "w/a".into() })),
                },
            ],
        };
        let batch_revision = client.batch(batch).await.unwrap().into_inner().revision;
        let mut short = put("w/ttl", "gone soon");
        short.ttl_ms = 500;
        client.put(short).await.unwrap();

        // 1 + 1 + 2 (one response) + 1 + its expiry.
        let seen = collect(&mut live, 6).await;
        let events: Vec<Seen> = seen.iter().flat_map(|(_, e)| e.clone()).collect();
        let shape: Vec<(&str, &str)> = events.iter().map(|e| (e.1, e.2.as_str())).collect();
        assert_eq!(
            shape,
            [
                ("PUT", "w/a"),
                ("PUT", "w/a"),
                ("PUT", "w/b"),
                ("DELETE", "w/a"),
                ("PUT", "w/ttl"),
                ("DELETE", "w/ttl"),
            ],
            "{events:?}"
        );
        assert_eq!(events[0].0, first);
        assert_eq!(
            events[1].4.as_deref(),
            Some(&b"1"[..]),
            "prev of the rewrite"
        );
        let batch_response = seen
            .iter()
            .find(|(r, _)| *r == batch_revision)
            .expect("batch");
        assert_eq!(batch_response.1.len(), 2, "a Batch arrives in one response");
        assert_eq!(
            events[5].4.as_deref(),
            Some(&b"gone soon"[..]),
            "expired value"
        );

        // From the past, on another node: exactly the same events.
        let other = cluster
            .others(follower)
            .into_iter()
            .find(|id| *id != leader)
            .unwrap();
        let mut past = open(&cluster, other, "w/", first).await;
        let replayed: Vec<Seen> = collect(&mut past, 6)
            .await
            .into_iter()
            .flat_map(|(_, e)| e)
            .collect();
        assert_eq!(replayed, events);

        // `raftkv watch` prints them, one line each.
        let mut child = Command::new(RAFTKV)
            .args([
                "watch",
                "--prefix",
                "w/",
                "--rev",
                &first.to_string(),
                "--endpoints",
            ])
            .arg(cluster.endpoints().join(","))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn raftkv watch");
        let stdout = child.stdout.take().expect("stdout");
        let lines = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout)
                .lines()
                .take(6)
                .map(|l| l.expect("line"))
                .collect::<Vec<_>>()
        });
        let lines = tokio::time::timeout(Duration::from_secs(20), lines)
            .await
            .map_err(|_| {
                let _ = child.kill();
                "raftkv watch printed fewer than 6 lines in 20 s"
            })
            .unwrap()
            .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(lines[0], format!("PUT w/a 1 revision={first}"));
        assert_eq!(lines[3], format!("DELETE w/a revision={batch_revision}"));
        assert!(lines[5].starts_with("DELETE w/ttl revision="), "{lines:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_survives_a_leader_kill_and_resumes_on_another_node_without_loss() {
    bounded(async {
        let mut cluster = TestCluster::start(3, &[]).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let follower = cluster.others(leader)[0];
        let third = cluster.others(leader)[1];
        let mut watch = open(&cluster, follower, "k/", 0).await;

        let mut written = BTreeSet::new();
        for i in 0..10 {
            let revision = cluster
                .put(leader, &format!("k/{i}"), b"before")
                .await
                .unwrap();
            written.insert(revision);
        }
        cluster.kill(leader);
        for i in 10..20 {
            let revision = cluster
                .put_retrying(
                    follower,
                    &format!("k/{i}"),
                    b"after",
                    Duration::from_secs(30),
                )
                .await;
            written.insert(revision);
        }
        // The follower's watch carried on through the election.
        let first_half: Vec<u64> = collect(&mut watch, 15)
            .await
            .into_iter()
            .map(|(revision, _)| revision)
            .collect();
        drop(watch);
        // Resume on the third node from the last revision seen + 1.
        let last = *first_half.last().unwrap();
        let mut resumed = open(&cluster, third, "k/", last + 1).await;
        let target = *written.iter().max().unwrap();
        let mut rest = Vec::new();
        while rest.last().is_none_or(|r| *r < target) && last < target {
            rest.extend(collect(&mut resumed, 1).await.into_iter().map(|(r, _)| r));
        }
        let all: Vec<u64> = first_half.into_iter().chain(rest).collect();
        // A write retried across the election may have applied twice (two revisions), so
        // every acknowledged revision is seen, once, in order.
        let unique: BTreeSet<u64> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "no revision twice: {all:?}");
        assert!(all.windows(2).all(|w| w[0] < w[1]), "in order: {all:?}");
        for revision in &written {
            assert!(
                unique.contains(revision),
                "acknowledged revision {revision} missing: {all:?}"
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_older_than_the_history_is_told_the_oldest_revision() {
    bounded(async {
        let cluster = TestCluster::start(1, &["--watch-history", "5"]).await;
        let mut revisions = Vec::new();
        for i in 0..12 {
            revisions.push(cluster.put(1, &format!("h/{i}"), b"v").await.unwrap());
        }
        let mut stream = open(&cluster, 1, "h/", revisions[0]).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an answer")
            .expect("one response")
            .expect("not an error");
        assert!(answer.canceled, "{answer:?}");
        assert_eq!(answer.compact_revision, revisions[7], "{answer:?}");
        assert!(answer.cancel_reason.contains("re-read"), "{answer:?}");
        assert!(stream.next().await.is_none(), "the stream ends");
        // From the oldest available revision it works.
        let mut stream = open(&cluster, 1, "h/", answer.compact_revision).await;
        let seen = collect(&mut stream, 5).await;
        assert_eq!(seen.first().map(|s| s.0), Some(revisions[7]));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_ends_its_watches_and_replays_its_history_after_a_restart() {
    bounded(async {
        let mut cluster = TestCluster::start(3, &[]).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let mut revisions = Vec::new();
        for i in 0..5 {
            revisions.push(cluster.put(leader, &format!("r/{i}"), b"v").await.unwrap());
        }
        let restarted = cluster.others(leader)[0];
        let mut before = open(&cluster, restarted, "r/", revisions[0]).await;
        let expected = collect(&mut before, 5).await;
        // An open watch does not hold the node up when it stops: the stream ends, saying so.
        assert!(
            cluster.stop(restarted),
            "the node exits on SIGTERM with a watch open"
        );
        let ended = tokio::time::timeout(Duration::from_secs(5), before.next())
            .await
            .expect("the stream ends with the node");
        match ended {
            Some(Err(status)) => assert!(status.code() == tonic::Code::Unavailable, "{status:?}"),
            other => panic!("expected UNAVAILABLE, got {other:?}"),
        }
        cluster.start_node(restarted);
        cluster
            .wait_applied(restarted, revisions[4], Duration::from_secs(30))
            .await;
        // The log entries replayed after the (absent) snapshot refill the history.
        let mut after = open(&cluster, restarted, "r/", revisions[0]).await;
        assert_eq!(collect(&mut after, 5).await, expected);
    })
    .await
}
