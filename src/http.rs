//! HTTP gateway for curl users: `PUT/GET/DELETE /kv/{key}`, `GET /kv?prefix=&limit=`,
//! `GET /metrics` (Prometheus text) and `GET /health`, on its own port.
//!
//! Handlers call the same [`KvService`] the gRPC server uses, in process, so validation,
//! forwarding to the leader and error messages are identical on both front doors.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::KvService;
use crate::types::Raft;

/// What the gateway's handlers share.
#[derive(Clone)]
pub struct Gateway {
    pub kv: Arc<KvService>,
    pub raft: Raft,
}

/// Serves the gateway on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().with_state(gateway);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
