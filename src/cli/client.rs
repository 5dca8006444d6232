//! A client that tries each endpoint in turn, and keeps trying with backoff until its deadline,
//! so a command works as long as any node can serve it.
//!
//! Only failures that mean "this node cannot serve now" (UNAVAILABLE, a deadline, a refused
//! connection) move on to the next endpoint; a definite answer such as NOT_FOUND or
//! INVALID_ARGUMENT is returned at once. Retrying writes is safe here because Put and Delete are
//! idempotent.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{exit, ClientOpts};

/// A failed client command: the exit code and a one-line message.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Maps a server's answer to the exit codes of [`exit`].
    pub fn from_status(status: &Status) -> Self {
        let code = match status.code() {
            Code::NotFound => exit::NOT_FOUND,
            Code::InvalidArgument | Code::OutOfRange => exit::USAGE,
            _ => exit::UNAVAILABLE,
        };
        Self::new(code, status.message().to_string())
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

pub struct Client {
    endpoints: Vec<String>,
    timeout: Duration,
}

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

impl Client {
    pub fn new(opts: &ClientOpts) -> Result<Self, CliError> {
        let endpoints: Vec<String> = opts
            .endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(CliError::new(exit::USAGE, "--endpoints is empty"));
        }
        Ok(Self {
            endpoints,
            timeout: opts.timeout,
        })
    }

    pub fn max_message_bytes() -> usize {
        MAX_MESSAGE_BYTES
    }

    pub async fn connect(endpoint: &str) -> Result<Channel, Status> {
        let uri = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        Endpoint::from_shared(uri)
            .map_err(|e| Status::invalid_argument(format!("bad endpoint {endpoint:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("cannot connect to {endpoint}: {e}")))
    }

    /// Runs `call` against the endpoints until one answers definitively or time runs out.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, CliError>
    where
        F: Fn(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(100);
        let mut last_error = None;
        loop {
            for endpoint in &self.endpoints {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                let attempt = async {
                    let channel = Self::connect(endpoint).await?;
                    call(channel, remaining).await
                };
                match tokio::time::timeout(remaining, attempt).await {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(status)) if retryable(&status) => {
                        last_error = Some(format!("{endpoint}: {}", status.message()))
                    }
                    Ok(Err(status)) => return Err(CliError::from_status(&status)),
                    Err(_) => last_error = Some(format!("{endpoint}: no answer in time")),
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let detail = last_error.unwrap_or_else(|| "no attempt finished".into());
                return Err(CliError::new(
                    exit::UNAVAILABLE,
                    format!(
                        "cluster unavailable after {:?}: last error from {detail}",
                        self.timeout
                    ),
                ));
            }
            tokio::time::sleep(backoff.min(remaining)).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// A request bounded by what is left of the command's deadline.
pub fn request<T>(message: T, remaining: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(remaining);
    request
}
