//! What a node's security flags give beyond the gRPC TLS of [`ServeArgs::tls`]: the bearer
//! tokens of `--auth-token-file` and the HTTPS settings of the HTTP gateway. Both are read at
//! start, so a wrong file stops the node with a one-line message naming its flag.

use std::sync::Arc;

use super::config::ServeArgs;
use crate::api::auth::Tokens;
use crate::transport;

/// The tokens the client services and the gateway require: [`Tokens::none`] without
/// `--auth-token-file`. Warns when they would travel in clear (no `--cert-file`).
pub fn tokens(args: &ServeArgs) -> Result<Tokens, String> {
    let tokens = Tokens::from_flag(args.auth_token_file.as_deref())?;
    if tokens.required() && args.cert_file.is_none() {
        tracing::warn!(
            "--auth-token-file without --cert-file: bearer tokens travel in clear text; \
             serve TLS too"
        );
    }
    Ok(tokens)
}

/// The gateway's TLS when the node has a certificate (`--cert-file`, `--key-file`): the same
/// certificate as the gRPC port and, with `--client-cert-auth`, client certificates required
/// from `--trusted-ca-file`. `None` without a certificate: the gateway then speaks plain HTTP.
pub fn http_tls(args: &ServeArgs) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) else {
        return Ok(None);
    };
    let client_ca = match (args.client_cert_auth, &args.trusted_ca_file) {
        (false, _) => None,
        (true, Some(ca)) => Some(ca.as_path()),
        (true, None) => return Err("--client-cert-auth needs --trusted-ca-file".into()),
    };
    transport::http_tls(cert, key, client_ca).map(Some)
}
