//! What a hostile peer or client can send. A peer that sends a snapshot chunk far past what it
//! has sent so far must get an error, not make the node allocate up to that offset (DESIGN.md,
//! invariant 7); a client that calls the internal services on the client port gets
//! UNIMPLEMENTED, so it cannot forge Raft messages.

use crate::common;

use std::time::Duration;

use common::{bounded, TestCluster};
use openraft::raft::InstallSnapshotRequest;
use openraft::{SnapshotMeta, Vote};
use raftkv::proto::raft_v1::forward_client::ForwardClient;
use raftkv::proto::raft_v1::raft_client::RaftClient;
use raftkv::proto::raft_v1::{ForwardedCall, ForwardedCalls, KvMethod, RaftMessage};
use raftkv::proto::v1::kv_client::KvClient;
use raftkv::proto::v1::{Consistency, GetRequest, PutRequest};
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
        let mut raft = RaftClient::new(
            common::channel_to(&cluster.node(target).peer_address)
                .await
                .expect("channel"),
        );

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_port_serves_no_peer_service_and_the_peer_port_no_client_service() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        let target = cluster.others(leader)[0];
        let client_port = cluster.channel(target).await.expect("client port");
        let term = cluster.status(target).await.expect("status").term;

        // A forged Vote for a higher term, on the client port: had it been served, the target
        // would have moved to that term.
        let forged = VoteRequestMessage::new(term + 5, 99);
        let refused = RaftClient::new(client_port.clone())
            .vote(forged.message())
            .await
            .expect_err("no Raft service on the client port");
        assert_eq!(refused.code(), Code::Unimplemented, "{refused}");
        let put = PutRequest {
            key: "forged".into(),
            value: b"x".to_vec(),
            ..Default::default()
        };
        let call = ForwardedCall {
            method: KvMethod::Put as i32,
            request: prost::Message::encode_to_vec(&put),
            idempotency_key: String::new(),
        };
        let refused = ForwardClient::new(client_port.clone())
            .calls(ForwardedCalls { calls: vec![call] })
            .await
            .expect_err("no Forward service on the client port");
        assert_eq!(refused.code(), Code::Unimplemented, "{refused}");
        assert_eq!(
            cluster.status(target).await.expect("status").term,
            term,
            "the forged vote changed nothing"
        );

        // And the other way round: the peer port serves no client.
        let peer_port = common::channel_to(&cluster.node(target).peer_address)
            .await
            .expect("peer port");
        let refused = KvClient::new(peer_port)
            .get(GetRequest {
                key: "forged".into(),
                ..Default::default()
            })
            .await
            .expect_err("no KV service on the peer port");
        assert_eq!(refused.code(), Code::Unimplemented, "{refused}");
        let read = cluster
            .get(leader, "forged", Consistency::Linearizable)
            .await
            .expect_err("nothing was written");
        assert_eq!(read.code(), Code::NotFound, "{read}");

        // The membership carries both addresses of every member: clients see client ports.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let status = cluster.status(target).await.expect("status");
            let published = status.voters.iter().all(|m| {
                m.address == cluster.node(m.id).address
                    && m.peer_address == cluster.node(m.id).peer_address
            });
            if published && status.leader_address == cluster.node(leader).address {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "members never published their client addresses: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

/// A Vote request as a peer would send it.
struct VoteRequestMessage(openraft::raft::VoteRequest<u64>);

impl VoteRequestMessage {
    fn new(term: u64, candidate: u64) -> Self {
        Self(openraft::raft::VoteRequest::new(
            Vote::new(term, candidate),
            None,
        ))
    }

    fn message(&self) -> RaftMessage {
        RaftMessage {
            payload: codec::encode(&self.0).expect("encode"),
        }
    }
}
