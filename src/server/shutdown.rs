//! How a node is told to stop: the process's SIGINT or SIGTERM, passed on to every front door
//! through one [`StopSignal`].

use std::future::Future;

use tokio::sync::watch;

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate => {},
    }
    tracing::info!("stop signal received");
}

/// One stop signal, given once, that any number of tasks wait for.
pub struct StopSignal(watch::Sender<bool>);

impl StopSignal {
    pub fn new() -> Self {
        Self(watch::channel(false).0)
    }

    pub fn give(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once the signal is given (at once if it already was).
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.0.subscribe();
        async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        }
    }
}

impl Default for StopSignal {
    fn default() -> Self {
        Self::new()
    }
}
