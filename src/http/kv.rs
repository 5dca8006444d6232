//! The `/kv` endpoints: `PUT`, `GET` and `DELETE /kv/{key}` for one key, and `GET /kv?…` for one
//! page of a scan.
//!
//! Each handler turns the HTTP request into the gRPC request message and calls [`Kv`] on the
//! in-process [`KvService`](crate::api::KvService), so validation, forwarding to the leader and
//! error texts are the service's own. A single key travels as raw bytes (the body of a PUT, the
//! body of a GET's answer, with revision and TTL in headers), so any value is binary-safe. A scan
//! page has to be JSON, whose strings are UTF-8, so a value that is not goes out as base64 marked
//! `"encoding": "base64"`; unlike `raftkv scan`, the gateway does not follow pages, the client
//! asks again with `start=<next_start>`. The extractors here make axum's rejections the same
//! one-line [`Failure`] texts as every other error, and reject unknown query parameters.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, OptionalFromRequestParts, Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Failure, Gateway, MAX_BODY_BYTES};
use crate::proto::v1 as pb;
use crate::proto::v1::kv_server::Kv;
use crate::replica::idempotency;
use crate::text::{parse_duration, values};

const REVISION_HEADER: HeaderName = HeaderName::from_static("x-raftkv-revision");
const TTL_HEADER: HeaderName = HeaderName::from_static("x-raftkv-ttl-ms");

/// `GET`, `PUT` and `DELETE` on one key, for [`super::router`] to mount on `/kv/{*key}` and
/// on `/kv/`.
pub(super) fn key_routes() -> MethodRouter<Gateway> {
    get(get_key).put(put_key).delete(delete_key)
}

/// `GET /kv?…`, one page of a scan, for [`super::router`] to mount on `/kv`.
pub(super) fn scan_route() -> MethodRouter<Gateway> {
    get(scan)
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
pub(super) struct Params<T>(pub(super) T);

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
// Handlers
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutParams {
    ttl: Option<String>,
    /// Attach the key to this lease (see `raftkv lease grant`).
    lease: Option<u64>,
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

/// The service request for `message`, carrying the `Idempotency-Key` header (the IETF httpapi
/// draft's name) as the gRPC `idempotency-key` metadata.
fn keyed<T>(message: T, headers: &HeaderMap) -> Result<tonic::Request<T>, Failure> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = headers.get(idempotency::METADATA_KEY) {
        let key = value
            .to_str()
            .map_err(|_| Failure::bad_request("Idempotency-Key must be printable ASCII"))?;
        idempotency::check_key(key)?;
        idempotency::attach(&mut request, key)?;
    }
    Ok(request)
}

/// A failed write's answer: a reused idempotency key is 422 (the httpapi draft's choice), any
/// other failure as for every call.
fn write_failure(status: tonic::Status) -> Failure {
    if status.code() == tonic::Code::FailedPrecondition && status.message() == idempotency::REUSED {
        Failure::new(StatusCode::UNPROCESSABLE_ENTITY, status.message())
    } else {
        status.into()
    }
}

/// `PUT /kv/{key}[?ttl=30s][&lease=ID]`: the raw body is the value.
async fn put_key(
    State(gateway): State<Gateway>,
    Key(key): Key,
    Params(params): Params<PutParams>,
    headers: HeaderMap,
    value: Result<Bytes, BytesRejection>,
) -> Result<Json<PutReply>, Failure> {
    let request = pb::PutRequest {
        lease: params.lease.unwrap_or(0),
        key,
        value: body(value)?.to_vec(),
        ttl_ms: ttl_ms(params.ttl.as_deref())?,
    };
    let reply = Kv::put(&*gateway.kv, keyed(request, &headers)?)
        .await
        .map_err(write_failure)?;
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
    headers: HeaderMap,
) -> Result<Json<DeleteReply>, Failure> {
    let request = pb::DeleteRequest { key };
    let reply = Kv::delete(&*gateway.kv, keyed(request, &headers)?)
        .await
        .map_err(write_failure)?
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
