//! The nemesis: one fault after another on the cluster, chosen by a seeded generator, each
//! undone before the next. Kill -9 with an immediate or a delayed restart, SIGSTOP for a while,
//! and (when iptables is usable) partitions: one node cut off from both others, or the leader
//! cut off from one follower.

use std::time::{Duration, Instant};

use super::partition::Firewall;
use super::rng::Rng;
use crate::common::TestCluster;

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillRestart,
    Pause,
    Isolate,
    KillWait,
    CutFromLeader,
}

const CYCLE: [Fault; 5] = [
    Fault::KillRestart,
    Fault::Pause,
    Fault::Isolate,
    Fault::KillWait,
    Fault::CutFromLeader,
];

pub struct Nemesis {
    pub cluster: TestCluster,
    rng: Rng,
    /// `None`: partitions are skipped (see [`Firewall::install`]).
    firewall: Option<Firewall>,
    started: Instant,
    /// What was done when, seconds since `started`; printed with a failure.
    pub log: Vec<String>,
}

impl Nemesis {
    /// `started`: the time the history's clock counts from, so that the log lines up with it.
    pub fn new(
        cluster: TestCluster,
        rng: Rng,
        firewall: Option<Firewall>,
        started: Instant,
    ) -> Self {
        Self {
            cluster,
            rng,
            firewall,
            started,
            log: Vec::new(),
        }
    }

    fn note(&mut self, what: String) {
        let line = format!(
            "{:8.3}s nemesis: {what}",
            self.started.elapsed().as_secs_f64()
        );
        eprintln!("{line}");
        self.log.push(line);
    }

    /// Faults until `until`, then heals everything; returns how many faults of each kind ran.
    pub async fn run(&mut self, until: Instant) -> Vec<(String, usize)> {
        let mut counts = vec![0usize; CYCLE.len()];
        let mut turn = 0;
        let pause = |rng: &mut Rng, low, high| Duration::from_millis(rng.between(low, high));
        loop {
            let quiet = pause(&mut self.rng, 1500, 3000);
            if Instant::now() + quiet >= until {
                break;
            }
            tokio::time::sleep(quiet).await;
            let index = turn % CYCLE.len();
            let fault = CYCLE[index];
            let is_partition = matches!(fault, Fault::Isolate | Fault::CutFromLeader);
            turn += 1;
            if is_partition && self.firewall.is_none() {
                continue;
            }
            self.check_alive();
            let leader = self.leader().await;
            let target = match leader {
                Some(leader) if self.rng.below(2) == 0 => leader,
                _ => *self.rng.pick(&[1, 2, 3]),
            };
            counts[index] += 1;
            match fault {
                Fault::KillRestart => {
                    self.note(format!(
                        "kill -9 node {target} (leader {leader:?}), restart"
                    ));
                    self.cluster.kill(target);
                    self.cluster.start_node(target);
                }
                Fault::KillWait => {
                    let down = pause(&mut self.rng, 1000, 3000);
                    self.note(format!(
                        "kill -9 node {target} (leader {leader:?}), restart in {down:?}"
                    ));
                    self.cluster.kill(target);
                    tokio::time::sleep(down).await;
                    self.note(format!("restart node {target}"));
                    self.cluster.start_node(target);
                }
                Fault::Pause => {
                    let stopped = pause(&mut self.rng, 1000, 3000);
                    self.note(format!(
                        "SIGSTOP node {target} (leader {leader:?}) for {stopped:?}"
                    ));
                    self.cluster.pause(target);
                    tokio::time::sleep(stopped).await;
                    self.note(format!("SIGCONT node {target}"));
                    self.cluster.resume(target);
                }
                Fault::Isolate => {
                    let others = self.cluster.others(target);
                    let cuts: Vec<(u64, u64)> = others.iter().map(|&o| (target, o)).collect();
                    self.partition(&cuts, leader).await;
                }
                Fault::CutFromLeader => {
                    let leader_id = leader.unwrap_or(target);
                    let others = self.cluster.others(leader_id);
                    let follower = *self.rng.pick(&others);
                    self.partition(&[(leader_id, follower)], leader).await;
                }
            }
        }
        self.heal();
        CYCLE
            .iter()
            .zip(counts)
            .map(|(fault, n)| (format!("{fault:?}"), n))
            .collect()
    }

    /// Cuts the given pairs for 2–4 s, then heals.
    async fn partition(&mut self, pairs: &[(u64, u64)], leader: Option<u64>) {
        let Some(firewall) = &self.firewall else {
            return;
        };
        let ip = |id| self.cluster.node(id).ip();
        for &(a, b) in pairs {
            firewall
                .cut(ip(a), ip(b))
                .unwrap_or_else(|e| panic!("cannot cut {a} from {b}: {e}"));
        }
        let lasting = Duration::from_millis(self.rng.between(2000, 4000));
        self.note(format!(
            "partition {pairs:?} (leader {leader:?}) for {lasting:?}"
        ));
        tokio::time::sleep(lasting).await;
        self.note("heal partition".to_string());
        if let Some(firewall) = &self.firewall {
            firewall
                .heal()
                .unwrap_or_else(|e| panic!("cannot heal: {e}"));
        }
    }

    /// Undoes everything: no partition, every node running.
    pub fn heal(&mut self) {
        if let Some(firewall) = &self.firewall {
            firewall
                .heal()
                .unwrap_or_else(|e| panic!("cannot heal: {e}"));
        }
        for id in [1, 2, 3] {
            if !self.cluster.node(id).is_running() {
                self.cluster.start_node(id);
            }
        }
        self.note("healed: no partition, every node running".to_string());
    }

    /// Panics if a node's process ended by itself: a crash is a bug.
    pub fn check_alive(&mut self) {
        for id in [1, 2, 3] {
            if let Some(status) = self.cluster.exited(id) {
                panic!("node {id} exited by itself ({status}) during the run");
            }
        }
    }

    /// The leader that a running node names, asking each for at most one second.
    async fn leader(&self) -> Option<u64> {
        for node in self.cluster.nodes.iter().filter(|n| n.is_running()) {
            let status = tokio::time::timeout(Duration::from_secs(1), self.cluster.status(node.id));
            if let Ok(Ok(status)) = status.await {
                if status.leader_id != 0 {
                    return Some(status.leader_id);
                }
            }
        }
        None
    }
}
