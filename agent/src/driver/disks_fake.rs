//! An in-memory [`Disks`]: no files, the same contract (checked by
//! [`super::conformance::disks`]), plus [`FakeDisks::fail_next`] to script failures and
//! [`FakeDisks::calls`] to see what was done.
//!
//! Paths are computed like the real layout under a root that need not exist. Image bytes are
//! streamed, sized and hashed as for real but not kept: a base remembers its size and, like
//! `qemu-img info -f <format>`, its virtual size (a raw image's file size, a qcow2's header
//! size field).
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::disks::{
    check_digest, BaseImage, CachedBase, DiskError, Disks, EvictedBase, ImageSource, OverlayInfo,
    SnapshotFile,
};
use crate::render::qemu_img::DiskFormat;

const GIB: u64 = 1 << 30;
const QCOW2_MAGIC: &[u8] = b"QFI\xfb";

/// Operations failures can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskOp {
    EnsureBase,
    CreateOverlay,
    DeleteOverlay,
    OverlayInfo,
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
    overlays: BTreeMap<Uuid, OverlayInfo>,
    snapshots: BTreeMap<Uuid, SnapshotFile>,
    failures: HashMap<DiskOp, VecDeque<DiskError>>,
    calls: Vec<DiskOp>,
}

/// See the module doc.
#[derive(Debug)]
pub struct FakeDisks {
    cache_dir: PathBuf,
    disks_dir: PathBuf,
    snapshots_dir: PathBuf,
    state: Mutex<State>,
}

impl FakeDisks {
    /// A fake whose paths are under `root` (`images/`, `disks/`, `snapshots/`).
    pub fn new(root: &Path) -> Self {
        FakeDisks {
            cache_dir: root.join("images"),
            disks_dir: root.join("disks"),
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

    fn overlay_path(&self, server: Uuid) -> PathBuf {
        self.disks_dir.join(format!("{server}.qcow2"))
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
        server: Uuid,
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
            path: self.overlay_path(server),
            format: "qcow2".to_string(),
            virtual_size: want,
            actual_size: Some(196_608),
            backing_file: Some(base.to_path_buf()),
            backing_format: Some(base_format.qemu_name().to_string()),
        };
        if let Some(have) = state.overlays.get(&server) {
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
        state.overlays.insert(server, info.clone());
        Ok(info)
    }

    fn delete_overlay(&self, server: Uuid) -> Result<bool, DiskError> {
        Ok(self
            .enter(DiskOp::DeleteOverlay)?
            .overlays
            .remove(&server)
            .is_some())
    }

    fn overlay_info(&self, server: Uuid) -> Result<OverlayInfo, DiskError> {
        self.enter(DiskOp::OverlayInfo)?
            .overlays
            .get(&server)
            .cloned()
            .ok_or_else(|| DiskError::NotFound {
                what: "disk",
                path: self.overlay_path(server),
            })
    }

    fn snapshot(
        &self,
        server: Uuid,
        snapshot: Uuid,
        format: DiskFormat,
    ) -> Result<SnapshotFile, DiskError> {
        let mut state = self.enter(DiskOp::Snapshot)?;
        let overlay = state
            .overlays
            .get(&server)
            .ok_or_else(|| DiskError::NotFound {
                what: "disk",
                path: self.overlay_path(server),
            })?;
        let mut hasher = Sha256::new();
        hasher.update(server.as_bytes());
        hasher.update(snapshot.as_bytes());
        let file = SnapshotFile {
            path: self.snapshots_dir.join(snapshot.to_string()),
            format,
            size: match format {
                DiskFormat::Raw | DiskFormat::Iso => overlay.virtual_size,
                _ => 196_608,
            },
            virtual_size: overlay.virtual_size,
            sha256: hex::encode(hasher.finalize()),
        };
        state.snapshots.insert(snapshot, file.clone());
        Ok(file)
    }

    fn delete_snapshot(&self, snapshot: Uuid) -> Result<bool, DiskError> {
        Ok(self
            .enter(DiskOp::DeleteSnapshot)?
            .snapshots
            .remove(&snapshot)
            .is_some())
    }

    fn evict_unused(&self, min_idle: Duration) -> Result<Vec<EvictedBase>, DiskError> {
        let mut state = self.enter(DiskOp::EvictUnused)?;
        let used: Vec<PathBuf> = state
            .overlays
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
