//! An in-memory [`Disks`]: no files, the same contract (checked by
//! [`super::conformance::disks`]), plus [`FakeDisks::fail_next`] to script failures and
//! [`FakeDisks::calls`] to see what was done.
//!
//! Paths are computed like the real layout under a root that need not exist. Image bytes are
//! streamed, sized and hashed as for real but not kept: a base remembers its size and, like
//! `qemu-img info -f <format>`, its virtual size (a raw image's file size, a qcow2's header
//! size field). A snapshot is 64 KiB of bytes derived from the disk and snapshot ids; when the
//! root directory exists, the file is really written (and deleted), so it can be uploaded.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::disks::{
    check_digest, BaseImage, CachedBase, DiskError, DiskRef, Disks, EvictedBase, ImageSource,
    OverlayInfo, SnapshotFile,
};
use crate::reconcile::DiskLayout;
use crate::render::qemu_img::DiskFormat;

const GIB: u64 = 1 << 30;
const QCOW2_MAGIC: &[u8] = b"QFI\xfb";
const SNAPSHOT_BYTES: usize = 64 << 10;

/// Operations failures can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskOp {
    EnsureBase,
    CreateOverlay,
    CreateBlank,
    DeleteDisk,
    DeleteGeneration,
    DiskInfo,
    ListDisks,
    Snapshot,
    DeleteSnapshot,
    EvictUnused,
}

#[derive(Debug)]
struct FakeBase {
    bytes: u64,
    /// The content starts with the qcow2 magic and this virtual size.
    qcow2_size: Option<u64>,
    touched: Instant,
}

#[derive(Debug, Default)]
struct State {
    bases: BTreeMap<String, FakeBase>,
    disks: BTreeMap<DiskRef, OverlayInfo>,
    snapshots: BTreeMap<Uuid, SnapshotFile>,
    failures: HashMap<DiskOp, VecDeque<DiskError>>,
    calls: Vec<DiskOp>,
}

/// See the module doc.
#[derive(Debug)]
pub struct FakeDisks {
    cache_dir: PathBuf,
    layout: DiskLayout,
    snapshots_dir: PathBuf,
    state: Mutex<State>,
}

impl FakeDisks {
    /// A fake whose paths are under `root` (`images/`, `disks/`, `snapshots/`).
    pub fn new(root: &Path) -> Self {
        FakeDisks {
            cache_dir: root.join("images"),
            layout: DiskLayout::new(root.join("disks")),
            snapshots_dir: root.join("snapshots"),
            state: Mutex::new(State::default()),
        }
    }

    /// The next call of `op` fails with `error` (before any change).
    pub fn fail_next(&self, op: DiskOp, error: DiskError) {
        self.state
            .lock()
            .failures
            .entry(op)
            .or_default()
            .push_back(error);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<DiskOp> {
        self.state.lock().calls.clone()
    }

    /// Every disk present, with what `qemu-img info` would say (no call is recorded).
    pub fn disks(&self) -> BTreeMap<DiskRef, OverlayInfo> {
        self.state.lock().disks.clone()
    }

    /// Creates a disk and its bytes out of nothing, as if left by an earlier run.
    pub fn insert_disk(&self, disk: DiskRef, virtual_size: u64) {
        let info = OverlayInfo {
            path: self.disk_path(disk),
            format: "qcow2".to_string(),
            virtual_size,
            actual_size: Some(196_608),
            backing_file: None,
            backing_format: None,
        };
        self.state.lock().disks.insert(disk, info);
    }

    fn enter(&self, op: DiskOp) -> Result<parking_lot::MutexGuard<'_, State>, DiskError> {
        let mut state = self.state.lock();
        state.calls.push(op);
        match state.failures.get_mut(&op).and_then(VecDeque::pop_front) {
            Some(e) => Err(e),
            None => Ok(state),
        }
    }

    /// The digest of a path in the cache directory.
    fn cached_digest(&self, base: &Path) -> Option<String> {
        let name = base.file_name()?.to_str()?;
        (base.parent() == Some(self.cache_dir.as_path()) && check_digest(name).is_ok())
            .then(|| name.to_string())
    }
}

/// Reads `source` fully, checking size and digest (as the real driver does on the way to disk).
fn verify(image: &BaseImage, source: &mut dyn ImageSource) -> Result<Option<u64>, DiskError> {
    let fetch_err = |source| DiskError::Fetch {
        sha256: image.sha256.clone(),
        source,
    };
    let mut reader = source.open().map_err(fetch_err)?;
    let mut hasher = Sha256::new();
    let mut head = Vec::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fetch_err(e)),
        };
        total += n as u64;
        if total > image.size {
            return Err(DiskError::SizeMismatch {
                sha256: image.sha256.clone(),
                expected: image.size,
                actual: format!("more than {}", image.size),
            });
        }
        if head.len() < 32 {
            head.extend_from_slice(&buf[..n.min(32 - head.len())]);
        }
        hasher.update(&buf[..n]);
    }
    if total != image.size {
        return Err(DiskError::SizeMismatch {
            sha256: image.sha256.clone(),
            expected: image.size,
            actual: total.to_string(),
        });
    }
    let actual = hex::encode(hasher.finalize());
    if actual != image.sha256 {
        return Err(DiskError::ChecksumMismatch {
            expected: image.sha256.clone(),
            actual,
        });
    }
    Ok((head.len() >= 32 && head.starts_with(QCOW2_MAGIC))
        // qemu counts whole 512-byte sectors.
        .then(|| u64::from_be_bytes(head[24..32].try_into().expect("8 bytes")) & !511))
}

impl Disks for FakeDisks {
    fn base_path(&self, sha256: &str) -> Result<PathBuf, DiskError> {
        check_digest(sha256)?;
        Ok(self.cache_dir.join(sha256))
    }

    fn layout(&self) -> &DiskLayout {
        &self.layout
    }

    fn ensure_base(
        &self,
        image: &BaseImage,
        source: &mut dyn ImageSource,
    ) -> Result<PathBuf, DiskError> {
        let path = self.base_path(&image.sha256)?;
        {
            let mut state = self.enter(DiskOp::EnsureBase)?;
            if let Some(base) = state.bases.get_mut(&image.sha256) {
                if base.bytes == image.size {
                    base.touched = Instant::now();
                    return Ok(path);
                }
                state.bases.remove(&image.sha256);
            }
        }
        let qcow2_size = verify(image, source)?;
        self.state.lock().bases.insert(
            image.sha256.clone(),
            FakeBase {
                bytes: image.size,
                qcow2_size,
                touched: Instant::now(),
            },
        );
        Ok(path)
    }

    fn list_bases(&self) -> Result<Vec<CachedBase>, DiskError> {
        Ok(self
            .state
            .lock()
            .bases
            .iter()
            .map(|(sha, b)| CachedBase {
                sha256: sha.clone(),
                path: self.cache_dir.join(sha),
                bytes: b.bytes,
            })
            .collect())
    }

    fn create_overlay(
        &self,
        disk: DiskRef,
        base: &Path,
        base_format: DiskFormat,
        size_gib: u64,
    ) -> Result<OverlayInfo, DiskError> {
        let mut state = self.enter(DiskOp::CreateOverlay)?;
        let not_cached = || DiskError::NotCached {
            path: base.to_path_buf(),
            cache: self.cache_dir.clone(),
        };
        let sha = self.cached_digest(base).ok_or_else(not_cached)?;
        let cached = state.bases.get(&sha).ok_or_else(not_cached)?;
        let base_size = match (base_format, cached.qcow2_size) {
            (DiskFormat::Qcow2, Some(size)) => size,
            (DiskFormat::Qcow2, None) => {
                return Err(DiskError::QemuImg {
                    action: "info",
                    message: format!(
                        "Could not open '{}': Image is not in qcow2 format",
                        base.display()
                    ),
                })
            }
            _ => cached.bytes,
        };
        let want = if size_gib == 0 {
            base_size
        } else {
            size_gib.saturating_mul(GIB)
        };
        if want < base_size {
            return Err(DiskError::TooSmall {
                requested_gib: size_gib,
                virtual_size: base_size,
            });
        }
        let info = OverlayInfo {
            path: self.disk_path(disk),
            format: "qcow2".to_string(),
            virtual_size: want,
            actual_size: Some(196_608),
            backing_file: Some(base.to_path_buf()),
            backing_format: Some(base_format.qemu_name().to_string()),
        };
        insert_once(&mut state, disk, info)
    }

    fn create_blank(&self, disk: DiskRef, size_bytes: u64) -> Result<OverlayInfo, DiskError> {
        let mut state = self.enter(DiskOp::CreateBlank)?;
        let info = OverlayInfo {
            path: self.disk_path(disk),
            format: "qcow2".to_string(),
            virtual_size: size_bytes.div_ceil(512) * 512,
            actual_size: Some(196_608),
            backing_file: None,
            backing_format: None,
        };
        insert_once(&mut state, disk, info)
    }

    fn delete_disk(&self, disk: DiskRef) -> Result<bool, DiskError> {
        Ok(self
            .enter(DiskOp::DeleteDisk)?
            .disks
            .remove(&disk)
            .is_some())
    }

    fn delete_generation(&self, server: Uuid, generation: u64) -> Result<bool, DiskError> {
        let mut state = self.enter(DiskOp::DeleteGeneration)?;
        let before = state.disks.len();
        state
            .disks
            .retain(|d, _| (d.server, d.generation) != (server, generation));
        Ok(state.disks.len() < before)
    }

    fn disk_info(&self, disk: DiskRef) -> Result<OverlayInfo, DiskError> {
        self.enter(DiskOp::DiskInfo)?
            .disks
            .get(&disk)
            .cloned()
            .ok_or_else(|| DiskError::NotFound {
                what: "disk",
                path: self.disk_path(disk),
            })
    }

    fn list_disks(&self) -> Result<Vec<DiskRef>, DiskError> {
        Ok(self
            .enter(DiskOp::ListDisks)?
            .disks
            .keys()
            .copied()
            .collect())
    }

    fn snapshot(
        &self,
        disk: DiskRef,
        snapshot: Uuid,
        format: DiskFormat,
    ) -> Result<SnapshotFile, DiskError> {
        let mut state = self.enter(DiskOp::Snapshot)?;
        let overlay = state.disks.get(&disk).ok_or_else(|| DiskError::NotFound {
            what: "disk",
            path: self.disk_path(disk),
        })?;
        let mut seed = Sha256::new();
        seed.update(disk.server.as_bytes());
        seed.update(disk.generation.to_be_bytes());
        seed.update(snapshot.as_bytes());
        let seed = seed.finalize();
        let content: Vec<u8> = (0..SNAPSHOT_BYTES)
            .map(|i| seed[i % seed.len()] ^ (i / seed.len()) as u8)
            .collect();
        let path = self.snapshots_dir.join(snapshot.to_string());
        if self.snapshots_dir.parent().is_some_and(Path::is_dir) {
            std::fs::create_dir_all(&self.snapshots_dir)
                .and_then(|()| std::fs::write(&path, &content))
                .map_err(|source| DiskError::Io {
                    action: "write the snapshot",
                    path: path.clone(),
                    source,
                })?;
        }
        let file = SnapshotFile {
            path,
            format,
            size: content.len() as u64,
            virtual_size: overlay.virtual_size,
            sha256: hex::encode(Sha256::digest(&content)),
        };
        state.snapshots.insert(snapshot, file.clone());
        Ok(file)
    }

    fn delete_snapshot(&self, snapshot: Uuid) -> Result<bool, DiskError> {
        let removed = self
            .enter(DiskOp::DeleteSnapshot)?
            .snapshots
            .remove(&snapshot);
        if let Some(file) = &removed {
            let _ = std::fs::remove_file(&file.path);
        }
        Ok(removed.is_some())
    }

    fn evict_unused(&self, min_idle: Duration) -> Result<Vec<EvictedBase>, DiskError> {
        let mut state = self.enter(DiskOp::EvictUnused)?;
        let used: Vec<PathBuf> = state
            .disks
            .values()
            .filter_map(|o| o.backing_file.clone())
            .collect();
        let evict: Vec<String> = state
            .bases
            .iter()
            .filter(|(sha, b)| {
                !used.contains(&self.cache_dir.join(sha)) && b.touched.elapsed() >= min_idle
            })
            .map(|(sha, _)| sha.clone())
            .collect();
        Ok(evict
            .into_iter()
            .map(|sha| {
                let base = state.bases.remove(&sha).expect("listed above");
                EvictedBase {
                    sha256: sha,
                    bytes: base.bytes,
                }
            })
            .collect())
    }
}

/// Records a new disk, or accepts the same one again; a different one is refused.
fn insert_once(
    state: &mut State,
    disk: DiskRef,
    info: OverlayInfo,
) -> Result<OverlayInfo, DiskError> {
    if let Some(have) = state.disks.get(&disk) {
        if *have == info {
            return Ok(info);
        }
        return Err(DiskError::OverlayExists {
            path: info.path,
            found: format!(
                "{} of {} bytes on {:?} ({:?})",
                have.format, have.virtual_size, have.backing_file, have.backing_format
            ),
        });
    }
    state.disks.insert(disk, info.clone());
    Ok(info)
}
