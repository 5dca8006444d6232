//! A leader killed with SIGKILL and restarted at once, over and over, under concurrent writes.
//!
//! A leader acknowledges its own new entries to openraft before they are on its disk and sends
//! them to the followers meanwhile, so a kill can take from the leader's log entries that the
//! followers hold. The `log-flush-before=sleep(..)` failpoint holds every flush back long enough
//! that each kill lands in that window. If the restarted node resumed leadership of its old term
//! (what openraft 0.9 does for a committed vote for itself), its new entries would reuse log ids
//! that the followers hold for other entries, and followers keep an entry whose log id matches:
//! replicas diverge and acknowledged writes go missing (DESIGN.md, invariant 1).
//!
//! The check is on the outcome: once every node has applied the same log, every node's whole map
//! (read locally, STALE) is the same, and holds every write that was acknowledged.
//!
//! Needs the failpoints compiled in: `cargo test --features failpoints --test crash_restart`.

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bounded_within, TestCluster};
use raftkv::proto::v1::kv_client::KvClient;
use raftkv::proto::v1::{Consistency, PutRequest, StatusResponse};
use tonic::transport::{Channel, Endpoint};

/// Concurrent writers, each putting keys of its own, through the three nodes in turn.
const WRITERS: usize = 24;
/// Kill-and-restart rounds, each aimed at the leader of the moment.
const ROUNDS: u64 = 8;
/// Every node's log flush waits this long, so every kill lands while the leader has entries
/// that it sent but has not flushed.
const FAILPOINTS: &str = "log-flush-before=sleep(150)";
/// How long the cluster runs under its next leader before the next kill.
const SETTLE: Duration = Duration::from_millis(1_500);
/// The whole test, cluster start and final checks included.
const TEST_BOUND: Duration = Duration::from_secs(150);

/// What one writer got acknowledged, and how many of its writes failed (ambiguous: not checked).
struct WriterReport {
    acked: Vec<(String, Vec<u8>)>,
    failed: u64,
}

/// Puts `w<writer>-<seq>` keys until `stop`, one at a time, each through the next node in
/// turn. A write counts as acknowledged only when the put returns Ok; after an error it moves
/// on to the next key without retrying, since the failed write may or may not have applied.
async fn writer(
    id: usize,
    nodes: Vec<KvClient<Channel>>,
    stop: Arc<AtomicBool>,
    acked_total: Arc<AtomicU64>,
) -> WriterReport {
    let mut report = WriterReport {
        acked: Vec::new(),
        failed: 0,
    };
    let mut seq = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("w{id:02}-{seq:06}");
        let value = format!("value of {key}").into_bytes();
        let mut client = nodes[(id + seq) % nodes.len()].clone();
        let request = PutRequest {
            lease: 0,
            key: key.clone(),
            value: value.clone(),
            ttl_ms: 0,
        };
        match client.put(request).await {
            Ok(_) => {
                report.acked.push((key, value));
                acked_total.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                report.failed += 1;
                // Without a leader every node refuses at once: do not spin on it.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        seq += 1;
    }
    report
}

/// A lazily connected client: it reconnects by itself once a killed node is back.
fn lazy_client(address: &str) -> KvClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .expect("loopback endpoint")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    KvClient::new(channel)
}

/// One kill-and-restart round, as observed.
struct Round {
    leader: u64,
    /// The term the killed node led in, from its Status just before the kill.
    term_at_kill: Option<u64>,
    restart_delay_ms: u64,
    /// The term of the first leader all nodes agree on after the restart.
    term_after: Option<u64>,
}

async fn statuses(cluster: &TestCluster) -> Vec<Result<StatusResponse, tonic::Status>> {
    let mut all = Vec::new();
    for id in 1..=3 {
        all.push(cluster.status(id).await);
    }
    all
}

/// Waits (bounded) until all three nodes report the same last applied index, twice in a row
/// with nothing new applied in between; returns it, or a description of where they stood.
async fn wait_same_applied(cluster: &TestCluster, within: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + within;
    let mut previous = None;
    loop {
        let all = statuses(cluster).await;
        let applied: Vec<Option<u64>> = all
            .iter()
            .map(|s| s.as_ref().ok().map(|s| s.last_applied_index))
            .collect();
        let agreed = match applied.as_slice() {
            [Some(a), Some(b), Some(c)] if a == b && b == c => Some(*a),
            _ => None,
        };
        if agreed.is_some() && agreed == previous {
            return Ok(agreed.unwrap_or_default());
        }
        previous = agreed;
        if Instant::now() >= deadline {
            let described: Vec<String> = all
                .iter()
                .map(|s| match s {
                    Ok(s) => format!(
                        "node {}: role {} term {} leader {} last_log {} commit {} applied {}",
                        s.id,
                        s.role,
                        s.term,
                        s.leader_id,
                        s.last_log_index,
                        s.commit_index,
                        s.last_applied_index
                    ),
                    Err(e) => format!("no status: {e}"),
                })
                .collect();
            return Err(format!(
                "nodes did not reach the same last_applied_index within {within:?}:\n  {}",
                described.join("\n  ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

type Map = BTreeMap<String, (Vec<u8>, u64)>;

/// How `other`'s map differs from `base`'s, with the first few keys of each kind.
fn differences(base_id: u64, base: &Map, other_id: u64, other: &Map) -> Option<String> {
    let only_base: Vec<&String> = base.keys().filter(|k| !other.contains_key(*k)).collect();
    let only_other: Vec<&String> = other.keys().filter(|k| !base.contains_key(*k)).collect();
    let changed: Vec<String> = base
        .iter()
        .filter_map(|(k, (value, revision))| {
            let (other_value, other_revision) = other.get(k)?;
            (other_value != value || other_revision != revision).then(|| {
                format!(
                    "{k} (node {base_id}: {:?} at revision {revision}; node {other_id}: {:?} at revision {other_revision})",
                    String::from_utf8_lossy(value),
                    String::from_utf8_lossy(other_value)
                )
            })
        })
        .collect();
    if only_base.is_empty() && only_other.is_empty() && changed.is_empty() {
        return None;
    }
    let first = |keys: &[&String]| {
        keys.iter()
            .take(8)
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "node {base_id} ({} keys) and node {other_id} ({} keys) differ: {} keys only on node {base_id} \
         [{}], {} only on node {other_id} [{}], {} with another value or revision [{}]",
        base.len(),
        other.len(),
        only_base.len(),
        first(&only_base),
        only_other.len(),
        first(&only_other),
        changed.len(),
        changed.iter().take(4).cloned().collect::<Vec<_>>().join("; "),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_and_restarted_at_once_leaves_identical_maps_with_every_acked_write() {
    bounded_within(TEST_BOUND, async {
        let started = Instant::now();
        let mut cluster =
            TestCluster::start_with_env(3, &[], &[("RAFTKV_FAILPOINTS", FAILPOINTS)]).await;
        let clients: Vec<KvClient<Channel>> = (1..=3)
            .map(|id| lazy_client(&cluster.node(id).address))
            .collect();

        let stop = Arc::new(AtomicBool::new(false));
        let acked_total = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..WRITERS)
            .map(|id| {
                tokio::spawn(writer(
                    id,
                    clients.clone(),
                    stop.clone(),
                    acked_total.clone(),
                ))
            })
            .collect();

        let mut rounds = Vec::new();
        for round in 0..ROUNDS {
            // Kill only while writes are flowing, so the leader has unflushed entries in flight.
            let acked_before = acked_total.load(Ordering::Relaxed);
            let flowing = Instant::now() + Duration::from_secs(20);
            while acked_total.load(Ordering::Relaxed) < acked_before + 20 {
                assert!(
                    Instant::now() < flowing,
                    "round {round}: writes do not resume ({} acknowledged so far)",
                    acked_total.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
            let term_at_kill = cluster.status(leader).await.ok().map(|s| s.term);
            let restart_delay_ms = (round * 17) % 51;
            let killed_at = Instant::now();
            cluster.kill(leader);
            tokio::time::sleep(Duration::from_millis(restart_delay_ms)).await;
            cluster.start_node(leader);
            let next = cluster.wait_for_leader(Duration::from_secs(20)).await;
            let term_after = cluster.status(next).await.ok().map(|s| s.term);
            eprintln!(
                "round {round} at {:.1} s: killed leader {leader} (term {term_at_kill:?}), \
                 restarted after {restart_delay_ms} ms; node {next} leads in term {term_after:?} \
                 {:.1} s after the kill; {} writes acknowledged",
                killed_at.duration_since(started).as_secs_f64(),
                killed_at.elapsed().as_secs_f64(),
                acked_total.load(Ordering::Relaxed)
            );
            tokio::time::sleep(SETTLE).await;
            rounds.push(Round {
                leader,
                term_at_kill,
                restart_delay_ms,
                term_after,
            });
        }

        stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        let mut failed = 0;
        for handle in writers {
            let report = tokio::time::timeout(Duration::from_secs(15), handle)
                .await
                .expect("a writer stops within its write timeout")
                .expect("writer task");
            acked.extend(report.acked);
            failed += report.failed;
        }

        let mut problems = Vec::new();
        let applied = match wait_same_applied(&cluster, Duration::from_secs(30)).await {
            Ok(applied) => Some(applied),
            Err(stuck) => {
                problems.push(stuck);
                None
            }
        };

        let mut maps = BTreeMap::new();
        for id in 1..=3u64 {
            let map = cluster
                .scan_all(id, Consistency::Stale)
                .await
                .unwrap_or_else(|e| panic!("stale scan of node {id}: {e}"));
            maps.insert(id, map);
        }

        // (a) Every replica holds the same map.
        for other in [2u64, 3] {
            if let Some(diff) = differences(1, &maps[&1], other, &maps[&other]) {
                problems.push(diff);
            }
        }

        // (b) Every acknowledged write is on every node, with its value.
        for (id, map) in &maps {
            let missing: Vec<&str> = acked
                .iter()
                .filter(|(key, value)| map.get(key).map(|(v, _)| v) != Some(value))
                .map(|(key, _)| key.as_str())
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "node {id} lacks {} of {} acknowledged writes (or holds another value), first: [{}]",
                    missing.len(),
                    acked.len(),
                    missing.iter().take(8).copied().collect::<Vec<_>>().join(", ")
                ));
            }
        }

        // Diagnosis: a restarted leader must not lead its old term again.
        let resumed: Vec<String> = rounds
            .iter()
            .filter(|r| match (r.term_at_kill, r.term_after) {
                (Some(before), Some(after)) => after <= before,
                _ => false,
            })
            .map(|r| {
                format!(
                    "node {} led term {:?}, restarted after {} ms, next leader's term {:?}",
                    r.leader, r.term_at_kill, r.restart_delay_ms, r.term_after
                )
            })
            .collect();
        if !resumed.is_empty() {
            problems.push(format!(
                "{} of {ROUNDS} rounds ended in the term the killed leader led (restored in its \
                 old term): {}",
                resumed.len(),
                resumed.join("; ")
            ));
        }
        let campaigned: usize = (1..=3)
            .map(|id| {
                std::fs::read_to_string(&cluster.node(id).log)
                    .unwrap_or_default()
                    .matches("it will campaign in a new term")
                    .count()
            })
            .sum();

        eprintln!(
            "{ROUNDS} rounds, {WRITERS} writers, failpoints {FAILPOINTS:?}: {} writes acknowledged, \
             {failed} failed; applied index {applied:?}; map sizes {:?}; {campaigned} restarts gave \
             up a leadership; {:.1} s",
            acked.len(),
            maps.values().map(BTreeMap::len).collect::<Vec<_>>(),
            started.elapsed().as_secs_f64()
        );
        assert!(
            !acked.is_empty(),
            "no write was acknowledged: the test proves nothing"
        );
        assert!(
            problems.is_empty(),
            "replicas diverged after {ROUNDS} leader kill-and-restart rounds:\n{}",
            problems.join("\n")
        );
    })
    .await
}
