//! The replicated lease table: which leases exist, their TTLs, and which keys each one holds.
//!
//! Only what every replica must agree on lives here. When a lease ends is not: the leader
//! keeps each lease's countdown on its own monotonic clock (`crate::lease`) and ends a lease by
//! proposing its revocation, so expiry reaches every replica as the same log entry.
//!
//! A key belongs to at most one lease: a put with a lease moves the key to it, a put without a
//! lease and any removal (delete, TTL expiry, the lease's own end) detach it. Ids come from a
//! counter that is part of the image, so an id is never reused, even after every lease is gone
//! and the table is restored from a snapshot: a client that still holds an ended lease's id
//! cannot renew a stranger's lease with it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// One lease as the table holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    /// The TTL it was granted with, in milliseconds: each renewal restarts the countdown at it.
    pub ttl_ms: u64,
    /// Keys attached to it, in key order.
    pub keys: BTreeSet<Box<[u8]>>,
}

#[derive(Debug, Clone, Default)]
pub struct LeaseTable {
    leases: BTreeMap<u64, Lease>,
    /// The lease of every attached key.
    owner: HashMap<Box<[u8]>, u64>,
    /// Highest id granted so far.
    last_id: u64,
    /// Bytes of all attached keys, which with the counts sizes the image without a walk.
    attached_key_bytes: u64,
}

/// A lease's summary for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSummary {
    pub id: u64,
    pub ttl_ms: u64,
    pub keys: u64,
}

impl LeaseTable {
    /// Whether the table has nothing an image must carry (no lease, and no id ever granted).
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty() && self.last_id == 0
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn get(&self, id: u64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Every lease, in id order.
    pub fn list(&self) -> Vec<LeaseSummary> {
        self.leases
            .iter()
            .map(|(&id, lease)| LeaseSummary {
                id,
                ttl_ms: lease.ttl_ms,
                keys: lease.keys.len() as u64,
            })
            .collect()
    }

    /// Creates a lease and returns its id, one above every id granted before.
    pub fn grant(&mut self, ttl_ms: u64) -> u64 {
        self.last_id += 1;
        self.leases.insert(
            self.last_id,
            Lease {
                ttl_ms,
                keys: BTreeSet::new(),
            },
        );
        self.last_id
    }

    /// Makes `key` belong to `lease` (which must exist), or to no lease for `None`.
    pub fn attach(&mut self, key: &[u8], lease: Option<u64>) {
        self.detach(key);
        let Some(id) = lease else { return };
        let Some(entry) = self.leases.get_mut(&id) else {
            return;
        };
        entry.keys.insert(Box::from(key));
        self.owner.insert(Box::from(key), id);
        self.attached_key_bytes += key.len() as u64;
    }

    /// Detaches `key` from its lease, if it has one.
    pub fn detach(&mut self, key: &[u8]) {
        let Some(id) = self.owner.remove(key) else {
            return;
        };
        self.attached_key_bytes -= key.len() as u64;
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.remove(key);
        }
    }

    /// Ends a lease: removes it and detaches its keys, which are returned for the caller to
    /// delete. `None` when the lease does not exist.
    pub fn end(&mut self, id: u64) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        for key in &lease.keys {
            self.owner.remove(key);
            self.attached_key_bytes -= key.len() as u64;
        }
        Some(lease)
    }

    /// Exact length of the encoded [`LeaseTable::image`]: the id counter and the lease count,
    /// then per lease its id, TTL and key count, and per key a u64 length and its bytes.
    pub fn image_len(&self) -> u64 {
        8 + 8
            + 24 * self.leases.len() as u64
            + 8 * self.owner.len() as u64
            + self.attached_key_bytes
    }

    /// The table's part of a snapshot image.
    pub fn image(&self) -> LeasesImage {
        LeasesImage {
            last_id: self.last_id,
            leases: self
                .leases
                .iter()
                .map(|(&id, lease)| LeaseImage {
                    id,
                    ttl_ms: lease.ttl_ms,
                    keys: lease
                        .keys
                        .iter()
                        .map(|k| serde_bytes::ByteBuf::from(k.to_vec()))
                        .collect(),
                })
                .collect(),
        }
    }

    /// The table an image describes. `is_key` says whether a key is in the map: a key the image
    /// attaches but the map lacks (only a damaged image could say so) is left out, so that a
    /// lease never holds a key it cannot delete; a key listed under two leases keeps the later.
    pub fn from_image(image: LeasesImage, is_key: impl Fn(&[u8]) -> bool) -> Self {
        let mut table = LeaseTable {
            last_id: image.last_id,
            ..Default::default()
        };
        for lease in image.leases {
            table.last_id = table.last_id.max(lease.id);
            table.leases.insert(
                lease.id,
                Lease {
                    ttl_ms: lease.ttl_ms,
                    keys: BTreeSet::new(),
                },
            );
            for key in lease.keys {
                if is_key(&key) {
                    table.attach(&key, Some(lease.id));
                }
            }
        }
        table
    }
}

/// The lease table in a snapshot image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeasesImage {
    last_id: u64,
    leases: Vec<LeaseImage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseImage {
    id: u64,
    ttl_ms: u64,
    keys: Vec<serde_bytes::ByteBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::codec;

    #[test]
    fn a_key_belongs_to_one_lease_at_a_time() {
        let mut table = LeaseTable::default();
        let a = table.grant(1000);
        let b = table.grant(2000);
        assert_eq!((a, b), (1, 2));
        table.attach(b"k", Some(a));
        table.attach(b"k", Some(b));
        assert!(table.get(a).is_some_and(|l| l.keys.is_empty()));
        assert_eq!(table.get(b).map(|l| l.keys.len()), Some(1));
        table.attach(b"k", None);
        assert!(table.get(b).is_some_and(|l| l.keys.is_empty()));
        assert_eq!(
            table.image_len(),
            codec::encode(&table.image()).unwrap().len() as u64
        );
    }

    #[test]
    fn ids_are_never_reused_after_an_image_round_trip() {
        let mut table = LeaseTable::default();
        let id = table.grant(1000);
        table.attach(b"x", Some(id));
        assert_eq!(table.end(id).map(|l| l.keys.len()), Some(1));
        assert!(!table.is_empty(), "the counter alone must be imaged");
        let image = codec::encode(&table.image()).unwrap();
        assert_eq!(image.len() as u64, table.image_len());
        let mut restored = LeaseTable::from_image(codec::decode(&image).unwrap(), |_| true);
        assert_eq!(restored.grant(1000), id + 1);
    }

    #[test]
    fn an_image_round_trip_keeps_leases_and_keys() {
        let mut table = LeaseTable::default();
        let a = table.grant(1000);
        let b = table.grant(5000);
        table.attach(b"one", Some(a));
        table.attach(b"two", Some(a));
        table.attach(b"three", Some(b));
        let image = codec::encode(&table.image()).unwrap();
        assert_eq!(image.len() as u64, table.image_len());
        let restored = LeaseTable::from_image(codec::decode(&image).unwrap(), |k| k != b"two");
        assert_eq!(restored.get(a).map(|l| l.keys.len()), Some(1));
        assert_eq!(restored.list(), {
            let mut expected = table.list();
            expected[0].keys = 1;
            expected
        });
    }
}
