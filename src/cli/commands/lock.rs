//! `raftkv lock NAME -- COMMAND…`: runs COMMAND while holding a lock that at most one client
//! of the cluster holds at a time (etcd's lock recipe, on a lease and a watch).
//!
//! 1. Grant a lease (`--ttl`) and keep it alive in the background ([`Campaign`]).
//! 2. Write `NAME/<lease id>` with that lease. Its revision R, then its key, is this waiter's
//!    place in line: writes of several clients can share one log entry (group commit), and so
//!    one revision, and the key breaks the tie the same way for every waiter.
//! 3. Watch `NAME/`, then scan it: the waiters ahead are the keys before (R, key) ([`Line`]). Wait for their DELETE events (a holder revoking its lease when done, or its
//!    lease expiring after its client died) until none is left. Keys are never written again
//!    once deleted, so the line only ever gets shorter and replayed events cannot lengthen it.
//! 4. Run COMMAND. While it runs the lease must stay certainly alive: when no renewal was
//!    confirmed within 2/3 TTL of when it was sent, the lease may already have expired on the
//!    leader and the next waiter may be running, so COMMAND is killed at once.
//!
//! The invariant is that COMMAND only runs while our key exists and every key ahead of it is
//! gone. If this client dies, the kernel kills COMMAND (`PR_SET_PDEATHSIG`, see [`run_child`])
//! while the lease still holds the next waiter back until it expires.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::cli::client::{CliError, Client};
use crate::cli::session::{Campaign, Follower, Interrupts, Liveness, Update};
use crate::cli::{exit, ClientOpts};
use crate::proto::v1::{watch_event::Kind, KeyValue, WatchEvent};
use crate::text::{format_duration, parse_duration};

/// Exit code when COMMAND cannot be started because it is not found (as in the shell).
const COMMAND_NOT_FOUND: u8 = 127;
/// Exit code when COMMAND exists but cannot be started (as in the shell).
const COMMAND_NOT_RUN: u8 = 126;

#[derive(Args, Debug)]
#[command(
    override_usage = "raftkv lock [OPTIONS] NAME [--] COMMAND [ARGS]...",
    after_long_help = "\
Waits until this client holds the lock NAME, runs COMMAND, and releases the lock when COMMAND
exits. Clients that ask for one NAME get it one at a time, in the order they asked. Prints
`acquired lock NAME (lease ID)` on stderr once held; stdout and stderr are otherwise COMMAND's.
Waiting has no time limit; --timeout bounds each call to the cluster on the way (the grant, the
key's write, each scan, the release).

How it works: the lock is a lease (--ttl) kept alive by this client, and a key NAME/<lease id>
written with it; the waiter whose key is oldest holds the lock. When the holder is done its
lease is revoked and its key goes with it; when a holder dies, its lease expires after --ttl and
the next waiter gets the lock then.

COMMAND runs in a process group of its own (so it cannot read from the terminal; Ctrl-C reaches
it through this client), with these in its environment:
  RAFTKV_LOCK_KEY       the lock's key (NAME/<lease id>)
  RAFTKV_LOCK_LEASE     the lease id: attach keys to it (`raftkv put --lease`) to have them
                        deleted when the lock is lost or released
  RAFTKV_LOCK_REVISION  the key's revision: never smaller for a later holder (two waiters whose
                        keys were written in one log entry share it), a fencing token

Safety: if this client is killed (even with kill -9), the kernel kills COMMAND with it (Linux,
PR_SET_PDEATHSIG; processes COMMAND started itself are not covered), and the next waiter gets the
lock once the lease has expired, within --ttl of the last renewal. If renewals of the lease
fail for 2/3 of --ttl (the cluster is unreachable, this machine was stopped), the lease may be
gone, so the whole process group of COMMAND is killed with SIGKILL and the lock is reported lost.
Renewals go every third of --ttl, so a leader change costs the lock only when the cluster needs
more than about --ttl/3 to elect a new leader (3-4 s with the default election timeout, up to
8 s; see docs/limitations.md): keep --ttl well above three times that.

Exit codes:
  COMMAND's own      when it exits (128+N when it was killed by signal N)
  3                  the lock was lost while held or while waiting, or the cluster unreachable
  130, 143, 129      SIGINT, SIGTERM, SIGHUP: COMMAND is killed, then the lock released
  126, 127           COMMAND could not be started (127: not found)
  2                  bad usage (e.g. --ttl under 1s)"
)]
pub struct LockArgs {
    /// The lock's name; its keys are NAME/<lease id>.
    pub name: String,

    /// The command to run while holding the lock, after `--`.
    #[arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,

    /// The lease's TTL: how long after this client dies the next waiter gets the lock. A leader
    /// change that takes more than about a third of it costs the lock (see below).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub ttl: Duration,

    #[command(flatten)]
    pub client: ClientOpts,
}

/// This waiter's place in line: the keys ahead of it, as a scan showed them, minus those whose
/// deletion was seen since.
#[derive(Debug)]
pub struct Line {
    own: String,
    revision: u64,
    /// `None` until the first scan.
    ahead: Option<BTreeSet<String>>,
}

impl Line {
    pub fn new(own: String, revision: u64) -> Self {
        Self {
            own,
            revision,
            ahead: None,
        }
    }

    /// Starts again from a scan of the prefix. Our own key missing means the lease is gone.
    pub fn reset(&mut self, snapshot: &[KeyValue]) -> Result<(), String> {
        if !snapshot.iter().any(|kv| kv.key == self.own) {
            return Err(format!("its key {} is gone", self.own));
        }
        self.ahead = Some(
            snapshot
                .iter()
                .filter(|kv| {
                    kv.key != self.own
                        && (kv.revision, kv.key.as_str()) < (self.revision, self.own.as_str())
                })
                .map(|kv| kv.key.clone())
                .collect(),
        );
        Ok(())
    }

    /// Applies changes: a waiter ahead leaving moves us up; our own key deleted means the
    /// lease is gone. Writes do not matter: a key written after ours is behind us, and no key
    /// ahead of us is ever written again.
    pub fn apply(&mut self, events: &[WatchEvent]) -> Result<(), String> {
        for event in events {
            if Kind::try_from(event.kind) != Ok(Kind::Delete) {
                continue;
            }
            if event.key == self.own {
                return Err(format!(
                    "its key {} was deleted at revision {}",
                    self.own, event.revision
                ));
            }
            if let Some(ahead) = &mut self.ahead {
                ahead.remove(&event.key);
            }
        }
        Ok(())
    }

    /// Waiters ahead of us, once known.
    pub fn ahead(&self) -> Option<usize> {
        self.ahead.as_ref().map(BTreeSet::len)
    }

    /// Whether the lock is ours: a scan was seen and nobody is ahead any more.
    pub fn acquired(&self) -> bool {
        self.ahead() == Some(0)
    }
}

pub async fn lock(args: LockArgs) -> Result<(), CliError> {
    let mut interrupts = Interrupts::catch()?;
    if args.name.is_empty() {
        return Err(super::usage("the lock NAME cannot be empty"));
    }
    let client = Arc::new(Client::new(&args.client)?);
    let prefix = format!("{}/", args.name);
    let mut campaign = tokio::select! {
        campaign = Campaign::start(&client, &prefix, holder_id().into_bytes(), args.ttl) => campaign?,
        code = interrupts.recv() => return Err(CliError::quiet(code)),
    };
    let mut follower = Follower::start(client.clone(), prefix);
    let mut line = Line::new(campaign.key.clone(), campaign.revision);
    let waited = wait_in_line(
        &args,
        &mut campaign,
        &mut follower,
        &mut line,
        &mut interrupts,
    );
    let outcome = match waited.await {
        Waited::Acquired => {
            hold(
                &args,
                &mut campaign,
                &mut follower,
                &mut line,
                &mut interrupts,
            )
            .await
        }
        Waited::Failed(error) => Held::NotStarted(error),
    };
    drop(follower);
    let outcome = match outcome {
        Held::Exited(0) => Ok(()),
        Held::Exited(code) | Held::Interrupted(code) => Err(CliError::quiet(code)),
        // Said at once: the release below may take a while when the cluster is unreachable.
        Held::Lost(reason) => Err(lost(&args.name, reason).report_now()),
        Held::NotStarted(error) => Err(error.report_now()),
    };
    // COMMAND is not running any more (see `Held`): only now may the next waiter go ahead.
    campaign.resign().await;
    outcome
}

fn lost(name: &str, reason: String) -> CliError {
    CliError::new(exit::UNAVAILABLE, format!("lost the lock {name}: {reason}"))
}

/// How waiting in line ended.
enum Waited {
    Acquired,
    Failed(CliError),
}

/// Waits until no key is ahead of ours, the lease is lost, or a signal comes; then checks that
/// the lease is still certainly alive.
async fn wait_in_line(
    args: &LockArgs,
    campaign: &mut Campaign,
    follower: &mut Follower,
    line: &mut Line,
    interrupts: &mut Interrupts,
) -> Waited {
    let failed =
        |reason: String| Waited::Failed(lost(&args.name, format!("while waiting, {reason}")));
    let mut told_waiting = false;
    while !line.acquired() {
        tokio::select! {
            update = follower.next() => {
                let applied = match update {
                    Ok(Update::Snapshot(snapshot)) => line.reset(&snapshot),
                    Ok(Update::Events(events)) => line.apply(&events),
                    Err(error) => return Waited::Failed(error),
                };
                if let Err(reason) = applied {
                    return failed(reason);
                }
                if let (Some(ahead @ 1..), false) = (line.ahead(), told_waiting) {
                    eprintln!("waiting for lock {} ({ahead} ahead)", args.name);
                    told_waiting = true;
                }
            }
            state = campaign.keepalive.changed() => {
                if let Some(ended) = state.ended {
                    return failed(ended.message);
                }
            }
            code = interrupts.recv() => return Waited::Failed(CliError::quiet(code)),
        }
    }
    // A renewal may be overdue (the cluster was unreachable while we waited): then the lease
    // may be gone and the next waiter may already hold the lock.
    let state = campaign.keepalive.now();
    if !state.is_safe(Instant::now()) {
        return Waited::Failed(lost(
            &args.name,
            overdue(&state, campaign.lease(), args.ttl),
        ));
    }
    eprintln!("acquired lock {} (lease {})", args.name, campaign.lease());
    Waited::Acquired
}

/// Why a lease whose renewal is overdue may be gone, or why keeping it alive ended.
fn overdue(state: &Liveness, lease: u64, ttl: Duration) -> String {
    if let Some(ended) = &state.ended {
        return ended.message.clone();
    }
    format!(
        "no renewal of lease {lease} confirmed for {} (ttl {}); it may have expired",
        state.since_renewal(Instant::now()),
        format_duration(ttl)
    )
}

/// How holding the lock ended. Every variant is reached with COMMAND no longer running.
enum Held {
    /// COMMAND exited with this code (128+N for signal N).
    Exited(u8),
    /// A signal to this client (its exit code); COMMAND was killed.
    Interrupted(u8),
    /// The lease may be gone; COMMAND was killed.
    Lost(String),
    /// COMMAND could not be started.
    NotStarted(CliError),
}

/// Runs COMMAND and watches over it until it exits, the lock may be lost, or a signal comes.
async fn hold(
    args: &LockArgs,
    campaign: &mut Campaign,
    follower: &mut Follower,
    line: &mut Line,
    interrupts: &mut Interrupts,
) -> Held {
    let mut child = match run_child(&args.command, campaign) {
        Ok(child) => child,
        Err(error) => return Held::NotStarted(error),
    };
    let mut following = true;
    loop {
        let state = campaign.keepalive.now();
        let safe_until = match state.safe_until() {
            Some(until) if state.is_safe(Instant::now()) => until,
            _ => {
                let reason = overdue(&state, campaign.lease(), args.ttl);
                return kill(&mut child, Held::Lost(reason)).await;
            }
        };
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(status) => Held::Exited(exit_code(status)),
                    Err(e) => kill(&mut child, Held::Lost(format!("cannot wait for COMMAND: {e}"))).await,
                };
            }
            () = tokio::time::sleep_until(safe_until.into()) => {}
            _ = campaign.keepalive.changed() => {}
            update = follower.next(), if following => match update {
                Ok(Update::Snapshot(snapshot)) => {
                    if let Err(reason) = line.reset(&snapshot) {
                        return kill(&mut child, Held::Lost(reason)).await;
                    }
                }
                Ok(Update::Events(events)) => {
                    if let Err(reason) = line.apply(&events) {
                        return kill(&mut child, Held::Lost(reason)).await;
                    }
                }
                Err(e) => {
                    // Only a faster way to notice a revoked lease: the keepalive still guards.
                    eprintln!("raftkv: no longer watching lock {}: {}", args.name, e.message);
                    following = false;
                }
            },
            code = interrupts.recv() => return kill(&mut child, Held::Interrupted(code)).await,
        }
    }
}

/// Kills COMMAND's process group and waits until COMMAND is gone, so that the lock is released
/// (or given up) only once nothing runs under it; then returns `outcome`.
async fn kill(child: &mut tokio::process::Child, outcome: Held) -> Held {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        // COMMAND leads its own group (process_group(0)), whose id is its pid; it has not been
        // reaped (`id()` is `Some`), so the id is still COMMAND's and not a reused one.
        let group = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.kill().await;
    outcome
}

/// The exit code that passes on how COMMAND ended: its own code, or 128 + the signal number.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(u8::MAX),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(u8::MAX),
        (None, None) => u8::MAX,
    }
}

/// Who holds a key in line: `hostname/pid`, so that `raftkv scan --prefix NAME/` says who waits.
fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}/{}", std::process::id())
}

/// Starts COMMAND in a process group of its own, killed by the kernel if this process dies.
///
/// Called from the command's own future, which `block_on` runs on the main thread: the
/// parent-death signal fires when the *thread* that forked the child ends, and the main thread
/// ends only with the process. (A tokio worker or blocking-pool thread could end earlier.)
fn run_child(command: &[String], campaign: &Campaign) -> Result<tokio::process::Child, CliError> {
    let Some((program, arguments)) = command.split_first() else {
        return Err(super::usage("name the COMMAND to run after `--`"));
    };
    let parent = std::process::id();
    let mut child = tokio::process::Command::new(program);
    child
        .args(arguments)
        .env("RAFTKV_LOCK_KEY", &campaign.key)
        .env("RAFTKV_LOCK_LEASE", campaign.lease().to_string())
        .env("RAFTKV_LOCK_REVISION", campaign.revision.to_string())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. It makes two system calls, prctl(2) and getppid(2), both
    // async-signal-safe, allocates nothing, takes no lock, and touches no memory but its own
    // copy of `parent`; an error is built from the raw errno (no allocation) and makes spawn
    // fail without exec.
    unsafe {
        child.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // This process may have died between fork and prctl: then the signal was never
            // armed, and the child was adopted by another parent.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    child.spawn().map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            COMMAND_NOT_FOUND
        } else {
            COMMAND_NOT_RUN
        };
        CliError::new(code, format!("cannot run {program:?}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, revision: u64) -> KeyValue {
        KeyValue {
            key: name.into(),
            revision,
            ..Default::default()
        }
    }

    fn delete(name: &str, revision: u64) -> WatchEvent {
        WatchEvent {
            kind: Kind::Delete as i32,
            key: name.into(),
            revision,
            ..Default::default()
        }
    }

    fn put(name: &str, revision: u64) -> WatchEvent {
        WatchEvent {
            kind: Kind::Put as i32,
            key: name.into(),
            revision,
            ..Default::default()
        }
    }

    #[test]
    fn the_lock_is_ours_once_every_key_ahead_is_deleted() {
        let mut line = Line::new("L/30".into(), 30);
        assert!(!line.acquired(), "not before the first scan");
        line.reset(&[
            key("L/10", 10),
            key("L/30", 30),
            key("L/20", 20),
            key("L/40", 40),
        ])
        .unwrap();
        assert_eq!(line.ahead(), Some(2));
        line.apply(&[put("L/50", 50), delete("L/40", 51)]).unwrap();
        assert_eq!(line.ahead(), Some(2), "keys behind us do not matter");
        line.apply(&[delete("L/20", 52)]).unwrap();
        assert!(!line.acquired());
        line.apply(&[delete("L/10", 53)]).unwrap();
        assert!(line.acquired());
    }

    #[test]
    fn keys_written_in_one_entry_are_in_line_by_key() {
        // Group commit put both waiters' keys in the entry at revision 30.
        let mut first = Line::new("L/10".into(), 30);
        let mut second = Line::new("L/9".into(), 30);
        let scan = [key("L/10", 30), key("L/9", 30)];
        first.reset(&scan).unwrap();
        second.reset(&scan).unwrap();
        assert!(first.acquired(), "\"L/10\" < \"L/9\": first in line");
        assert!(!second.acquired(), "both held the lock at once");
    }

    #[test]
    fn first_in_line_holds_at_once() {
        let mut line = Line::new("L/30".into(), 30);
        line.reset(&[key("L/30", 30), key("L/31", 31)]).unwrap();
        assert!(line.acquired());
    }

    #[test]
    fn replayed_events_from_before_the_scan_cannot_lengthen_the_line() {
        let mut line = Line::new("L/30".into(), 30);
        line.reset(&[key("L/30", 30)]).unwrap();
        // A lagging watch replays the life of a key ahead of us that the scan no longer saw.
        line.apply(&[put("L/10", 10)]).unwrap();
        line.apply(&[delete("L/10", 25)]).unwrap();
        assert!(line.acquired());
    }

    #[test]
    fn our_key_gone_means_the_lease_is_lost() {
        let mut line = Line::new("L/30".into(), 30);
        assert!(line.reset(&[key("L/10", 10)]).unwrap_err().contains("L/30"));
        line.reset(&[key("L/10", 10), key("L/30", 30)]).unwrap();
        let error = line.apply(&[delete("L/30", 44)]).unwrap_err();
        assert!(error.contains("deleted at revision 44"), "{error}");
    }

    #[test]
    fn a_rescan_replaces_the_line() {
        let mut line = Line::new("L/30".into(), 30);
        line.reset(&[key("L/10", 10), key("L/20", 20), key("L/30", 30)])
            .unwrap();
        line.reset(&[key("L/20", 20), key("L/30", 30)]).unwrap();
        assert_eq!(line.ahead(), Some(1));
    }

    fn parse(args: &[&str]) -> Result<LockArgs, clap::Error> {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["raftkv", "lock"].iter().chain(args))?;
        match cli.command {
            crate::cli::Command::Lock(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_command_and_its_flags_follow_the_name() {
        let args = parse(&["--ttl", "3s", "L", "--", "sh", "-c", "echo --ttl"]).unwrap();
        assert_eq!(args.name, "L");
        assert_eq!(args.ttl, Duration::from_secs(3));
        assert_eq!(args.command, ["sh", "-c", "echo --ttl"]);
        // Without `--`, everything from the first word after NAME is COMMAND's too.
        let args = parse(&["L", "ls", "-l", "--ttl", "1s"]).unwrap();
        assert_eq!(args.command, ["ls", "-l", "--ttl", "1s"]);
        assert_eq!(args.ttl, Duration::from_secs(15));
        assert!(parse(&["L"]).is_err(), "COMMAND is required");
    }

    #[test]
    fn every_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        crate::cli::Cli::command().debug_assert();
    }

    #[test]
    fn exit_codes_pass_on_commands_and_signals() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(15)), 143);
    }
}
