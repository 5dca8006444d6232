//! Leases on real processes: a revoke deletes every attached key in one revision on every node;
//! a lease nobody renews expires no earlier than its TTL and within TTL + a documented bound,
//! while a renewed one lives on; leader failovers while a holder keeps renewing expire nothing;
//! leases and their keys survive snapshots and a restart of every node, and ids are not reused.

use std::time::{Duration, Instant};

use raftkv::proto::v1::cluster_client::ClusterClient;
use raftkv::proto::v1::lease_client::LeaseClient;
use raftkv::proto::v1::{
    batch_op, compare_and_swap_request, watch_event::Kind, BatchOp, BatchRequest,
    CompareAndSwapRequest, Consistency, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseListRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, SnapshotRequest, WatchRequest,
};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{bounded, TestCluster};

/// How late after its deadline a lease may end: the leader looks every 100 ms, then commits
/// the revocation (docs/api.md states "within a second" on a healthy cluster; this leaves room
/// for a loaded CI machine).
const EXPIRY_SLACK: Duration = Duration::from_secs(2);

async fn leases(cluster: &TestCluster, id: u64) -> LeaseClient<Channel> {
    LeaseClient::new(cluster.channel(id).await.expect("channel"))
}

async fn grant(cluster: &TestCluster, id: u64, ttl_ms: u64) -> (u64, u64) {
    let granted = leases(cluster, id)
        .await
        .grant(LeaseGrantRequest { ttl_ms })
        .await
        .expect("grant")
        .into_inner();
    assert_eq!(granted.ttl_ms, ttl_ms);
    assert_ne!(granted.id, 0);
    (granted.id, granted.revision)
}

async fn put_leased(cluster: &TestCluster, id: u64, key: &str, lease: u64) -> u64 {
    let put = PutRequest {
        key: key.into(),
        value: b"held".to_vec(),
        ttl_ms: 0,
        lease,
    };
    cluster
        .kv(id)
        .await
        .expect("kv")
        .put(put)
        .await
        .expect("leased put")
        .into_inner()
        .revision
}

/// Whether `key` is on node `id`'s own map (a stale read: what that replica applied).
async fn on_node(cluster: &TestCluster, id: u64, key: &str) -> bool {
    match cluster.get(id, key, Consistency::Stale).await {
        Ok(_) => true,
        Err(status) if status.code() == Code::NotFound => false,
        Err(status) => panic!("stale read of {key} on node {id}: {status}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_lease_deletes_its_keys_in_one_revision_on_every_node() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        let follower = cluster.others(leader)[0];

        let short = leases(&cluster, follower)
            .await
            .grant(LeaseGrantRequest { ttl_ms: 999 })
            .await
            .expect_err("a TTL under a second");
        assert_eq!(short.code(), Code::InvalidArgument, "{short:?}");
        assert!(short.message().contains("ttl_ms"), "{short:?}");

        // Granted and used through a follower: every call is forwarded.
        let (lease, granted_at) = grant(&cluster, follower, 60_000).await;
        put_leased(&cluster, follower, "svc/a", lease).await;
        let batch = BatchRequest {
            ops: vec![BatchOp {
                op: Some(batch_op::Op::Put(PutRequest {
                    key: "svc/b".into(),
                    value: b"held".to_vec(),
                    ttl_ms: 0,
                    lease,
                })),
            }],
        };
        cluster
            .kv(follower)
            .await
            .expect("kv")
            .batch(batch)
            .await
            .expect("leased batch");
        let cas = CompareAndSwapRequest {
            key: "svc/c".into(),
            expected: Some(compare_and_swap_request::Expected::ExpectedRevision(0)),
            value: b"held".to_vec(),
            lease,
            ..Default::default()
        };
        assert!(
            cluster
                .kv(follower)
                .await
                .expect("kv")
                .compare_and_swap(cas)
                .await
                .expect("leased cas")
                .into_inner()
                .succeeded
        );
        cluster
            .put(follower, "svc/free", b"no lease")
            .await
            .expect("plain put");

        // A write naming a lease that does not exist is refused and writes nothing.
        let stray = PutRequest {
            key: "svc/stray".into(),
            value: b"x".to_vec(),
            ttl_ms: 0,
            lease: lease + 1000,
        };
        let refused = cluster
            .kv(follower)
            .await
            .expect("kv")
            .put(stray)
            .await
            .expect_err("unknown lease");
        assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
        assert!(
            refused
                .message()
                .contains(&format!("lease {}", lease + 1000)),
            "{refused:?}"
        );

        let ttl = leases(&cluster, follower)
            .await
            .time_to_live(LeaseTimeToLiveRequest {
                id: lease,
                keys: true,
            })
            .await
            .expect("time to live")
            .into_inner();
        assert_eq!(ttl.keys, ["svc/a", "svc/b", "svc/c"]);
        assert_eq!(ttl.granted_ttl_ms, 60_000);
        assert!(
            ttl.ttl_ms > 50_000 && ttl.ttl_ms <= 60_000 + 4_000,
            "{ttl:?}"
        );
        let listed = leases(&cluster, follower)
            .await
            .leases(LeaseListRequest {})
            .await
            .expect("list")
            .into_inner()
            .leases;
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].id, listed[0].keys), (lease, 3));
        let metrics = cluster
            .kv(leader)
            .await
            .expect("kv")
            .metrics(raftkv::proto::v1::MetricsRequest {})
            .await
            .expect("metrics")
            .into_inner();
        assert_eq!(metrics.leases, 1, "{metrics:?}");

        // A watcher on the third node sees the revoke as one response: three deletes, one
        // revision.
        let watcher = cluster.others(leader)[1];
        let mut watch = cluster
            .kv(watcher)
            .await
            .expect("kv")
            .watch(WatchRequest {
                prefix: "svc/".into(),
                start_revision: granted_at + 1,
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner();
        let revoked = leases(&cluster, follower)
            .await
            .revoke(LeaseRevokeRequest { id: lease })
            .await
            .expect("revoke")
            .into_inner();
        assert_eq!(revoked.deleted, 3);
        let deletion = loop {
            let response = watch.next().await.expect("watch open").expect("watch ok");
            if response
                .events
                .iter()
                .any(|e| e.kind == Kind::Delete as i32)
            {
                break response;
            }
        };
        assert_eq!(deletion.revision, revoked.revision);
        let deleted: Vec<_> = deletion
            .events
            .iter()
            .map(|e| (e.kind, e.key.as_str(), e.revision))
            .collect();
        let delete = Kind::Delete as i32;
        assert_eq!(
            deleted,
            [
                (delete, "svc/a", revoked.revision),
                (delete, "svc/b", revoked.revision),
                (delete, "svc/c", revoked.revision)
            ]
        );
        for id in [leader, follower, watcher] {
            cluster
                .wait_applied(id, revoked.revision, Duration::from_secs(20))
                .await;
            for key in ["svc/a", "svc/b", "svc/c"] {
                assert!(!on_node(&cluster, id, key).await, "{key} on node {id}");
            }
            assert!(on_node(&cluster, id, "svc/free").await);
        }

        let gone = leases(&cluster, follower)
            .await
            .time_to_live(LeaseTimeToLiveRequest {
                id: lease,
                keys: false,
            })
            .await
            .expect_err("revoked");
        assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
        let again = leases(&cluster, leader)
            .await
            .revoke(LeaseRevokeRequest { id: lease })
            .await
            .expect_err("revoked twice");
        assert_eq!(again.code(), Code::NotFound, "{again:?}");
    })
    .await
}

/// Renews `lease` every `every` through one KeepAlive stream on node `id` until `stop` is
/// dropped; returns when the stream fails, with how many renewals were answered.
async fn keep_alive(
    mut client: LeaseClient<Channel>,
    lease: u64,
    every: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> u64 {
    let (requests, outbound) = tokio::sync::mpsc::channel(4);
    let mut answers = client
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(outbound))
        .await
        .expect("keepalive stream")
        .into_inner();
    let mut renewed = 0;
    loop {
        if requests
            .send(LeaseKeepAliveRequest { id: lease })
            .await
            .is_err()
        {
            return renewed;
        }
        match answers.next().await {
            Some(Ok(answer)) => {
                assert_eq!(answer.id, lease);
                assert!(answer.ttl_ms > 0, "lease {lease} ended while renewed");
                renewed += 1;
            }
            other => panic!("keepalive failed: {other:?}"),
        }
        tokio::select! {
            _ = &mut stop => return renewed,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Waits until `key` is gone from node `id`, returning when that was seen.
async fn gone_from(cluster: &TestCluster, id: u64, key: &str, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if !on_node(cluster, id, key).await {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{key} still on node {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_nobody_renews_expires_after_its_ttl_and_a_renewed_one_lives_on() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        let follower = cluster.others(leader)[0];
        const TTL: Duration = Duration::from_millis(2000);
        let ttl_ms = TTL.as_millis() as u64;

        let (renewed, _) = grant(&cluster, follower, ttl_ms).await;
        put_leased(&cluster, follower, "kept", renewed).await;
        let (abandoned, _) = grant(&cluster, follower, ttl_ms).await;
        put_leased(&cluster, follower, "dropped", abandoned).await;
        let granted = Instant::now();

        let (stop, stopped) = tokio::sync::oneshot::channel();
        let holder = tokio::spawn(keep_alive(
            leases(&cluster, follower).await,
            renewed,
            TTL / 4,
            stopped,
        ));
        let expired = gone_from(&cluster, leader, "dropped", TTL * 3).await;
        let lived = expired - granted;
        assert!(
            lived >= TTL - Duration::from_millis(200),
            "expired {lived:?} after the grant, before its TTL"
        );
        assert!(lived <= TTL + EXPIRY_SLACK, "expired only after {lived:?}");

        // Three TTLs of renewals through a follower keep the other lease and its key.
        tokio::time::sleep(TTL * 3).await;
        for id in [leader, follower] {
            assert!(
                on_node(&cluster, id, "kept").await,
                "renewed key gone on {id}"
            );
        }
        let _ = stop.send(());
        let renewals = holder.await.expect("holder task");
        assert!(renewals >= 10, "only {renewals} renewals");
        let last_renewal = Instant::now();
        let expired = gone_from(&cluster, follower, "kept", TTL * 3).await;
        assert!(expired - last_renewal <= TTL + EXPIRY_SLACK);
    })
    .await
}

/// Renews through every node in turn, moving to the next on any failure, until `stop`: a holder
/// that rides out leader changes. Returns the longest time between two answered renewals.
async fn keep_alive_anywhere(
    cluster_endpoints: Vec<String>,
    lease: u64,
    every: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Duration {
    let mut longest_gap = Duration::ZERO;
    let mut last = Instant::now();
    let mut node = 0;
    loop {
        let address = &cluster_endpoints[node % cluster_endpoints.len()];
        node += 1;
        let Ok(channel) = crate::common::channel_to(address).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut client = LeaseClient::new(channel);
        loop {
            let request = tokio_stream::iter([LeaseKeepAliveRequest { id: lease }]);
            let answer = match client.keep_alive(request).await {
                Ok(answers) => answers.into_inner().next().await,
                Err(_) => None,
            };
            match answer {
                Some(Ok(answer)) => {
                    assert!(answer.ttl_ms > 0, "lease {lease} expired while renewed");
                    longest_gap = longest_gap.max(last.elapsed());
                    last = Instant::now();
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
            }
            tokio::select! {
                _ = &mut stop => return longest_gap,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failovers_while_a_holder_keeps_renewing_expire_nothing() {
    bounded(async {
        let mut cluster = TestCluster::start(3, &[]).await;
        let first = cluster.wait_for_leader(Duration::from_secs(30)).await;
        const TTL_MS: u64 = 1500;
        let (lease, _) = grant(&cluster, first, TTL_MS).await;
        let revision = put_leased(&cluster, first, "session", lease).await;

        let (stop, stopped) = tokio::sync::oneshot::channel();
        let holder = tokio::spawn(keep_alive_anywhere(
            cluster.endpoints(),
            lease,
            Duration::from_millis(TTL_MS / 3),
            stopped,
        ));
        // Two leaders in a row die by SIGKILL and come back.
        let mut leader = first;
        for _ in 0..2 {
            cluster.kill(leader);
            let next = cluster.wait_for_leader(Duration::from_secs(30)).await;
            cluster.start_node(leader);
            tokio::time::sleep(Duration::from_millis(3 * TTL_MS)).await;
            leader = next;
        }
        let _ = stop.send(());
        let gap = holder.await.expect("holder task");

        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        let still = cluster
            .get(leader, "session", Consistency::Linearizable)
            .await
            .unwrap_or_else(|e| {
                panic!("the lease's key is gone (longest renewal gap {gap:?}): {e}")
            });
        assert_eq!(
            still.revision, revision,
            "the key was deleted and written again"
        );
        leases(&cluster, leader)
            .await
            .time_to_live(LeaseTimeToLiveRequest {
                id: lease,
                keys: false,
            })
            .await
            .expect("the lease outlived both failovers");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_snapshots_and_a_restart_of_every_node() {
    bounded(async {
        let mut cluster = TestCluster::start(3, &[]).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        let (kept, _) = grant(&cluster, leader, 60_000).await;
        put_leased(&cluster, leader, "config/a", kept).await;
        let (ended, _) = grant(&cluster, leader, 60_000).await;
        let revoked = leases(&cluster, leader)
            .await
            .revoke(LeaseRevokeRequest { id: ended })
            .await
            .expect("revoke")
            .into_inner()
            .revision;
        // Every node images its map (the lease table with it) and drops the log behind it.
        for id in 1..=3 {
            cluster
                .wait_applied(id, revoked, Duration::from_secs(20))
                .await;
            ClusterClient::new(cluster.channel(id).await.expect("channel"))
                .snapshot(SnapshotRequest {})
                .await
                .expect("snapshot");
        }
        for id in 1..=3 {
            cluster.kill(id);
        }
        for id in 1..=3 {
            cluster.start_node(id);
        }
        let leader = cluster.wait_for_leader(Duration::from_secs(60)).await;
        let ttl = leases(&cluster, leader)
            .await
            .time_to_live(LeaseTimeToLiveRequest {
                id: kept,
                keys: true,
            })
            .await
            .expect("the lease after the restart")
            .into_inner();
        assert_eq!(ttl.keys, ["config/a"]);
        assert_eq!(ttl.granted_ttl_ms, 60_000);
        let (fresh, _) = grant(&cluster, leader, 60_000).await;
        assert!(fresh > ended, "id {fresh} reused (ended lease was {ended})");
        let revoked = leases(&cluster, leader)
            .await
            .revoke(LeaseRevokeRequest { id: kept })
            .await
            .expect("revoke after restart")
            .into_inner();
        assert_eq!(revoked.deleted, 1);
        assert!(!on_node(&cluster, leader, "config/a").await);
    })
    .await
}
