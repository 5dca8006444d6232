//! `raftkv metrics`: one node's operation counters and Raft state.
//!
//! The numbers are per node (requests that node received since it started; follower progress
//! is known only on the leader), so the command asks the first endpoint that answers
//! (`Client::call_answered`) and always names it in the output, text or JSON: without knowing
//! who answered, the counters would mean nothing.

use clap::Args;
use serde_json::{json, Value};

use super::{aligned, emit, emit_json, kv};
use crate::cli::client::{request, CliError, Client};
use crate::cli::ClientOpts;
use crate::op::Op;
use crate::proto::v1::{MetricsRequest, MetricsResponse};

#[derive(Args, Debug)]
#[command(after_long_help = "\
Asks the first endpoint that answers and names it. Operation counters count client requests that
node received since it started. Follower progress is known only on the leader.

With --json: one JSON object with every field of the Metrics response (node_id, keys,
value_bytes, leases, idempotency_keys, idempotency_hits, idempotency_conflicts,
idempotency_evictions, get_ops, put_ops, delete_ops, batch_ops, cas_ops, scan_ops, batch_get_ops, term,
leader_id, commit_index, applied_index, is_leader, followers: [{id, matched_index}]) plus
\"endpoint\", the address that answered.")]
pub struct MetricsArgs {
    /// Print one JSON document (its shape is described in --help).
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub client: ClientOpts,
}

pub async fn metrics(args: MetricsArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let (endpoint, response) = client
        .call_answered(|channel, remaining| async move {
            kv(channel)
                .metrics(request(MetricsRequest {}, remaining))
                .await
        })
        .await?;
    let metrics = response.into_inner();
    if args.json {
        emit_json(&metrics_json(&endpoint, &metrics))
    } else {
        emit(format_metrics(&endpoint, &metrics).as_bytes())
    }
}

/// Aligned `field: value` lines for a human, naming the endpoint that answered.
pub fn format_metrics(endpoint: &str, m: &MetricsResponse) -> String {
    let leader = if m.leader_id == 0 {
        "none".to_string()
    } else {
        m.leader_id.to_string()
    };
    let followers = if m.followers.is_empty() {
        "-".to_string()
    } else {
        m.followers
            .iter()
            .map(|f| format!("{}@{}", f.id, f.matched_index))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let role = if m.is_leader { "leader" } else { "not leader" };
    let counts: Vec<(String, String)> = Op::ALL
        .iter()
        .map(|op| {
            let label = format!("{} ops", op.name().replace('_', " "));
            (label, op.count_in(m).to_string())
        })
        .collect();
    let mut rows = vec![
        ("node", format!("{} (answered at {endpoint})", m.node_id)),
        ("role", role.to_string()),
        ("leader", leader),
        ("term", m.term.to_string()),
        ("commit index", m.commit_index.to_string()),
        ("applied index", m.applied_index.to_string()),
        ("followers", followers),
        ("keys", m.keys.to_string()),
        ("value bytes", m.value_bytes.to_string()),
        ("leases", m.leases.to_string()),
        ("idempotency keys", m.idempotency_keys.to_string()),
        ("idempotency hits", m.idempotency_hits.to_string()),
        ("idempotency conflicts", m.idempotency_conflicts.to_string()),
        ("idempotency evictions", m.idempotency_evictions.to_string()),
    ];
    rows.extend(
        counts
            .iter()
            .map(|(label, count)| (label.as_str(), count.clone())),
    );
    aligned(&rows)
}

fn metrics_json(endpoint: &str, m: &MetricsResponse) -> Value {
    let followers: Vec<Value> = m
        .followers
        .iter()
        .map(|f| json!({"id": f.id, "matched_index": f.matched_index}))
        .collect();
    let mut document = json!({
        "endpoint": endpoint,
        "node_id": m.node_id,
        "keys": m.keys,
        "value_bytes": m.value_bytes,
        "leases": m.leases,
        "idempotency_keys": m.idempotency_keys,
        "idempotency_hits": m.idempotency_hits,
        "idempotency_conflicts": m.idempotency_conflicts,
        "idempotency_evictions": m.idempotency_evictions,
        "term": m.term,
        "leader_id": m.leader_id,
        "commit_index": m.commit_index,
        "applied_index": m.applied_index,
        "is_leader": m.is_leader,
        "followers": followers,
    });
    if let Value::Object(fields) = &mut document {
        for op in Op::ALL {
            fields.insert(format!("{}_ops", op.name()), op.count_in(m).into());
        }
    }
    document
}
