//! Snapshots on disk: the encoded map image in 8 KiB chunks and a small manifest naming them.
//!
//! Layout:
//! - tree `snapshot_chunks`: `generation (u64 BE) ++ chunk number (u64 BE)` → the next
//!   [`CHUNK_BYTES`] of the image;
//! - tree `snapshot`: `manifest` → bincode [`Manifest`] (openraft's meta, generation, number of
//!   chunks, total length, checksum). Versions before chunking kept the whole snapshot in one
//!   value under `current` ([`StoredSnapshot`]); such a value is converted on open.
//!
//! Why chunks: one 280 MB value became a sled blob file, reclaimed only lazily, so every
//! snapshot left another one on disk, and reading it back needed the whole value in memory at
//! once. Chunks are ordinary sled values that sled's segment cleaning reclaims, and the image can
//! be decoded while it streams from disk.
//!
//! Crash safety: a new image is written under a fresh generation and flushed before its manifest
//! is written (and flushed), so until the manifest lands the previous manifest still names the
//! previous chunks, which are removed only afterwards. Chunks no manifest names (a write or a
//! clean-up cut short) are removed on open and before each write.

use std::io::Read;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use openraft::{AnyError, StorageIOError};
use serde::{Deserialize, Serialize};

use super::super::codec;
use super::super::kv_map::KvMap;
use crate::types::{SnapshotMeta, StorageError};

const MANIFEST_TREE: &str = "snapshot";
const CHUNK_TREE: &str = "snapshot_chunks";
const KEY_MANIFEST: &str = "manifest";
/// Where versions before chunking kept the whole snapshot.
const KEY_LEGACY: &str = "current";

/// Size of a stored chunk. Far below sled's blob threshold (a quarter of a segment), so chunks
/// stay in sled's ordinary, garbage-collected segments, and small enough that sled's page cache
/// actually evicts them: that cache is split into 256 shards which only account for a page once
/// 64 accesses to the shard have queued up, and a leaf holds up to 16 values, so a tree of few,
/// large pages (64 KiB chunks make ~1 MiB leaves) mostly stays resident whatever the configured
/// capacity. Measured with a map of 1M keys of 256 B snapshotted four times as it grew (no log,
/// glibc malloc): live heap at the end 487 MB with 64 KiB chunks and 405 MB with 8 KiB chunks
/// (the map itself is ~320 MB), RSS 700–720 MB and 450–475 MB; 4 KiB chunks gained no more.
pub const CHUNK_BYTES: usize = 8 * 1024;

/// A snapshot as versions before chunking stored it, in one sled value under `current`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Names the chunks of the current snapshot; written only after all of them are on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    meta: SnapshotMeta,
    generation: u64,
    chunks: u64,
    len: u64,
    /// [`Checksum`] of the chunks in order. sled checks its own records; this catches a chunk
    /// that is missing, stale or out of place.
    checksum: u64,
}

pub struct SnapshotStore {
    manifests: sled::Tree,
    chunks: sled::Tree,
    /// Held for each whole save and read: two saves (a build and an install may overlap) must
    /// not interleave their chunks, and a read must not see chunks removed under it.
    lock: Mutex<()>,
}

fn read_error(e: impl ToString) -> StorageError {
    StorageIOError::read_snapshot(None, AnyError::error(e)).into()
}

fn write_error(meta: &SnapshotMeta, e: impl ToString) -> StorageError {
    StorageIOError::write_snapshot(Some(meta.signature()), AnyError::error(e)).into()
}

/// Key of chunk `index` of `generation`: big-endian, so sled orders chunks as they are read.
pub(super) fn chunk_key(generation: u64, index: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&generation.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

impl SnapshotStore {
    /// Opens the trees, converts a snapshot left by an older version and drops unnamed chunks.
    pub fn open(db: &sled::Db) -> Result<Self, StorageError> {
        let store = SnapshotStore {
            manifests: db.open_tree(MANIFEST_TREE).map_err(read_error)?,
            chunks: db.open_tree(CHUNK_TREE).map_err(read_error)?,
            lock: Mutex::new(()),
        };
        store.convert_legacy()?;
        // No lock: nothing else uses the store before `open` returns.
        let current = store.manifest()?.map(|m| m.generation);
        store.remove_chunks_except(current).map_err(read_error)?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is on disk and every step re-reads it, so a poisoned lock is harmless.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn manifest(&self) -> Result<Option<Manifest>, StorageError> {
        let Some(bytes) = self.manifests.get(KEY_MANIFEST).map_err(read_error)? else {
            return Ok(None);
        };
        let manifest = codec::decode(&bytes)
            .map_err(|e| read_error(format!("snapshot manifest is damaged: {e}")))?;
        Ok(Some(manifest))
    }

    /// Rewrites a snapshot stored by a version before chunking in the chunked form.
    fn convert_legacy(&self) -> Result<(), StorageError> {
        let Some(bytes) = self.manifests.get(KEY_LEGACY).map_err(read_error)? else {
            return Ok(());
        };
        let legacy: StoredSnapshot = codec::decode(&bytes)
            .map_err(|e| read_error(format!("snapshot (old format) is damaged: {e}")))?;
        drop(bytes);
        tracing::info!(meta = %legacy.meta, "converting the snapshot to the chunked format");
        // Not decoded here: `load_map` decodes the converted image and reports damage.
        self.save(&legacy.meta, &legacy.data)?;
        // `save` removes it too, unless it kept a newer chunked snapshot instead.
        self.manifests
            .remove(KEY_LEGACY)
            .map_err(|e| write_error(&legacy.meta, e))?;
        self.manifests
            .flush()
            .map_err(|e| write_error(&legacy.meta, e))?;
        Ok(())
    }

    /// Stores `image` as the current snapshot and removes the previous one, all flushed. An image
    /// older than the stored snapshot is not stored: a build that started before an install of a
    /// newer snapshot must not replace it when it finishes last.
    pub fn save(&self, meta: &SnapshotMeta, image: &[u8]) -> Result<(), StorageError> {
        let _guard = self.lock();
        let current = self.manifest()?;
        if let Some(current) = current.as_ref() {
            if current.meta.last_log_id > meta.last_log_id {
                tracing::info!(kept = %current.meta, skipped = %meta, "not replacing a newer snapshot");
                return Ok(());
            }
        }
        let previous = current.map(|m| m.generation);
        let generation = match previous {
            None => 1,
            Some(previous) => previous.checked_add(1).ok_or_else(|| {
                write_error(
                    meta,
                    "snapshot generation counter exhausted (damaged manifest?)",
                )
            })?,
        };
        let fail = |e: sled::Error| write_error(meta, e);
        // Leftovers of a save cut short may carry the generation about to be written.
        self.remove_chunks_except(previous).map_err(fail)?;
        let manifest = self.write_chunks(meta, generation, image).map_err(fail)?;
        self.chunks.flush().map_err(fail)?;
        self.commit(&manifest)?;
        self.remove_chunks_except(Some(generation)).map_err(fail)?;
        self.chunks.flush().map_err(fail)?;
        Ok(())
    }

    /// Makes `manifest` the current snapshot (dropping any old-format one in the same batch).
    fn commit(&self, manifest: &Manifest) -> Result<(), StorageError> {
        let fail = |e: &dyn ToString| write_error(&manifest.meta, e.to_string());
        let encoded = codec::encode(manifest).map_err(|e| fail(&e))?;
        let mut batch = sled::Batch::default();
        batch.insert(KEY_MANIFEST, encoded);
        batch.remove(KEY_LEGACY);
        self.manifests.apply_batch(batch).map_err(|e| fail(&e))?;
        self.manifests.flush().map_err(|e| fail(&e))?;
        Ok(())
    }

    /// Inserts the image's chunks one by one: a batch would hold a copy of all of them at once.
    fn write_chunks(
        &self,
        meta: &SnapshotMeta,
        generation: u64,
        image: &[u8],
    ) -> Result<Manifest, sled::Error> {
        let mut checksum = Checksum::default();
        let mut chunks = 0;
        for (index, chunk) in (0u64..).zip(image.chunks(CHUNK_BYTES)) {
            checksum.update(chunk);
            self.chunks.insert(chunk_key(generation, index), chunk)?;
            chunks = index + 1;
        }
        Ok(Manifest {
            meta: meta.clone(),
            generation,
            chunks,
            len: image.len() as u64,
            checksum: checksum.value(),
        })
    }

    /// Removes every chunk outside generation `keep` (all of them when `keep` is `None`). Only
    /// the key ranges around the kept generation are visited, so its chunks are not read.
    fn remove_chunks_except(&self, keep: Option<u64>) -> Result<(), sled::Error> {
        use Bound::{Excluded, Unbounded};
        let ranges = match keep {
            Some(generation) => vec![
                (Unbounded, Excluded(chunk_key(generation, 0))),
                (Excluded(chunk_key(generation, u64::MAX)), Unbounded),
            ],
            None => vec![(Unbounded, Unbounded)],
        };
        for range in ranges {
            for key in self.chunks.range(range).keys() {
                self.chunks.remove(key?)?;
            }
        }
        Ok(())
    }

    /// The stored snapshot decoded into a map, streamed from its chunks (the encoded image is
    /// never whole in memory).
    pub fn load_map(&self) -> Result<Option<(SnapshotMeta, KvMap)>, StorageError> {
        let _guard = self.lock();
        let Some(manifest) = self.manifest()? else {
            return Ok(None);
        };
        let mut reader = ChunkReader::new(&self.chunks, &manifest);
        let map = KvMap::decode_from(&mut reader)
            .map_err(|e| read_error(format!("snapshot {} is damaged: {e}", manifest.meta)))?;
        reader.finish()?;
        Ok(Some((manifest.meta, map)))
    }

    /// The stored snapshot's meta and encoded image (one buffer of exactly its size).
    pub fn read(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        let _guard = self.lock();
        let Some(manifest) = self.manifest()? else {
            return Ok(None);
        };
        let mut image = Vec::new();
        // The length comes from disk: if it is absurd the reservation fails and reading finds
        // the real length (and reports the mismatch).
        let _ = image.try_reserve_exact(usize::try_from(manifest.len).unwrap_or(0));
        let mut reader = ChunkReader::new(&self.chunks, &manifest);
        reader.read_to_end(&mut image).map_err(read_error)?;
        reader.finish()?;
        Ok(Some((manifest.meta, image)))
    }
}

/// Reads a snapshot's chunks in order as one stream, checking each one's presence and
/// accumulating length and checksum for [`ChunkReader::finish`].
struct ChunkReader<'a> {
    tree: &'a sled::Tree,
    manifest: &'a Manifest,
    next: u64,
    current: sled::IVec,
    offset: usize,
    len: u64,
    checksum: Checksum,
}

impl<'a> ChunkReader<'a> {
    fn new(tree: &'a sled::Tree, manifest: &'a Manifest) -> Self {
        ChunkReader {
            tree,
            manifest,
            next: 0,
            current: sled::IVec::default(),
            offset: 0,
            len: 0,
            checksum: Checksum::default(),
        }
    }

    /// Loads the next chunk; `false` once all chunks the manifest names were read.
    fn advance(&mut self) -> std::io::Result<bool> {
        if self.next == self.manifest.chunks {
            return Ok(false);
        }
        let key = chunk_key(self.manifest.generation, self.next);
        let chunk = self.tree.get(key).map_err(std::io::Error::other)?;
        let chunk = chunk.ok_or_else(|| {
            std::io::Error::other(format!(
                "snapshot chunk {} of {} (generation {}) is missing",
                self.next, self.manifest.chunks, self.manifest.generation
            ))
        })?;
        self.checksum.update(&chunk);
        self.len += chunk.len() as u64;
        self.current = chunk;
        self.offset = 0;
        self.next += 1;
        Ok(true)
    }

    /// Checks that the image ended with the last chunk and matches the manifest.
    fn finish(mut self) -> Result<(), StorageError> {
        let meta = &self.manifest.meta;
        let mut trailing = self.current.len().saturating_sub(self.offset) as u64;
        while self.advance().map_err(read_error)? {
            trailing += self.current.len() as u64;
        }
        if trailing != 0 {
            return Err(read_error(format!(
                "snapshot {meta} is damaged: {trailing} bytes follow the image"
            )));
        }
        if self.len != self.manifest.len || self.checksum.value() != self.manifest.checksum {
            return Err(read_error(format!(
                "snapshot {meta} is damaged: its chunks do not match the manifest \
                 ({} bytes, checksum {:x}; expected {} bytes, checksum {:x})",
                self.len,
                self.checksum.value(),
                self.manifest.len,
                self.manifest.checksum
            )));
        }
        Ok(())
    }
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.offset == self.current.len() {
            if !self.advance()? {
                return Ok(0);
            }
        }
        let available = &self.current[self.offset..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.offset += n;
        Ok(n)
    }
}

/// FNV-1a over 64-bit words (each step is a bijection of the running value, so any change to a
/// single word always changes the result). Not cryptographic: it guards against our own
/// mistakes and lost chunks, not against an adversary. Computed chunk by chunk, so it depends on
/// where the chunks split the image, which the writer fixes and the manifest records.
struct Checksum(u64);

impl Default for Checksum {
    fn default() -> Self {
        Checksum(0xcbf2_9ce4_8422_2325)
    }
}

impl Checksum {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn update(&mut self, chunk: &[u8]) {
        let mut words = chunk.chunks_exact(8);
        for word in &mut words {
            let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
            self.0 = (self.0 ^ word).wrapping_mul(Self::PRIME);
        }
        for &byte in words.remainder() {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(Self::PRIME);
        }
    }

    fn value(&self) -> u64 {
        self.0
    }
}
