//! The `raftkv.v1.KV` service.
//!
//! Writes become a [`Proposal`] stamped with this (leader) node's clock and are answered once
//! committed and applied. Linearizable reads confirm leadership with `ensure_linearizable` and
//! then read the local map; stale reads read the local map directly. A follower forwards writes
//! and linearizable reads to the leader, so every node accepts every request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::limits::Limits;
use crate::op::{Op, OpCounters};
use crate::proto::raft_v1::KvMethod;
use crate::proto::v1 as pb;
use crate::proto::v1::kv_server::{Kv, KvServer};
use crate::raft::Raft;
use crate::replica::errors::{leader_label, timed_out, Redirect};
use crate::replica::forward::{is_forwarded, Forwarder};
use crate::replica::idempotency::{self, Tag};
use crate::replica::leadership::{leader_replaced, leader_replaced_status};
use crate::replica::proposer::Proposer;
use crate::replica::read_index::ReadIndex;
use crate::storage::log_store::DurableIndex;
use crate::storage::KvReader;
use crate::types::{now_ms, BatchOp, CasAction, Command, CommandResult, Expected, PutOp};
use crate::watch::WatchHub;

pub struct KvService {
    raft: Raft,
    proposer: Proposer,
    read_index: ReadIndex,
    reader: KvReader,
    limits: Limits,
    forwarder: Forwarder,
    timeout: Duration,
    counters: Arc<OpCounters>,
    /// Which of this node's log entries are on its disk, for the commit index it reports.
    durable: DurableIndex,
    /// How keyed writes are remembered (`--idempotency-window`, `--idempotency-max-keys`).
    idempotency: idempotency::Policy,
    /// The applied changes that watchers read.
    watch: Arc<WatchHub>,
    /// How often an idle watch with `progress_notify` hears the current revision.
    watch_progress: Duration,
}

/// The operator's rules for client requests.
#[derive(Debug, Clone, Copy)]
pub struct KvSettings {
    pub limits: Limits,
    /// How long a write or a linearizable read may wait (`--request-timeout-ms`).
    pub timeout: Duration,
    pub idempotency: idempotency::Policy,
    /// How often an idle watch with `progress_notify` hears the current revision.
    pub watch_progress: Duration,
}

impl KvService {
    pub fn new(
        raft: Raft,
        reader: KvReader,
        forwarder: Forwarder,
        counters: Arc<OpCounters>,
        durable: DurableIndex,
        watch: Arc<WatchHub>,
        settings: KvSettings,
    ) -> Self {
        let KvSettings {
            limits,
            timeout,
            idempotency,
            watch_progress,
        } = settings;
        Self {
            proposer: Proposer::start(raft.clone()),
            read_index: ReadIndex::start(raft.clone()),
            raft,
            reader,
            limits,
            forwarder,
            timeout,
            counters,
            durable,
            watch,
            watch_progress,
            idempotency,
        }
    }

    /// Which of this node's log entries are on its disk.
    pub fn durable(&self) -> &DurableIndex {
        &self.durable
    }

    /// Starts a watch of this node's applied changes (see [`super::watch::open`]): `KV.Watch`
    /// and the HTTP gateway's `/watch` both come here, so they check and stream alike.
    pub fn open_watch(&self, req: pb::WatchRequest) -> Result<super::watch::Opened, Status> {
        super::watch::open(&self.watch, req, &self.limits, self.watch_progress)
    }

    /// Wraps a shared service for tonic with message limits that admit any valid request.
    pub fn server(service: Arc<Self>) -> KvServer<Self> {
        let message_limit = service.limits.grpc_message_limit();
        KvServer::from_arc(service)
            .max_decoding_message_size(message_limit)
            .max_encoding_message_size(message_limit)
    }

    /// The leader this node knows of, unless it is this node itself.
    fn remote_leader(&self) -> Option<Redirect> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        if leader == metrics.id {
            return None;
        }
        let member = metrics.membership_config.membership().get_node(&leader)?;
        Some(Redirect::Leader {
            id: leader,
            member: member.clone(),
        })
    }

    /// Proposes a command and waits until it is committed and applied.
    async fn propose(&self, command: Command) -> Result<CommandResult, Redirect> {
        match tokio::time::timeout(self.timeout, self.proposer.propose(command)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Redirect::Fail(timed_out(
                "write",
                self.timeout.as_millis() as u64,
            ))),
        }
    }

    /// Waits until this node may serve a linearizable read from its map.
    async fn linearize(&self) -> Result<(), Redirect> {
        match tokio::time::timeout(self.timeout, self.read_index.wait()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Redirect::Fail(timed_out(
                "linearizable read",
                self.timeout.as_millis() as u64,
            ))),
        }
    }

    /// Sends a request this node cannot serve to the leader, unless it was itself forwarded.
    async fn redirect<Req, Resp, Fut>(
        &self,
        redirect: Redirect,
        forwarded: bool,
        req: Req,
        call: impl FnOnce(Forwarder, String, Req) -> Fut,
    ) -> Result<Response<Resp>, Status>
    where
        Fut: Future<Output = Result<Resp, Status>>,
    {
        match redirect {
            Redirect::Fail(status) => Err(status),
            Redirect::Leader { id, member } if forwarded => Err(Status::unavailable(format!(
                "this node is not the leader ({} is); leadership moved while forwarding, retry",
                leader_label(id, &member)
            ))),
            Redirect::Leader { id, member } => {
                let answer = call(self.forwarder.clone(), member.peer_address.clone(), req);
                tokio::select! {
                    biased;
                    answer = answer => answer
                        .map(Response::new)
                        .map_err(|status| Forwarder::failure(&leader_label(id, &member), status)),
                    () = leader_replaced(&self.raft, id) => {
                        Err(leader_replaced_status(&leader_label(id, &member)))
                    }
                }
            }
        }
    }

    /// The write path shared by every mutating call: forward to the leader, or build the
    /// command with the leader's clock, propose it and shape the response.
    ///
    /// A write with an idempotency `tag` is proposed wrapped with it (see
    /// `replica::idempotency`): a retry is answered with the first attempt's result.
    pub(crate) async fn write<Req, Resp, Fut>(
        &self,
        forwarded: bool,
        tag: Option<Tag>,
        req: Req,
        command: impl FnOnce(Req, u64) -> Command,
        response: impl FnOnce(CommandResult) -> Result<Resp, Status>,
        forward: impl FnOnce(Forwarder, String, Req, Option<String>) -> Fut,
    ) -> Result<Response<Resp>, Status>
    where
        Fut: Future<Output = Result<Resp, Status>>,
    {
        if let Some(redirect) = self.remote_leader() {
            let key = tag.map(|tag| tag.key);
            let forward = move |f, leader, r| forward(f, leader, r, key);
            return self.redirect(redirect, forwarded, req, forward).await;
        }
        let stamp = now_ms();
        let command = self.idempotency.wrap(tag, stamp, command(req, stamp));
        let result = self.propose(command).await.map_err(moved)?;
        crate::failpoints::crash_point("write-answer-before");
        match idempotency::answer(result)? {
            CommandResult::LeaseNotFound { id, .. } => Err(lease_not_found(id)),
            result => response(result).map(Response::new),
        }
    }

    /// The read path shared by every reading call: stale reads are local; linearizable reads
    /// go to the leader, which confirms its leadership before reading its map.
    pub(crate) async fn read<Req, Resp, Fut>(
        &self,
        forwarded: bool,
        req: Req,
        consistency: i32,
        local: impl FnOnce(Req) -> Result<Resp, Status>,
        forward: impl FnOnce(Forwarder, String, Req) -> Fut,
    ) -> Result<Response<Resp>, Status>
    where
        Fut: Future<Output = Result<Resp, Status>>,
    {
        let stale = match pb::Consistency::try_from(consistency) {
            Ok(pb::Consistency::Stale) => true,
            Ok(pb::Consistency::Linearizable) => false,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "consistency {consistency} is unknown; use LINEARIZABLE (0) or STALE (1)"
                )))
            }
        };
        if !stale {
            if let Some(redirect) = self.remote_leader() {
                return self.redirect(redirect, forwarded, req, forward).await;
            }
            if let Err(redirect) = self.linearize().await {
                return self.redirect(redirect, forwarded, req, forward).await;
            }
        }
        local(req).map(Response::new)
    }

    /// Counts a client's request; a forwarded copy was counted where the client sent it.
    fn count(&self, forwarded: bool, op: Op) {
        if !forwarded {
            self.counters.count(op);
        }
    }

    fn put_op(&self, req: pb::PutRequest, stamp_ms: u64) -> PutOp {
        PutOp {
            key: req.key,
            value: req.value,
            expires_at_ms: expiry(stamp_ms, req.ttl_ms),
        }
    }

    /// This node's counters and Raft state, for the Metrics call (and so the HTTP `/metrics`).
    async fn metrics_report(&self) -> Result<pb::MetricsResponse, Status> {
        let commit_index = crate::replica::commit_index(&self.raft, &self.durable).await?;
        let (keys, value_bytes) = self.reader.stats();
        let table = self.reader.idempotency_stats();
        let metrics = self.raft.metrics().borrow().clone();
        let is_leader = metrics.current_leader == Some(metrics.id);
        let followers = metrics
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != metrics.id)
            .map(|(id, matched)| pb::FollowerProgress {
                id: *id,
                matched_index: matched.map(|m| m.index).unwrap_or(0),
            })
            .collect();
        let mut response = pb::MetricsResponse {
            node_id: metrics.id,
            keys,
            value_bytes,
            term: metrics.current_term,
            leader_id: metrics.current_leader.unwrap_or(0),
            commit_index,
            applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            is_leader,
            followers,
            idempotency_keys: table.keys,
            idempotency_hits: table.hits,
            idempotency_conflicts: table.conflicts,
            idempotency_evictions: table.evictions,
            leases: self.reader.lease_count(),
            ..Default::default()
        };
        self.counters.fill(&mut response);
        Ok(response)
    }
}

/// The answer to a command that named a lease that does not exist.
pub fn lease_not_found(id: u64) -> Status {
    Status::not_found(format!("lease {id} not found (expired or revoked)"))
}

/// Absolute expiry for a TTL given at `stamp_ms`; `None` for no TTL.
fn expiry(stamp_ms: u64, ttl_ms: u64) -> Option<u64> {
    (ttl_ms > 0).then(|| stamp_ms.saturating_add(ttl_ms))
}

/// A proposal this node took as leader but could not commit: the request has been consumed, so
/// rather than forward it the client is told to retry (it will reach the new leader).
fn moved(redirect: Redirect) -> Status {
    match redirect {
        Redirect::Fail(status) => status,
        Redirect::Leader { id, member } => Status::unavailable(format!(
            "leadership moved to {} while proposing; retry",
            leader_label(id, &member)
        )),
    }
}

pub(crate) fn unexpected(result: &CommandResult) -> Status {
    Status::internal(format!("unexpected apply result {result:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    type WatchStream = super::watch::WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.open_watch(request.into_inner())
            .map(|opened| Response::new(opened.into_stream()))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let key = idempotency::key_of(request.metadata())?;
        let req = request.into_inner();
        let tag = idempotency::tag(key, "Put", &req);
        self.limits.check_key(&req.key)?;
        self.limits.check_value(&req.value)?;
        self.count(forwarded, Op::Put);
        self.write(
            forwarded,
            tag,
            req,
            |req, stamp| match req.lease {
                0 => Command::Put(self.put_op(req, stamp)),
                lease => Command::LeasedPut {
                    op: self.put_op(req, stamp),
                    lease,
                },
            },
            |result| {
                Ok(pb::PutResponse {
                    revision: result.revision(),
                })
            },
            |f, leader, r, key| async move { f.call(&leader, KvMethod::Put, &r, key).await },
        )
        .await
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        self.limits.check_key(&req.key)?;
        self.count(forwarded, Op::Get);
        let consistency = req.consistency;
        self.read(
            forwarded,
            req,
            consistency,
            |req| match self.reader.get(&req.key) {
                (Some(stored), now) => Ok(pb::GetResponse {
                    ttl_ms: stored.ttl_left_ms(now),
                    value: stored.value,
                    revision: stored.revision,
                }),
                (None, _) => Err(Status::not_found(format!("key not found: {}", req.key))),
            },
            |f, leader, r| async move { f.call(&leader, KvMethod::Get, &r, None).await },
        )
        .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let key = idempotency::key_of(request.metadata())?;
        let req = request.into_inner();
        let tag = idempotency::tag(key, "Delete", &req);
        self.limits.check_key(&req.key)?;
        self.count(forwarded, Op::Delete);
        self.write(
            forwarded,
            tag,
            req,
            |req, _| Command::Delete { key: req.key },
            |result| match result {
                CommandResult::Write { revision, existed } => Ok(pb::DeleteResponse {
                    deleted: existed,
                    revision,
                }),
                other => Err(unexpected(&other)),
            },
            |f, leader, r, key| async move { f.call(&leader, KvMethod::Delete, &r, key).await },
        )
        .await
    }

    async fn batch_get(
        &self,
        request: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        self.limits.check_batch_len("keys", req.keys.len())?;
        for (i, key) in req.keys.iter().enumerate() {
            self.limits
                .check_key(key)
                .map_err(|e| in_item("keys", i, e))?;
        }
        self.count(forwarded, Op::BatchGet);
        let consistency = req.consistency;
        self.read(
            forwarded,
            req,
            consistency,
            |req| {
                let (values, now) = self.reader.get_many(&req.keys);
                let results = req
                    .keys
                    .into_iter()
                    .zip(values)
                    .map(|(key, value)| match value {
                        Some(stored) => pb::KeyResult {
                            key,
                            found: true,
                            ttl_ms: stored.ttl_left_ms(now),
                            value: stored.value,
                            revision: stored.revision,
                        },
                        None => pb::KeyResult {
                            key,
                            ..Default::default()
                        },
                    })
                    .collect();
                Ok(pb::BatchGetResponse { results })
            },
            |f, leader, r| async move { f.call_alone(&leader, KvMethod::BatchGet, &r).await },
        )
        .await
    }

    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let key = idempotency::key_of(request.metadata())?;
        let req = request.into_inner();
        let tag = idempotency::tag(key, "Batch", &req);
        if req.ops.is_empty() {
            return Err(Status::invalid_argument("batch has no ops"));
        }
        self.limits.check_batch_len("ops", req.ops.len())?;
        for (i, op) in req.ops.iter().enumerate() {
            match &op.op {
                Some(pb::batch_op::Op::Put(put)) => {
                    self.limits
                        .check_key(&put.key)
                        .map_err(|e| in_item("ops", i, e))?;
                    self.limits
                        .check_value(&put.value)
                        .map_err(|e| in_item("ops", i, e))?;
                }
                Some(pb::batch_op::Op::Delete(delete)) => {
                    self.limits
                        .check_key(&delete.key)
                        .map_err(|e| in_item("ops", i, e))?;
                }
                None => {
                    return Err(Status::invalid_argument(format!(
                        "ops[{i}]: neither put nor delete is set"
                    )))
                }
            }
        }
        self.count(forwarded, Op::Batch);
        self.write(
            forwarded,
            tag,
            req,
            |req, stamp| {
                let ops = req
                    .ops
                    .into_iter()
                    .filter_map(|op| op.op)
                    .map(|op| match op {
                        pb::batch_op::Op::Put(put) => match put.lease {
                            0 => BatchOp::Put(self.put_op(put, stamp)),
                            lease => BatchOp::LeasedPut {
                                op: self.put_op(put, stamp),
                                lease,
                            },
                        },
                        pb::batch_op::Op::Delete(delete) => BatchOp::Delete { key: delete.key },
                    })
                    .collect();
                Command::Batch(ops)
            },
            |result| match result {
                CommandResult::Batch { revision, existed } => {
                    Ok(pb::BatchResponse { revision, existed })
                }
                other => Err(unexpected(&other)),
            },
            |f, leader, r, key| async move { f.call(&leader, KvMethod::Batch, &r, key).await },
        )
        .await
    }

    async fn compare_and_swap(
        &self,
        request: Request<pb::CompareAndSwapRequest>,
    ) -> Result<Response<pb::CompareAndSwapResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let key = idempotency::key_of(request.metadata())?;
        let req = request.into_inner();
        let tag = idempotency::tag(key, "CompareAndSwap", &req);
        self.limits.check_key(&req.key)?;
        self.limits.check_value(&req.value)?;
        if req.expected.is_none() {
            return Err(Status::invalid_argument(
                "expected_revision or expected_value is required",
            ));
        }
        if req.delete && (!req.value.is_empty() || req.ttl_ms > 0 || req.lease > 0) {
            return Err(Status::invalid_argument(
                "delete cannot be combined with value, ttl_ms or lease",
            ));
        }
        self.count(forwarded, Op::Cas);
        self.write(
            forwarded,
            tag,
            req,
            |req, stamp| Command::CompareAndSwap {
                key: req.key,
                expected: match req.expected {
                    Some(pb::compare_and_swap_request::Expected::ExpectedValue(v)) => {
                        Expected::Value(v)
                    }
                    Some(pb::compare_and_swap_request::Expected::ExpectedRevision(r)) => {
                        Expected::Revision(r)
                    }
                    None => Expected::Revision(0),
                },
                action: match (req.delete, req.lease) {
                    (true, _) => CasAction::Delete,
                    (false, 0) => CasAction::Put {
                        value: req.value,
                        expires_at_ms: expiry(stamp, req.ttl_ms),
                    },
                    (false, lease) => CasAction::LeasedPut {
                        value: req.value,
                        expires_at_ms: expiry(stamp, req.ttl_ms),
                        lease,
                    },
                },
            },
            |result| match result {
                CommandResult::CompareAndSwap {
                    revision,
                    succeeded,
                    current,
                } => Ok(pb::CompareAndSwapResponse {
                    succeeded,
                    revision,
                    found: current.is_some(),
                    current_revision: current.as_ref().map(|c| c.revision).unwrap_or(0),
                    current_value: current.map(|c| c.value).unwrap_or_default(),
                }),
                other => Err(unexpected(&other)),
            },
            |f, leader, r, key| async move { f.call(&leader, KvMethod::CompareAndSwap, &r, key).await },
        )
        .await
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let limit = self.limits.scan_limit(req.limit)?;
        self.count(forwarded, Op::Scan);
        let consistency = req.consistency;
        self.read(
            forwarded,
            req,
            consistency,
            |req| {
                let (start, end) = scan_bounds(&req);
                let (page, now) = self.reader.scan(&start, end.as_deref(), limit);
                let kvs = page
                    .items
                    .into_iter()
                    .map(|(key, stored)| pb::KeyValue {
                        key,
                        ttl_ms: stored.ttl_left_ms(now),
                        revision: stored.revision,
                        value: if req.keys_only {
                            Vec::new()
                        } else {
                            stored.value
                        },
                    })
                    .collect();
                Ok(pb::ScanResponse {
                    kvs,
                    more: page.next_start.is_some(),
                    next_start: page.next_start.unwrap_or_default(),
                })
            },
            |f, leader, r| async move { f.call_alone(&leader, KvMethod::Scan, &r).await },
        )
        .await
    }

    async fn metrics(
        &self,
        _: Request<pb::MetricsRequest>,
    ) -> Result<Response<pb::MetricsResponse>, Status> {
        self.metrics_report().await.map(Response::new)
    }
}

/// Prefixes a validation error with the position of the offending item.
fn in_item(field: &str, index: usize, status: Status) -> Status {
    Status::invalid_argument(format!("{field}[{index}]: {}", status.message()))
}

/// The `[start, end)` a scan covers: a prefix bounds both ends, and `start` (the next page)
/// may only move the lower bound up.
pub fn scan_bounds(req: &pb::ScanRequest) -> (String, Option<String>) {
    if req.prefix.is_empty() {
        let end = (!req.end.is_empty()).then(|| req.end.clone());
        return (req.start.clone(), end);
    }
    let start = req.start.clone().max(req.prefix.clone());
    (start, prefix_end(&req.prefix))
}

/// The smallest string greater than every string that starts with `prefix`; `None` when there
/// is none (the prefix is all `char::MAX`).
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        if (0xD800..0xE000).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_first_string_past_the_prefix() {
        assert_eq!(prefix_end("user:").as_deref(), Some("user;"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
    }

    #[test]
    fn scan_bounds_honour_prefix_and_next_page() {
        let req = |start: &str, end: &str, prefix: &str| pb::ScanRequest {
            start: start.into(),
            end: end.into(),
            prefix: prefix.into(),
            ..Default::default()
        };
        assert_eq!(
            scan_bounds(&req("a", "c", "")),
            ("a".into(), Some("c".into()))
        );
        assert_eq!(scan_bounds(&req("a", "", "")), ("a".into(), None));
        assert_eq!(
            scan_bounds(&req("", "", "p")),
            ("p".into(), Some("q".into()))
        );
        assert_eq!(
            scan_bounds(&req("p5", "", "p")),
            ("p5".into(), Some("q".into()))
        );
        assert_eq!(
            scan_bounds(&req("a", "", "p")),
            ("p".into(), Some("q".into()))
        );
    }
}
