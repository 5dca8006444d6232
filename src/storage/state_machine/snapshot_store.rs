//! Snapshots on disk: the encoded map image in a sled database of its own, and a small manifest
//! in the node's main database naming it.
//!
//! Layout:
//! - `<data dir>/snapshots/<generation>/`: a sled database holding the image in
//!   [`CHUNK_BYTES`] chunks under `generation (u64 BE) ++ chunk number (u64 BE)` (see
//!   [`image_db`](super::image_db) for why a database of its own);
//! - main database, tree `snapshot`: `manifest` → bincode [`Manifest`] (openraft's meta,
//!   generation, number of chunks, total length, checksum).
//!
//! Earlier layouts are converted on open: layout 1 kept the whole snapshot in one value under
//! `snapshot`/`current` ([`StoredSnapshot`]); layout 2 kept the chunks in the main database's
//! tree `snapshot_chunks`, which is dropped once its image has been copied out.
//!
//! Crash safety: a new image is written under a fresh generation and flushed before its manifest
//! is written (and flushed), so until the manifest lands the previous manifest still names the
//! previous image, which is deleted only afterwards. Images no manifest names (a write or a
//! clean-up cut short) are deleted on open and before each write.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use openraft::{AnyError, StorageIOError};
use serde::{Deserialize, Serialize};

use super::super::kv_map::KvMap;
use super::image_db::ImageDir;
pub use super::image_db::CHUNK_BYTES;
use crate::raft::codec;
use crate::raft::{SnapshotMeta, StorageError};
use crate::storage::snapshot_mark::SnapshotMark;

const MANIFEST_TREE: &str = "snapshot";
/// Where layout 2 kept the chunks.
const LEGACY_CHUNK_TREE: &str = "snapshot_chunks";
const KEY_MANIFEST: &str = "manifest";
/// Where layout 1 kept the whole snapshot.
const KEY_LEGACY: &str = "current";

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
    images: ImageDir,
    /// Held for each whole save and read: two saves (a build and an install may overlap) must
    /// not interleave, a read must not see its image deleted under it, and an image database
    /// can be open only once at a time.
    lock: Mutex<()>,
    /// Told of each manifest once it is on disk, so purges wait for installs (see
    /// `snapshot_mark`).
    mark: SnapshotMark,
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

/// The manifest naming `chunks`, in order, as the image of `generation`, encoded as `commit`
/// stores it: tests build data dirs of layout 2 (same manifest, chunks in the main database)
/// with it, since the manifest's type is private to this module.
#[cfg(test)]
pub(super) fn encoded_manifest(meta: &SnapshotMeta, generation: u64, chunks: &[&[u8]]) -> Vec<u8> {
    let mut checksum = Checksum::default();
    chunks.iter().for_each(|chunk| checksum.update(chunk));
    let manifest = Manifest {
        meta: meta.clone(),
        generation,
        chunks: chunks.len() as u64,
        len: chunks.iter().map(|chunk| chunk.len() as u64).sum(),
        checksum: checksum.value(),
    };
    codec::encode(&manifest).expect("encode a manifest")
}

impl SnapshotStore {
    /// Opens the manifest tree of `db` and the image directory `images`, converts a snapshot
    /// left by an older layout and deletes images no manifest names.
    pub fn open(db: &sled::Db, images: PathBuf, mark: SnapshotMark) -> Result<Self, StorageError> {
        let store = SnapshotStore {
            manifests: db.open_tree(MANIFEST_TREE).map_err(read_error)?,
            images: ImageDir::new(images),
            lock: Mutex::new(()),
            mark,
        };
        store.convert_one_value()?;
        store.convert_chunk_tree(db)?;
        // No lock: nothing else uses the store before `open` returns.
        let current = store.manifest()?;
        if let Some(index) = current.as_ref().and_then(|m| m.meta.last_log_id) {
            store.mark.record_durable(index.index);
        }
        let current = current.map(|m| m.generation);
        store.images.remove_except(current).map_err(read_error)?;
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

    /// Rewrites a snapshot stored in layout 1 (one value) in the current form.
    fn convert_one_value(&self) -> Result<(), StorageError> {
        let Some(bytes) = self.manifests.get(KEY_LEGACY).map_err(read_error)? else {
            return Ok(());
        };
        let legacy: StoredSnapshot = codec::decode(&bytes)
            .map_err(|e| read_error(format!("snapshot (old format) is damaged: {e}")))?;
        drop(bytes);
        tracing::info!(meta = %legacy.meta, "converting the snapshot to the current format");
        // Not decoded here: `load_map` decodes the converted image and reports damage.
        self.save(&legacy.meta, &legacy.data)?;
        // `save` removes it too, unless it kept a newer snapshot instead.
        self.manifests
            .remove(KEY_LEGACY)
            .map_err(|e| write_error(&legacy.meta, e))?;
        self.manifests
            .flush()
            .map_err(|e| write_error(&legacy.meta, e))?;
        Ok(())
    }

    /// Copies a snapshot stored in layout 2 (chunks in the main database) into an image database
    /// of its own, then drops the chunk tree. A manifest whose image directory is missing while
    /// that tree exists is a layout-2 manifest: layout 3 creates the directory first.
    fn convert_chunk_tree(&self, db: &sled::Db) -> Result<(), StorageError> {
        let has_tree = db
            .tree_names()
            .iter()
            .any(|name| name.as_ref() == LEGACY_CHUNK_TREE.as_bytes());
        if !has_tree {
            return Ok(());
        }
        let chunks = db.open_tree(LEGACY_CHUNK_TREE).map_err(read_error)?;
        if let Some(manifest) = self.manifest()? {
            if !self.images.contains(manifest.generation) {
                tracing::info!(meta = %manifest.meta, "moving the snapshot to a database of its own");
                let image = read_image(&chunks, &manifest)?;
                self.save(&manifest.meta, &image)?;
            }
        }
        drop(chunks);
        let fail = |e: sled::Error| read_error(format!("dropping the old snapshot chunks: {e}"));
        db.drop_tree(LEGACY_CHUNK_TREE).map_err(fail)?;
        db.flush().map_err(fail)?;
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
        // Leftovers of a save cut short may carry the generation about to be written.
        self.images
            .remove_except(previous)
            .map_err(|e| write_error(meta, e))?;
        let chunks = image.chunks(CHUNK_BYTES);
        let mut checksum = Checksum::default();
        chunks.clone().for_each(|chunk| checksum.update(chunk));
        self.images
            .write(generation, chunks.clone(), |index| {
                chunk_key(generation, index)
            })
            .map_err(|e| write_error(meta, e))?;
        // Failpoints: the image is on disk, its manifest not yet. `sleep` here holds an install
        // open while openraft's purge for it runs; `snapshot-install-crash` then ends the process
        // inside the window.
        fail::fail_point!("snapshot-install-before-manifest");
        crate::failpoints::crash_point("snapshot-install-crash");
        self.commit(&Manifest {
            meta: meta.clone(),
            generation,
            chunks: chunks.len() as u64,
            len: image.len() as u64,
            checksum: checksum.value(),
        })?;
        self.images
            .remove_except(Some(generation))
            .map_err(|e| write_error(meta, e))?;
        Ok(())
    }

    /// Makes `manifest` the current snapshot (dropping any layout-1 one in the same batch).
    fn commit(&self, manifest: &Manifest) -> Result<(), StorageError> {
        let fail = |e: &dyn ToString| write_error(&manifest.meta, e.to_string());
        let encoded = codec::encode(manifest).map_err(|e| fail(&e))?;
        let mut batch = sled::Batch::default();
        batch.insert(KEY_MANIFEST, encoded);
        batch.remove(KEY_LEGACY);
        self.manifests.apply_batch(batch).map_err(|e| fail(&e))?;
        self.manifests.flush().map_err(|e| fail(&e))?;
        if let Some(last) = manifest.meta.last_log_id {
            self.mark.record_durable(last.index);
        }
        Ok(())
    }

    /// Opens the image database the manifest names.
    fn open_image(&self, manifest: &Manifest) -> Result<sled::Db, StorageError> {
        let missing = || {
            read_error(format!(
                "snapshot {} is damaged: its image database (generation {}) is missing",
                manifest.meta, manifest.generation
            ))
        };
        let db = self.images.open(manifest.generation);
        db.map_err(|e| read_error(format!("snapshot {}: {e}", manifest.meta)))?
            .ok_or_else(missing)
    }

    /// The stored snapshot decoded into a map, streamed from its chunks (the encoded image is
    /// never whole in memory).
    pub fn load_map(&self) -> Result<Option<(SnapshotMeta, KvMap)>, StorageError> {
        let _guard = self.lock();
        let Some(manifest) = self.manifest()? else {
            return Ok(None);
        };
        let db = self.open_image(&manifest)?;
        let mut reader = ChunkReader::new(&db, &manifest);
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
        let db = self.open_image(&manifest)?;
        let image = read_image(&db, &manifest)?;
        Ok(Some((manifest.meta, image)))
    }
}

/// The whole image `manifest` names, read from `tree` and checked against the manifest.
fn read_image(tree: &sled::Tree, manifest: &Manifest) -> Result<Vec<u8>, StorageError> {
    let mut image = Vec::new();
    // The length comes from disk: if it is absurd the reservation fails and reading finds the
    // real length (and reports the mismatch).
    let _ = image.try_reserve_exact(usize::try_from(manifest.len).unwrap_or(0));
    let mut reader = ChunkReader::new(tree, manifest);
    reader.read_to_end(&mut image).map_err(read_error)?;
    reader.finish()?;
    Ok(image)
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
