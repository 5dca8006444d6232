//! Client commands: put, get, del, status.

use std::io::Write;

use clap::Args;

use super::client::{request, CliError, Client};
use super::{exit, ClientOpts};
use crate::proto::v1::cluster_client::ClusterClient;
use crate::proto::v1::kv_client::KvClient;
use crate::proto::v1::{
    Consistency, DeleteRequest, GetRequest, PutRequest, StatusRequest, StatusResponse,
};

#[derive(Args, Debug)]
pub struct PutArgs {
    pub key: String,
    pub value: String,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    pub key: String,
    /// Read the answering node's local copy instead of confirming with the leader (faster,
    /// may be behind).
    #[arg(long)]
    pub stale: bool,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct DelArgs {
    pub key: String,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The node to check, host:port.
    #[arg(long, env = "RAFTKV_HEALTH_ENDPOINT", default_value = "127.0.0.1:7001")]
    pub endpoint: String,

    /// Give up after this long.
    #[arg(long, default_value = "2s", value_parser = super::parse_duration)]
    pub timeout: std::time::Duration,
}

fn kv(channel: tonic::transport::Channel) -> KvClient<tonic::transport::Channel> {
    KvClient::new(channel)
        .max_decoding_message_size(Client::max_message_bytes())
        .max_encoding_message_size(Client::max_message_bytes())
}

pub async fn put(args: PutArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let response = client
        .call(|channel, remaining| {
            let message = PutRequest {
                key: args.key.clone(),
                value: args.value.clone().into_bytes(),
                ..Default::default()
            };
            async move { kv(channel).put(request(message, remaining)).await }
        })
        .await?;
    println!("OK revision={}", response.into_inner().revision);
    Ok(())
}

pub async fn get(args: GetArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let consistency = if args.stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    };
    let response = client
        .call(|channel, remaining| {
            let message = GetRequest {
                key: args.key.clone(),
                consistency: consistency as i32,
            };
            async move { kv(channel).get(request(message, remaining)).await }
        })
        .await?
        .into_inner();
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&response.value)
        .and_then(|_| stdout.write_all(b"\n"))
        .map_err(|e| CliError::new(exit::UNAVAILABLE, format!("cannot write to stdout: {e}")))
}

pub async fn del(args: DelArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let response = client
        .call(|channel, remaining| {
            let message = DeleteRequest {
                key: args.key.clone(),
            };
            async move { kv(channel).delete(request(message, remaining)).await }
        })
        .await?
        .into_inner();
    if response.deleted {
        println!("deleted revision={}", response.revision);
    } else {
        println!("not found, nothing deleted revision={}", response.revision);
    }
    Ok(())
}

pub async fn status(args: StatusArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let status = client
        .call(|channel, remaining| async move {
            ClusterClient::new(channel)
                .status(request(StatusRequest {}, remaining))
                .await
        })
        .await?
        .into_inner();
    print!("{}", format_status(&status));
    Ok(())
}

/// Aligned `field: value` lines for a human.
pub fn format_status(s: &StatusResponse) -> String {
    let members = |list: &[crate::proto::v1::Member]| {
        if list.is_empty() {
            "-".to_string()
        } else {
            list.iter()
                .map(|m| format!("{}={}", m.id, m.address))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let leader = if s.leader_id == 0 {
        "none".to_string()
    } else {
        format!("{} ({})", s.leader_id, s.leader_address)
    };
    let rows = [
        ("node", format!("{} ({})", s.id, s.address)),
        ("role", s.role.clone()),
        ("leader", leader),
        ("term", s.term.to_string()),
        ("last log index", s.last_log_index.to_string()),
        ("commit index", s.commit_index.to_string()),
        ("applied index", s.last_applied_index.to_string()),
        ("snapshot index", s.snapshot_index.to_string()),
        ("purged index", s.purged_index.to_string()),
        ("voters", members(&s.voters)),
        ("learners", members(&s.learners)),
    ];
    rows.iter()
        .map(|(name, value)| format!("{:<15} {value}\n", format!("{name}:")))
        .collect()
}

pub async fn health(args: HealthArgs) -> Result<(), CliError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let unavailable = |what: String| CliError::new(exit::UNAVAILABLE, what);
    let check = async {
        let channel = Client::connect(&args.endpoint).await?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
    };
    let response = tokio::time::timeout(args.timeout, check)
        .await
        .map_err(|_| {
            unavailable(format!(
                "{}: no answer within {:?}",
                args.endpoint, args.timeout
            ))
        })?
        .map_err(|status| unavailable(format!("{}: {}", args.endpoint, status.message())))?
        .into_inner();
    match ServingStatus::try_from(response.status) {
        Ok(ServingStatus::Serving) => {
            println!("SERVING");
            Ok(())
        }
        Ok(other) => Err(unavailable(format!(
            "{}: {} (no leader known yet)",
            args.endpoint,
            other.as_str_name()
        ))),
        Err(_) => Err(unavailable(format!(
            "{}: unknown health status {}",
            args.endpoint, response.status
        ))),
    }
}
