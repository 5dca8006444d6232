//! `GET /metrics`: this node's counters and Raft state in the Prometheus text exposition format
//! (version 0.0.4), so a Prometheus server can scrape a node directly.
//!
//! The numbers come from the gRPC Metrics call made in process, not from the counters directly,
//! because that call also fills in the commit index; it is the same answer `raftkv metrics`
//! prints. The text is written with a small builder, [`Exposition`], that puts
//! each family's `# HELP` and `# TYPE` lines before its samples, as the format requires.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

use super::{Failure, Gateway};
use crate::op::Op;
use crate::proto::v1 as pb;
use crate::proto::v1::kv_server::Kv;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`: this node's counters and Raft state in the Prometheus text format.
pub(super) async fn metrics(State(gateway): State<Gateway>) -> Result<Response, Failure> {
    // The gRPC Metrics call, in process: it also fills in the commit index.
    let snapshot = Kv::metrics(&*gateway.kv, tonic::Request::new(pb::MetricsRequest {}))
        .await?
        .into_inner();
    let headers = [(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT))];
    Ok((headers, prometheus_text(&snapshot)).into_response())
}

/// Builds the Prometheus text exposition: each family's `# HELP` and `# TYPE`, then samples.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP raftkv_{name} {help}");
        let _ = writeln!(self.0, "# TYPE raftkv_{name} {kind}");
        self
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) -> &mut Self {
        let _ = write!(self.0, "raftkv_{name}");
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(label, value)| format!("{label}=\"{value}\""))
                .collect();
            let _ = write!(self.0, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.0, " {value}");
        self
    }

    /// A family with one unlabelled sample.
    fn gauge(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.family(name, "gauge", help).sample(name, &[], value)
    }
}

fn prometheus_text(m: &pb::MetricsResponse) -> String {
    let mut out = Exposition::default();
    out.gauge("node_id", "This node's Raft id.", m.node_id)
        .gauge(
            "keys",
            "Keys stored on this node, expired keys not yet removed included.",
            m.keys,
        )
        .gauge(
            "value_bytes",
            "Bytes of the values stored on this node.",
            m.value_bytes,
        );
    out.family(
        "operations_total",
        "counter",
        "Client requests this node received, by operation (forwarded copies not counted).",
    );
    for op in Op::ALL {
        out.sample("operations_total", &[("op", op.name())], op.count_in(m));
    }
    out.gauge("leases", "Leases in this node's state machine.", m.leases);
    out.gauge(
        "idempotency_keys",
        "Idempotency keys held by this node's state machine.",
        m.idempotency_keys,
    );
    for (name, help, value) in [
        (
            "idempotency_hits_total",
            "Retried writes answered from the idempotency table instead of applied again.",
            m.idempotency_hits,
        ),
        (
            "idempotency_conflicts_total",
            "Writes refused because their idempotency key was used for another request.",
            m.idempotency_conflicts,
        ),
        (
            "idempotency_evictions_total",
            "Idempotency keys forgotten before their window ended, to respect --idempotency-max-keys.",
            m.idempotency_evictions,
        ),
    ] {
        out.family(name, "counter", help).sample(name, &[], value);
    }
    out.gauge("raft_term", "Current Raft term.", m.term)
        .gauge(
            "raft_leader_id",
            "Id of the leader this node knows of; 0 when none.",
            m.leader_id,
        )
        .gauge(
            "raft_commit_index",
            "Highest log index this node knows to be committed.",
            m.commit_index,
        )
        .gauge(
            "raft_applied_index",
            "Highest log index applied to this node's state machine.",
            m.applied_index,
        )
        .gauge(
            "raft_is_leader",
            "1 when this node is the leader, else 0.",
            u64::from(m.is_leader),
        )
        .family(
            "raft_follower_matched_index",
            "gauge",
            "On the leader: highest log index known to be replicated on each follower.",
        );
    for follower in &m.followers {
        let id = follower.id.to_string();
        out.sample(
            "raft_follower_matched_index",
            &[("follower", &id)],
            follower.matched_index,
        );
    }
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_has_help_type_and_labelled_samples() {
        let text = prometheus_text(&pb::MetricsResponse {
            node_id: 1,
            keys: 3,
            put_ops: 5,
            commit_index: 9,
            is_leader: true,
            followers: vec![pb::FollowerProgress {
                id: 2,
                matched_index: 8,
            }],
            ..Default::default()
        });
        for line in [
            "# HELP raftkv_keys ",
            "# TYPE raftkv_keys gauge",
            "raftkv_keys 3",
            "# TYPE raftkv_operations_total counter",
            "raftkv_operations_total{op=\"put\"} 5",
            "raftkv_operations_total{op=\"batch_get\"} 0",
            "raftkv_raft_commit_index 9",
            "raftkv_raft_is_leader 1",
            "raftkv_raft_follower_matched_index{follower=\"2\"} 8",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "{line:?} missing in:\n{text}"
            );
        }
        // Every sample belongs to a family announced before it.
        let mut announced = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                announced.push(rest.split(' ').next().unwrap_or_default().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                assert!(announced.iter().any(|a| a == name), "{line}");
            }
        }
    }
}
