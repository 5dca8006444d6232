//! The client surface beyond Put/Get/Delete, against a real three-node cluster: batches, CAS,
//! scans, TTL, metrics, and membership changes while a client writes.

use crate::common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bounded, TestCluster};
use raftkv::proto::v1::cluster_client::ClusterClient;
use raftkv::proto::v1::{
    batch_op, compare_and_swap_request::Expected, AddLearnerRequest, BatchGetRequest, BatchOp,
    BatchRequest, CompareAndSwapRequest, Consistency, DeleteRequest, MetricsRequest,
    PromoteRequest, PutRequest, RemoveNodeRequest, ScanRequest,
};
use tonic::Code;

const LINEAR: Consistency = Consistency::Linearizable;
const STALE: Consistency = Consistency::Stale;

fn put_op(key: &str, value: &str) -> BatchOp {
    BatchOp {
        op: Some(batch_op::Op::Put(PutRequest {
            lease: 0,
            key: key.into(),
            value: value.into(),
            ttl_ms: 0,
        })),
    }
}

fn delete_op(key: &str) -> BatchOp {
    BatchOp {
        op: Some(batch_op::Op::Delete(DeleteRequest { key: key.into() })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_is_atomic_and_an_invalid_op_changes_nothing() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let mut kv = cluster.kv(2).await.unwrap();
        cluster.put(1, "b", b"old").await.unwrap();

        let reply = kv
            .batch(BatchRequest {
                ops: vec![
                    put_op("a", "1"),
                    delete_op("b"),
                    put_op("c", "3"),
                    delete_op("zz"),
                ],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.existed, vec![false, true, false, false]);
        let results = cluster
            .kv(3)
            .await
            .unwrap()
            .batch_get(BatchGetRequest {
                keys: vec!["a".into(), "b".into(), "c".into()],
                consistency: LINEAR as i32,
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        assert_eq!(
            results.iter().map(|r| r.found).collect::<Vec<_>>(),
            [true, false, true]
        );
        assert!(results
            .iter()
            .filter(|r| r.found)
            .all(|r| r.revision == reply.revision));

        let before = cluster.status(1).await.unwrap().last_log_index;
        let err = kv
            .batch(BatchRequest {
                ops: vec![put_op("x", "1"), put_op("", "2"), delete_op("a")],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.message(), "ops[1]: key cannot be empty");
        let err = kv.batch(BatchRequest { ops: vec![] }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            cluster.status(1).await.unwrap().last_log_index,
            before,
            "nothing proposed"
        );
        assert_eq!(
            cluster.get(1, "x", LINEAR).await.unwrap_err().code(),
            Code::NotFound
        );
        assert!(
            cluster.get(1, "a", LINEAR).await.is_ok(),
            "a was not deleted"
        );
    })
    .await
}

/// A follower gathers the calls it forwards into shared messages to the leader; every caller must
/// still get its own answer, errors included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_forwarded_at_once_by_a_follower_each_get_their_own_answer() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
        let follower = cluster.others(leader)[0];
        let kv = cluster.kv(follower).await.unwrap();
        const CALLS: usize = 200;

        let puts = (0..CALLS).map(|i| {
            let mut kv = kv.clone();
            tokio::spawn(async move {
                let request = PutRequest {
                    key: format!("fwd-{i}"),
                    value: format!("value-{i}").into_bytes(),
                    ..Default::default()
                };
                kv.put(request).await.map(|r| r.into_inner().revision)
            })
        });
        let mut revisions = BTreeSet::new();
        for put in puts.collect::<Vec<_>>() {
            revisions.insert(put.await.unwrap().expect("forwarded put"));
        }
        assert!(revisions.iter().all(|r| *r > 0));

        // Reads of present and missing keys and failing CAS, all in flight together.
        let calls = (0..CALLS).map(|i| {
            let mut kv = kv.clone();
            tokio::spawn(async move {
                let key = format!("fwd-{i}");
                match i % 3 {
                    0 => {
                        let get = raftkv::proto::v1::GetRequest {
                            key,
                            consistency: LINEAR as i32,
                        };
                        let value = kv.get(get).await.unwrap().into_inner().value;
                        assert_eq!(value, format!("value-{i}").into_bytes());
                    }
                    1 => {
                        let get = raftkv::proto::v1::GetRequest {
                            key: format!("missing-{i}"),
                            consistency: LINEAR as i32,
                        };
                        let err = kv.get(get).await.unwrap_err();
                        assert_eq!(err.code(), Code::NotFound, "{err:?}");
                        assert!(err.message().contains(&format!("missing-{i}")), "{err:?}");
                    }
                    _ => {
                        let cas = CompareAndSwapRequest {
                            key,
                            expected: Some(Expected::ExpectedValue(b"nope".to_vec())),
                            value: b"x".to_vec(),
                            ..Default::default()
                        };
                        let reply = kv.compare_and_swap(cas).await.unwrap().into_inner();
                        assert!(!reply.succeeded);
                        assert_eq!(reply.current_value, format!("value-{i}").into_bytes());
                    }
                }
            })
        });
        for call in calls.collect::<Vec<_>>() {
            call.await.unwrap();
        }
        let on_leader = cluster.get(leader, "fwd-7", LINEAR).await.unwrap();
        assert_eq!(on_leader.value, b"value-7");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_compare_and_swaps_have_exactly_one_winner() {
    bounded(async {
        let cluster = Arc::new(TestCluster::start(3, &[]).await);
        for round in 0..5 {
            let key = format!("lock-{round}");
            let mut racers = Vec::new();
            for racer in 0..6u64 {
                let cluster = cluster.clone();
                let key = key.clone();
                racers.push(tokio::spawn(async move {
                    let mut kv = cluster.kv(1 + racer % 3).await.unwrap();
                    let reply = kv
                        .compare_and_swap(CompareAndSwapRequest {
                            key,
                            expected: Some(Expected::ExpectedRevision(0)),
                            value: format!("racer-{racer}").into_bytes(),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    (racer, reply)
                }));
            }
            let mut winners = Vec::new();
            for racer in racers {
                let (id, reply) = racer.await.unwrap();
                if reply.succeeded {
                    winners.push(id);
                } else {
                    assert!(reply.found, "a loser sees the winner's value");
                }
            }
            assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
            let value = cluster.get(2, &key, LINEAR).await.unwrap().value;
            assert_eq!(value, format!("racer-{}", winners[0]).into_bytes());
        }

        // CAS on value, then a conditional delete on revision.
        let mut kv = cluster.kv(3).await.unwrap();
        let swap = kv
            .compare_and_swap(CompareAndSwapRequest {
                key: "lock-0".into(),
                expected: Some(Expected::ExpectedValue(b"nobody".to_vec())),
                value: b"x".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!swap.succeeded);
        let delete = kv
            .compare_and_swap(CompareAndSwapRequest {
                key: "lock-0".into(),
                expected: Some(Expected::ExpectedRevision(swap.current_revision)),
                delete: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(delete.succeeded);
        assert_eq!(
            cluster.get(1, "lock-0", LINEAR).await.unwrap_err().code(),
            Code::NotFound
        );
        let err = kv
            .compare_and_swap(CompareAndSwapRequest {
                key: "k".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_paging_returns_every_key_exactly_once_while_keys_are_written() {
    bounded(async {
        let cluster = Arc::new(TestCluster::start(3, &[]).await);
        let mut kv = cluster.kv(1).await.unwrap();
        let mut existing = BTreeSet::new();
        for chunk in 0..5 {
            let ops = (0..100)
                .map(|i| put_op(&format!("user:{:04}", chunk * 100 + i), "v"))
                .collect();
            kv.batch(BatchRequest { ops }).await.unwrap();
        }
        for i in 0..500 {
            existing.insert(format!("user:{i:04}"));
        }
        kv.put(PutRequest {
            lease: 0,
            key: "users".into(),
            value: b"outside the prefix".to_vec(),
            ttl_ms: 0,
        })
        .await
        .unwrap();

        // A concurrent writer adds new keys under the same prefix during the scan.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (cluster, stop) = (cluster.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let _ = cluster.put(2, &format!("user:new-{i}"), b"n").await;
                    i += 1;
                }
            })
        };

        let mut seen = Vec::new();
        let mut start = String::new();
        let mut pages = 0;
        loop {
            let page = cluster
                .kv(1 + pages % 3)
                .await
                .unwrap()
                .scan(ScanRequest {
                    prefix: "user:".into(),
                    start: start.clone(),
                    limit: 37,
                    keys_only: pages % 2 == 0,
                    consistency: LINEAR as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(page.kvs.len() <= 37);
            seen.extend(page.kvs.into_iter().map(|kv| kv.key));
            pages += 1;
            if !page.more {
                break;
            }
            start = page.next_start;
        }
        stop.store(true, Ordering::Relaxed);
        writer.await.unwrap();

        let unique: BTreeSet<_> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "no key twice");
        assert!(
            existing.is_subset(&unique),
            "every pre-existing key returned"
        );
        assert!(unique.iter().all(|k| k.starts_with("user:")));
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "key order");

        let err = kv
            .scan(ScanRequest {
                limit: 10_001,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_keys_expire_on_every_node_and_in_a_snapshot_restored_on_a_new_node() {
    bounded(async {
        let mut cluster =
            TestCluster::start(3, &["--snapshot-every", "10", "--logs-kept", "0"]).await;
        let mut kv = cluster.kv(1).await.unwrap();
        kv.put(PutRequest {
            lease: 0,
            key: "session".into(),
            value: b"short".to_vec(),
            ttl_ms: 1500,
        })
        .await
        .unwrap();
        kv.put(PutRequest {
            lease: 0,
            key: "forever".into(),
            value: b"kept".to_vec(),
            ttl_ms: 0,
        })
        .await
        .unwrap();
        let read = cluster.get(2, "session", LINEAR).await.unwrap();
        assert!(
            read.ttl_ms > 0 && read.ttl_ms <= 1500,
            "remaining TTL reported: {}",
            read.ttl_ms
        );
        assert_eq!(cluster.get(2, "forever", LINEAR).await.unwrap().ttl_ms, 0);

        // Gone from every node's reads, and removed from the map by an Expire entry.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        for id in 1..=3 {
            let err = cluster.get(id, "session", STALE).await.unwrap_err();
            assert_eq!(
                err.code(),
                Code::NotFound,
                "node {id} still returns an expired key"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut stored = Vec::new();
            for id in 1..=3 {
                let metrics = cluster
                    .kv(id)
                    .await
                    .unwrap()
                    .metrics(MetricsRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                stored.push(metrics.keys);
            }
            if stored.iter().all(|k| *k == 1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "expired key not removed everywhere: {stored:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Enough writes for a snapshot past the expiry, then a new node restores it.
        for i in 0..30 {
            cluster.put(1, &format!("filler-{i}"), b"f").await.unwrap();
        }
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while cluster.status(leader).await.unwrap().purged_index < 10 {
            assert!(Instant::now() < deadline, "leader did not purge its log");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let newcomer = cluster.start_joining_node();
        let commit = cluster.status(leader).await.unwrap().commit_index;
        let status = cluster
            .wait_applied(newcomer, commit, Duration::from_secs(60))
            .await;
        assert!(
            status.snapshot_index > 0,
            "the new node was seeded by a snapshot: {status:?}"
        );
        assert_eq!(
            cluster
                .get(newcomer, "session", STALE)
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
        assert_eq!(
            cluster.get(newcomer, "forever", STALE).await.unwrap().value,
            b"kept"
        );
        let metrics = cluster
            .kv(newcomer)
            .await
            .unwrap()
            .metrics(MetricsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            metrics.keys, 31,
            "the restored snapshot holds no expired key"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_counters_move_by_exactly_the_operations_performed() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let follower = cluster.others(leader)[0];
        let mut kv = cluster.kv(follower).await.unwrap();
        let before = kv.metrics(MetricsRequest {}).await.unwrap().into_inner();
        let leader_before = cluster
            .kv(leader)
            .await
            .unwrap()
            .metrics(MetricsRequest {})
            .await
            .unwrap()
            .into_inner();

        for i in 0..7 {
            cluster
                .put(follower, &format!("m{i}"), b"1234")
                .await
                .unwrap();
        }
        for i in 0..5 {
            cluster
                .get(follower, &format!("m{i}"), LINEAR)
                .await
                .unwrap();
        }
        let _ = cluster.get(follower, "missing", STALE).await;
        cluster.delete(follower, "m0").await.unwrap();
        kv.batch(BatchRequest {
            ops: vec![put_op("mb", "x")],
        })
        .await
        .unwrap();
        kv.scan(ScanRequest::default()).await.unwrap();
        kv.compare_and_swap(CompareAndSwapRequest {
            key: "mc".into(),
            expected: Some(Expected::ExpectedRevision(0)),
            value: b"c".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        kv.batch_get(BatchGetRequest {
            keys: vec!["m1".into()],
            consistency: 0,
        })
        .await
        .unwrap();

        let after = kv.metrics(MetricsRequest {}).await.unwrap().into_inner();
        assert_eq!(after.put_ops - before.put_ops, 7);
        assert_eq!(after.get_ops - before.get_ops, 6);
        assert_eq!(after.delete_ops - before.delete_ops, 1);
        assert_eq!(after.batch_ops - before.batch_ops, 1);
        assert_eq!(after.scan_ops - before.scan_ops, 1);
        assert_eq!(after.cas_ops - before.cas_ops, 1);
        assert_eq!(after.batch_get_ops - before.batch_get_ops, 1);
        assert_eq!(after.keys, 8, "m1..m6, mb, mc");
        assert_eq!(after.value_bytes, 6 * 4 + 1 + 1);

        // Forwarded copies are not counted again on the leader.
        let leader_after = cluster
            .kv(leader)
            .await
            .unwrap()
            .metrics(MetricsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(leader_after.put_ops, leader_before.put_ops);
        assert!(leader_after.is_leader);
        assert_eq!(
            leader_after.followers.len(),
            2,
            "{:?}",
            leader_after.followers
        );
        assert!(leader_after.followers.iter().all(|f| f.matched_index > 0));
        assert!(after.commit_index >= after.applied_index.min(after.commit_index));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_a_fourth_node_promote_it_remove_another_and_keep_serving() {
    bounded(async {
        let mut cluster = TestCluster::start(3, &["--snapshot-every", "50"]).await;
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = {
            let endpoints = cluster.endpoints();
            let (stop, acked) = (stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("member-{i:05}");
                    let endpoint = &endpoints[i % endpoints.len()];
                    if let Ok(Ok(_)) = tokio::time::timeout(
                        Duration::from_secs(5),
                        common::put_at(endpoint, &key, key.as_bytes()),
                    )
                    .await
                    {
                        acked.lock().unwrap().push(key);
                    }
                    i += 1;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;

        // The new node joins by itself (--join): learner, catch-up, promotion.
        let fourth = cluster.start_joining_node();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = cluster.status(1).await.unwrap();
            if status.voters.iter().any(|m| m.id == fourth) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {fourth} never became a voter: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Remove a node that is not the leader through the API on another node.
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let removed = cluster
            .others(leader)
            .into_iter()
            .find(|id| *id != fourth)
            .unwrap();
        let via = cluster
            .others(removed)
            .into_iter()
            .find(|id| *id != leader)
            .unwrap();
        let mut admin = ClusterClient::new(cluster.channel(via).await.unwrap());
        // The promotion is seen in Status while its joint configuration still commits; a
        // removal meanwhile is refused (FAILED_PRECONDITION, "already undergoing a
        // configuration change"), as a client would be, and retried.
        let deadline = Instant::now() + Duration::from_secs(20);
        let reply = loop {
            match admin.remove_node(RemoveNodeRequest { id: removed }).await {
                Ok(reply) => break reply.into_inner(),
                Err(status)
                    if status.code() == Code::FailedPrecondition
                        && status
                            .message()
                            .contains("undergoing a configuration change")
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(status) => panic!("remove node {removed}: {status:?}"),
            }
        };
        assert!(reply.voters.iter().all(|m| m.id != removed));
        assert_eq!(reply.voters.len(), 3);
        cluster.kill(removed);

        // Bad membership requests are refused clearly.
        let err = admin
            .promote(PromoteRequest { ids: vec![] })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = admin
            .add_learner(AddLearnerRequest {
                id: 9,
                address: "nowhere".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        writer.await.unwrap();
        let acked = acked.lock().unwrap().clone();
        assert!(!acked.is_empty());
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
        cluster.put(fourth, "after-removal", b"ok").await.unwrap();
        for key in &acked {
            let read = cluster
                .get(fourth, key, LINEAR)
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(read.value, key.as_bytes());
        }
        let status = cluster.status(leader).await.unwrap();
        assert_eq!(status.voters.len(), 3);
        assert!(status.voters.iter().any(|m| m.id == fourth));
    })
    .await
}
