//! Raft log, hard state, conf state and snapshots persisted in sled.
//!
//! The live part of the log (entries after the last compaction) is also kept in memory, so the
//! leader serves `entries()` to followers without touching disk; sled holds the durable copy.
//! Writes are buffered in sled and made durable by [`SledStorage::persist`] (one fsync per Raft
//! Ready cycle), which the node calls before sending persisted messages or acknowledging writes.
//!
//! Layout: tree `log` maps big-endian index → encoded `Entry`; tree `meta` holds `hard_state`,
//! `conf_state`, `snapshot` (the snapshot's metadata) and `truncated` (index and term of the
//! last entry removed by compaction). Snapshot data — the encoded state machine, possibly large —
//! lives in `snapshots/snap-<index>.bin` beside the sled files, written and fsynced before its
//! metadata is recorded, so the node can write it on another thread without stalling the log.
use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError as RaftStorageError};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open the raft store in {path}")]
    Open {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("raft store I/O failed")]
    Sled(#[from] sled::Error),
    #[error("raft store holds a corrupt {what}")]
    Corrupt {
        what: &'static str,
        #[source]
        source: protobuf::ProtobufError,
    },
    #[error("snapshot file {path} cannot be read or written")]
    SnapshotFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot at index {index} is older than the log's first index {first}")]
    SnapshotOutOfDate { index: u64, first: u64 },
}

/// A snapshot of the local state machine on its way to disk (see [`SnapshotJob::write`]).
pub struct SnapshotJob {
    snap: Snapshot,
    path: PathBuf,
}

impl SnapshotJob {
    pub fn index(&self) -> u64 {
        self.snap.get_metadata().index
    }

    /// Writes the data file durably (temp file, fsync, rename, fsync of the directory). Safe to
    /// run on any thread; nothing refers to the file until `finish_snapshot`.
    pub fn write(&self) -> Result<(), StorageError> {
        let err = |source| StorageError::SnapshotFile {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(self.snap.get_data()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        Ok(())
    }
}

pub struct SledStorage {
    snapshot_dir: PathBuf,
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    truncated_index: u64,
    truncated_term: u64,
    entries: VecDeque<Entry>,
    /// Compacted log keys may remain on disk (see `sweep_compacted`).
    sweep_pending: bool,
    /// Set when a peer needed a snapshot newer than the stored one; the node then makes one.
    snapshot_wanted: AtomicBool,
}

fn snapshot_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("snap-{index:020}.bin"))
}

/// The snapshot without its data, as stored in sled.
fn metadata_only(snap: &Snapshot) -> Snapshot {
    let mut m = Snapshot::default();
    m.set_metadata(snap.get_metadata().clone());
    m
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode<M: protobuf::Message>(what: &'static str, bytes: &[u8]) -> Result<M, StorageError> {
    M::parse_from_bytes(bytes).map_err(|source| StorageError::Corrupt { what, source })
}

fn encode<M: protobuf::Message>(m: &M) -> Vec<u8> {
    m.write_to_bytes().expect("raft protobuf message encodes")
}

impl SledStorage {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<SledStorage, StorageError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|source| StorageError::Open {
                path: dir.display().to_string(),
                source,
            })?;
        let log = db.open_tree("log")?;
        let meta = db.open_tree("meta")?;
        let get = |k: &str| meta.get(k);
        let hard_state = match get("hard_state")? {
            Some(b) => decode("hard state", &b)?,
            None => HardState::default(),
        };
        let conf_state = match get("conf_state")? {
            Some(b) => decode("conf state", &b)?,
            None => ConfState::default(),
        };
        let snapshot_dir = dir.join("snapshots");
        std::fs::create_dir_all(&snapshot_dir).map_err(|source| StorageError::SnapshotFile {
            path: snapshot_dir.clone(),
            source,
        })?;
        let mut snapshot: Snapshot = match get("snapshot")? {
            Some(b) => decode("snapshot", &b)?,
            None => Snapshot::default(),
        };
        let index = snapshot.get_metadata().index;
        if index > 0 && snapshot.get_data().is_empty() {
            let path = snapshot_path(&snapshot_dir, index);
            let data = std::fs::read(&path)
                .map_err(|source| StorageError::SnapshotFile { path, source })?;
            snapshot.set_data(data.into());
        }
        let (truncated_index, truncated_term) = match get("truncated")? {
            Some(b) if b.len() == 16 => (
                u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(b[8..].try_into().expect("8 bytes")),
            ),
            _ => (snapshot.get_metadata().index, snapshot.get_metadata().term),
        };
        let mut entries = VecDeque::new();
        for item in log.range(key(truncated_index + 1)..) {
            let (_, v) = item?;
            let e: Entry = decode("log entry", &v)?;
            entries.push_back(e);
        }
        Ok(SledStorage {
            snapshot_dir,
            db,
            log,
            meta,
            hard_state,
            conf_state,
            snapshot,
            truncated_index,
            truncated_term,
            entries,
            // Sweep once after every start: a crash may have left compacted keys behind.
            sweep_pending: true,
            snapshot_wanted: AtomicBool::new(false),
        })
    }

    /// True when nothing was ever stored (a brand-new node).
    pub fn is_empty(&self) -> bool {
        self.hard_state == HardState::default()
            && self.conf_state == ConfState::default()
            && self.entries.is_empty()
            && self.snapshot.get_metadata().index == 0
    }

    /// Makes a new node's store start from the given voters (the initial cluster).
    pub fn bootstrap(&mut self, voters: Vec<u64>) -> Result<(), StorageError> {
        let mut cs = ConfState::default();
        cs.set_voters(voters);
        self.set_conf_state(cs)?;
        self.persist()
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn snapshot_metadata(&self) -> &raft::prelude::SnapshotMetadata {
        self.snapshot.get_metadata()
    }

    /// The stored snapshot's state data (empty when there is none).
    pub fn snapshot_data(&self) -> &[u8] {
        self.snapshot.get_data()
    }

    pub fn first(&self) -> u64 {
        self.truncated_index + 1
    }

    pub fn last(&self) -> u64 {
        self.truncated_index + self.entries.len() as u64
    }

    /// Appends entries from a Ready, replacing any conflicting suffix.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        if first_new <= self.last() {
            for i in first_new..=self.last() {
                batch.remove(&key(i));
            }
            let keep = first_new.saturating_sub(self.first()) as usize;
            self.entries.truncate(keep);
        }
        for e in entries {
            batch.insert(&key(e.index), encode(e));
            self.entries.push_back(e.clone());
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    pub fn set_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        self.meta.insert("hard_state", encode(&hs))?;
        self.hard_state = hs;
        Ok(())
    }

    pub fn set_commit(&mut self, commit: u64) -> Result<(), StorageError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(hs)
    }

    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<(), StorageError> {
        self.meta.insert("conf_state", encode(&cs))?;
        self.conf_state = cs;
        Ok(())
    }

    /// Makes every buffered write durable (fsync).
    pub fn persist(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        Ok(())
    }

    /// Installs a snapshot received from the leader: the log is discarded.
    pub fn apply_snapshot(&mut self, snap: Snapshot) -> Result<(), StorageError> {
        let meta = snap.get_metadata();
        if meta.index < self.snapshot.get_metadata().index {
            return Err(StorageError::SnapshotOutOfDate {
                index: meta.index,
                first: self.first(),
            });
        }
        let job = SnapshotJob {
            path: snapshot_path(&self.snapshot_dir, meta.index),
            snap: snap.clone(),
        };
        job.write()?;
        let meta = snap.get_metadata();
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        self.set_hard_state(hs)?;
        self.set_conf_state(meta.get_conf_state().clone())?;
        let mut batch = sled::Batch::default();
        for item in self.log.iter().keys() {
            batch.remove(item?);
        }
        self.log.apply_batch(batch)?;
        self.entries.clear();
        self.set_truncated(meta.index, meta.term)?;
        self.meta
            .insert("snapshot", encode(&metadata_only(&snap)))?;
        let index = meta.index;
        self.snapshot = snap;
        self.persist()?;
        self.remove_snapshot_files_before(index);
        Ok(())
    }

    /// Starts a snapshot of the local state machine at `index` (the applied index; `data` is the
    /// encoded state). The returned job's file is written by [`SnapshotJob::write`], then
    /// [`SledStorage::finish_snapshot`] records it and compacts the log.
    pub fn prepare_snapshot(&self, index: u64, data: Vec<u8>) -> Result<SnapshotJob, StorageError> {
        let term = self
            .term(index)
            .map_err(|_| StorageError::SnapshotOutOfDate {
                index,
                first: self.first(),
            })?;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let m = snap.mut_metadata();
        m.index = index;
        m.term = term;
        m.set_conf_state(self.conf_state.clone());
        Ok(SnapshotJob {
            path: snapshot_path(&self.snapshot_dir, index),
            snap,
        })
    }

    /// Records a written snapshot and compacts the log, keeping `retention` entries behind it
    /// for peers that are only slightly behind. A job overtaken by a newer snapshot (one
    /// installed from the leader meanwhile) is discarded.
    pub fn finish_snapshot(
        &mut self,
        job: SnapshotJob,
        retention: u64,
    ) -> Result<(), StorageError> {
        let index = job.index();
        if index < self.snapshot.get_metadata().index {
            let _ = std::fs::remove_file(&job.path);
            return Ok(());
        }
        self.meta
            .insert("snapshot", encode(&metadata_only(&job.snap)))?;
        self.snapshot = job.snap;
        self.snapshot_wanted.store(false, Ordering::Relaxed);
        let compact_to = index.saturating_sub(retention);
        if compact_to > self.truncated_index {
            self.compact(compact_to)?;
        }
        self.persist()?;
        self.remove_snapshot_files_before(index);
        Ok(())
    }

    /// Prepares, writes and records a snapshot in one go (tests and small states).
    pub fn create_snapshot(
        &mut self,
        index: u64,
        data: Vec<u8>,
        retention: u64,
    ) -> Result<(), StorageError> {
        let job = self.prepare_snapshot(index, data)?;
        job.write()?;
        self.finish_snapshot(job, retention)
    }

    fn remove_snapshot_files_before(&self, index: u64) {
        let Ok(entries) = std::fs::read_dir(&self.snapshot_dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let old = name
                .to_str()
                .and_then(|n| n.strip_prefix("snap-"))
                .and_then(|n| n.split('.').next())
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|i| i < index);
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn compact(&mut self, to: u64) -> Result<(), StorageError> {
        let term = self.term(to).map_err(|_| StorageError::SnapshotOutOfDate {
            index: to,
            first: self.first(),
        })?;
        let drop = (to - self.truncated_index) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.set_truncated(to, term)?;
        self.sweep_pending = true;
        Ok(())
    }

    /// Deletes at most `limit` compacted log keys (those below the first index); returns
    /// whether some remain. The node calls this once per cycle: a compaction after a large
    /// snapshot interval leaves tens of thousands of keys, too many to delete in one go without
    /// stalling the log. Nothing reads those keys any more, so leftovers are harmless.
    pub fn sweep_compacted(&mut self, limit: usize) -> Result<bool, StorageError> {
        if !self.sweep_pending {
            return Ok(false);
        }
        let keys: Vec<sled::IVec> = self
            .log
            .range(..key(self.first()))
            .keys()
            .take(limit)
            .collect::<Result<_, _>>()?;
        let mut batch = sled::Batch::default();
        for k in &keys {
            batch.remove(k.clone());
        }
        self.log.apply_batch(batch)?;
        self.sweep_pending = keys.len() == limit;
        Ok(self.sweep_pending)
    }

    fn set_truncated(&mut self, index: u64, term: u64) -> Result<(), StorageError> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&index.to_be_bytes());
        b[8..].copy_from_slice(&term.to_be_bytes());
        self.meta.insert("truncated", &b)?;
        self.truncated_index = index;
        self.truncated_term = term;
        Ok(())
    }

    /// Whether a peer asked for a snapshot newer than the stored one.
    pub fn snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.load(Ordering::Relaxed)
    }

    /// Bytes used on disk by sled (approximate).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

impl Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let lo = (low - self.first()) as usize;
        let hi = (high - self.first()) as usize;
        let mut out: Vec<Entry> = self.entries.range(lo..hi).cloned().collect();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated_index {
            return Ok(self.truncated_term);
        }
        let snap = self.snapshot.get_metadata();
        if idx == snap.index {
            return Ok(snap.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let meta = self.snapshot.get_metadata();
        let cs = meta.get_conf_state();
        // A snapshot taken before `to` was added does not name it, and raft-rs on the receiving
        // side refuses such a snapshot: make a fresh one instead.
        let names_recipient = cs.voters.contains(&to) || cs.learners.contains(&to);
        if meta.index >= request_index
            && meta.index >= self.truncated_index
            && meta.index > 0
            && names_recipient
        {
            return Ok(self.snapshot.clone());
        }
        self.snapshot_wanted.store(true, Ordering::Relaxed);
        Err(raft::Error::Store(
            RaftStorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_and_hard_state_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = SledStorage::open(dir.path()).unwrap();
            assert!(s.is_empty());
            s.bootstrap(vec![1, 2, 3]).unwrap();
            s.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>())
                .unwrap();
            s.set_hard_state(HardState {
                term: 1,
                commit: 4,
                ..Default::default()
            })
            .unwrap();
            s.persist().unwrap();
        }
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!((s.first(), s.last()), (1, 5));
        assert_eq!(s.hard_state().commit, 4);
        assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
        assert_eq!(
            s.entries(2, 4, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn a_conflicting_append_replaces_the_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStorage::open(dir.path()).unwrap();
        s.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>())
            .unwrap();
        s.append(&[entry(3, 2), entry(4, 2)]).unwrap();
        s.persist().unwrap();
        assert_eq!(s.last(), 4);
        assert_eq!(s.term(3).unwrap(), 2);
        drop(s);
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!(s.last(), 4, "removed suffix stays removed after reopen");
        assert_eq!(s.term(4).unwrap(), 2);
    }

    #[test]
    fn snapshots_compact_the_log_but_keep_retention_and_boundary_terms() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStorage::open(dir.path()).unwrap();
        s.append(&(1..=100).map(|i| entry(i, 1 + i / 50)).collect::<Vec<_>>())
            .unwrap();
        s.create_snapshot(90, b"state".to_vec(), 10).unwrap();
        assert_eq!(s.first(), 81);
        // Compacted keys leave the disk a bounded number per call.
        assert!(
            s.sweep_compacted(50).unwrap(),
            "80 keys: more than one sweep of 50"
        );
        assert!(!s.sweep_compacted(50).unwrap());
        assert_eq!(s.log.range(..key(81)).count(), 0);
        assert_eq!(s.log.range(key(81)..).count(), 20);
        assert_eq!(
            s.term(80).unwrap(),
            2,
            "term of the compaction boundary is kept"
        );
        assert!(matches!(
            s.term(50),
            Err(raft::Error::Store(RaftStorageError::Compacted))
        ));
        assert!(
            s.snapshot(85, 2).is_err(),
            "the stored snapshot does not name peer 2"
        );
        assert!(s.snapshot_wanted());
        s.set_conf_state(ConfState::from((vec![1, 2], vec![])))
            .unwrap();
        s.create_snapshot(90, b"state".to_vec(), 10).unwrap();
        assert!(!s.snapshot_wanted());
        assert_eq!(s.snapshot(85, 2).unwrap().get_metadata().index, 90);
        assert!(s.snapshot(95, 2).is_err());
        assert!(s.snapshot_wanted());
        drop(s);
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!((s.first(), s.last()), (81, 100));
        assert_eq!(s.snapshot_data(), b"state");
    }

    #[test]
    fn an_installed_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStorage::open(dir.path()).unwrap();
        s.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>())
            .unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 50;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
        snap.set_data(b"x".to_vec().into());
        s.apply_snapshot(snap).unwrap();
        assert_eq!((s.first(), s.last()), (51, 50));
        assert_eq!(s.term(50).unwrap(), 3);
        assert_eq!(s.hard_state().commit, 50);
        drop(s);
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!(
            (s.first(), s.last(), s.conf_state().voters.clone()),
            (51, 50, vec![1, 2])
        );
    }
}
