//! The replicated map itself: an ordered map of live values with an expiry index, and the
//! deterministic rules by which commands change it.
//!
//! Time only enters through `clock_ms`, the highest leader stamp applied so far, so every replica
//! applying the same entries reaches the same map. Expired keys stay in the map until an
//! `Expire` entry removes them, but no command or read treats them as present.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::types::{
    BatchOp, CasAction, Command, CommandResult, Expected, Proposal, PutOp, StoredValue,
};

#[derive(Debug, Clone, Default)]
pub struct KvMap {
    entries: BTreeMap<String, StoredValue>,
    /// (expiry, key) for every key with a TTL, so expiry finds its victims without a full scan.
    expiry: BTreeSet<(u64, String)>,
    value_bytes: u64,
    /// Highest leader stamp applied: the map's notion of "now".
    clock_ms: u64,
}

/// What a snapshot stores; the expiry index and byte count are rebuilt on load.
#[derive(Serialize, Deserialize)]
struct Image<'a> {
    clock_ms: u64,
    entries: std::borrow::Cow<'a, BTreeMap<String, StoredValue>>,
}

/// One page of a scan.
#[derive(Debug, Default)]
pub struct ScanPage {
    pub items: Vec<(String, StoredValue)>,
    /// First key after this page when more remain.
    pub next_start: Option<String>,
}

impl KvMap {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn value_bytes(&self) -> u64 {
        self.value_bytes
    }

    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// The key's value if it is live at `now_ms`.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<&StoredValue> {
        self.entries.get(key).filter(|v| v.is_live(now_ms))
    }

    /// Whether some key has expired by `now_ms` and awaits an `Expire` entry.
    pub fn has_expired(&self, now_ms: u64) -> bool {
        self.expiry.first().is_some_and(|(at, _)| *at <= now_ms)
    }

    /// Live keys from `start` (inclusive) up to `end` (exclusive, `None` = no bound), at most
    /// `limit` of them.
    pub fn scan(&self, start: &str, end: Option<&str>, limit: usize, now_ms: u64) -> ScanPage {
        let upper = match end {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        if end.is_some_and(|end| end <= start) {
            return ScanPage::default();
        }
        let mut page = ScanPage::default();
        let range = self
            .entries
            .range::<str, _>((Bound::Included(start), upper))
            .filter(|(_, v)| v.is_live(now_ms));
        for (key, value) in range {
            if page.items.len() == limit {
                page.next_start = Some(key.clone());
                break;
            }
            page.items.push((key.clone(), value.clone()));
        }
        page
    }

    fn insert(&mut self, key: String, value: StoredValue) -> bool {
        if let Some(at) = value.expires_at_ms {
            self.expiry.insert((at, key.clone()));
        }
        self.value_bytes += value.value.len() as u64;
        let old = self.entries.insert(key.clone(), value);
        self.forget(&key, old.as_ref())
    }

    fn remove(&mut self, key: &str) -> bool {
        let old = self.entries.remove(key);
        self.forget(key, old.as_ref())
    }

    /// Drops a replaced or removed value's accounting; returns whether it was live.
    fn forget(&mut self, key: &str, old: Option<&StoredValue>) -> bool {
        let Some(old) = old else { return false };
        self.value_bytes -= old.value.len() as u64;
        if let Some(at) = old.expires_at_ms {
            self.expiry.remove(&(at, key.to_string()));
        }
        old.is_live(self.clock_ms)
    }

    fn put(&mut self, op: PutOp, revision: u64) -> bool {
        let value = StoredValue {
            value: op.value,
            revision,
            expires_at_ms: op.expires_at_ms,
        };
        self.insert(op.key, value)
    }

    /// Applies one entry's proposal at log index `revision`.
    pub fn apply(&mut self, revision: u64, proposal: Proposal) -> CommandResult {
        self.clock_ms = self.clock_ms.max(proposal.stamp_ms);
        self.apply_command(revision, proposal.command)
    }

    fn apply_command(&mut self, revision: u64, command: Command) -> CommandResult {
        match command {
            Command::Multi(commands) => CommandResult::Multi(
                commands
                    .into_iter()
                    .map(|command| self.apply_command(revision, command))
                    .collect(),
            ),
            Command::Put(op) => CommandResult::Write {
                revision,
                existed: self.put(op, revision),
            },
            Command::Delete { key } => CommandResult::Write {
                revision,
                existed: self.remove(&key),
            },
            Command::Batch(ops) => {
                let existed = ops
                    .into_iter()
                    .map(|op| match op {
                        BatchOp::Put(op) => self.put(op, revision),
                        BatchOp::Delete { key } => self.remove(&key),
                    })
                    .collect();
                CommandResult::Batch { revision, existed }
            }
            Command::CompareAndSwap {
                key,
                expected,
                action,
            } => {
                let current = self.get(&key, self.clock_ms).cloned();
                let holds = match (&expected, &current) {
                    (Expected::Revision(0), None) => true,
                    (Expected::Revision(r), Some(v)) => v.revision == *r,
                    (Expected::Value(want), Some(v)) => v.value == *want,
                    _ => false,
                };
                if holds {
                    match action {
                        CasAction::Put {
                            value,
                            expires_at_ms,
                        } => {
                            let op = PutOp {
                                key,
                                value,
                                expires_at_ms,
                            };
                            self.put(op, revision);
                        }
                        CasAction::Delete => {
                            self.remove(&key);
                        }
                    }
                }
                CommandResult::CompareAndSwap {
                    revision,
                    succeeded: holds,
                    current: if holds { None } else { current },
                }
            }
            Command::Expire => {
                let mut removed = 0;
                while let Some((at, key)) = self.expiry.first().cloned() {
                    if at > self.clock_ms {
                        break;
                    }
                    self.remove(&key);
                    removed += 1;
                }
                CommandResult::Expire { revision, removed }
            }
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, bincode::Error> {
        super::codec::encode(&Image {
            clock_ms: self.clock_ms,
            entries: std::borrow::Cow::Borrowed(&self.entries),
        })
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, bincode::Error> {
        let image: Image = super::codec::decode(bytes)?;
        let mut map = KvMap {
            clock_ms: image.clock_ms,
            ..Default::default()
        };
        for (key, value) in image.entries.into_owned() {
            map.insert(key, value);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stamp_ms: u64, command: Command) -> Proposal {
        Proposal { stamp_ms, command }
    }

    fn put(key: &str, value: &str, expires_at_ms: Option<u64>) -> Command {
        Command::Put(PutOp {
            key: key.into(),
            value: value.into(),
            expires_at_ms,
        })
    }

    #[test]
    fn expired_keys_are_absent_and_removed_by_expire() {
        let mut map = KvMap::default();
        map.apply(1, at(100, put("a", "1", Some(150))));
        map.apply(2, at(100, put("b", "2", None)));
        assert!(map.get("a", 149).is_some());
        assert!(map.get("a", 150).is_none(), "expired at its expiry instant");
        assert!(map.has_expired(150));
        assert_eq!(map.scan("", None, 10, 200).items.len(), 1);

        let result = map.apply(3, at(200, Command::Expire));
        assert_eq!(
            result,
            CommandResult::Expire {
                revision: 3,
                removed: 1
            }
        );
        assert_eq!(map.len(), 1);
        assert!(!map.has_expired(10_000));
    }

    #[test]
    fn cas_on_revision_value_and_absence() {
        let mut map = KvMap::default();
        let create = |expected| Command::CompareAndSwap {
            key: "k".into(),
            expected,
            action: CasAction::Put {
                value: b"v1".to_vec(),
                expires_at_ms: None,
            },
        };
        let r = map.apply(1, at(0, create(Expected::Revision(0))));
        assert!(matches!(
            r,
            CommandResult::CompareAndSwap {
                succeeded: true,
                ..
            }
        ));
        let r = map.apply(2, at(0, create(Expected::Revision(0))));
        let CommandResult::CompareAndSwap {
            succeeded, current, ..
        } = r
        else {
            panic!()
        };
        assert!(!succeeded);
        assert_eq!(current.unwrap().revision, 1);
        let r = map.apply(3, at(0, create(Expected::Value(b"v1".to_vec()))));
        assert!(matches!(
            r,
            CommandResult::CompareAndSwap {
                succeeded: true,
                ..
            }
        ));
        let delete = Command::CompareAndSwap {
            key: "k".into(),
            expected: Expected::Revision(3),
            action: CasAction::Delete,
        };
        assert!(matches!(
            map.apply(4, at(0, delete)),
            CommandResult::CompareAndSwap {
                succeeded: true,
                ..
            }
        ));
        assert!(map.is_empty());
    }

    #[test]
    fn snapshot_round_trip_keeps_values_expiry_and_bytes() {
        let mut map = KvMap::default();
        map.apply(1, at(5, put("a", "xyz", Some(50))));
        map.apply(2, at(6, put("b", "pq", None)));
        let copy = KvMap::decode(&map.encode().unwrap()).unwrap();
        assert_eq!(copy.value_bytes(), 5);
        assert_eq!(copy.clock_ms(), 6);
        assert!(copy.has_expired(50));
        assert_eq!(copy.get("b", 0).unwrap().revision, 2);
    }

    #[test]
    fn multi_applies_in_order_with_one_revision_and_a_result_each() {
        let mut map = KvMap::default();
        let multi = Command::Multi(vec![
            put("a", "1", None),
            Command::CompareAndSwap {
                key: "a".into(),
                expected: Expected::Value(b"1".to_vec()),
                action: CasAction::Delete,
            },
            put("b", "2", None),
        ]);
        let CommandResult::Multi(results) = map.apply(7, at(0, multi)) else {
            panic!("a multi entry has one result per command")
        };
        assert_eq!(results.len(), 3);
        assert!(matches!(
            results[1],
            CommandResult::CompareAndSwap {
                succeeded: true,
                revision: 7,
                ..
            }
        ));
        assert!(map.get("a", 0).is_none(), "the CAS saw the put before it");
        assert_eq!(map.get("b", 0).unwrap().revision, 7);
    }

    #[test]
    fn scan_pages_and_bounds() {
        let mut map = KvMap::default();
        for (i, key) in ["a", "b", "c", "d"].iter().enumerate() {
            map.apply(i as u64 + 1, at(0, put(key, "v", None)));
        }
        let page = map.scan("a", Some("d"), 2, 0);
        assert_eq!(
            page.items
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(page.next_start.as_deref(), Some("c"));
        let page = map.scan("c", Some("d"), 2, 0);
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.next_start, None);
        assert!(map.scan("d", Some("a"), 2, 0).items.is_empty());
    }
}
