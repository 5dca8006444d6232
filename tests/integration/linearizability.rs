//! Jepsen-style test: concurrent clients do put / get / compare-and-swap / delete on a few keys
//! through every node while a nemesis kills, pauses and partitions nodes; afterwards every
//! key's history must be linearizable (tests/integration/linearizability/checker.rs) and every replica must
//! hold the same map.
//!
//! Each node listens on its own loopback address (127.0.0.2-4) and, since `--listen` names it,
//! connects to its peers from it (`network::source_ip`), so iptables can cut two nodes apart.
//! Without root or iptables the partitions are skipped (said so on stderr), the rest still runs.
//!
//! `RAFTKV_LIN_SEED=<n>` repeats a run's choices (printed at the start and on failure; timing
//! still differs), `RAFTKV_LIN_SECS=<n>` sets the workload's length (default 60 s).

mod checker;
mod client;
use crate::common;
mod history;
mod nemesis;
mod partition;
mod rng;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use checker::{Op, Verdict};
use client::{Client, Keys, KEY_PREFIX};
use common::{ClusterOptions, TestCluster};
use history::Recorder;
use partition::Firewall;
use raftkv::proto::v1::{Consistency, ScanRequest};
use rng::Rng;

const CLIENTS: usize = 5;
/// Keys in play at a time.
const KEY_SLOTS: usize = 4;
/// Operations after which a key is replaced by a fresh one (bounds each history checked).
const OPS_PER_KEY: u64 = 250;
const DEFAULT_SECS: u64 = 60;
/// Configurations the checker may explore per key before calling the check inconclusive.
const CHECK_BUDGET: usize = 1_000_000;

/// Prints the seed again if the test fails, wherever it panics.
struct SeedOnPanic(u64);

impl Drop for SeedOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "linearizability FAILED with seed {0}: repeat with RAFTKV_LIN_SEED={0}",
                self.0
            );
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_under_faults_is_linearizable() {
    let secs = env_u64("RAFTKV_LIN_SECS").unwrap_or(DEFAULT_SECS);
    run_bounded(secs, false).await;
}

/// The same with TLS on every client port and mutual TLS between the nodes: TLS must not change
/// what is acknowledged or seen (a shorter run, as the faults and checks are the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_under_faults_is_linearizable_with_tls() {
    let secs = env_u64("RAFTKV_LIN_SECS").unwrap_or(DEFAULT_SECS) / 2;
    run_bounded(secs, true).await;
}

/// The runs share the loopback addresses 127.0.0.2-4 and this process's firewall chain, so
/// they take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_bounded(secs: u64, tls: bool) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let seed = env_u64("RAFTKV_LIN_SEED").unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map(|d| d.as_nanos() as u64).unwrap_or(0) ^ u64::from(std::process::id())
    });
    let _seed = SeedOnPanic(seed);
    eprintln!(
        "linearizability: seed {seed} (RAFTKV_LIN_SEED={seed} repeats it), {secs} s, tls {tls}"
    );
    let bound = Duration::from_secs(secs + 90);
    tokio::time::timeout(bound, run(seed, Duration::from_secs(secs), tls))
        .await
        .unwrap_or_else(|_| panic!("the test exceeded its bound of {bound:?}"));
}

async fn run(seed: u64, workload: Duration, tls: bool) {
    let started = Instant::now();
    let firewall = match Firewall::install() {
        Ok(firewall) => Some(firewall),
        Err(e) => {
            eprintln!("PARTITION FAULTS SKIPPED: iptables is not usable here ({e})");
            None
        }
    };
    let options = ClusterOptions {
        own_ips: true,
        election_timeout_ms: 500,
        tls,
        ..ClusterOptions::default()
    };
    let cluster = TestCluster::start_with(3, &["--request-timeout-ms", "1500"], options).await;
    if let Some(firewall) = &firewall {
        partitions_cut_peer_traffic(&cluster, firewall).await;
    }

    let recorder = Arc::new(Recorder::new());
    let keys = Arc::new(Keys::new(KEY_SLOTS, OPS_PER_KEY));
    let values = Arc::new(AtomicU64::new(1));
    let addresses: Vec<(u64, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id, n.address.clone()))
        .collect();
    let client_tls = cluster.client_tls().cloned();
    let new_client = |id: usize| Client {
        id,
        nodes: client::connect(&addresses, client_tls.as_ref()),
        rng: Rng::derived(seed, id as u64 + 1),
        recorder: recorder.clone(),
        keys: keys.clone(),
        values: values.clone(),
        seen: HashMap::new(),
        writes: 0,
    };
    let until = Instant::now() + workload;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(new_client(id).run(until)))
        .collect();
    let mut nemesis =
        nemesis::Nemesis::new(cluster, Rng::derived(seed, 0), firewall, recorder.started());
    let faults = nemesis.run(until).await;
    let mut ops = 0;
    for client in clients {
        ops += client.await.expect("client task");
    }
    nemesis.check_alive();

    // Every key's final value, read linearizably once everything is healed.
    let mut reader = new_client(CLIENTS);
    for key in keys.all() {
        assert!(
            reader.final_read(&key, Duration::from_secs(20)).await,
            "no linearizable read of {key} succeeded within 20 s after healing"
        );
    }
    let applied = replicas_agree(&nemesis.cluster).await;

    let counts = recorder.counts();
    eprintln!(
        "workload: {ops} ops by {CLIENTS} clients in {workload:?} ({} ok, {} failed, {} ambiguous \
         writes, {} dropped reads); faults {faults:?}; replicas agree at applied index {applied}",
        counts.ok, counts.failed, counts.ambiguous_writes, counts.dropped_reads
    );
    let retried = counts.retries_resolved + counts.retries_unresolved;
    eprintln!(
        "retries with the idempotency key: {retried} writes retried, {} resolved to a definite \
         answer, {} still ambiguous",
        counts.retries_resolved, counts.retries_unresolved
    );
    for (message, n) in recorder.error_summary() {
        eprintln!("  {n:>5} × {message}");
    }
    let checked = Instant::now();
    let histories = recorder.by_key();
    let mut failures = Vec::new();
    for (key, history) in &histories {
        match checker::check(history, CHECK_BUDGET) {
            Verdict::Linearizable => {}
            verdict => failures.push(report(key, history, &verdict)),
        }
    }
    let longest = histories.values().map(Vec::len).max().unwrap_or(0);
    eprintln!(
        "checked {} keys (longest history {longest} ops) in {:?}; whole test {:?}",
        histories.len(),
        checked.elapsed(),
        started.elapsed()
    );
    if !failures.is_empty() {
        eprintln!("{}", nemesis.log.join("\n"));
        for failure in &failures {
            eprintln!("{failure}");
        }
        panic!(
            "{} of {} keys have a history that is not linearizable (seed {seed}; {} writes \
             retried with their idempotency key resolved to a definite answer)",
            failures.len(),
            histories.len(),
            counts.retries_resolved
        );
    }
    assert!(
        counts.ok > 100,
        "too few successful operations to mean anything"
    );
    // The nemesis's faults last at most 4 s and a write is retried for 7.5 s: most retried
    // writes must end with a definite answer, or the retries (and their keys) do not work.
    assert!(
        retried < 10 || counts.retries_resolved * 2 >= retried,
        "only {} of {retried} writes retried with their idempotency key got a definite answer",
        counts.retries_resolved
    );
}

/// Before the workload: a leader cut off from both followers by the firewall must be replaced.
/// This holds only if each node's peer connections leave from its own address.
async fn partitions_cut_peer_traffic(cluster: &TestCluster, firewall: &Firewall) {
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    for other in cluster.others(leader) {
        firewall
            .cut(cluster.node(leader).ip(), cluster.node(other).ip())
            .expect("cut");
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let replaced = loop {
        let mut named = Vec::new();
        for other in cluster.others(leader) {
            let status = tokio::time::timeout(Duration::from_secs(1), cluster.status(other));
            if let Ok(Ok(status)) = status.await {
                named.push(status.leader_id);
            }
        }
        if named.len() == 2 && named[0] == named[1] && ![0, leader].contains(&named[0]) {
            break Some(named[0]);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    firewall.heal().expect("heal");
    let replaced = replaced.unwrap_or_else(|| {
        panic!("cutting leader {leader} off from its peers by address elected no new leader")
    });
    eprintln!("partition preflight: leader {leader} cut off by address, node {replaced} elected");
    cluster.wait_for_leader(Duration::from_secs(30)).await;
}

/// Waits (bounded) until every node has applied the same index and holds the same map of the
/// workload's keys (read with STALE scans of each node); returns that index.
async fn replicas_agree(cluster: &TestCluster) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut applied = Vec::new();
        for id in [1, 2, 3] {
            let status = tokio::time::timeout(Duration::from_secs(2), cluster.status(id));
            applied.push(match status.await {
                Ok(Ok(status)) => status.last_applied_index,
                _ => 0,
            });
        }
        if applied[0] == 0 || applied.iter().any(|a| *a != applied[0]) {
            last = format!("applied indexes {applied:?}");
            continue;
        }
        let mut maps = Vec::new();
        for id in [1, 2, 3] {
            maps.push(stale_map(cluster, id).await);
        }
        if maps.iter().all(|m| m.is_some() && *m == maps[0]) {
            return applied[0];
        }
        last = format!("applied {applied:?}; maps differ: {}", differences(&maps));
    }
    panic!("replicas did not converge within 30 s after healing: {last}");
}

type Map = Vec<(String, Vec<u8>, u64)>;

/// Node `id`'s own copy of the workload's keys (key, value, revision), or `None` on an error.
async fn stale_map(cluster: &TestCluster, id: u64) -> Option<Map> {
    let mut kv = cluster.kv(id).await.ok()?;
    let mut map = Vec::new();
    let mut start = String::new();
    loop {
        let request = ScanRequest {
            start: start.clone(),
            prefix: KEY_PREFIX.to_string(),
            limit: 1000,
            consistency: Consistency::Stale as i32,
            ..ScanRequest::default()
        };
        let page = tokio::time::timeout(Duration::from_secs(5), kv.scan(request))
            .await
            .ok()?
            .ok()?
            .into_inner();
        map.extend(
            page.kvs
                .into_iter()
                .map(|kv| (kv.key, kv.value, kv.revision)),
        );
        if !page.more {
            return Some(map);
        }
        start = page.next_start;
    }
}

/// The keys on which the nodes' maps differ, for the failure message.
fn differences(maps: &[Option<Map>]) -> String {
    let mut keys: HashMap<&str, Vec<(usize, String)>> = HashMap::new();
    for (node, map) in maps.iter().enumerate() {
        for (key, value, revision) in map.iter().flatten() {
            let entry = format!("{}@{revision}", String::from_utf8_lossy(value));
            keys.entry(key).or_default().push((node + 1, entry));
        }
    }
    let mut differing: Vec<String> = keys
        .into_iter()
        .filter(|(_, seen)| seen.len() != maps.len() || seen.iter().any(|s| s.1 != seen[0].1))
        .map(|(key, seen)| {
            let seen: Vec<String> = seen.iter().map(|(n, v)| format!("n{n}={v}")).collect();
            format!("{key}: {}", seen.join(" "))
        })
        .collect();
    differing.sort();
    let missing = maps.iter().filter(|m| m.is_none()).count();
    format!("{missing} scans failed; {}", differing.join("; "))
}

/// A failed key's report: its whole history, one operation per line, with the operations that
/// could not come next marked.
fn report(key: &str, history: &[Op], verdict: &Verdict) -> String {
    let mut out = format!("\n===== key {key}: {} ops, ", history.len());
    match verdict {
        Verdict::Violation {
            linearized,
            state,
            stuck,
        } => {
            out += &format!(
                "NOT linearizable: at best {} ops linearize, leaving the value {state:?}, and \
                 none of the marked ops can come next\n",
                linearized.len()
            );
            for (i, op) in history.iter().enumerate() {
                let mark = if stuck.contains(&i) {
                    "  <== cannot come next"
                } else if linearized.contains(&i) {
                    ""
                } else {
                    "  (not linearized)"
                };
                out += &format!("{i:>4} {op}{mark}\n");
            }
        }
        Verdict::Inconclusive(explored) => {
            out += &format!("check INCONCLUSIVE after {explored} configurations\n");
            for (i, op) in history.iter().enumerate() {
                out += &format!("{i:>4} {op}\n");
            }
        }
        Verdict::Linearizable => {}
    }
    out
}
