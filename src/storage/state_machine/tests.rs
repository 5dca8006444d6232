//! Snapshots on real sled directories: chunked storage, restart, conversion of the old one-value
//! form, crash leftovers and damage.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::{CommittedLeaderId, Membership};
use serde::Serialize;

use super::snapshot_store::chunk_key;
use super::*;
use crate::storage::test_support::{open_when_unlocked, raw_db};
use crate::storage::{codec, OpenError};
use crate::types::{Command, Proposal, PutOp};

const VALUE_BYTES: usize = 256;

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn put_entry(index: u64, key: &str) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Proposal {
            stamp_ms: index,
            command: Command::Put(PutOp {
                key: key.into(),
                value: vec![index as u8; VALUE_BYTES],
                // Some with a TTL, far in the future: readers judge expiry by the real clock.
                expires_at_ms: (index % 3 == 0).then_some(4_000_000_000_000 + index),
            }),
        }),
    }
}

fn membership_entry(index: u64) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1, 2, 3])], None)),
    }
}

/// `count` puts after a membership entry at index 1: keys `key-00000`…, indexes from 2.
async fn fill(sm: &mut StateMachineStore, count: u64) {
    let mut entries = vec![membership_entry(1)];
    entries.extend((0..count).map(|i| put_entry(i + 2, &format!("key-{i:05}"))));
    sm.apply(entries).await.expect("apply");
}

/// Opens the data dir in a runtime of its own, runs `work`, and drops everything (runtime, log
/// flusher, sled handles) before returning, so the directory can be opened again.
fn session<T>(dir: &Path, work: impl AsyncFnOnce(StateMachineStore) -> T) -> T {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let (_log, sm) = open_when_unlocked(dir).await.expect("open the data dir");
        work(sm).await
    })
}

fn open_error(dir: &Path) -> String {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(open_when_unlocked(dir)) {
        Ok(_) => panic!("opening a damaged data dir succeeded"),
        Err(e @ OpenError::Damaged { .. }) => e.to_string(),
        Err(e) => panic!("unexpected kind of open error: {e}"),
    }
}

fn chunk_keys(dir: &Path) -> Vec<(u64, u64)> {
    let db = raw_db(dir);
    let tree = db.open_tree("snapshot_chunks").expect("chunk tree");
    tree.iter()
        .keys()
        .map(|key| {
            let key = key.expect("read chunk key");
            let (generation, index) = key.split_at(8);
            (
                u64::from_be_bytes(generation.try_into().expect("8 bytes")),
                u64::from_be_bytes(index.try_into().expect("8 bytes")),
            )
        })
        .collect()
}

async fn build(sm: &mut StateMachineStore) -> Snapshot<TypeConfig> {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build snapshot")
}

fn chunks_for(len: usize) -> u64 {
    len.div_ceil(CHUNK_BYTES) as u64
}

#[test]
fn a_snapshot_is_stored_in_chunks_and_reloaded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let built = session(dir.path(), async |mut sm| {
        fill(&mut sm, 2_000).await;
        let built = build(&mut sm).await;
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a snapshot");
        assert_eq!(current.meta, built.meta);
        assert_eq!(current.snapshot.get_ref(), built.snapshot.get_ref());
        built
    });
    let image = built.snapshot.into_inner();
    assert!(
        image.len() > 8 * CHUNK_BYTES,
        "the test spans several chunks"
    );
    let expected: Vec<_> = (0..chunks_for(image.len())).map(|i| (1, i)).collect();
    assert_eq!(chunk_keys(dir.path()), expected);

    session(dir.path(), async |mut sm| {
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(2_001)));
        assert_eq!(membership, built.meta.last_membership);
        let reader = sm.reader();
        assert_eq!(reader.stats(), (2_000, 2_000 * VALUE_BYTES as u64));
        let (value, _) = reader.get("key-01999");
        assert_eq!(value.expect("key-01999").revision, 2_001);
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a snapshot");
        assert_eq!(current.meta, built.meta);
        assert_eq!(current.snapshot.into_inner(), image);
    });
}

#[test]
fn a_new_snapshot_replaces_the_chunks_of_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let len = session(dir.path(), async |mut sm| {
        fill(&mut sm, 1_000).await;
        build(&mut sm).await;
        sm.apply([put_entry(5_000, "zz")]).await.unwrap();
        build(&mut sm).await.snapshot.into_inner().len()
    });
    let expected: Vec<_> = (0..chunks_for(len)).map(|i| (2, i)).collect();
    assert_eq!(chunk_keys(dir.path()), expected);
}

#[test]
fn an_installed_snapshot_is_stored_and_survives_restart() {
    let leader = tempfile::tempdir().unwrap();
    let follower = tempfile::tempdir().unwrap();
    let built = session(leader.path(), async |mut sm| {
        fill(&mut sm, 500).await;
        build(&mut sm).await
    });
    session(follower.path(), async |mut sm| {
        fill(&mut sm, 10).await;
        let mut data = sm.begin_receiving_snapshot().await.unwrap();
        *data = *built.snapshot.clone();
        sm.install_snapshot(&built.meta, data).await.unwrap();
        assert_eq!(sm.reader().stats().0, 500);
    });
    session(follower.path(), async |mut sm| {
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(501)));
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a snapshot");
        assert_eq!(current.meta, built.meta);
        assert_eq!(current.snapshot.get_ref(), built.snapshot.get_ref());
    });
}

#[test]
fn a_damaged_image_is_not_installed() {
    let dir = tempfile::tempdir().unwrap();
    session(dir.path(), async |mut sm| {
        fill(&mut sm, 10).await;
        let meta = build(&mut sm).await.meta;
        let mut newer = meta.clone();
        newer.last_log_id = Some(log_id(100));
        let garbage = Box::new(Cursor::new(vec![1, 2, 3]));
        assert!(sm.install_snapshot(&newer, garbage).await.is_err());
        assert_eq!(sm.reader().stats().0, 10);
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a snapshot");
        assert_eq!(current.meta, meta, "the stored snapshot is unchanged");
    });
}

#[test]
fn an_older_snapshot_never_replaces_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    session(dir.path(), async |mut sm| {
        fill(&mut sm, 10).await;
        // Captured first, stored last: as when an install overtakes a slow build.
        let mut older = sm.get_snapshot_builder().await;
        sm.apply([put_entry(100, "later")]).await.unwrap();
        let newer = build(&mut sm).await;
        let stale = older
            .build_snapshot()
            .await
            .expect("the stale build still succeeds");
        assert!(stale.meta.last_log_id < newer.meta.last_log_id);
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a snapshot");
        assert_eq!(current.meta, newer.meta);
    });
}

/// What versions before chunking stored under `snapshot`/`current`, with the map image encoded
/// from a `BTreeMap<String, StoredValue>` as they did.
#[derive(Serialize)]
struct OldImage {
    clock_ms: u64,
    entries: BTreeMap<String, StoredValue>,
}

fn old_snapshot() -> StoredSnapshot {
    let entries = (0..300u64)
        .map(|i| {
            let value = StoredValue {
                value: vec![i as u8; VALUE_BYTES],
                revision: i + 2,
                expires_at_ms: (i % 2 == 0).then_some(50_000 + i),
            };
            (format!("old-{i:04}"), value)
        })
        .collect();
    let image = OldImage {
        clock_ms: 42,
        entries,
    };
    let mut membership = BTreeSet::new();
    membership.insert(1);
    StoredSnapshot {
        meta: SnapshotMeta {
            last_log_id: Some(log_id(301)),
            last_membership: StoredMembership::new(
                Some(log_id(1)),
                Membership::new(vec![membership], None),
            ),
            snapshot_id: "1-1-301-old".into(),
        },
        data: codec::encode(&image).unwrap(),
    }
}

/// A data dir as the previous version leaves it: created by `storage::open` (so sled's
/// configuration is the current one), then the one-value snapshot written with sled directly.
fn write_old_form(dir: &Path, value: &[u8]) {
    session(dir, async |_| ());
    let db = raw_db(dir);
    let tree = db.open_tree("snapshot").unwrap();
    tree.insert("current", value).unwrap();
    db.flush().unwrap();
}

#[test]
fn a_snapshot_in_the_old_one_value_form_loads_and_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let old = old_snapshot();
    write_old_form(dir.path(), &codec::encode(&old).unwrap());

    for _restart in 0..2 {
        session(dir.path(), async |mut sm| {
            assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(301)));
            let reader = sm.reader();
            assert_eq!(reader.stats(), (300, 300 * VALUE_BYTES as u64));
            let (value, _) = reader.get("old-0007");
            assert_eq!(value.expect("old-0007").revision, 9);
            assert!(reader.has_expired(50_000));
            let current = sm
                .get_current_snapshot()
                .await
                .unwrap()
                .expect("a snapshot");
            assert_eq!(current.meta, old.meta);
            assert_eq!(current.snapshot.get_ref(), &old.data, "same image bytes");
        });
    }
    let db = raw_db(dir.path());
    let tree = db.open_tree("snapshot").unwrap();
    assert!(
        tree.get("current").unwrap().is_none(),
        "the old value is gone"
    );
}

#[test]
fn a_damaged_old_form_snapshot_is_reported_at_open() {
    let dir = tempfile::tempdir().unwrap();
    write_old_form(dir.path(), b"\x05not a snapshot");
    let error = open_error(dir.path());
    assert!(
        error.contains("snapshot (old format) is damaged"),
        "{error}"
    );
}

/// Builds a snapshot of 1,000 keys in a fresh data dir and returns its length.
fn dir_with_snapshot(dir: &Path) -> usize {
    session(dir, async |mut sm| {
        fill(&mut sm, 1_000).await;
        build(&mut sm).await.snapshot.into_inner().len()
    })
}

#[test]
fn chunks_left_by_an_interrupted_write_are_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let len = dir_with_snapshot(dir.path());
    {
        // A crash while writing generation 2: some chunks, no manifest yet.
        let db = raw_db(dir.path());
        let tree = db.open_tree("snapshot_chunks").unwrap();
        for index in 0..3u64 {
            tree.insert(chunk_key(2, index), vec![0xee; CHUNK_BYTES])
                .unwrap();
        }
        db.flush().unwrap();
    }
    session(dir.path(), async |mut sm| {
        assert_eq!(sm.reader().stats().0, 1_000);
        assert!(sm.get_current_snapshot().await.unwrap().is_some());
    });
    let expected: Vec<_> = (0..chunks_for(len)).map(|i| (1, i)).collect();
    assert_eq!(chunk_keys(dir.path()), expected);
}

fn damage_chunk(dir: &Path, index: u64, content: Option<Vec<u8>>) {
    let db = raw_db(dir);
    let tree = db.open_tree("snapshot_chunks").unwrap();
    let key = chunk_key(1, index);
    match content {
        Some(bytes) => tree.insert(key, bytes).unwrap(),
        None => tree.remove(key).unwrap(),
    };
    db.flush().unwrap();
}

#[test]
fn a_missing_chunk_is_reported_at_open() {
    let dir = tempfile::tempdir().unwrap();
    dir_with_snapshot(dir.path());
    damage_chunk(dir.path(), 2, None);
    let error = open_error(dir.path());
    assert!(error.contains("snapshot chunk 2 of"), "{error}");
    assert!(error.contains("is missing"), "{error}");
}

#[test]
fn a_chunk_with_changed_bytes_is_reported_at_open() {
    let dir = tempfile::tempdir().unwrap();
    dir_with_snapshot(dir.path());
    // Same length, different bytes: inside values, so only the checksum can notice.
    let db = raw_db(dir.path());
    let tree = db.open_tree("snapshot_chunks").unwrap();
    let mut chunk = tree
        .get(chunk_key(1, 1))
        .unwrap()
        .expect("chunk 1")
        .to_vec();
    drop((tree, db));
    chunk[CHUNK_BYTES / 2] ^= 0x01;
    damage_chunk(dir.path(), 1, Some(chunk));
    let error = open_error(dir.path());
    assert!(error.contains("do not match the manifest"), "{error}");
}

#[test]
fn a_truncated_chunk_is_reported_at_open() {
    let dir = tempfile::tempdir().unwrap();
    dir_with_snapshot(dir.path());
    damage_chunk(dir.path(), 0, Some(vec![1, 2, 3]));
    let error = open_error(dir.path());
    assert!(error.contains("is damaged"), "{error}");
}

#[test]
fn a_damaged_manifest_is_reported_at_open() {
    let dir = tempfile::tempdir().unwrap();
    dir_with_snapshot(dir.path());
    {
        let db = raw_db(dir.path());
        let tree = db.open_tree("snapshot").unwrap();
        tree.insert("manifest", &b"\x01\x02"[..]).unwrap();
        db.flush().unwrap();
    }
    let error = open_error(dir.path());
    assert!(error.contains("snapshot manifest is damaged"), "{error}");
}
