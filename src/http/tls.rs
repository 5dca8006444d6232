//! HTTPS for the gateway: a TLS accept loop around the same axum router.
//!
//! `axum::serve` takes plain TCP listeners only, so connections are accepted here, put through
//! a rustls handshake ([`crate::transport::http_tls`] builds its config from the node's
//! certificate files) and served by hyper (HTTP/1.1, or HTTP/2 when ALPN picks it). A client
//! that fails its handshake (plain HTTP sent to this port, no client certificate under
//! `--client-cert-auth`, a certificate from another CA) is logged at debug and dropped; a
//! client that never finishes its handshake is dropped after [`HANDSHAKE_TIMEOUT`]. Neither
//! stops the gateway. Every connection is a task of this loop, so none outlives it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the open connections get to finish their requests once the gateway stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then lets the open
/// connections finish (at most [`DRAIN_TIMEOUT`]) and ends them.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        accept_failed(e).await;
                        continue;
                    }
                };
                // Small replies must not wait for a delayed ACK (Nagle), as on the gRPC port.
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!("cannot set TCP_NODELAY: {e}");
                }
                let acceptor = acceptor.clone();
                let service = TowerToHyperService::new(router.clone());
                // Taken before the handshake, so a stop during it still reaches the connection.
                let watcher = graceful.watcher();
                connections.spawn(async move {
                    let stream =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, "HTTPS handshake failed: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "HTTPS handshake not done in time");
                                return;
                            }
                        };
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(connection).await {
                        tracing::debug!(%peer, "HTTPS connection ended: {e}");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("HTTPS connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    connections.shutdown().await;
    Ok(())
}

/// After a failed accept: a connection that went away before it was accepted is nothing; any
/// other failure (out of file descriptors, say) is logged and waited out for a moment, as
/// `axum::serve` does, rather than spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::warn!("HTTPS gateway cannot accept a connection: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
