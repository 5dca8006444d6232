//! Snapshots on real sled directories: chunked storage in an image database per snapshot,
//! restart, conversion of layout 1 (one value) and layout 2 (chunks in the main database), crash
//! leftovers and damage.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::{CommittedLeaderId, Membership};
use serde::Serialize;

use super::snapshot_store::{chunk_key, encoded_manifest};
use super::*;
use crate::storage::test_support::{
    format_of, image_path, open_when_unlocked, raw_db, raw_image_db,
};
use crate::storage::{codec, log_store, OpenError, FORMAT_VERSION, SNAPSHOT_DIR};
use crate::types::{Command, IdempotentCommand, Proposal, PutOp};

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

/// The generations of the image databases in the data dir, in order.
fn image_generations(dir: &Path) -> Vec<u64> {
    let root = dir.join(SNAPSHOT_DIR);
    if !root.exists() {
        return Vec::new();
    }
    let mut generations: Vec<u64> = std::fs::read_dir(root)
        .expect("list the image databases")
        .map(|entry| {
            let name = entry.expect("image directory entry").file_name();
            let name = name.to_string_lossy();
            name.parse()
                .unwrap_or_else(|_| panic!("unexpected entry {name:?} among the images"))
        })
        .collect();
    generations.sort_unstable();
    generations
}

/// The chunks in the image database of `generation`, in key order, with their keys decoded.
fn stored_chunks(dir: &Path, generation: u64) -> Vec<((u64, u64), sled::IVec)> {
    let db = raw_image_db(dir, generation);
    db.iter()
        .map(|item| {
            let (key, chunk) = item.expect("read a chunk");
            let (generation, index) = key.split_at(8);
            let key = (
                u64::from_be_bytes(generation.try_into().expect("8 bytes")),
                u64::from_be_bytes(index.try_into().expect("8 bytes")),
            );
            (key, chunk)
        })
        .collect()
}

/// Checks that the data dir holds exactly one image database, of `generation`, and that it
/// holds `image` in [`CHUNK_BYTES`] chunks under that generation's keys and nothing else.
fn assert_only_image(dir: &Path, generation: u64, image: &[u8]) {
    assert_eq!(image_generations(dir), [generation], "image databases");
    let stored = stored_chunks(dir, generation);
    let keys: Vec<_> = stored.iter().map(|(key, _)| *key).collect();
    let expected: Vec<_> = (0..chunks_for(image.len()))
        .map(|index| (generation, index))
        .collect();
    assert_eq!(keys, expected, "chunk keys");
    for ((_, chunk), (index, part)) in stored.iter().zip(image.chunks(CHUNK_BYTES).enumerate()) {
        assert!(
            chunk.as_ref() == part,
            "chunk {index} holds {} bytes that are not the image's {} bytes there",
            chunk.len(),
            part.len()
        );
    }
}

fn main_db_has_tree(dir: &Path, name: &str) -> bool {
    raw_db(dir)
        .tree_names()
        .iter()
        .any(|tree| tree.as_ref() == name.as_bytes())
}

/// The snapshot the store serves to followers; the test expects one.
async fn current_snapshot(sm: &mut StateMachineStore) -> Snapshot<TypeConfig> {
    sm.get_current_snapshot()
        .await
        .expect("read the current snapshot")
        .expect("a snapshot")
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
fn a_snapshot_is_stored_in_chunks_of_its_own_database_and_reloaded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let built = session(dir.path(), async |mut sm| {
        fill(&mut sm, 6_000).await;
        let built = build(&mut sm).await;
        let current = current_snapshot(&mut sm).await;
        assert_eq!(current.meta, built.meta);
        assert_eq!(current.snapshot.get_ref(), built.snapshot.get_ref());
        built
    });
    let image = built.snapshot.into_inner();
    // sled keeps nine chunks to a leaf (see `image_db`): the image fills several leaves, so the
    // empty inserts that build the leaves and the fills that follow both cross leaf boundaries.
    assert!(
        image.len() > 20 * CHUNK_BYTES,
        "the test spans several leaves of chunks ({} bytes)",
        image.len()
    );
    assert_only_image(dir.path(), 1, &image);
    assert!(
        !main_db_has_tree(dir.path(), "snapshot_chunks"),
        "no chunks in the main database"
    );

    session(dir.path(), async |mut sm| {
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(6_001)));
        assert_eq!(membership, built.meta.last_membership);
        let reader = sm.reader();
        assert_eq!(reader.stats(), (6_000, 6_000 * VALUE_BYTES as u64));
        let (value, _) = reader.get("key-05999");
        assert_eq!(value.expect("key-05999").revision, 6_001);
        let current = current_snapshot(&mut sm).await;
        assert_eq!(current.meta, built.meta);
        assert_eq!(current.snapshot.into_inner(), image);
    });
    assert_only_image(dir.path(), 1, &image);
}

#[test]
fn a_new_snapshot_replaces_the_image_database_of_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = session(dir.path(), async |mut sm| {
        fill(&mut sm, 1_000).await;
        let first = build(&mut sm).await.snapshot.into_inner();
        sm.apply([put_entry(5_000, "zz")]).await.unwrap();
        let second = build(&mut sm).await.snapshot.into_inner();
        (first, second)
    });
    assert!(first != second, "the second snapshot has another image");
    assert_only_image(dir.path(), 2, &second);
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
        let current = current_snapshot(&mut sm).await;
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
        let current = current_snapshot(&mut sm).await;
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
        let current = current_snapshot(&mut sm).await;
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

/// A data dir as layout 1 left it: created by `storage::open` (so sled's configuration is the
/// current one), then the one-value snapshot written with sled directly.
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
            let current = current_snapshot(&mut sm).await;
            assert_eq!(current.meta, old.meta);
            assert_eq!(current.snapshot.get_ref(), &old.data, "same image bytes");
        });
    }
    // Converted once, by the first open: the second found nothing to convert.
    assert_only_image(dir.path(), 1, &old.data);
    let db = raw_db(dir.path());
    let tree = db.open_tree("snapshot").unwrap();
    assert!(
        tree.get("current").unwrap().is_none(),
        "the old value is gone"
    );
    drop((tree, db));
    assert_eq!(format_of(dir.path()), FORMAT_VERSION);
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

/// Builds a snapshot of 1,000 keys in a fresh data dir and returns its image.
fn dir_with_snapshot(dir: &Path) -> Vec<u8> {
    let image = session(dir, async |mut sm| {
        fill(&mut sm, 1_000).await;
        build(&mut sm).await.snapshot.into_inner()
    });
    assert!(
        chunks_for(image.len()) >= 3,
        "the damage tests need three chunks"
    );
    image
}

/// Opens (creating it if need be) the image database of `generation` with sled directly, as a
/// write of that generation would have left it.
fn create_image_db(dir: &Path, generation: u64) -> sled::Db {
    std::fs::create_dir_all(image_path(dir, generation)).unwrap();
    raw_image_db(dir, generation)
}

#[test]
fn leftovers_of_an_interrupted_write_are_ignored_and_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir_with_snapshot(dir.path());
    {
        // A crash while writing generation 2: some chunks, no manifest naming them yet.
        let db = create_image_db(dir.path(), 2);
        write_garbage_chunks(&db, 2, 0..3, CHUNK_BYTES);
    }
    assert_eq!(image_generations(dir.path()), [1, 2]);
    session(dir.path(), async |mut sm| {
        assert_eq!(sm.reader().stats().0, 1_000);
        let current = current_snapshot(&mut sm).await;
        assert_eq!(current.snapshot.into_inner(), image);
    });
    assert_only_image(dir.path(), 1, &image);
}

/// A save that failed part way (a full disk, say) leaves the database of the generation the
/// next save writes too; none of its chunks may end up in the new image.
#[test]
fn leftovers_of_a_failed_write_do_not_mix_with_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let second = session(dir.path(), async |mut sm| {
        fill(&mut sm, 1_000).await;
        build(&mut sm).await;
        {
            let db = create_image_db(dir.path(), 2);
            // One chunk inside the next image's range and one past its end.
            write_garbage_chunks(&db, 2, [1, 1_000], CHUNK_BYTES);
        }
        sm.apply([put_entry(5_000, "zz")]).await.unwrap();
        build(&mut sm).await.snapshot.into_inner()
    });
    assert_only_image(dir.path(), 2, &second);
}

fn damage_chunk(dir: &Path, index: u64, content: Option<Vec<u8>>) {
    let db = raw_image_db(dir, 1);
    let key = chunk_key(1, index);
    match content {
        Some(bytes) => db.insert(key, bytes).unwrap(),
        None => db.remove(key).unwrap(),
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
    let db = raw_image_db(dir.path(), 1);
    let mut chunk = db.get(chunk_key(1, 1)).unwrap().expect("chunk 1").to_vec();
    drop(db);
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

#[test]
fn a_manifest_whose_image_database_is_missing_is_reported_at_open() {
    let dir = tempfile::tempdir().unwrap();
    dir_with_snapshot(dir.path());
    std::fs::remove_dir_all(image_path(dir.path(), 1)).unwrap();
    let error = open_error(dir.path());
    assert!(
        error.contains("its image database (generation 1) is missing"),
        "{error}"
    );
    assert!(
        image_generations(dir.path()).is_empty(),
        "no empty database was made in its place"
    );
}

/// Size of the chunks layout 2 wrote.
const LAYOUT_2_CHUNK_BYTES: usize = 8 * 1024;

/// Rewrites a data dir as layout 2 left it, with sled directly: `image` in
/// [`LAYOUT_2_CHUNK_BYTES`] chunks under `generation` in the main database's tree
/// `snapshot_chunks`, named by a manifest under `snapshot`/`manifest`, no image databases, and
/// layout version 2 recorded.
fn write_layout_2(dir: &Path, meta: &SnapshotMeta, image: &[u8], generation: u64) {
    let images = dir.join(SNAPSHOT_DIR);
    if images.exists() {
        std::fs::remove_dir_all(images).unwrap();
    }
    let db = raw_db(dir);
    let chunks: Vec<&[u8]> = image.chunks(LAYOUT_2_CHUNK_BYTES).collect();
    let tree = db.open_tree("snapshot_chunks").unwrap();
    for (index, chunk) in (0u64..).zip(&chunks) {
        tree.insert(chunk_key(generation, index), *chunk).unwrap();
    }
    let manifest = encoded_manifest(meta, generation, &chunks);
    db.open_tree("snapshot")
        .unwrap()
        .insert("manifest", manifest)
        .unwrap();
    db.open_tree(log_store::META_TREE)
        .unwrap()
        .insert("format", codec::encode(&2u32).unwrap())
        .unwrap();
    db.flush().unwrap();
}

/// Builds a snapshot of `count` keys with the current code and rewrites the data dir as layout
/// 2 with it under `generation`; returns the snapshot's meta and image.
fn layout_2_dir(dir: &Path, count: u64, generation: u64) -> (SnapshotMeta, Vec<u8>) {
    let built = session(dir, async |mut sm| {
        fill(&mut sm, count).await;
        build(&mut sm).await
    });
    let image = built.snapshot.into_inner();
    write_layout_2(dir, &built.meta, &image, generation);
    assert!(image_generations(dir).is_empty());
    assert!(main_db_has_tree(dir, "snapshot_chunks"));
    assert_eq!(format_of(dir), 2);
    (built.meta, image)
}

#[test]
fn a_layout_2_snapshot_is_moved_to_a_database_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, image) = layout_2_dir(dir.path(), 2_000, 5);
    assert!(
        image.len() > 2 * CHUNK_BYTES,
        "several chunks in either layout"
    );

    for _restart in 0..2 {
        session(dir.path(), async |mut sm| {
            // The log is empty: everything comes from the converted snapshot.
            assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(2_001)));
            let reader = sm.reader();
            assert_eq!(reader.stats(), (2_000, 2_000 * VALUE_BYTES as u64));
            let (value, _) = reader.get("key-01234");
            assert_eq!(value.expect("key-01234").revision, 1_236);
            let current = current_snapshot(&mut sm).await;
            assert_eq!(current.meta, meta);
            assert_eq!(current.snapshot.into_inner(), image, "same image bytes");
        });
        // Under the generation after the layout-2 one, written by the first open only.
        assert_only_image(dir.path(), 6, &image);
        assert!(
            !main_db_has_tree(dir.path(), "snapshot_chunks"),
            "the layout-2 chunks are dropped"
        );
        assert_eq!(format_of(dir.path()), FORMAT_VERSION);
    }
}

#[test]
fn a_layout_2_data_dir_without_a_snapshot_opens_empty() {
    let dir = tempfile::tempdir().unwrap();
    session(dir.path(), async |_| ());
    {
        // What layout 2 left before its first snapshot: an empty chunk tree.
        let db = raw_db(dir.path());
        db.open_tree("snapshot_chunks").unwrap();
        db.open_tree(log_store::META_TREE)
            .unwrap()
            .insert("format", codec::encode(&2u32).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    assert!(main_db_has_tree(dir.path(), "snapshot_chunks"));
    session(dir.path(), async |mut sm| {
        assert_eq!(sm.applied_state().await.unwrap().0, None);
        assert!(sm.get_current_snapshot().await.unwrap().is_none());
    });
    assert!(!main_db_has_tree(dir.path(), "snapshot_chunks"));
    assert!(image_generations(dir.path()).is_empty());
    assert_eq!(format_of(dir.path()), FORMAT_VERSION);
}

/// Stores chunks of `bytes` bytes of 0xee at `indexes` of `generation` in `tree` and flushes:
/// the leftovers of a write cut short, which must never be read as an image.
fn write_garbage_chunks(
    tree: &sled::Tree,
    generation: u64,
    indexes: impl IntoIterator<Item = u64>,
    bytes: usize,
) {
    for index in indexes {
        tree.insert(chunk_key(generation, index), vec![0xee; bytes])
            .unwrap();
    }
    tree.flush().unwrap();
}

/// A crash while the image was copied out: the manifest still names the layout-2 chunks, and a
/// partial database of the next generation lies beside them. The copy starts over.
#[test]
fn a_layout_2_conversion_cut_short_before_its_manifest_is_redone() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, image) = layout_2_dir(dir.path(), 1_000, 5);
    {
        let db = create_image_db(dir.path(), 6);
        write_garbage_chunks(&db, 6, 0..2, CHUNK_BYTES);
    }
    session(dir.path(), async |mut sm| {
        assert_eq!(sm.reader().stats().0, 1_000);
        let current = current_snapshot(&mut sm).await;
        assert_eq!(current.meta, meta);
        assert_eq!(current.snapshot.into_inner(), image);
    });
    assert_only_image(dir.path(), 6, &image);
    assert!(!main_db_has_tree(dir.path(), "snapshot_chunks"));
}

/// A crash after the copied image's manifest landed but before the chunk tree was dropped: the
/// manifest names an image database that exists, so the stale chunks are only dropped, not
/// read (here they are garbage, which reading would report as damage).
#[test]
fn a_layout_2_conversion_cut_short_before_the_drop_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir_with_snapshot(dir.path());
    {
        let db = raw_db(dir.path());
        let tree = db.open_tree("snapshot_chunks").unwrap();
        write_garbage_chunks(&tree, 1, 0..3, LAYOUT_2_CHUNK_BYTES);
    }
    session(dir.path(), async |mut sm| {
        assert_eq!(sm.reader().stats().0, 1_000);
        let current = current_snapshot(&mut sm).await;
        assert_eq!(current.snapshot.into_inner(), image);
    });
    assert_only_image(dir.path(), 1, &image);
    assert!(!main_db_has_tree(dir.path(), "snapshot_chunks"));
}

/// A layout-2 snapshot that cannot be read is reported, and its chunks stay where they are with
/// the dir still marked layout 2: they are the only copy, for the operator to recover from.
#[test]
fn a_damaged_layout_2_snapshot_is_reported_at_open_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (_, image) = layout_2_dir(dir.path(), 1_000, 5);
    let stored = image.len().div_ceil(LAYOUT_2_CHUNK_BYTES);
    assert!(stored > 3);
    {
        let db = raw_db(dir.path());
        db.open_tree("snapshot_chunks")
            .unwrap()
            .remove(chunk_key(5, 3))
            .unwrap()
            .expect("chunk 3 was stored");
        db.flush().unwrap();
    }
    let error = open_error(dir.path());
    assert!(error.contains("snapshot chunk 3 of"), "{error}");
    assert!(error.contains("(generation 5) is missing"), "{error}");

    let db = raw_db(dir.path());
    assert_eq!(
        db.open_tree("snapshot_chunks").unwrap().len(),
        stored - 1,
        "the remaining layout-2 chunks are kept"
    );
    drop(db);
    assert!(image_generations(dir.path()).is_empty());
    assert_eq!(format_of(dir.path()), 2);
}

/// A leader acknowledges its own appends before flushing them; applying answers clients, so it
/// must wait until those entries are on disk.
#[tokio::test]
async fn entries_acknowledged_early_are_applied_only_once_flushed() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = raw_db(dir.path());
    let durable = log_store::DurableIndex::new(0);
    let mut sm = StateMachineStore::open(
        &db,
        dir.path().join(SNAPSHOT_DIR),
        durable.clone(),
        Default::default(),
    )
    .expect("state machine");
    durable.acknowledge_early(3);
    let reader = sm.reader();
    let apply = tokio::spawn(async move {
        sm.apply(vec![
            membership_entry(1),
            put_entry(2, "a"),
            put_entry(3, "b"),
        ])
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!apply.is_finished(), "applied before the flush");
    assert!(reader.get("a").0.is_none(), "visible before the flush");
    durable.advance(3);
    let applied = tokio::time::timeout(std::time::Duration::from_secs(5), apply)
        .await
        .expect("applied once flushed")
        .expect("apply task");
    assert_eq!(applied.expect("apply").len(), 3);
    assert!(reader.get("a").0.is_some());
}

/// A put of `key` at `index` (stamped `index`) carrying idempotency key `req-<request>` and
/// fingerprint `fingerprint`.
fn idempotent_put(index: u64, request: u64, fingerprint: u64, key: &str) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Proposal {
            stamp_ms: index,
            command: Command::Idempotent(IdempotentCommand {
                key: format!("req-{request:05}"),
                fingerprint,
                expires_at_ms: 1_000_000,
                capacity: 100_000,
                command: Box::new(Command::Put(PutOp {
                    key: key.into(),
                    value: vec![7; 16],
                    expires_at_ms: None,
                })),
            }),
        }),
    }
}

/// Retries are answered from the idempotency table after it went through a snapshot: built,
/// installed on another node, and loaded again (streamed from its chunks) on restart of both.
#[test]
fn retries_are_replayed_after_snapshot_install_and_restart() {
    const REQUESTS: u64 = 2_000;
    let leader = tempfile::tempdir().unwrap();
    let follower = tempfile::tempdir().unwrap();
    // Request 7, first applied at index 102 + 7.
    let first = CommandResult::Write {
        revision: 109,
        existed: false,
    };
    let replayed = CommandResult::Replayed(Box::new(first.clone()));
    let last = 101 + REQUESTS;
    let built = session(leader.path(), async |mut sm| {
        fill(&mut sm, 100).await;
        let requests =
            (0..REQUESTS).map(|r| idempotent_put(102 + r, r, r, &format!("idem-{r:05}")));
        let results = sm.apply(requests).await.unwrap();
        assert_eq!(results[7], first);
        let stats = sm.reader().idempotency_stats();
        assert_eq!(stats.keys, REQUESTS);
        // The table ends the image and is larger than a chunk: it crosses a chunk boundary.
        assert!(stats.bytes > CHUNK_BYTES as u64, "{} bytes", stats.bytes);
        build(&mut sm).await
    });
    session(follower.path(), async |mut sm| {
        fill(&mut sm, 10).await;
        sm.apply([
            idempotent_put(12, 0, 1, "mine"),
            idempotent_put(13, 0, 2, "mine"),
        ])
        .await
        .unwrap();
        assert_eq!(sm.reader().idempotency_stats().conflicts, 1);
        let mut data = sm.begin_receiving_snapshot().await.unwrap();
        *data = *built.snapshot.clone();
        sm.install_snapshot(&built.meta, data).await.unwrap();
        let stats = sm.reader().idempotency_stats();
        assert_eq!(
            (stats.keys, stats.conflicts),
            (REQUESTS, 1),
            "counters kept"
        );
        let retry = sm
            .apply([idempotent_put(last + 1, 7, 7, "idem-00007")])
            .await
            .unwrap();
        assert_eq!(retry, std::slice::from_ref(&replayed));
        assert_eq!(sm.reader().get("idem-00007").0.unwrap().revision, 109);
        let other = sm
            .apply([idempotent_put(last + 2, 8, 0, "idem-00008")])
            .await
            .unwrap();
        assert_eq!(
            other,
            [CommandResult::IdempotencyConflict { revision: last + 2 }]
        );
    });
    for dir in [follower.path(), leader.path()] {
        session(dir, async |mut sm| {
            assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(last)));
            let reader = sm.reader();
            assert_eq!(reader.idempotency_stats().keys, REQUESTS);
            let retry = sm
                .apply([idempotent_put(last + 1, 7, 7, "idem-00007")])
                .await
                .unwrap();
            assert_eq!(retry, std::slice::from_ref(&replayed));
            assert_eq!(reader.get("idem-00007").0.unwrap().revision, 109);
            assert_eq!(reader.idempotency_stats().hits, 1);
        });
    }
}
