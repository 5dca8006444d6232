//! HTTP gateway for curl users: `PUT/GET/DELETE /kv/{key}`, `GET /kv?prefix=&limit=`,
//! `GET /watch?prefix=` (changes as Server-Sent Events), `GET /metrics` (Prometheus text) and
//! `GET /health`, on its own port.
//!
//! Handlers call the same [`KvService`] the gRPC server uses, in process, so validation,
//! forwarding to the leader and error messages are identical on both front doors: an error's
//! body is exactly the gRPC status message, and its HTTP status follows from the gRPC code
//! (see [`http_status`]).
//!
//! Keys may contain `/` (`PUT /kv/config/db/host` writes the key `config/db/host`) and are
//! percent-decoded, so any UTF-8 key can be addressed.
//!
//! With the node's certificate (`--cert-file`/`--key-file`) the gateway speaks only HTTPS
//! (`tls.rs`), and with `--auth-token-file` `/kv…`, `/watch` and `/metrics` need a bearer token
//! (`auth.rs`); `/health` stays open for load balancers.
//!
//! Layout: this module holds the [`Gateway`] state, the server and its route table, and
//! [`Failure`], the one error answer every handler returns; the handlers live in `kv.rs`
//! (`/kv`), `watch.rs` (`/watch`), `metrics.rs` (`/metrics`) and `health.rs` (`/health`).

mod auth;
mod health;
mod kv;
mod metrics;
mod tls;
mod watch;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tonic::Code;

use crate::api::auth::Tokens;
use crate::api::KvService;
use crate::raft::Raft;
use health::health;
use metrics::metrics;

/// What the gateway's handlers share.
#[derive(Clone)]
pub struct Gateway {
    pub kv: Arc<KvService>,
    pub raft: Raft,
    /// The bearer tokens `/kv…`, `/watch` and `/metrics` require ([`Tokens::none`]: open).
    pub tokens: Tokens,
}

/// Largest request body accepted. The value limit (`--max-value-bytes`, 1 MiB by default) is
/// not visible from here, so this matches the floor of the gRPC message limit
/// ([`crate::api::Limits::grpc_message_limit`]): any value up to the configured limit gets
/// through, and one just over it still reaches the service and gets its clear 400 message
/// rather than axum's default 2 MiB cut-off.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Serves the gateway on `listener` until `shutdown` resolves: HTTPS only with `tls` (see
/// [`crate::transport::http_tls`]), plain HTTP without.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    if let Some(tls) = tls {
        return tls::serve(listener, router(gateway), tls, shutdown).await;
    }
    // Small replies must not wait for a delayed ACK (Nagle), as on the gRPC port.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, router(gateway))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The gateway's routes. `/kv/` is routed explicitly so an empty key reaches the service and
/// gets the service's own "key cannot be empty" instead of a bare 404. Every route but
/// `/health` is behind the bearer-token check, which runs before the body is read.
pub fn router(gateway: Gateway) -> Router {
    let guarded = Router::new()
        .route("/kv", kv::scan_route())
        .route("/kv/", kv::key_routes())
        .route("/kv/{*key}", kv::key_routes())
        .route("/watch", watch::route())
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            gateway.tokens.clone(),
            auth::require_bearer,
        ));
    Router::new()
        .merge(guarded)
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(gateway)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An error answer: an HTTP status and a one-line plain-text message (for service errors, the
/// gRPC status message verbatim, so scripts can match the same text on both APIs).
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        // A multi-line body would break line-oriented clients; messages are one line by design,
        // this only guards against one that is not.
        let message = message.into().replace(['\r', '\n'], " ");
        Self { status, message }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Self::new(http_status(status.code()), status.message())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, self.message).into_response()
    }
}

/// The HTTP status for a gRPC code: the caller's fault is 4xx, "try again" is 503 (so load
/// balancers and retrying clients treat it as transient), anything else is the server's fault.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
        Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn not_found(request: Request) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} {}; try /kv/<key>, /kv?prefix=, /watch?prefix=, /metrics or \
             /health",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> Failure {
    Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} is not allowed on {}; /kv/<key> takes GET, PUT and DELETE, the others GET",
            request.method(),
            request.uri().path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_http_statuses() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_status(Code::DeadlineExceeded),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(http_status(Code::FailedPrecondition), StatusCode::CONFLICT);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(
            http_status(Code::Internal),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            http_status(Code::Unknown),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn failures_are_one_line_with_the_grpc_message() {
        let failure = Failure::from(tonic::Status::not_found("key not found: a\nb"));
        assert_eq!(failure.status, StatusCode::NOT_FOUND);
        assert_eq!(failure.message, "key not found: a b");
    }
}
