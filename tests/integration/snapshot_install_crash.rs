//! A node that crashes while installing a snapshot it received starts again and catches up.
//!
//! openraft asks the log store to purge the log behind a received snapshot right after handing
//! the snapshot to the state machine, without waiting for the install. The failpoints hold the
//! install open after its image is written and before its manifest is (`sleep`), then kill the
//! node there (`crash`): had the purge gone ahead, the node would restart with its old snapshot
//! and a log that starts after the new one, and could never rebuild its map (DESIGN.md,
//! invariant 4).

use crate::common;

use std::time::{Duration, Instant};

use common::{bounded, TestCluster};
use raftkv::proto::v1::Consistency;

const INSTALL_FAILPOINTS: &str =
    "snapshot-install-before-manifest=sleep(1500);snapshot-install-crash=crash";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_snapshot_install_leaves_a_node_that_restarts_and_catches_up() {
    bounded(async {
        let mut cluster =
            TestCluster::start(3, &["--snapshot-every", "20", "--logs-kept", "0"]).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        let lagging = cluster.others(leader)[0];
        // Before it falls behind: entries at the start of its log that a purge would remove.
        for i in 0..10 {
            cluster
                .put_retrying(leader, &format!("early-{i}"), b"e", Duration::from_secs(20))
                .await;
        }
        cluster.kill(lagging);
        for i in 0..120 {
            cluster
                .put_retrying(
                    leader,
                    &format!("key-{i:03}"),
                    b"v",
                    Duration::from_secs(20),
                )
                .await;
        }

        // Back with the failpoints: the leader's log is purged, so it sends a snapshot.
        cluster.set_node_env(lagging, "RAFTKV_FAILPOINTS", INSTALL_FAILPOINTS);
        cluster.start_node(lagging);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cluster.has_exited(lagging) {
            assert!(
                Instant::now() < deadline,
                "node {lagging} never reached the install failpoint"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(&cluster.node(lagging).log).unwrap_or_default();
        assert!(
            log.contains("failpoint snapshot-install-crash"),
            "node {lagging} exited for another reason"
        );

        // Restarted without failpoints, it must open its data dir and catch up.
        cluster.forget_exited(lagging);
        cluster.set_node_env(lagging, "RAFTKV_FAILPOINTS", "");
        cluster.start_node(lagging);
        let target = cluster.status(leader).await.expect("leader status");
        let caught_up = cluster
            .wait_applied(lagging, target.last_applied_index, Duration::from_secs(60))
            .await;
        assert!(caught_up.last_applied_index >= target.last_applied_index);
        for key in ["early-0", "early-9", "key-000", "key-119"] {
            let read = cluster
                .get(lagging, key, Consistency::Stale)
                .await
                .unwrap_or_else(|e| panic!("{key} on node {lagging}: {e}"));
            assert!(!read.value.is_empty(), "{key}");
        }
    })
    .await;
}
