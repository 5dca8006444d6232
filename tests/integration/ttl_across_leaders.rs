//! TTL expiry stays linearizable when leadership moves to a node whose clock is behind: once a
//! linearizable read has reported a key gone, no later read brings it back.
//!
//! Failpoints (`--features failpoints`) make the window certain: `expiry-skip` keeps every
//! leader from proposing `Expire` entries, so the key's TTL passes by the wall clock while no
//! entry says so, and `clock-skew-ms` puts the followers a minute behind the leader.

use crate::common;

use std::time::Duration;

use common::{bounded, TestCluster};
use raftkv::proto::v1::{Consistency, PutRequest};
use tonic::Code;

const KEY: &str = "session";
const TTL_MS: u64 = 2_000;
const FAILPOINTS: &str = "RAFTKV_FAILPOINTS";

/// Whether `key` is present by a linearizable read on node `id`, retried while there is no
/// leader; panics on any other error.
async fn present(cluster: &TestCluster, id: u64, key: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match cluster.get(id, key, Consistency::Linearizable).await {
            Ok(_) => return true,
            Err(status) if status.code() == Code::NotFound => return false,
            Err(status)
                if status.code() == Code::Unavailable && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(status) => panic!("read of {key} on node {id} failed: {status}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reported_expired_is_not_brought_back_by_a_leader_whose_clock_is_behind() {
    bounded(async {
        let mut cluster = TestCluster::start_with_node_env(3, &[], |_| {
            vec![(FAILPOINTS.to_string(), "expiry-skip=return".to_string())]
        })
        .await;
        // The followers come back a minute behind; the leader keeps leading meanwhile.
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        for follower in cluster.others(leader) {
            cluster.set_node_env(
                follower,
                FAILPOINTS,
                "expiry-skip=return;clock-skew-ms=return(-60000)",
            );
            cluster.kill(follower);
            cluster.start_node(follower);
        }
        assert_eq!(
            cluster.wait_for_leader(Duration::from_secs(30)).await,
            leader,
            "restarting the followers moved leadership"
        );

        let put = PutRequest {
            lease: 0,
            key: KEY.to_string(),
            value: b"alive".to_vec(),
            ttl_ms: TTL_MS,
        };
        let revision = cluster
            .kv(leader)
            .await
            .expect("the leader")
            .put(put)
            .await
            .expect("put with a TTL")
            .into_inner()
            .revision;
        for id in cluster.others(leader) {
            cluster
                .wait_applied(id, revision, Duration::from_secs(20))
                .await;
        }
        // Past the TTL by the leader's clock; no entry has said so.
        tokio::time::sleep(Duration::from_millis(TTL_MS + 1_000)).await;
        let before = present(&cluster, leader, KEY).await;

        cluster.kill(leader);
        let new_leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        let after = present(&cluster, new_leader, KEY).await;
        assert!(
            before || !after,
            "leader {leader} reported {KEY} expired, then leader {new_leader} (clock a minute \
             behind) returned it: expiry judged by a local clock is not linearizable"
        );

        // A write through the new leader carries its (slow) clock and expires nothing; the key
        // must stay in one state for every reader.
        cluster
            .put_retrying(new_leader, "other", b"x", Duration::from_secs(20))
            .await;
        for id in cluster.others(0) {
            assert_eq!(
                present(&cluster, id, KEY).await,
                after,
                "node {id} disagrees with the leader about {KEY}"
            );
        }
    })
    .await;
}
