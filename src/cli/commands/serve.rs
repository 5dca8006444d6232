//! `raftkv serve`: runs a node (see [`crate::server`]) until SIGINT or SIGTERM.

use crate::cli::client::CliError;
use crate::cli::exit;
use crate::server::config::ServeArgs;
use crate::server::shutdown;

pub async fn serve(args: ServeArgs) -> Result<(), CliError> {
    crate::server::serve(args, shutdown::signal())
        .await
        .map_err(|e| CliError::new(exit::UNAVAILABLE, format!("{e:#}")))
}
