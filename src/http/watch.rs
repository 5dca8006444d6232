//! `GET /watch?…`: the changes this node applies, as Server-Sent Events, for browsers'
//! `EventSource` and `curl -N`.
//!
//! The query names what to watch as `raftkv watch` does (`key=K`, `key=K&end=E` for [K, E),
//! `prefix=P`, `all=true`), where to start (`rev=N`; absent or 0: from the next change) and what
//! to add (`prev=true`, `progress=true`). It becomes a `WatchRequest` for the same
//! [`KvService::open_watch`](crate::api::KvService::open_watch) that `KV.Watch` calls, so both
//! APIs check and stream alike, with the same error texts.
//!
//! Each watch response becomes one message whose `id` is its revision: `event: change` with
//! `{"revision", "events": [...]}` (each event as `raftkv watch --json` prints it, see
//! [`crate::text::event_json`]), or with `progress=true`, `event: progress` with
//! `{"revision"}` when nothing changed for a while. A client that reconnects with
//! `Last-Event-ID: N`, as `EventSource` does by itself, goes on from revision N + 1.
//!
//! How a watch ends: a start older than the node's history is answered `410 Gone` before any
//! message, with `{"compact_revision", "reason"}`; later (this node installed a snapshot past
//! the watcher) the same object comes as `event: canceled`. A watcher that fell behind, or a
//! node that is stopping, sends `event: error` with the one-line message gRPC would give, naming
//! the revision to resume from. After either the response ends; so does it when the node stops,
//! which is what lets the gateway's graceful shutdown finish.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Json;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::StreamExt;
use tonic::Status;

use super::kv::Params;
use super::{Failure, Gateway};
use crate::api::watch::{Opened, WatchStream};
use crate::proto::v1 as pb;
use crate::text::event_json;

/// The header `EventSource` sends when it reconnects: the `id` of the last message it received.
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// How often an idle stream sends an SSE comment, so that proxies keep it open and a client
/// that has gone is noticed (and its watcher ended) within that time.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /watch?…`, for [`super::router`] to mount on `/watch`.
pub(super) fn route() -> MethodRouter<Gateway> {
    get(watch)
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct WatchParams {
    key: Option<String>,
    end: Option<String>,
    prefix: Option<String>,
    all: Option<bool>,
    rev: Option<u64>,
    prev: Option<bool>,
    progress: Option<bool>,
}

async fn watch(
    State(gateway): State<Gateway>,
    Params(params): Params<WatchParams>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let request = request(params, resume_from(&headers)?)?;
    Ok(match gateway.kv.open_watch(request)? {
        Opened::Compacted(response) => {
            (StatusCode::GONE, Json(canceled_json(&response))).into_response()
        }
        Opened::Streaming(stream) => Sse::new(messages(stream))
            .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
            .into_response(),
    })
}

/// The revision after the `Last-Event-ID` header's, when the client sent one.
fn resume_from(headers: &HeaderMap) -> Result<Option<u64>, Failure> {
    let Some(value) = headers.get(LAST_EVENT_ID) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("?").trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<u64>()
        .ok()
        .and_then(|id| id.checked_add(1))
        .map(Some)
        .ok_or_else(|| {
            Failure::bad_request(format!(
                "Last-Event-ID {text:?} is not a revision: send the id of the last event received"
            ))
        })
}

/// The `WatchRequest` for a query. Watching several things at once is refused here, where the
/// gRPC request would quietly take one of them; everything else is checked by the service.
///
/// With `Last-Event-ID` the watch goes on after it even when the URL has a `rev`, because
/// `EventSource` reconnects to the URL it was opened with: the later of the two wins.
fn request(params: WatchParams, resume_from: Option<u64>) -> Result<pb::WatchRequest, Failure> {
    let all = params.all.unwrap_or(false);
    let range = params.key.is_some() || params.end.is_some();
    if [range, params.prefix.is_some(), all]
        .into_iter()
        .filter(|named| *named)
        .count()
        > 1
    {
        return Err(Failure::bad_request(
            "watch one of key (with end for a range), prefix or all=true, not several",
        ));
    }
    let start_revision = match (params.rev, resume_from) {
        (rev, Some(next)) => rev.unwrap_or(0).max(next),
        (rev, None) => rev.unwrap_or(0),
    };
    Ok(pb::WatchRequest {
        start: params.key.unwrap_or_default(),
        end: params.end.unwrap_or_default(),
        // `prefix=` is every key, as `raftkv watch --prefix ''`.
        all: all || params.prefix.as_deref() == Some(""),
        prefix: params.prefix.unwrap_or_default(),
        start_revision,
        prev_kv: params.prev.unwrap_or(false),
        progress_notify: params.progress.unwrap_or(false),
        ..Default::default()
    })
}

/// The SSE messages for a watch stream: one per response, ending after a cancel or an error.
fn messages(stream: WatchStream) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    futures_util::stream::unfold(Some(stream), |stream| async move {
        let mut stream = stream?;
        let (message, more) = message(stream.next().await?);
        Some((Ok(message), more.then_some(stream)))
    })
}

/// The SSE message for one item of a watch stream, and whether more may follow.
fn message(item: Result<pb::WatchResponse, Status>) -> (Event, bool) {
    match item {
        Ok(response) if response.canceled => (
            Event::default()
                .event("canceled")
                .data(canceled_json(&response).to_string()),
            false,
        ),
        Ok(response) if response.events.is_empty() => (
            Event::default()
                .event("progress")
                .id(response.revision.to_string())
                .data(json!({ "revision": response.revision }).to_string()),
            true,
        ),
        Ok(response) => (
            Event::default()
                .event("change")
                .id(response.revision.to_string())
                .data(change_json(&response).to_string()),
            true,
        ),
        Err(status) => (
            Event::default()
                .event("error")
                .data(status.message().replace(['\r', '\n'], " ")),
            false,
        ),
    }
}

/// `{"revision": N, "events": [...]}`, each event as `raftkv watch --json` prints it.
fn change_json(response: &pb::WatchResponse) -> Value {
    json!({
        "revision": response.revision,
        "events": response.events.iter().map(event_json).collect::<Vec<_>>(),
    })
}

/// Why a watch cannot go on: `{"compact_revision": N, "reason": "..."}`, N being the oldest
/// revision this node can still watch from.
fn canceled_json(response: &pb::WatchResponse) -> Value {
    json!({
        "compact_revision": response.compact_revision,
        "reason": response.cancel_reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// An `Event` is only readable through the bytes it becomes in a response body.
    async fn text(event: Event) -> String {
        let body = futures_util::stream::iter([Ok::<_, Infallible>(event)]);
        let response = Sse::new(body).into_response();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        String::from_utf8(bytes.to_vec()).expect("UTF-8")
    }

    #[test]
    fn a_query_becomes_one_watch_request() {
        let params = WatchParams {
            key: Some("a".into()),
            end: Some("c".into()),
            rev: Some(7),
            prev: Some(true),
            progress: Some(true),
            ..Default::default()
        };
        let req = request(params, None).expect("valid");
        assert_eq!((req.start.as_str(), req.end.as_str()), ("a", "c"));
        assert_eq!(req.start_revision, 7);
        assert!(req.prev_kv && req.progress_notify && !req.all);

        let every = WatchParams {
            prefix: Some(String::new()),
            ..Default::default()
        };
        assert!(request(every, None).expect("valid").all);

        for several in [
            WatchParams {
                key: Some("a".into()),
                prefix: Some("p".into()),
                ..Default::default()
            },
            WatchParams {
                end: Some("z".into()),
                all: Some(true),
                ..Default::default()
            },
        ] {
            let err = request(several, None).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn last_event_id_resumes_after_it() {
        let mut headers = HeaderMap::new();
        assert_eq!(resume_from(&headers).ok(), Some(None));
        headers.insert(LAST_EVENT_ID, HeaderValue::from_static("41"));
        assert_eq!(resume_from(&headers).ok(), Some(Some(42)));
        let prefix = || WatchParams {
            prefix: Some("p/".into()),
            ..Default::default()
        };
        assert_eq!(request(prefix(), Some(42)).unwrap().start_revision, 42);
        // EventSource reconnects to the URL it was opened with, `rev` included.
        let from = |rev| WatchParams {
            rev: Some(rev),
            ..prefix()
        };
        assert_eq!(request(from(0), Some(42)).unwrap().start_revision, 42);
        assert_eq!(request(from(5), Some(42)).unwrap().start_revision, 42);
        assert_eq!(request(from(50), Some(42)).unwrap().start_revision, 50);
        for bad in ["x", "-1", "18446744073709551615"] {
            headers.insert(LAST_EVENT_ID, HeaderValue::from_static(bad));
            let err = resume_from(&headers).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[tokio::test]
    async fn responses_become_sse_messages() {
        let change = pb::WatchResponse {
            revision: 9,
            events: vec![
                pb::WatchEvent {
                    kind: pb::watch_event::Kind::Put as i32,
                    key: "k".into(),
                    value: vec![0xff],
                    revision: 9,
                    prev: None,
                },
                pb::WatchEvent {
                    kind: pb::watch_event::Kind::Delete as i32,
                    key: "j".into(),
                    revision: 9,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let (event, more) = message(Ok(change));
        assert!(more);
        assert_eq!(
            text(event).await,
            "event: change\nid: 9\ndata: {\"events\":[{\"encoding\":\"base64\",\"key\":\"k\",\
             \"revision\":9,\"type\":\"PUT\",\"value\":\"/w==\"},{\"key\":\"j\",\"revision\":9,\
             \"type\":\"DELETE\"}],\"revision\":9}\n\n"
        );
        let progress = pb::WatchResponse {
            revision: 12,
            ..Default::default()
        };
        let (event, more) = message(Ok(progress));
        assert!(more);
        assert_eq!(
            text(event).await,
            "event: progress\nid: 12\ndata: {\"revision\":12}\n\n"
        );
        let canceled = pb::WatchResponse {
            canceled: true,
            compact_revision: 20,
            cancel_reason: "gone".into(),
            ..Default::default()
        };
        let (event, more) = message(Ok(canceled));
        assert!(!more);
        assert_eq!(
            text(event).await,
            "event: canceled\ndata: {\"compact_revision\":20,\"reason\":\"gone\"}\n\n"
        );
        let (event, more) = message(Err(Status::unavailable("stopping\nnow")));
        assert!(!more);
        assert_eq!(text(event).await, "event: error\ndata: stopping now\n\n");
    }
}
