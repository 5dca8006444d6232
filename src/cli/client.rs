//! A client that tries each endpoint in turn, and keeps trying with backoff until its deadline,
//! so a command works as long as any node can serve it.
//!
//! Only failures that mean "this node cannot serve now" (UNAVAILABLE, a deadline, a refused
//! connection) move on to the next endpoint; a definite answer such as NOT_FOUND or
//! INVALID_ARGUMENT is returned at once. Retrying a write is safe because every attempt of one
//! command carries the same idempotency key ([`idempotency_key`], [`write_request`]): the
//! cluster applies it once and answers every retry with the first attempt's outcome, so a
//! retried Put cannot land after another client's newer write and a compare-and-swap can be
//! retried after an ambiguous failure. Membership changes converge on a target membership.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Code, Status};

use super::token::SendToken;
use super::{exit, ClientOpts};
use crate::transport::{self, ConnectError};

/// A failed client command: the exit code and a one-line message (empty for an exit that has
/// already said why, such as `raftkv lock` passing on its COMMAND's exit code).
#[derive(Debug, Clone)]
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

    /// Exit with `code` and print nothing more: the command has reported the outcome itself.
    pub fn quiet(code: u8) -> Self {
        Self::new(code, String::new())
    }

    /// Prints the error now, as `main` would at the exit (`error: …` on stderr), and returns
    /// its quiet form: for a command that still has cleaning up to do before it exits, during
    /// which the reason must already be visible.
    pub fn report_now(self) -> Self {
        if !self.message.is_empty() {
            eprintln!("error: {}", self.message);
        }
        Self::quiet(self.code)
    }

    /// Maps a server's answer to the exit codes of [`exit`]. FAILED_PRECONDITION (a membership
    /// change the current membership does not allow, e.g. promoting a node that is not a
    /// learner) is the caller's mistake like INVALID_ARGUMENT: repeating it will not help.
    /// So is UNAUTHENTICATED (a node started with --auth-token-file refused the bearer token),
    /// whose message also says how this CLI sends one.
    pub fn from_status(status: &Status) -> Self {
        let code = match status.code() {
            Code::NotFound => exit::NOT_FOUND,
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => exit::USAGE,
            Code::Unauthenticated | Code::PermissionDenied => exit::USAGE,
            _ => exit::UNAVAILABLE,
        };
        if status.code() == Code::Unauthenticated {
            return Self::new(
                code,
                format!(
                    "not authenticated: {}; raftkv sends a token with --token-file PATH \
                     (or --token, RAFTKV_TOKEN_FILE, RAFTKV_TOKEN)",
                    status.message()
                ),
            );
        }
        if status.message().is_empty() {
            // Some answers carry no message (UNIMPLEMENTED from a node that predates a
            // service, for one): name the code, so the error line is never blank.
            return Self::new(
                code,
                format!(
                    "the server answered {:?}: {}",
                    status.code(),
                    status.code().description()
                ),
            );
        }
        Self::new(code, status.message().to_string())
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A connection to one node that sends the command's bearer token (if any) on every call.
pub type Connection = InterceptedService<Channel, SendToken>;

pub struct Client {
    endpoints: Vec<String>,
    timeout: Duration,
    tls: Option<ClientTlsConfig>,
    token: SendToken,
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
            tls: opts.tls.load()?,
            token: opts.token.load()?,
        })
    }

    /// The endpoints, in the order they are tried.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub fn max_message_bytes() -> usize {
        MAX_MESSAGE_BYTES
    }

    /// A connection to `endpoint` with this client's TLS and bearer token.
    pub async fn connect(&self, endpoint: &str) -> Result<Connection, Status> {
        let channel = Self::connect_with(endpoint, self.tls.as_ref()).await?;
        Ok(InterceptedService::new(channel, self.token.clone()))
    }

    /// A channel to `endpoint`, with `tls` when given.
    pub async fn connect_with(
        endpoint: &str,
        tls: Option<&ClientTlsConfig>,
    ) -> Result<Channel, Status> {
        transport::connect(endpoint, CONNECT_TIMEOUT, tls)
            .await
            .map_err(|e| match e {
                ConnectError::Invalid(message) => Status::invalid_argument(message),
                ConnectError::Unreachable(message) => Status::unavailable(message),
            })
    }

    /// Runs `call` against the endpoints until one answers definitively or time runs out.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, CliError>
    where
        F: Fn(Connection, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_answered(call).await.map(|(_, value)| value)
    }

    /// Like [`Client::call`], and also says which endpoint answered (commands that show one
    /// node's view, such as metrics and status, name the node they asked).
    pub async fn call_answered<T, F, Fut>(&self, call: F) -> Result<(String, T), CliError>
    where
        F: Fn(Connection, Duration) -> Fut,
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
                // A node that accepts connections but never answers (paused, cut off) must not
                // use up the whole deadline before the healthy endpoints behind it are tried.
                let budget = remaining.min(self.attempt_budget());
                let attempt = async {
                    let channel = self.connect(endpoint).await?;
                    call(channel, budget).await
                };
                match tokio::time::timeout(budget, attempt).await {
                    Ok(Ok(value)) => return Ok((endpoint.clone(), value)),
                    Ok(Err(status)) if retryable(&status) => {
                        last_error = Some(format!("{endpoint}: {}", status.message()))
                    }
                    Ok(Err(status)) => return Err(CliError::from_status(&status)),
                    Err(_) => last_error = Some(format!("{endpoint}: no answer in time")),
                }
            }
            backoff = self.pause(deadline, backoff, &last_error).await?;
        }
    }

    /// Longest single attempt: a third of the timeout, but never under 2 s, which covers a write
    /// that waits out a leader election (1-2 s by default).
    fn attempt_budget(&self) -> Duration {
        (self.timeout / 3).max(Duration::from_secs(2))
    }

    /// Sleeps before the next round over the endpoints, or gives up at the deadline; returns
    /// the next backoff.
    async fn pause(
        &self,
        deadline: Instant,
        backoff: Duration,
        last_error: &Option<String>,
    ) -> Result<Duration, CliError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            let detail = last_error
                .clone()
                .unwrap_or_else(|| "no attempt finished".into());
            return Err(CliError::new(
                exit::UNAVAILABLE,
                format!(
                    "cluster unavailable after {:?}: last error from {detail}",
                    self.timeout
                ),
            ));
        }
        tokio::time::sleep(backoff.min(remaining)).await;
        Ok((backoff * 2).min(Duration::from_secs(1)))
    }
}

/// A request bounded by what is left of the command's deadline.
pub fn request<T>(message: T, remaining: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(remaining);
    request
}

/// A fresh idempotency key for one command (`cli-` and 32 random hex digits): every attempt of
/// that command sends it.
pub fn idempotency_key() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // No /dev/urandom: time and process id still make a collision within one window
        // implausible.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes[..12].copy_from_slice(&nanos.to_le_bytes()[..12]);
        bytes[12..].copy_from_slice(&std::process::id().to_le_bytes());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("cli-{hex}")
}

/// A write request bounded by the deadline and carrying the command's idempotency key.
pub fn write_request<T>(message: T, remaining: Duration, key: &str) -> tonic::Request<T> {
    let mut request = request(message, remaining);
    // The CLI's own keys are ASCII hex: attaching cannot fail.
    let _ = crate::replica::idempotency::attach(&mut request, key);
    request
}
