//! Micro-benchmarks of the two hot paths under every write: the state machine's apply and the
//! log store's append (encode + one sled batch + one flush), on a real sled directory.
//!
//! Run: `cargo bench --bench storage`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use raftkv::raft::Entry;
use raftkv::storage::kv_map::KvMap;
use raftkv::types::{Command, Proposal, PutOp};

const VALUE_BYTES: usize = 256;

fn put(i: u64) -> Proposal {
    Proposal {
        stamp_ms: 1,
        command: Command::Put(PutOp {
            key: format!("key-{:012}", i % 100_000),
            value: vec![b'v'; VALUE_BYTES],
            expires_at_ms: None,
        }),
    }
}

fn entry(index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(put(index)),
    }
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000 puts of 256 B into a 100k-key map", |b| {
        let mut map = KvMap::default();
        for i in 0..100_000 {
            map.apply(i + 1, put(i));
        }
        let next = std::cell::Cell::new(100_001u64);
        b.iter_batched(
            || (0..1000).map(|i| put(next.get() + i)).collect::<Vec<_>>(),
            |proposals| {
                for proposal in proposals {
                    map.apply(next.get(), proposal);
                    next.set(next.get() + 1);
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.throughput(Throughput::Elements(100_000));
    group.bench_function("encode a 100k-key snapshot", |b| {
        let mut map = KvMap::default();
        for i in 0..100_000 {
            map.apply(i + 1, put(i));
        }
        b.iter(|| map.encode().expect("encode"))
    });
    group.finish();
}

fn append(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let (log, _state_machine) = runtime
        .block_on(raftkv::storage::open(dir.path(), true))
        .expect("open sled store");
    let mut group = c.benchmark_group("append");
    for batch in [1u64, 64] {
        group.throughput(Throughput::Elements(batch));
        let mut next = 1u64;
        group.bench_function(format!("{batch} entries of 256 B + flush"), |b| {
            b.iter(|| {
                let entries: Vec<Entry> = (next..next + batch).map(entry).collect();
                next += batch;
                log.write_entries(entries).expect("write");
                runtime.block_on(log.flush_log()).expect("flush");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, apply, append);
criterion_main!(benches);
