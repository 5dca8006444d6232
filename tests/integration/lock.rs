//! `raftkv lock` and `raftkv elect` as users run them, against a real three-node cluster.
//!
//! Each locked COMMAND is a shell script that records `<who> start`, sleeps, and records
//! `<who> end` in the key `rec` through the `raftkv` binary. The key's history (a watch from
//! revision 1) then shows whether two holders ever overlapped: every start must be followed by
//! the same holder's end before any other start, or, for a holder killed on purpose, by the
//! `<who> killed` the test records right after the kill (and its end must never come).
//!
//! Killing a `raftkv lock` with SIGKILL must kill its COMMAND at once (the kernel's
//! parent-death signal) and hand the lock on within the lease's TTL; a holder whose cluster
//! stops answering must kill its COMMAND within 2/3 of the TTL, while one whose leader is
//! killed keeps renewing through another node and keeps the lock. An election's campaigners
//! print the same leader, and the next one once the leader dies. The `lease` commands print
//! what they did and exit with the documented codes.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use raftkv::proto::v1::{watch_event::Kind, WatchRequest};
use tokio_stream::StreamExt;

use crate::common::{bounded, TestCluster, RAFTKV};

/// The key every locked COMMAND records its start and end in.
const REC: &str = "rec";
/// Longest any one `raftkv lock` run of these tests may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Every process group these tests started, killed when the test ends however it ends: the
/// `raftkv lock`/`elect` clients (started as group leaders), and each COMMAND's own group (a
/// COMMAND script appends its pid, which is its group id, to `pgids`).
struct Groups {
    clients: Mutex<BTreeSet<i32>>,
    pgids: PathBuf,
}

impl Groups {
    fn new(dir: &Path) -> Arc<Self> {
        Arc::new(Self {
            clients: Mutex::new(BTreeSet::new()),
            pgids: dir.join("pgids"),
        })
    }

    fn add(&self, child: &Child) {
        self.clients.lock().unwrap().insert(child.id() as i32);
    }

    fn remove(&self, child: &Child) {
        self.clients.lock().unwrap().remove(&(child.id() as i32));
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        let commands = std::fs::read_to_string(&self.pgids).unwrap_or_default();
        let clients = self.clients.lock().map(|c| c.clone()).unwrap_or_default();
        let commands = commands
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok());
        for group in clients.into_iter().chain(commands) {
            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
        }
    }
}

/// Starts `raftkv ARGS…` against `endpoints` as the leader of a new process group.
fn spawn(endpoints: &str, groups: &Groups, args: &[&str], stdout: Stdio) -> Child {
    let child = Command::new(RAFTKV)
        .args(args)
        .env("RAFTKV_ENDPOINTS", endpoints)
        .env("RAFTKV_TIMEOUT", "20s")
        .env("RAFTKV_BIN", RAFTKV)
        .env("PGIDS", &groups.pgids)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn raftkv");
    groups.add(&child);
    child
}

/// A COMMAND for `raftkv lock`: records `<who> start`, sleeps, records `<who> end`. It writes
/// its pid (its process group, as `raftkv lock` starts it) to PGIDS for the cleanup, and to
/// `pid_file` when given.
fn script(who: &str, sleep: &str, pid_file: Option<&Path>) -> String {
    let pid = pid_file
        .map(|p| format!("echo $$ > '{}'; ", p.display()))
        .unwrap_or_default();
    format!(
        "echo $$ >> \"$PGIDS\"; {pid}\"$RAFTKV_BIN\" put {REC} '{who} start' >/dev/null && \
         sleep {sleep} && \"$RAFTKV_BIN\" put {REC} '{who} end' >/dev/null"
    )
}

/// Waits (bounded by [`RUN_LIMIT`]) for a client to exit; returns its status and stderr.
/// COMMAND inherits the client's stderr, and a process COMMAND started may outlive both (a
/// `sleep` whose shell was killed), so stderr is not read to its end: only what came until a
/// moment after the exit.
fn finish(groups: &Groups, mut child: Child) -> (ExitStatus, String) {
    let stderr = Arc::new(Mutex::new(String::new()));
    if let Some(pipe) = child.stderr.take() {
        let stderr = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = stderr.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
    }
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll raftkv") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            panic!("raftkv did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    groups.remove(&child);
    std::thread::sleep(Duration::from_millis(100));
    let stderr = stderr.lock().unwrap().clone();
    (status, stderr)
}

/// Runs `raftkv ARGS…` to its end (bounded); returns its exit code, stdout and stderr.
async fn run(
    endpoints: &str,
    groups: &Arc<Groups>,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let mut child = spawn(endpoints, groups, args, Stdio::piped());
    let stdout = child.stdout.take().expect("piped stdout");
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut text);
        text
    });
    let groups = groups.clone();
    let (status, stderr) = tokio::task::spawn_blocking(move || finish(&groups, child))
        .await
        .unwrap();
    (status.code(), stdout.join().unwrap(), stderr)
}

/// Whether process `pid` still runs (a zombie does not: it has exited, only unreaped).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next()),
            Some(Some('Z' | 'X'))
        ),
        Err(_) => false,
    }
}

fn read_pid(path: &Path, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no pid in {} within {within:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The values `rec` took, in order, from revision 1 until `last` (bounded), read on node 1.
async fn history(cluster: &TestCluster, last: &str) -> Vec<(u64, String)> {
    history_on(cluster, 1, last).await
}

/// [`history`] read on node `id`.
async fn history_on(cluster: &TestCluster, id: u64, last: &str) -> Vec<(u64, String)> {
    let request = WatchRequest {
        start: REC.into(),
        start_revision: 1,
        ..Default::default()
    };
    let mut kv = cluster.kv(id).await.expect("kv");
    let mut stream = kv.watch(request).await.expect("watch").into_inner();
    let mut values = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let response = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no {last:?} in the history of {REC}: {values:?}"))
            .expect("watch open")
            .expect("watch response");
        for event in response.events {
            if event.kind == Kind::Put as i32 {
                let value = String::from_utf8_lossy(&event.value).into_owned();
                if value == last {
                    return values;
                }
                values.push((event.revision, value));
            }
        }
    }
}

/// Checks that no two holders overlapped: each `X start` is followed by `X end` before the
/// next start, or by `X killed`, which the test records right after it killed X's client (X's
/// end must then never come).
fn assert_no_overlap(history: &[(u64, String)]) {
    let mut holding: Option<&str> = None;
    let mut killed = BTreeSet::new();
    for (revision, value) in history {
        let (who, what) = value
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("unexpected record {value:?}"));
        assert!(
            !killed.contains(who),
            "{value:?} at revision {revision} after {who} was killed; history: {history:?}"
        );
        match (what, holding) {
            ("start", None) => holding = Some(who),
            ("end", Some(holder)) if holder == who => holding = None,
            ("killed", Some(holder)) if holder == who => {
                killed.insert(who);
                holding = None;
            }
            _ => panic!(
                "{value:?} at revision {revision} while {holding:?} held the lock; history: \
                 {history:?}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_in_loops_never_hold_the_lock_at_once() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let dir = tempfile::tempdir().unwrap();
        let groups = Groups::new(dir.path());
        const ROUNDS: usize = 4;
        // Another lock whose name starts with "L/" is held all along: its key L/sub/<id> is
        // under L's prefix and older than every L waiter's, but not in L's line.
        let nested_pid = dir.path().join("nested.pid");
        let nested_script = format!(
            "echo $$ >> \"$PGIDS\"; echo $$ > '{}'; exec sleep 120",
            nested_pid.display()
        );
        let nested = spawn(
            &cluster.endpoints().join(","),
            &groups,
            &[
                "lock",
                "L/sub",
                "--ttl",
                "3s",
                "--",
                "sh",
                "-c",
                &nested_script,
            ],
            Stdio::null(),
        );
        let nested_command = read_pid(&nested_pid, Duration::from_secs(30));
        let mut workers = Vec::new();
        for worker in ["a", "b", "c"] {
            let (endpoints, groups) = (cluster.endpoints().join(","), groups.clone());
            workers.push(tokio::task::spawn_blocking(move || {
                for round in 0..ROUNDS {
                    let who = format!("{worker}{round}");
                    let command = script(&who, "0.3", None);
                    let args = ["lock", "L", "--ttl", "3s", "--", "sh", "-c", &command];
                    let child = spawn(&endpoints, &groups, &args, Stdio::null());
                    let (status, stderr) = finish(&groups, child);
                    assert!(status.success(), "{who}: {status}; stderr: {stderr}");
                    assert!(
                        stderr.contains("acquired lock L (lease "),
                        "{who} says when it holds the lock: {stderr}"
                    );
                }
            }));
        }
        for worker in workers {
            worker.await.expect("worker");
        }
        cluster.put(1, REC, b"done").await.expect("last record");
        let history = history(&cluster, "done").await;
        assert_eq!(history.len(), 3 * ROUNDS * 2, "{history:?}");
        assert_no_overlap(&history);
        // SIGTERM to a holder kills its COMMAND and releases the lock: exit 143.
        kill(Pid::from_raw(nested.id() as i32), Signal::SIGTERM).expect("SIGTERM L/sub");
        let (status, stderr) = tokio::task::spawn_blocking({
            let groups = groups.clone();
            move || finish(&groups, nested)
        })
        .await
        .unwrap();
        assert_eq!(status.code(), Some(143), "{status}; {stderr}");
        assert!(
            !alive(nested_command),
            "the SIGTERMed holder's COMMAND is gone"
        );
        // Every holder released its lease, and its key with it.
        let left = cluster
            .scan_all(1, raftkv::proto::v1::Consistency::Linearizable)
            .await
            .unwrap();
        assert!(
            left.keys().all(|k| !k.starts_with("L/")),
            "lock keys left behind: {left:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holders_command_dies_with_it_and_the_next_waiter_gets_the_lock_within_its_ttl() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let dir = tempfile::tempdir().unwrap();
        let groups = Groups::new(dir.path());
        let endpoints = cluster.endpoints().join(",");
        let ttl = Duration::from_secs(2);
        let victim_pid = dir.path().join("victim.pid");
        let victim_script = script("victim", "4", Some(&victim_pid));
        let victim = spawn(
            &endpoints,
            &groups,
            &["lock", "L", "--ttl", "2s", "--", "sh", "-c", &victim_script],
            Stdio::null(),
        );
        let command = read_pid(&victim_pid, Duration::from_secs(30));
        // The victim holds the lock once its start is recorded; the next waiter queues behind.
        let next_script = script("next", "0.3", None);
        let next = spawn(
            &endpoints,
            &groups,
            &["lock", "L", "--ttl", "2s", "--", "sh", "-c", &next_script],
            Stdio::null(),
        );
        let started = history_until(&cluster, "victim start").await;
        assert_eq!(started, vec!["victim start".to_string()]);
        // Let the waiter get in line, then kill the holder's client with no chance to clean up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let victim_client = victim.id() as i32;
        let killed_at = Instant::now();
        kill(Pid::from_raw(victim_client), Signal::SIGKILL).expect("kill -9 raftkv lock");
        // Recorded long before the victim's lease can expire: the next start must come after.
        cluster
            .put(1, REC, b"victim killed")
            .await
            .expect("kill record");
        // Its COMMAND dies with it, at once.
        while alive(command) {
            assert!(
                killed_at.elapsed() < Duration::from_secs(1),
                "COMMAND {command} outlived its raftkv lock by a second"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (status, _) = tokio::task::spawn_blocking({
            let groups = groups.clone();
            move || finish(&groups, victim)
        })
        .await
        .unwrap();
        assert_eq!(status.code(), None, "killed by a signal: {status}");
        // The next waiter gets the lock once the victim's lease expired: within ttl + 2 s.
        let seen = history_until(&cluster, "next start").await;
        let waited = killed_at.elapsed();
        assert!(
            waited <= ttl + Duration::from_secs(2),
            "the next holder waited {waited:?} after the kill (ttl {ttl:?}); history {seen:?}"
        );
        let (status, stderr) = tokio::task::spawn_blocking({
            let groups = groups.clone();
            move || finish(&groups, next)
        })
        .await
        .unwrap();
        assert!(status.success(), "next: {status}; {stderr}");
        // The victim's COMMAND would have recorded its end 4 s after its start: past that, the
        // history still has no victim end, and no overlap.
        tokio::time::sleep(Duration::from_secs(4).saturating_sub(killed_at.elapsed())).await;
        cluster.put(1, REC, b"done").await.expect("last record");
        let history = history(&cluster, "done").await;
        assert_no_overlap(&history);
        let values: Vec<&str> = history.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(
            values,
            ["victim start", "victim killed", "next start", "next end"]
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_the_cluster_kills_its_command_within_two_thirds_of_the_ttl() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let dir = tempfile::tempdir().unwrap();
        let groups = Groups::new(dir.path());
        let endpoints = cluster.endpoints().join(",");
        let ttl = Duration::from_secs(3);
        let pid_file = dir.path().join("holder.pid");
        let holder_script = script("holder", "30", Some(&pid_file));
        let holder = spawn(
            &endpoints,
            &groups,
            &["lock", "L", "--ttl", "3s", "--", "sh", "-c", &holder_script],
            Stdio::null(),
        );
        let command = read_pid(&pid_file, Duration::from_secs(30));
        history_until(&cluster, "holder start").await;
        // Every node stops answering: no renewal can be confirmed any more.
        let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
        for id in &ids {
            cluster.pause(*id);
        }
        let paused_at = Instant::now();
        while alive(command) {
            assert!(
                paused_at.elapsed() < ttl * 2 / 3 + Duration::from_millis(700),
                "COMMAND still ran {:?} after the cluster stopped answering (ttl {ttl:?})",
                paused_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (status, stderr) = tokio::task::spawn_blocking({
            let groups = groups.clone();
            move || finish(&groups, holder)
        })
        .await
        .unwrap();
        for id in &ids {
            cluster.resume(*id);
        }
        assert_eq!(status.code(), Some(3), "{status}; {stderr}");
        assert!(stderr.contains("error: lost the lock L: "), "{stderr}");
        // The cluster is fine again; only the stopped nodes' time was lost.
        cluster.wait_for_leader(Duration::from_secs(30)).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_keeps_the_lock_across_a_leader_kill() {
    bounded(async {
        let mut cluster = TestCluster::start(3, &[]).await;
        let dir = tempfile::tempdir().unwrap();
        let groups = Groups::new(dir.path());
        let endpoints = cluster.endpoints().join(",");
        let holder_script = script("holder", "6", None);
        // A holder gives up when no renewal is confirmed for 2/3 of the TTL, and renews every
        // third: the TTL must be well over three times the failover (3-4 s, up to 8 s when an
        // election is delayed; docs/limitations.md).
        let holder = spawn(
            &endpoints,
            &groups,
            &[
                "lock",
                "L",
                "--ttl",
                "30s",
                "--",
                "sh",
                "-c",
                &holder_script,
            ],
            Stdio::null(),
        );
        history_until(&cluster, "holder start").await;
        // The keepalive stream breaks (on the leader, or on a follower forwarding to it); the
        // renewals go on through another node once a new leader is elected.
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        cluster.kill(leader);
        let (status, stderr) = tokio::task::spawn_blocking({
            let groups = groups.clone();
            move || finish(&groups, holder)
        })
        .await
        .unwrap();
        assert!(status.success(), "{status}; stderr: {stderr}");
        let survivor = cluster.others(leader)[0];
        cluster
            .put_retrying(survivor, REC, b"done", Duration::from_secs(30))
            .await;
        let history = history_on(&cluster, survivor, "done").await;
        let values: Vec<&str> = history.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, ["holder start", "holder end"]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_commands_say_what_they_did_and_exit_as_documented() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let dir = tempfile::tempdir().unwrap();
        let groups = Groups::new(dir.path());
        let endpoints = cluster.endpoints().join(",");

        let (code, out, err) = run(&endpoints, &groups, &["lease", "grant", "500ms"]).await;
        assert_eq!(code, Some(2), "a TTL under 1 s is bad usage: {out}{err}");
        assert!(err.contains("ttl_ms is 500"), "{err}");
        let (code, out, _) = run(&endpoints, &groups, &["lease", "grant", "20s", "--json"]).await;
        assert_eq!(code, Some(0));
        let granted: serde_json::Value = serde_json::from_str(&out).expect("grant --json");
        assert_eq!(granted["ttl_ms"], 20_000);
        let id = granted["id"].as_u64().expect("an id").to_string();
        let id = id.as_str();
        let (code, out, _) = run(&endpoints, &groups, &["lease", "grant", "10s"]).await;
        assert_eq!(code, Some(0));
        assert!(
            out.starts_with("lease ") && out.ends_with(" granted with ttl 10s\n"),
            "{out}"
        );

        // Every key of a multi-key put gets the lease; an unknown lease writes nothing.
        let (code, _, err) = run(&endpoints, &groups, &["put", "a=1", "b=2", "--lease", id]).await;
        assert_eq!(code, Some(0), "{err}");
        let (code, _, err) = run(
            &endpoints,
            &groups,
            &["cas", "c", "--expect-revision", "0", "3", "--lease", id],
        )
        .await;
        assert_eq!(code, Some(0), "{err}");
        let (code, _, err) =
            run(&endpoints, &groups, &["put", "z", "9", "--lease", "999999"]).await;
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("lease 999999 not found"), "{err}");
        let (code, _, _) = run(&endpoints, &groups, &["get", "z"]).await;
        assert_eq!(code, Some(1), "nothing written with an unknown lease");

        let (code, out, _) = run(&endpoints, &groups, &["lease", "ttl", id, "--keys"]).await;
        assert_eq!(code, Some(0));
        let shown: Vec<&str> = out.lines().collect();
        assert!(shown[0].starts_with(&format!("lease {id}: ")), "{out}");
        assert!(shown[0].ends_with(" left of 20s"), "{out}");
        assert_eq!(shown[1..], ["a", "b", "c"]);
        let (code, out, _) = run(&endpoints, &groups, &["lease", "list", "--json"]).await;
        assert_eq!(code, Some(0));
        let list: serde_json::Value = serde_json::from_str(&out).expect("list --json");
        let ours = list["leases"]
            .as_array()
            .expect("leases")
            .iter()
            .find(|l| l["id"] == granted["id"])
            .unwrap_or_else(|| panic!("lease {id} listed: {out}"));
        assert_eq!(ours["keys"], 3);
        let (code, out, _) = run(&endpoints, &groups, &["lease", "keepalive", id, "--once"]).await;
        assert_eq!(
            (code, out),
            (Some(0), format!("lease {id} kept alive; ttl 20s\n"))
        );

        // A keepalive runs until interrupted, renewing every third of the TTL.
        let mut keeper = spawn(
            &endpoints,
            &groups,
            &["lease", "keepalive", id],
            Stdio::piped(),
        );
        let renewals = lines(&mut keeper);
        assert_eq!(
            next_line(&renewals, "keepalive").1,
            format!("lease {id} kept alive; ttl 20s")
        );
        kill(Pid::from_raw(keeper.id() as i32), Signal::SIGINT).expect("Ctrl-C");
        let (status, stderr) = tokio::task::spawn_blocking({
            let groups = groups.clone();
            move || finish(&groups, keeper)
        })
        .await
        .unwrap();
        assert!(status.success(), "Ctrl-C exits 0: {status}; {stderr}");

        let (code, out, _) = run(&endpoints, &groups, &["lease", "revoke", id]).await;
        assert_eq!(
            (code, out),
            (Some(0), format!("lease {id} revoked; 3 keys deleted\n"))
        );
        let (code, out, _) = run(&endpoints, &groups, &["scan"]).await;
        assert_eq!(
            (code, out.as_str()),
            (Some(0), ""),
            "the lease's keys went with it"
        );
        let (code, _, err) = run(&endpoints, &groups, &["lease", "revoke", id]).await;
        assert_eq!(code, Some(1), "{err}");
        let (code, _, err) = run(&endpoints, &groups, &["lease", "ttl", id]).await;
        assert_eq!(code, Some(1), "{err}");
        let (code, _, err) = run(&endpoints, &groups, &["lease", "keepalive", id]).await;
        assert_eq!(
            code,
            Some(1),
            "a keepalive of a lease that is gone ends: {err}"
        );
        assert!(err.contains(&format!("lease {id} not found")), "{err}");
    })
    .await
}

/// The values of `rec` from revision 1 until `value` was recorded (it included).
async fn history_until(cluster: &TestCluster, value: &str) -> Vec<String> {
    let mut values: Vec<String> = history(cluster, value)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    values.push(value.to_string());
    values
}

/// Lines a child prints on stdout, each with when it arrived.
fn lines(child: &mut Child) -> mpsc::Receiver<(Instant, String)> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    receiver
}

fn next_line(lines: &mpsc::Receiver<(Instant, String)>, who: &str) -> (Instant, String) {
    lines
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{who} printed no line within 30 s: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_campaigner_leads_once_the_leader_dies() {
    bounded(async {
        let cluster = TestCluster::start(3, &[]).await;
        let dir = tempfile::tempdir().unwrap();
        let groups = Groups::new(dir.path());
        let endpoints = cluster.endpoints().join(",");
        let ttl = Duration::from_secs(2);
        let campaign = |value: &str| {
            spawn(
                &endpoints,
                &groups,
                &["elect", "E", value, "--ttl", "2s"],
                Stdio::piped(),
            )
        };
        let mut first = campaign("alpha");
        let first_lines = lines(&mut first);
        assert_eq!(next_line(&first_lines, "alpha").1, "alpha");
        let mut second = campaign("beta");
        let second_lines = lines(&mut second);
        assert_eq!(next_line(&second_lines, "beta").1, "alpha", "alpha leads");
        let mut listener = spawn(
            &endpoints,
            &groups,
            &["elect", "E", "--listen"],
            Stdio::piped(),
        );
        let listener_lines = lines(&mut listener);
        assert_eq!(next_line(&listener_lines, "the listener").1, "alpha");

        let killed_at = Instant::now();
        kill(Pid::from_raw(first.id() as i32), Signal::SIGKILL).expect("kill -9 alpha");
        let (at, line) = next_line(&second_lines, "beta");
        assert_eq!(line, "beta", "beta leads after alpha");
        let waited = at.duration_since(killed_at);
        assert!(
            waited <= ttl + Duration::from_secs(2),
            "beta led {waited:?} after alpha died (ttl {ttl:?})"
        );
        assert_eq!(next_line(&listener_lines, "the listener").1, "beta");

        // A campaigner stopped with SIGTERM resigns (its key goes at once) and exits 0.
        kill(Pid::from_raw(second.id() as i32), Signal::SIGTERM).expect("SIGTERM beta");
        let (status, stderr) = tokio::task::spawn_blocking({
            let groups = groups.clone();
            move || finish(&groups, second)
        })
        .await
        .unwrap();
        assert!(status.success(), "beta: {status}; {stderr}");
        let left = cluster
            .scan_all(1, raftkv::proto::v1::Consistency::Linearizable)
            .await
            .unwrap();
        assert!(
            left.keys().all(|k| !k.starts_with("E/")),
            "campaign keys left behind: {left:?}"
        );
        for child in [first, listener] {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let groups = groups.clone();
            tokio::task::spawn_blocking(move || finish(&groups, child))
                .await
                .unwrap();
        }
    })
    .await
}
