//! Failpoints: named places in the code where a test can make a rare window happen every time
//! (a crash right before a flush, a delay between two writes that a crash must not separate).
//!
//! They are compiled in only with the `failpoints` cargo feature (tikv/fail-rs); without it every
//! point is nothing at all. A node reads its configuration at start from `RAFTKV_FAILPOINTS`,
//! in fail-rs's syntax: `name=action;name=action`, for example
//! `RAFTKV_FAILPOINTS='log-flush-before=sleep(150)'`, or `log-flush-before=3*off->crash` to
//! crash on the fourth pass.
//! Besides fail-rs's own actions (`sleep(ms)`, `pause`, `panic`, `print`, `off`, counts and
//! probabilities), a point placed with [`crash_point`] ends the process with SIGKILL when its
//! action is `return` (spelt `crash` here for readability): no destructor runs and nothing
//! buffered in the process reaches the disk, exactly as with `kill -9`.
//!
//! The names, each documented where it is placed:
//! - `log-flush-before`: the log flusher thread, after a batch of appends is written and before
//!   sled flushes it (`sleep(ms)` there keeps a leader's own new entries off its disk that long);
//! - `log-write-between-pieces`: half way through writing the pieces of an append;
//! - `log-truncate-between-spans`: half way through a truncation that drops several spans;
//! - `purge-before-remove`: after the purge marker is durable, before entries are removed;
//! - `snapshot-install-before-manifest`: a snapshot's image is written, its manifest not yet
//!   (`sleep` holds an install open while openraft's purge for it runs);
//! - `snapshot-install-crash`: right after the previous one, for `crash`;
//! - `clock-skew-ms`: `return(MS)` shifts this node's wall clock by MS (negative: behind);
//! - `expiry-skip`: `return` keeps the leader from proposing `Expire` entries;
//! - `write-answer-before`: the leader has applied a client's write and not yet answered it
//!   (`crash` there loses the answer of a committed write).

/// Configures the failpoints named in `RAFTKV_FAILPOINTS`. An error names the bad part; a build
/// without the `failpoints` feature refuses a non-empty setting rather than ignore it silently.
pub fn configure_from_env() -> Result<(), String> {
    let Ok(setting) = std::env::var("RAFTKV_FAILPOINTS") else {
        return Ok(());
    };
    if setting.trim().is_empty() {
        return Ok(());
    }
    if !cfg!(feature = "failpoints") {
        return Err(
            "RAFTKV_FAILPOINTS is set, but this raftkv was built without the `failpoints` \
             feature (cargo build --features failpoints)"
                .to_string(),
        );
    }
    for part in setting.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, actions) = part.split_once('=').ok_or_else(|| {
            format!("RAFTKV_FAILPOINTS: `{part}` is not of the form name=actions")
        })?;
        let actions = actions.trim().replace("crash", "return");
        fail::cfg(name.trim(), &actions)
            .map_err(|e| format!("RAFTKV_FAILPOINTS: failpoint `{name}`: {e}"))?;
    }
    tracing::warn!(failpoints = %setting, "failpoints configured: this node will misbehave on purpose");
    Ok(())
}

/// Kills this process with SIGKILL, as `kill -9` would: for the crash failpoints.
pub fn crash_now(name: &str) -> ! {
    eprintln!("failpoint {name}: crashing with SIGKILL");
    // SAFETY: raising a signal has no memory-safety preconditions.
    unsafe {
        libc::raise(libc::SIGKILL);
    }
    std::process::abort()
}

/// A failpoint that can also crash the process: `return`/`crash` kills it with SIGKILL, every
/// other fail-rs action (sleep, pause, print, panic) behaves as fail-rs defines it.
pub fn crash_point(name: &str) {
    let _ = name;
    fail::fail_point!(name, |_| crash_now(name));
}
