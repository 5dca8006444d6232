//! `raftkv status` and `raftkv cluster …`: a node's view of the cluster, and membership changes.
//!
//! A new node joins in two steps: `add-learner` makes it a learner, which receives the log
//! without voting, and waits until it has caught up; `promote` then makes it a voter, so it
//! counts toward the quorum only once it has the log. Membership changes are retried on failover
//! (`Client::call`) because each one names a target state, so repeating it changes nothing
//! more. `raftkv status` is the same command as `raftkv cluster status`.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{aligned, emit, emit_json};
use crate::cli::client::{request, CliError, Client};
use crate::cli::ClientOpts;
use crate::proto::v1::cluster_client::ClusterClient;
use crate::proto::v1::{
    AddLearnerRequest, Member, MembershipResponse, PromoteRequest, RemoveNodeRequest,
    SnapshotRequest, StatusRequest, StatusResponse,
};

#[derive(Args, Debug)]
#[command(after_long_help = "\
With --json: one JSON object with every field of the Status response (id, address, role,
leader_id, leader_address, term, last_log_index, commit_index, last_applied_index,
snapshot_index, purged_index, voters and learners as [{id, address, peer_address}]) plus
\"endpoint\", the address that answered. A member's address (its client port) is empty until
it has told the cluster, a moment after the cluster has a leader.")]
pub struct StatusArgs {
    /// Print one JSON document (its shape is described in --help).
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub client: ClientOpts,
}

/// `raftkv cluster …`: inspection and membership changes. A new node joins in two steps: add
/// it as a learner (it receives the log without voting), then promote it to voter.
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show a node's view of the cluster: leader, term, indexes, members.
    Status(StatusArgs),
    /// Add a node as a learner and wait until it has caught up with the log.
    AddLearner(AddLearnerArgs),
    /// Make learners voters.
    Promote(PromoteArgs),
    /// Remove a voter or a learner from the cluster.
    Remove(RemoveArgs),
    /// Build a snapshot on every node in --endpoints now and purge the log behind it.
    Snapshot(SnapshotArgs),
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
Unlike other commands this asks every endpoint, not the first that answers: each node compacts
its own log. Prints `node N: snapshot index S, purged index P` per endpoint; the log keeps
--logs-kept entries behind the snapshot. Exits non-zero if any endpoint failed (the others are
still reported). A large map may need a longer --timeout.")]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
The node must be running (started with `raftkv serve` without --initial-cluster or --join) and
its peer port reachable from the cluster. Prints `OK revision=N` and the new membership. An
invalid address or ID exits 2. Waiting for a large catch-up may need a longer --timeout.
(`raftkv serve --join` does all this by itself.)")]
pub struct AddLearnerArgs {
    /// The new node's id (a positive integer unused in the cluster).
    pub id: u64,
    /// host:port of the new node's client port (its --advertise), as clients will reach it.
    pub address: String,
    /// host:port of the new node's peer port (its --peer-advertise), as other nodes will reach
    /// it. [default: ADDRESS with its port + 2000]
    #[arg(long)]
    pub peer_address: Option<String>,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct PromoteArgs {
    /// Ids of learners to make voters.
    #[arg(value_name = "ID", required = true, num_args = 1..)]
    pub ids: Vec<u64>,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// Id of the voter or learner to remove.
    pub id: u64,
    #[command(flatten)]
    pub client: ClientOpts,
}

pub async fn status(args: StatusArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let (endpoint, response) = client
        .call_answered(|channel, remaining| async move {
            ClusterClient::new(channel)
                .status(request(StatusRequest {}, remaining))
                .await
        })
        .await?;
    let status = response.into_inner();
    if args.json {
        emit_json(&status_json(&endpoint, &status))
    } else {
        emit(format_status(&status).as_bytes())
    }
}

/// Aligned `field: value` lines for a human.
pub fn format_status(s: &StatusResponse) -> String {
    let leader = if s.leader_id == 0 {
        "none".to_string()
    } else {
        format!("{} ({})", s.leader_id, s.leader_address)
    };
    aligned(&[
        ("node", format!("{} ({})", s.id, s.address)),
        ("role", s.role.clone()),
        ("leader", leader),
        ("term", s.term.to_string()),
        ("last log index", s.last_log_index.to_string()),
        ("commit index", s.commit_index.to_string()),
        ("applied index", s.last_applied_index.to_string()),
        ("snapshot index", s.snapshot_index.to_string()),
        ("purged index", s.purged_index.to_string()),
        ("voters", members_text(&s.voters)),
        ("learners", members_text(&s.learners)),
    ])
}

fn status_json(endpoint: &str, s: &StatusResponse) -> Value {
    json!({
        "endpoint": endpoint,
        "id": s.id,
        "address": s.address,
        "role": s.role,
        "leader_id": s.leader_id,
        "leader_address": s.leader_address,
        "term": s.term,
        "last_log_index": s.last_log_index,
        "commit_index": s.commit_index,
        "last_applied_index": s.last_applied_index,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "voters": members_json(&s.voters),
        "learners": members_json(&s.learners),
    })
}

pub async fn cluster(command: ClusterCommand) -> Result<(), CliError> {
    match command {
        ClusterCommand::Status(args) => status(args).await,
        ClusterCommand::AddLearner(args) => add_learner(args).await,
        ClusterCommand::Promote(args) => promote(args).await,
        ClusterCommand::Remove(args) => remove(args).await,
        ClusterCommand::Snapshot(args) => snapshot(args).await,
    }
}

async fn snapshot(args: SnapshotArgs) -> Result<(), CliError> {
    // Validates --endpoints (and reads the TLS files) the same way as every other command.
    let client = Client::new(&args.client)?;
    let mut failure = None;
    for endpoint in args.client.endpoints.iter().map(|e| e.trim()) {
        if endpoint.is_empty() {
            continue;
        }
        let answer = match client.connect(endpoint).await {
            Ok(channel) => ClusterClient::new(channel)
                .snapshot(request(SnapshotRequest {}, args.client.timeout))
                .await
                .map(|r| r.into_inner()),
            Err(status) => Err(status),
        };
        match answer {
            Ok(s) => emit(
                format!(
                    "node {}: snapshot index {}, purged index {}\n",
                    s.id, s.snapshot_index, s.purged_index
                )
                .as_bytes(),
            )?,
            Err(status) => {
                eprintln!("error: {endpoint}: {}", status.message());
                failure = Some(CliError::from_status(&status));
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

// Membership changes go through the retrying `Client::call`: each names a target (this node is
// a learner / a voter / gone), so repeating one whose answer was lost changes nothing more.

async fn add_learner(args: AddLearnerArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let response = client
        .call(|channel, remaining| {
            let message = AddLearnerRequest {
                id: args.id,
                address: args.address.clone(),
                peer_address: args.peer_address.clone().unwrap_or_default(),
            };
            async move {
                ClusterClient::new(channel)
                    .add_learner(request(message, remaining))
                    .await
            }
        })
        .await?;
    emit(format_membership(&response.into_inner()).as_bytes())
}

async fn promote(args: PromoteArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let response = client
        .call(|channel, remaining| {
            let message = PromoteRequest {
                ids: args.ids.clone(),
            };
            async move {
                ClusterClient::new(channel)
                    .promote(request(message, remaining))
                    .await
            }
        })
        .await?;
    emit(format_membership(&response.into_inner()).as_bytes())
}

async fn remove(args: RemoveArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let response = client
        .call(|channel, remaining| {
            let message = RemoveNodeRequest { id: args.id };
            async move {
                ClusterClient::new(channel)
                    .remove_node(request(message, remaining))
                    .await
            }
        })
        .await?;
    emit(format_membership(&response.into_inner()).as_bytes())
}

/// `OK revision=N` and the membership that the change produced.
fn format_membership(m: &MembershipResponse) -> String {
    format!(
        "OK revision={}\n{}",
        m.revision,
        aligned(&[
            ("voters", members_text(&m.voters)),
            ("learners", members_text(&m.learners)),
        ])
    )
}

fn members_text(list: &[Member]) -> String {
    if list.is_empty() {
        "-".to_string()
    } else {
        list.iter()
            .map(|m| match m.address.as_str() {
                "" => format!(
                    "{}=(client address not yet known; peer {})",
                    m.id, m.peer_address
                ),
                address => format!("{}={address}", m.id),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn members_json(list: &[Member]) -> Value {
    Value::Array(
        list.iter()
            .map(|m| json!({"id": m.id, "address": m.address, "peer_address": m.peer_address}))
            .collect(),
    )
}
