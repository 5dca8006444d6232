//! The systems a bench can drive, behind one small interface: a connection that can put, get,
//! batch and scan, and reports failures by gRPC code name.

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;

use super::{BenchArgs, TargetKind};
use crate::cli::client::{self, CliError};
use crate::cli::exit;
use crate::proto::v1::cluster_client::ClusterClient;
use crate::proto::v1::kv_client::KvClient;
use crate::proto::v1::{
    batch_op, BatchOp, BatchRequest, Consistency, GetRequest, PutRequest, ScanRequest,
    StatusRequest,
};
use crate::transport::{self, ConnectError};

/// One shared connection; clones share its HTTP/2 channel.
#[derive(Clone)]
pub enum Connection {
    Raftkv(KvClient<client::Connection>),
    #[cfg(feature = "etcd")]
    Etcd(etcd_client::KvClient),
}

fn unavailable(message: String) -> CliError {
    CliError::new(exit::UNAVAILABLE, message)
}

fn code(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

fn consistency(stale: bool) -> i32 {
    if stale {
        Consistency::Stale as i32
    } else {
        Consistency::Linearizable as i32
    }
}

pub(super) async fn raftkv_channel(
    args: &BenchArgs,
    endpoint: &str,
) -> Result<client::Connection, CliError> {
    let tls = args.tls.load()?;
    let token = args.token.load()?;
    let channel = transport::connect(endpoint, Duration::from_secs(2), tls.as_ref())
        .await
        .map_err(|e| match e {
            ConnectError::Invalid(message) => CliError::new(exit::USAGE, message),
            ConnectError::Unreachable(message) => unavailable(message),
        })?;
    Ok(InterceptedService::new(channel, token))
}

/// The endpoints to load: as given, or only the leader's with `--leader-only`.
pub async fn resolve_endpoints(args: &BenchArgs) -> Result<Vec<String>, CliError> {
    let endpoints: Vec<String> = args
        .endpoints
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if !args.leader_only || args.target != TargetKind::Raftkv {
        return Ok(endpoints);
    }
    for endpoint in &endpoints {
        let Ok(channel) = raftkv_channel(args, endpoint).await else {
            continue;
        };
        if let Ok(status) = ClusterClient::new(channel).status(StatusRequest {}).await {
            let status = status.into_inner();
            // A leader's client address is empty for a moment after a new cluster starts.
            if status.leader_id != 0 && !status.leader_address.is_empty() {
                return Ok(vec![status.leader_address]);
            }
        }
    }
    Err(unavailable(
        "--leader-only: no endpoint knows a leader".into(),
    ))
}

/// Opens `--connections` connections spread round-robin over the endpoints.
pub async fn connect(args: &BenchArgs, endpoints: &[String]) -> Result<Vec<Connection>, CliError> {
    let mut connections = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let endpoint = &endpoints[i % endpoints.len()];
        let connection =
            match args.target {
                TargetKind::Raftkv => Connection::Raftkv(
                    KvClient::new(raftkv_channel(args, endpoint).await?)
                        .max_decoding_message_size(256 << 20)
                        .max_encoding_message_size(256 << 20),
                ),
                #[cfg(feature = "etcd")]
                TargetKind::Etcd => {
                    let client = etcd_client::Client::connect([endpoint.as_str()], None)
                        .await
                        .map_err(|e| {
                            unavailable(format!("cannot connect to etcd at {endpoint}: {e}"))
                        })?;
                    Connection::Etcd(client.kv_client())
                }
                #[cfg(not(feature = "etcd"))]
                TargetKind::Etcd => return Err(CliError::new(
                    exit::USAGE,
                    "this raftkv was built without etcd support; rebuild with `--features etcd`",
                )),
            };
        connections.push(connection);
    }
    Ok(connections)
}

/// Writes every key of the key space once, in batches, so reads find values.
pub async fn prepopulate(
    args: &BenchArgs,
    connection: &Connection,
    value: &[u8],
) -> Result<(), CliError> {
    let mut connection = connection.clone();
    // etcd refuses transactions of more than 128 operations by default (--max-txn-ops).
    let chunk = match args.target {
        TargetKind::Raftkv => 500,
        TargetKind::Etcd => 100,
    };
    let mut next = 0;
    while next < args.keys {
        let end = (next + chunk).min(args.keys);
        let keys: Vec<String> = (next..end).map(|n| args.key(n)).collect();
        connection
            .batch(&keys, value, None)
            .await
            .map_err(|code| unavailable(format!("prepopulating keys failed: {code}")))?;
        next = end;
    }
    Ok(())
}

/// A request carrying an idempotency key when given.
fn keyed<T>(message: T, idempotency: Option<String>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = idempotency {
        // The bench's own keys are ASCII: attaching cannot fail.
        let _ = crate::replica::idempotency::attach(&mut request, &key);
    }
    request
}

impl Connection {
    /// One write; `idempotency` is the key it carries, if any (raftkv only).
    pub async fn put(
        &mut self,
        key: &str,
        value: &[u8],
        idempotency: Option<String>,
    ) -> Result<(), String> {
        match self {
            Connection::Raftkv(kv) => kv
                .put(keyed(
                    PutRequest {
                        lease: 0,
                        key: key.to_string(),
                        value: value.to_vec(),
                        ttl_ms: 0,
                    },
                    idempotency,
                ))
                .await
                .map(drop)
                .map_err(|s| code(&s)),
            #[cfg(feature = "etcd")]
            Connection::Etcd(kv) => kv.put(key, value, None).await.map(drop).map_err(etcd_code),
        }
    }

    pub async fn get(&mut self, key: &str, stale: bool) -> Result<(), String> {
        match self {
            Connection::Raftkv(kv) => kv
                .get(GetRequest {
                    key: key.to_string(),
                    consistency: consistency(stale),
                })
                .await
                .map(drop)
                .map_err(|s| code(&s)),
            #[cfg(feature = "etcd")]
            Connection::Etcd(kv) => {
                let options = stale.then(|| etcd_client::GetOptions::new().with_serializable());
                kv.get(key, options).await.map(drop).map_err(etcd_code)
            }
        }
    }

    /// One atomic write of every key (raftkv: Batch; etcd: a Txn of puts).
    pub async fn batch(
        &mut self,
        keys: &[String],
        value: &[u8],
        idempotency: Option<String>,
    ) -> Result<(), String> {
        match self {
            Connection::Raftkv(kv) => {
                let ops = keys
                    .iter()
                    .map(|key| BatchOp {
                        op: Some(batch_op::Op::Put(PutRequest {
                            lease: 0,
                            key: key.clone(),
                            value: value.to_vec(),
                            ttl_ms: 0,
                        })),
                    })
                    .collect();
                kv.batch(keyed(BatchRequest { ops }, idempotency))
                    .await
                    .map(drop)
                    .map_err(|s| code(&s))
            }
            #[cfg(feature = "etcd")]
            Connection::Etcd(kv) => {
                let ops: Vec<etcd_client::TxnOp> = keys
                    .iter()
                    .map(|key| etcd_client::TxnOp::put(key.as_str(), value, None))
                    .collect();
                kv.txn(etcd_client::Txn::new().and_then(ops))
                    .await
                    .map(drop)
                    .map_err(etcd_code)
            }
        }
    }

    pub async fn scan(&mut self, start: &str, limit: u32, stale: bool) -> Result<(), String> {
        match self {
            Connection::Raftkv(kv) => kv
                .scan(ScanRequest {
                    start: start.to_string(),
                    limit,
                    consistency: consistency(stale),
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(|s| code(&s)),
            #[cfg(feature = "etcd")]
            Connection::Etcd(kv) => {
                let mut options = etcd_client::GetOptions::new()
                    .with_from_key()
                    .with_limit(i64::from(limit));
                if stale {
                    options = options.with_serializable();
                }
                kv.get(start, Some(options))
                    .await
                    .map(drop)
                    .map_err(etcd_code)
            }
        }
    }
}

#[cfg(feature = "etcd")]
fn etcd_code(error: etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => code(&status),
        other => format!("{other}").chars().take(40).collect(),
    }
}
