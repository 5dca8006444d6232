//! A peer that sends a snapshot chunk far past what it has sent so far must get an error, not
//! make the node allocate up to that offset (DESIGN.md, invariant 7).

use crate::common;

use std::time::Duration;

use common::{bounded, TestCluster};
use openraft::raft::InstallSnapshotRequest;
use openraft::{SnapshotMeta, Vote};
use raftkv::proto::raft_v1::raft_client::RaftClient;
use raftkv::proto::raft_v1::RaftMessage;
use raftkv::proto::v1::Consistency;
use raftkv::raft::codec;
use raftkv::raft::TypeConfig;
use tonic::Code;

fn chunk(vote: Vote<u64>, offset: u64, data: Vec<u8>) -> RaftMessage {
    let request = InstallSnapshotRequest::<TypeConfig> {
        vote,
        meta: SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "hostile".to_string(),
        },
        offset,
        data,
        done: false,
    };
    RaftMessage {
        payload: codec::encode(&request).expect("encode"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_chunk_past_the_bytes_received_is_refused_and_the_node_survives() {
    bounded(async {
        let mut cluster = TestCluster::start(3, &[]).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        let target = cluster.others(leader)[0];
        let term = cluster.status(target).await.expect("status").term;
        // A vote above the target's, so openraft accepts the chunks instead of answering with
        // its own newer vote.
        let vote = Vote::new_committed(term + 1, leader);
        let mut raft = RaftClient::new(cluster.channel(target).await.expect("channel"));

        raft.install_snapshot(chunk(vote, 0, vec![7; 1024]))
            .await
            .expect("the first chunk is accepted");
        let refused = raft
            .install_snapshot(chunk(vote, 1 << 40, vec![7; 16]))
            .await
            .expect_err("a chunk at 1 TiB is refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
        assert!(
            refused.message().contains("offset"),
            "the error names the offset: {refused}"
        );

        // Still alive and serving; the cluster carries on.
        assert!(cluster.status(target).await.is_ok(), "the node is still up");
        let new_leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        cluster
            .put_retrying(new_leader, "after", b"ok", Duration::from_secs(20))
            .await;
        let read = cluster
            .get(target, "after", Consistency::Linearizable)
            .await
            .expect("read through the attacked node");
        assert_eq!(read.value, b"ok");
        cluster.kill(target);
    })
    .await;
}
