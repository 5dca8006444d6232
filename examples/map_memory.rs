//! Memory per entry of the state machine's map, measured as growth of this process's resident
//! set (so malloc's rounding and the tree's nodes are included).
//!
//! Run: `cargo run --release --example map_memory -- [applied|decoded|encode|old] [entries]`
//! - `applied`: keys inserted in ascending order through `Batch` commands of 500 puts, as
//!   `raftkv bench` prepopulates a cluster;
//! - `decoded`: the same map after a snapshot round trip (how a node holds it after a restart);
//! - `old`: the `BTreeMap<String, StoredValue>` layout the map used before, filled the same way;
//! - `encode`: the decoded map encoded once into a snapshot image, which is what the state
//!   machine does under its read lock (apply waits for it). Count its instructions with
//!   `valgrind --tool=callgrind --toggle-collect='*KvMap*encode*' target/release/examples/map_memory encode`
//!   (no timing: the benchmark machine is shared).
//!
//! Keys are 16 bytes and values 256 bytes, as `raftkv bench --keys 1000000` writes them.

use std::collections::BTreeMap;

use raftkv::storage::kv_map::KvMap;
use raftkv::types::{BatchOp, Command, Proposal, PutOp, StoredValue};

const VALUE_BYTES: usize = 256;
const BATCH: u64 = 500;

fn key(n: u64) -> String {
    format!("k{n:015}")
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn applied(entries: u64) -> KvMap {
    let mut map = KvMap::default();
    for start in (0..entries).step_by(BATCH as usize) {
        let ops = (start..(start + BATCH).min(entries))
            .map(|n| {
                BatchOp::Put(PutOp {
                    key: key(n),
                    value: vec![b'v'; VALUE_BYTES],
                    expires_at_ms: None,
                })
            })
            .collect();
        let proposal = Proposal {
            stamp_ms: 1,
            command: Command::Batch(ops),
        };
        map.apply(start / BATCH + 1, proposal);
    }
    map
}

fn old(entries: u64) -> BTreeMap<String, StoredValue> {
    let mut map = BTreeMap::new();
    for n in 0..entries {
        let value = StoredValue {
            value: vec![b'v'; VALUE_BYTES],
            revision: n / BATCH + 1,
            expires_at_ms: None,
        };
        map.insert(key(n), value);
    }
    map
}

/// A snapshot image written by hand (bincode, fixed-width integers: clock, entry count, then per
/// entry key, value, revision and an absent expiry), so that no map is built and freed before
/// the decode is measured: its freed memory would be reused and hide the decoded map's growth.
fn image(entries: u64) -> Vec<u8> {
    let entry_len = 8 + 16 + 8 + VALUE_BYTES + 8 + 1;
    let mut out = Vec::with_capacity(16 + entries as usize * entry_len);
    out.extend_from_slice(&1u64.to_le_bytes());
    out.extend_from_slice(&entries.to_le_bytes());
    for n in 0..entries {
        out.extend_from_slice(&16u64.to_le_bytes());
        out.extend_from_slice(key(n).as_bytes());
        out.extend_from_slice(&(VALUE_BYTES as u64).to_le_bytes());
        out.extend_from_slice(&[b'v'; VALUE_BYTES]);
        out.extend_from_slice(&(n / BATCH + 1).to_le_bytes());
        out.push(0);
    }
    out
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "applied".into());
    let entries: u64 = args
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let before = rss_kib();
    let len = match mode.as_str() {
        "applied" => {
            let map = applied(entries);
            report(&mode, entries, before);
            map.len()
        }
        "decoded" => {
            // Measured from before the image exists: it is one mmap, returned when dropped.
            let image = image(entries);
            let map = KvMap::decode(&image).expect("decode");
            drop(image);
            report(&mode, entries, before);
            map.len()
        }
        "encode" => {
            let map = KvMap::decode(&image(entries)).expect("decode");
            let encoded = map.encode().expect("encode");
            println!("encode: image of {} bytes", encoded.len());
            map.len()
        }
        "old" => {
            let map = old(entries);
            report(&mode, entries, before);
            map.len()
        }
        other => {
            eprintln!("unknown mode {other:?}: applied, decoded, encode or old");
            std::process::exit(2);
        }
    };
    assert_eq!(len as u64, entries);
}

fn report(mode: &str, entries: u64, before_kib: u64) {
    let grown = rss_kib().saturating_sub(before_kib) * 1024;
    let raw = entries * (16 + VALUE_BYTES as u64);
    println!(
        "{mode}: {entries} entries, RSS grew {} MiB = {} bytes/entry ({:.2}x the {} raw bytes/entry)",
        grown >> 20,
        grown / entries.max(1),
        grown as f64 / raw.max(1) as f64,
        16 + VALUE_BYTES
    );
}
