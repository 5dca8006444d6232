//! `raftkv elect NAME VALUE`: campaigns to be the leader of NAME and prints who leads, until
//! interrupted; `raftkv elect NAME --listen` only prints who leads.
//!
//! A campaigner holds a lease and the key `NAME/<lease id>` = VALUE written with it (the same
//! [`Campaign`] as `raftkv lock`). The leader is the campaigner whose key has the lowest
//! revision: the oldest one still there. Who that is comes from a watch of `NAME/` and a scan
//! after it ([`Candidates`]), and a line is printed each time it changes. A leader whose lease
//! renewals fail for 2/3 of the TTL can no longer be sure it leads, so it exits (code 3) rather
//! than go on printing its own VALUE while another campaigner may already print theirs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use super::emit_line;
use crate::cli::client::{CliError, Client};
use crate::cli::session::{Campaign, Follower, Interrupts, Update};
use crate::cli::{exit, ClientOpts};
use crate::proto::v1::{watch_event::Kind, KeyValue, WatchEvent};
use crate::text::{format_duration, parse_duration, values};

#[derive(Args, Debug)]
#[command(after_long_help = "\
Campaigns to lead NAME with VALUE, and prints the leader's VALUE on stdout, one line each time
the leader changes (including when this campaigner becomes the leader). Campaigners lead in the
order they started; when the leader stops (Ctrl-C, SIGTERM) or dies, the next one leads: at
once after a clean stop, within --ttl after a crash (the leader's lease has to expire first).

With --listen it only prints the leader's VALUE as it changes, without campaigning.

How it works: each campaigner holds a lease (--ttl), kept alive by this client, and the key
NAME/<lease id> = VALUE written with it; the leader is the oldest such key. If renewals fail
for 2/3 of --ttl while this campaigner leads (the cluster is unreachable, this machine was
stopped), its lease may be gone, so it stops claiming to lead and exits 3.

Exit codes:
  0     stopped by Ctrl-C, SIGTERM or SIGHUP (the campaign's lease is revoked on the way out)
  3     the campaign's lease was lost, or the cluster could not be reached to start
  2     bad usage (e.g. --ttl under 1s)")]
pub struct ElectArgs {
    /// The election's name; campaigners' keys are NAME/<lease id>.
    pub name: String,

    /// What this campaigner prints (and every other prints) while it leads.
    #[arg(required_unless_present = "listen", conflicts_with = "listen")]
    pub value: Option<String>,

    /// Only print the leader's VALUE as it changes; do not campaign.
    #[arg(long)]
    pub listen: bool,

    /// The campaign lease's TTL: how long after this client dies the next one leads. A leader
    /// that sees no renewal confirmed for 2/3 of it gives up, so a cluster failover longer than
    /// about a third of it costs the leadership.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub ttl: Duration,

    #[command(flatten)]
    pub client: ClientOpts,
}

/// One campaigner's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub revision: u64,
    pub value: Vec<u8>,
}

/// The campaigners under NAME/: a scan, then the watch's changes.
///
/// The watch may replay changes from before the scan (see `cli::session`). A replayed PUT can
/// only be of a key created and deleted before the scan. `floor` is a revision the scan is
/// known to be at or past (the highest revision it returned, or our own key's): a PUT at or
/// below it of a key the scan lacked is such a replay, and is ignored. Above it, a replay can
/// only add a key younger than every key the scan saw, which leads only if the scan was empty,
/// until its DELETE, which follows in the same stream.
#[derive(Debug, Default)]
pub struct Candidates {
    keys: BTreeMap<String, Candidate>,
    floor: u64,
}

impl Candidates {
    /// Starts again from a scan; `floor` is at most the revision the scan read at.
    pub fn reset(&mut self, snapshot: Vec<KeyValue>, floor: u64) {
        self.floor = snapshot
            .iter()
            .map(|kv| kv.revision)
            .max()
            .unwrap_or(0)
            .max(floor);
        self.keys = snapshot
            .into_iter()
            .map(|kv| {
                let candidate = Candidate {
                    revision: kv.revision,
                    value: kv.value,
                };
                (kv.key, candidate)
            })
            .collect();
    }

    pub fn apply(&mut self, event: &WatchEvent) {
        match Kind::try_from(event.kind) {
            Ok(Kind::Delete) => {
                self.keys.remove(&event.key);
            }
            _ => match self.keys.get_mut(&event.key) {
                Some(known) if event.revision > known.revision => {
                    known.revision = event.revision;
                    known.value = event.value.clone();
                }
                Some(_) => {}
                None if event.revision <= self.floor => {}
                None => {
                    let candidate = Candidate {
                        revision: event.revision,
                        value: event.value.clone(),
                    };
                    self.keys.insert(event.key.clone(), candidate);
                }
            },
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// The leader: the key with the lowest revision (the oldest campaigner still there).
    pub fn leader(&self) -> Option<(&str, &Candidate)> {
        self.keys
            .iter()
            .min_by_key(|(key, candidate)| (candidate.revision, key.as_str()))
            .map(|(key, candidate)| (key.as_str(), candidate))
    }
}

pub async fn elect(args: ElectArgs) -> Result<(), CliError> {
    let mut interrupts = Interrupts::catch()?;
    if args.name.is_empty() {
        return Err(super::usage("the election NAME cannot be empty"));
    }
    let client = Arc::new(Client::new(&args.client)?);
    let prefix = format!("{}/", args.name);
    let campaign = match &args.value {
        Some(value) if !args.listen => {
            let value = value.clone().into_bytes();
            tokio::select! {
                campaign = Campaign::start(&client, &prefix, value, args.ttl) => Some(campaign?),
                code = interrupts.recv() => return Err(CliError::quiet(code)),
            }
        }
        _ => None,
    };
    let outcome = follow(&args, &client, prefix, campaign.as_ref(), &mut interrupts)
        .await
        // Said at once: the resignation below may take a while when the cluster is unreachable.
        .map_err(CliError::report_now);
    if let Some(campaign) = campaign {
        campaign.resign().await;
    }
    outcome
}

/// Prints the leader each time it changes, until a signal (Ok) or the campaign's loss (Err).
async fn follow(
    args: &ElectArgs,
    client: &Arc<Client>,
    prefix: String,
    campaign: Option<&Campaign>,
    interrupts: &mut Interrupts,
) -> Result<(), CliError> {
    let lost = |reason: String| {
        CliError::new(
            exit::UNAVAILABLE,
            format!("lost the campaign for {}: {reason}", args.name),
        )
    };
    let mut keepalive = campaign.map(|c| c.keepalive.subscribe());
    let mut follower = Follower::start(client.clone(), prefix);
    let mut candidates = Candidates::default();
    let mut printed: Option<String> = None;
    let mut scanned = false;
    loop {
        if scanned {
            if let Some(campaign) = campaign {
                if !candidates.contains(&campaign.key) {
                    return Err(lost(format!("its key {} is gone", campaign.key)));
                }
            }
            if let Some((key, leader)) = candidates.leader() {
                if printed.as_deref() != Some(key) {
                    emit_line(&values::text(&leader.value))?;
                    printed = Some(key.to_string());
                }
            }
        }
        let leading = campaign.is_some_and(|c| printed.as_deref() == Some(c.key.as_str()));
        // While this campaigner leads, its lease must be certainly alive.
        let safe_until = match (&keepalive, leading) {
            (Some(keepalive), true) => {
                let state = keepalive.now();
                match state.safe_until() {
                    Some(until) if state.is_safe(Instant::now()) => Some(until),
                    _ => {
                        let reason = match &state.ended {
                            Some(ended) => ended.message.clone(),
                            None => format!(
                                "no renewal of its lease confirmed for {} (ttl {}); it may \
                                 have expired",
                                state.since_renewal(Instant::now()),
                                format_duration(args.ttl)
                            ),
                        };
                        return Err(lost(reason));
                    }
                }
            }
            _ => None,
        };
        tokio::select! {
            update = follower.next() => match update? {
                Update::Snapshot(snapshot) => {
                    candidates.reset(snapshot, campaign.map_or(0, |c| c.revision));
                    scanned = true;
                }
                Update::Events(events) => events.iter().for_each(|e| candidates.apply(e)),
            },
            state = async {
                match keepalive.as_mut() {
                    Some(keepalive) => keepalive.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(ended) = state.ended {
                    return Err(lost(ended.message));
                }
            }
            () = async {
                match safe_until {
                    Some(until) => tokio::time::sleep_until(until.into()).await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = interrupts.recv() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, revision: u64, value: &str) -> KeyValue {
        KeyValue {
            key: name.into(),
            value: value.into(),
            revision,
            ..Default::default()
        }
    }

    fn event(kind: Kind, name: &str, revision: u64, value: &str) -> WatchEvent {
        WatchEvent {
            kind: kind as i32,
            key: name.into(),
            value: value.into(),
            revision,
            ..Default::default()
        }
    }

    fn leader(candidates: &Candidates) -> Option<String> {
        candidates
            .leader()
            .map(|(_, c)| String::from_utf8_lossy(&c.value).into_owned())
    }

    #[test]
    fn the_oldest_key_leads_and_the_next_takes_over_when_it_goes() {
        let mut candidates = Candidates::default();
        candidates.reset(vec![key("E/9", 20, "b"), key("E/7", 10, "a")], 0);
        assert_eq!(leader(&candidates).as_deref(), Some("a"));
        candidates.apply(&event(Kind::Put, "E/11", 30, "c"));
        assert_eq!(leader(&candidates).as_deref(), Some("a"));
        candidates.apply(&event(Kind::Delete, "E/7", 31, ""));
        assert_eq!(leader(&candidates).as_deref(), Some("b"));
        candidates.apply(&event(Kind::Delete, "E/9", 32, ""));
        candidates.apply(&event(Kind::Delete, "E/11", 33, ""));
        assert_eq!(leader(&candidates), None);
    }

    #[test]
    fn a_replayed_put_from_before_the_scan_does_not_come_back() {
        let mut candidates = Candidates::default();
        // Our key is at 20; the scan shows it alone. A lagging watch replays a key created at
        // 5 and deleted before the scan: it must not lead, not even until its DELETE arrives.
        candidates.reset(vec![key("E/9", 20, "me")], 20);
        candidates.apply(&event(Kind::Put, "E/3", 5, "old"));
        assert_eq!(leader(&candidates).as_deref(), Some("me"));
        candidates.apply(&event(Kind::Delete, "E/3", 8, ""));
        // A key that is already known is not moved by a replay of its own write.
        candidates.apply(&event(Kind::Put, "E/9", 20, "me"));
        assert_eq!(
            candidates.leader().map(|(k, c)| (k, c.revision)),
            Some(("E/9", 20))
        );
    }

    #[test]
    fn a_rescan_replaces_what_was_known() {
        let mut candidates = Candidates::default();
        candidates.reset(vec![key("E/1", 10, "a"), key("E/2", 12, "b")], 0);
        candidates.reset(vec![key("E/2", 12, "b")], 0);
        assert_eq!(leader(&candidates).as_deref(), Some("b"));
        assert!(!candidates.contains("E/1"));
    }
}
