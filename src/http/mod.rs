//! HTTP gateway for curl users: `PUT/GET/DELETE /kv/{key}`, `GET /kv?prefix=&limit=`,
//! `GET /metrics` (Prometheus text) and `GET /health`, on its own port.
//!
//! Handlers call the same [`KvService`] the gRPC server uses, in process, so validation,
//! forwarding to the leader and error messages are identical on both front doors: an error's
//! body is exactly the gRPC status message, and its HTTP status follows from the gRPC code
//! (see [`http_status`]).
//!
//! Keys may contain `/` (`PUT /kv/config/db/host` writes the key `config/db/host`) and are
//! percent-decoded, so any UTF-8 key can be addressed.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, OptionalFromRequestParts, Path, Query};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use openraft::error::{CheckIsLeaderError, RaftError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tonic::Code;

use crate::api::KvService;
use crate::cli::parse_duration;
use crate::cli::values;
use crate::proto::v1 as pb;
use crate::proto::v1::kv_server::Kv;
use crate::types::Raft;

/// What the gateway's handlers share.
#[derive(Clone)]
pub struct Gateway {
    pub kv: Arc<KvService>,
    pub raft: Raft,
}

/// Largest request body accepted. The value limit (`--max-value-bytes`, 1 MiB by default) is
/// not visible from here, so this matches the floor of the gRPC message limit
/// ([`crate::api::Limits::grpc_message_limit`]): any value up to the configured limit gets
/// through, and one just over it still reaches the service and gets its clear 400 message
/// rather than axum's default 2 MiB cut-off.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How long `/health` waits for this node to apply entries already known to be committed.
/// Under a steady write load the applied index trails the commit index by a few milliseconds;
/// the grace keeps that from reading as unhealthy, while a node that is really behind still is.
const APPLY_GRACE: Duration = Duration::from_secs(1);

const REVISION_HEADER: HeaderName = HeaderName::from_static("x-raftkv-revision");
const TTL_HEADER: HeaderName = HeaderName::from_static("x-raftkv-ttl-ms");
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the gateway on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
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
/// gets the service's own "key cannot be empty" instead of a bare 404.
pub fn router(gateway: Gateway) -> Router {
    let key_routes = || get(get_key).put(put_key).delete(delete_key);
    Router::new()
        .route("/kv", get(scan))
        .route("/kv/", key_routes())
        .route("/kv/{*key}", key_routes())
        .route("/metrics", get(metrics))
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
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        // A multi-line body would break line-oriented clients; messages are one line by design,
        // this only guards against one that is not.
        let message = message.into().replace(['\r', '\n'], " ");
        Self { status, message }
    }

    fn bad_request(message: impl Into<String>) -> Self {
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
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn not_found(request: Request) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} {}; try /kv/<key>, /kv?prefix=, /metrics or /health",
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

// ---------------------------------------------------------------------------------------------
// Extractors whose rejections are one-line texts like every other error
// ---------------------------------------------------------------------------------------------

/// The key in `/kv/{*key}`, percent-decoded; empty for `/kv/`, which the service then rejects.
struct Key(String);

impl<S: Send + Sync> FromRequestParts<S> for Key {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        match <Path<String> as OptionalFromRequestParts<S>>::from_request_parts(parts, state).await
        {
            Ok(key) => Ok(Key(key.map(|Path(key)| key).unwrap_or_default())),
            Err(rejection) => Err(Failure::new(rejection.status(), rejection.body_text())),
        }
    }
}

/// Query parameters; unknown ones are rejected so a typo (`?tll=30s`) is not silently ignored.
struct Params<T>(T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(params)) => Ok(Params(params)),
            Err(rejection) => Err(Failure::new(rejection.status(), rejection.body_text())),
        }
    }
}

/// The request body, or a one-line reason it could not be read (e.g. over [`MAX_BODY_BYTES`]).
fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Failure> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is over the HTTP gateway's limit of {MAX_BODY_BYTES} bytes"),
        ),
        status => Failure::new(status, rejection.body_text()),
    })
}

/// `?consistency=`: `linearizable` (the default) or `stale`.
fn consistency(param: Option<&str>) -> Result<pb::Consistency, Failure> {
    match param {
        None => Ok(pb::Consistency::Linearizable),
        Some(c) if c.eq_ignore_ascii_case("linearizable") => Ok(pb::Consistency::Linearizable),
        Some(c) if c.eq_ignore_ascii_case("stale") => Ok(pb::Consistency::Stale),
        Some(other) => Err(Failure::bad_request(format!(
            "consistency {other:?} is unknown; use linearizable (the default) or stale"
        ))),
    }
}

/// `?ttl=`: a duration like `500ms`, `30s`, `5m`, `1h` or bare seconds; `0` means no TTL.
fn ttl_ms(param: Option<&str>) -> Result<u64, Failure> {
    let Some(text) = param else { return Ok(0) };
    let ttl = parse_duration(text).map_err(|e| Failure::bad_request(format!("ttl: {e}")))?;
    u64::try_from(ttl.as_millis())
        .map_err(|_| Failure::bad_request(format!("ttl: {text:?} is too long")))
}

// ---------------------------------------------------------------------------------------------
// /kv
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutParams {
    ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    consistency: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

#[derive(Serialize)]
struct PutReply {
    revision: u64,
}

#[derive(Serialize)]
struct DeleteReply {
    deleted: bool,
    revision: u64,
}

/// `PUT /kv/{key}[?ttl=30s]`: the raw body is the value.
async fn put_key(
    State(gateway): State<Gateway>,
    Key(key): Key,
    Params(params): Params<PutParams>,
    value: Result<Bytes, BytesRejection>,
) -> Result<Json<PutReply>, Failure> {
    let request = pb::PutRequest {
        key,
        value: body(value)?.to_vec(),
        ttl_ms: ttl_ms(params.ttl.as_deref())?,
    };
    let reply = Kv::put(&*gateway.kv, tonic::Request::new(request)).await?;
    Ok(Json(PutReply {
        revision: reply.into_inner().revision,
    }))
}

/// `GET /kv/{key}[?consistency=stale]`: the raw value, with its revision and remaining TTL in
/// headers (binary-safe: nothing about the value is interpreted).
async fn get_key(
    State(gateway): State<Gateway>,
    Key(key): Key,
    Params(params): Params<ReadParams>,
) -> Result<Response, Failure> {
    let request = pb::GetRequest {
        key,
        consistency: consistency(params.consistency.as_deref())? as i32,
    };
    let reply = Kv::get(&*gateway.kv, tonic::Request::new(request))
        .await?
        .into_inner();
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(REVISION_HEADER, HeaderValue::from(reply.revision));
    if reply.ttl_ms > 0 {
        headers.insert(TTL_HEADER, HeaderValue::from(reply.ttl_ms));
    }
    Ok((headers, reply.value).into_response())
}

/// `DELETE /kv/{key}`: deleting a missing key succeeds with `"deleted": false`.
async fn delete_key(
    State(gateway): State<Gateway>,
    Key(key): Key,
    Params(_): Params<NoParams>,
) -> Result<Json<DeleteReply>, Failure> {
    let request = pb::DeleteRequest { key };
    let reply = Kv::delete(&*gateway.kv, tonic::Request::new(request))
        .await?
        .into_inner();
    Ok(Json(DeleteReply {
        deleted: reply.deleted,
        revision: reply.revision,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanParams {
    prefix: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<u32>,
    keys_only: Option<bool>,
    consistency: Option<String>,
}

#[derive(Serialize)]
struct ScanReply {
    kvs: Vec<KeyValueJson>,
    /// More keys remain: ask again with `start=<next_start>` (same prefix or end).
    more: bool,
    next_start: String,
}

/// One key of a scan page. JSON strings must be UTF-8, so a value that is not is sent as
/// base64 and marked `"encoding": "base64"`; without that field the value is the text itself.
#[derive(Serialize, Debug, PartialEq)]
struct KeyValueJson {
    key: String,
    /// Absent with `keys_only=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    revision: u64,
    /// Milliseconds left before the key expires; 0 when it has no TTL.
    ttl_ms: u64,
}

impl KeyValueJson {
    fn new(kv: pb::KeyValue, keys_only: bool) -> Self {
        let (value, encoding) = if keys_only {
            (None, None)
        } else {
            match String::from_utf8(kv.value) {
                Ok(text) => (Some(text), None),
                Err(e) => (Some(values::base64(e.as_bytes())), Some("base64")),
            }
        };
        Self {
            key: kv.key,
            value,
            encoding,
            revision: kv.revision,
            ttl_ms: kv.ttl_ms,
        }
    }
}

/// `GET /kv?prefix=P&limit=N` (or `start`/`end`), also `keys_only=true`, `consistency=stale`.
async fn scan(
    State(gateway): State<Gateway>,
    Params(params): Params<ScanParams>,
) -> Result<Json<ScanReply>, Failure> {
    let keys_only = params.keys_only.unwrap_or(false);
    let request = pb::ScanRequest {
        start: params.start.unwrap_or_default(),
        end: params.end.unwrap_or_default(),
        prefix: params.prefix.unwrap_or_default(),
        limit: params.limit.unwrap_or(0),
        keys_only,
        consistency: consistency(params.consistency.as_deref())? as i32,
    };
    let reply = Kv::scan(&*gateway.kv, tonic::Request::new(request))
        .await?
        .into_inner();
    Ok(Json(ScanReply {
        kvs: reply
            .kvs
            .into_iter()
            .map(|kv| KeyValueJson::new(kv, keys_only))
            .collect(),
        more: reply.more,
        next_start: reply.next_start,
    }))
}

// ---------------------------------------------------------------------------------------------
// /metrics and /health
// ---------------------------------------------------------------------------------------------

/// `GET /metrics`: this node's counters and Raft state in the Prometheus text format.
async fn metrics(State(gateway): State<Gateway>) -> Result<Response, Failure> {
    // The gRPC Metrics call, in process: it also fills in the commit index.
    let snapshot = Kv::metrics(&*gateway.kv, tonic::Request::new(pb::MetricsRequest {}))
        .await?
        .into_inner();
    let headers = [(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT))];
    Ok((headers, prometheus_text(&snapshot)).into_response())
}

/// Builds the Prometheus text exposition: each family's `# HELP` and `# TYPE`, then samples.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP raftkv_{name} {help}");
        let _ = writeln!(self.0, "# TYPE raftkv_{name} {kind}");
        self
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) -> &mut Self {
        let _ = write!(self.0, "raftkv_{name}");
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(label, value)| format!("{label}=\"{value}\""))
                .collect();
            let _ = write!(self.0, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.0, " {value}");
        self
    }

    /// A family with one unlabelled sample.
    fn gauge(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.family(name, "gauge", help).sample(name, &[], value)
    }
}

fn prometheus_text(m: &pb::MetricsResponse) -> String {
    let mut out = Exposition::default();
    out.gauge("node_id", "This node's Raft id.", m.node_id)
        .gauge(
            "keys",
            "Keys stored on this node, expired keys not yet removed included.",
            m.keys,
        )
        .gauge(
            "value_bytes",
            "Bytes of the values stored on this node.",
            m.value_bytes,
        );
    out.family(
        "operations_total",
        "counter",
        "Client requests this node received, by operation (forwarded copies not counted).",
    );
    let ops = [
        ("get", m.get_ops),
        ("put", m.put_ops),
        ("delete", m.delete_ops),
        ("batch", m.batch_ops),
        ("cas", m.cas_ops),
        ("scan", m.scan_ops),
        ("batch_get", m.batch_get_ops),
    ];
    for (op, count) in ops {
        out.sample("operations_total", &[("op", op)], count);
    }
    out.gauge("raft_term", "Current Raft term.", m.term)
        .gauge(
            "raft_leader_id",
            "Id of the leader this node knows of; 0 when none.",
            m.leader_id,
        )
        .gauge(
            "raft_commit_index",
            "Highest log index this node knows to be committed.",
            m.commit_index,
        )
        .gauge(
            "raft_applied_index",
            "Highest log index applied to this node's state machine.",
            m.applied_index,
        )
        .gauge(
            "raft_is_leader",
            "1 when this node is the leader, else 0.",
            u64::from(m.is_leader),
        )
        .family(
            "raft_follower_matched_index",
            "gauge",
            "On the leader: highest log index known to be replicated on each follower.",
        );
    for follower in &m.followers {
        let id = follower.id.to_string();
        out.sample(
            "raft_follower_matched_index",
            &[("follower", &id)],
            follower.matched_index,
        );
    }
    out.0
}

/// `GET /health`: 200 `ok` when this node is a cluster member, sees a leader (confirmed by a
/// quorum, if it is the leader itself) and has applied everything it knows to be committed (so a stale read here is
/// current); 503 with a one-line reason otherwise.
async fn health(State(gateway): State<Gateway>) -> Response {
    match readiness(&gateway.raft).await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(reason) => Failure::new(StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

async fn readiness(raft: &Raft) -> Result<(), String> {
    let (id, leader, is_member) = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        (
            metrics.id,
            metrics.current_leader,
            membership.get_node(&metrics.id).is_some(),
        )
    };
    // A removed node keeps naming its old leader (nothing tells it otherwise), so the leader
    // check alone would call it healthy; same rule as the gRPC health service.
    if !is_member {
        return Err("this node is not a cluster member (removed, or not joined yet)".to_string());
    }
    match leader {
        None => return Err("no leader".to_string()),
        Some(leader) if leader == id => confirm_leadership(raft).await?,
        Some(_) => {}
    }
    let committed = raft
        .with_raft_state(|state| state.committed.map(|id| id.index))
        .await
        .map_err(|e| format!("raft is not running on this node: {e}"))?;
    let Some(committed) = committed else {
        return Ok(());
    };
    let caught_up = raft
        .wait(Some(APPLY_GRACE))
        .applied_index_at_least(Some(committed), "health")
        .await;
    if caught_up.is_ok() {
        return Ok(());
    }
    let applied = raft.metrics().borrow().last_applied.map(|l| l.index);
    Err(format!(
        "applied {} of {committed} committed entries",
        applied.unwrap_or(0)
    ))
}

/// A leader cut off from its peers does not step down by itself (openraft has no check-quorum),
/// so it would keep naming itself leader; one heartbeat round to a quorum tells it apart.
async fn confirm_leadership(raft: &Raft) -> Result<(), String> {
    match tokio::time::timeout(APPLY_GRACE, raft.get_read_log_id()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => Err(format!(
            "this node leads but cannot reach a quorum: only nodes {:?} answered",
            e.got
        )),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
            Err("this node just lost its leadership".to_string())
        }
        Ok(Err(RaftError::Fatal(e))) => Err(format!("raft is not running on this node: {e}")),
        Err(_) => Err(format!(
            "this node leads but no quorum confirmed it within {} ms",
            APPLY_GRACE.as_millis()
        )),
    }
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

    #[test]
    fn consistency_and_ttl_parameters() {
        assert_eq!(consistency(None).ok(), Some(pb::Consistency::Linearizable));
        assert_eq!(
            consistency(Some("stale")).ok(),
            Some(pb::Consistency::Stale)
        );
        assert_eq!(
            consistency(Some("LINEARIZABLE")).ok(),
            Some(pb::Consistency::Linearizable)
        );
        let err = consistency(Some("eventual")).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("\"eventual\""), "{}", err.message);

        assert_eq!(ttl_ms(None).ok(), Some(0));
        assert_eq!(ttl_ms(Some("1500ms")).ok(), Some(1500));
        assert_eq!(ttl_ms(Some("30")).ok(), Some(30_000));
        assert_eq!(ttl_ms(Some("2m")).ok(), Some(120_000));
        let err = ttl_ms(Some("soon")).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.starts_with("ttl: "), "{}", err.message);
    }

    #[test]
    fn scan_values_are_text_or_marked_base64() {
        let kv = |value: &[u8]| pb::KeyValue {
            key: "k".into(),
            value: value.to_vec(),
            revision: 7,
            ttl_ms: 0,
        };
        let text = KeyValueJson::new(kv(b"hello"), false);
        assert_eq!(text.value.as_deref(), Some("hello"));
        assert_eq!(text.encoding, None);
        let binary = KeyValueJson::new(kv(&[0xff, 0x00]), false);
        assert_eq!(binary.value.as_deref(), Some("/wA="));
        assert_eq!(binary.encoding, Some("base64"));
        let json = serde_json::to_string(&binary).unwrap();
        assert_eq!(
            json,
            r#"{"key":"k","value":"/wA=","encoding":"base64","revision":7,"ttl_ms":0}"#
        );
        let keys_only = serde_json::to_string(&KeyValueJson::new(kv(b"x"), true)).unwrap();
        assert_eq!(keys_only, r#"{"key":"k","revision":7,"ttl_ms":0}"#);
    }

    #[test]
    fn metrics_text_has_help_type_and_labelled_samples() {
        let text = prometheus_text(&pb::MetricsResponse {
            node_id: 1,
            keys: 3,
            put_ops: 5,
            commit_index: 9,
            is_leader: true,
            followers: vec![pb::FollowerProgress {
                id: 2,
                matched_index: 8,
            }],
            ..Default::default()
        });
        for line in [
            "# HELP raftkv_keys ",
            "# TYPE raftkv_keys gauge",
            "raftkv_keys 3",
            "# TYPE raftkv_operations_total counter",
            "raftkv_operations_total{op=\"put\"} 5",
            "raftkv_operations_total{op=\"batch_get\"} 0",
            "raftkv_raft_commit_index 9",
            "raftkv_raft_is_leader 1",
            "raftkv_raft_follower_matched_index{follower=\"2\"} 8",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "{line:?} missing in:\n{text}"
            );
        }
        // Every sample belongs to a family announced before it.
        let mut announced = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                announced.push(rest.split(' ').next().unwrap_or_default().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                assert!(announced.iter().any(|a| a == name), "{line}");
            }
        }
    }
}
