//! `raftkv health`: exits 0 when one node reports SERVING on the standard gRPC health service
//! (it is a cluster member and knows a leader), 3 otherwise.
//!
//! It is meant for container healthchecks, which are about one container, so unlike the other
//! commands it does not fail over between endpoints through `Client`: it asks only `--endpoint`
//! (its own `RAFTKV_HEALTH_ENDPOINT`, not `RAFTKV_ENDPOINTS`), once, never retries, and
//! `--timeout` bounds the whole check, connecting included.

use clap::Args;

use super::emit_line;
use crate::cli::client::{CliError, Client};
use crate::cli::exit;

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The node to check, host:port.
    #[arg(long, env = "RAFTKV_HEALTH_ENDPOINT", default_value = "127.0.0.1:7001")]
    pub endpoint: String,

    /// Give up after this long.
    #[arg(long, default_value = "2s", value_parser = crate::text::parse_duration)]
    pub timeout: std::time::Duration,

    #[command(flatten)]
    pub tls: crate::cli::TlsOpts,

    /// The health service needs no token; one given (e.g. in RAFTKV_TOKEN) is sent all the same.
    #[command(flatten)]
    pub token: crate::cli::TokenOpts,
}

pub async fn health(args: HealthArgs) -> Result<(), CliError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let unavailable = |what: String| CliError::new(exit::UNAVAILABLE, what);
    let tls = args.tls.load()?;
    let token = args.token.load()?;
    let check = async {
        let channel = Client::connect_with(&args.endpoint, tls.as_ref()).await?;
        HealthClient::with_interceptor(channel, token)
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
        Ok(ServingStatus::Serving) => emit_line("SERVING"),
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
