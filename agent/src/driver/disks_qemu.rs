//! [`QemuImgDisks`]: the [`Disks`] driver with `qemu-img` (see [`super::disks`] for the layout).
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::disks::{
    check_digest, BaseImage, CachedBase, DiskError, DiskRef, Disks, EvictedBase, ImageSource,
    OverlayInfo, SnapshotFile, GIB,
};
use super::process::{self, RunError};
use crate::reconcile::DiskLayout;
use crate::render::qemu_img::{self, DiskFormat};

/// Directories and tool settings of [`QemuImgDisks`].
#[derive(Debug, Clone)]
pub struct DisksConfig {
    pub cache_dir: PathBuf,
    pub disks_dir: PathBuf,
    pub snapshots_dir: PathBuf,
    pub qemu_img: PathBuf,
    /// Limit for one qemu-img run (convert of a large disk takes a while).
    pub timeout: Duration,
}

impl DisksConfig {
    /// The three directories under `root`, the system qemu-img, a 1 h limit.
    pub fn under(root: &Path) -> Self {
        DisksConfig {
            cache_dir: root.join("images"),
            disks_dir: root.join("disks"),
            snapshots_dir: root.join("snapshots"),
            qemu_img: PathBuf::from("qemu-img"),
            timeout: Duration::from_secs(3600),
        }
    }
}

/// [`Disks`] with qemu-img. See the module doc for the layout.
#[derive(Debug)]
pub struct QemuImgDisks {
    config: DisksConfig,
    layout: DiskLayout,
    /// One lock per digest ever asked for, so concurrent boots of one image download it once.
    fetching: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Held while overlays are created and while eviction decides, so it never removes a
    /// base an overlay is being created on.
    cache_lock: Mutex<()>,
}

impl QemuImgDisks {
    /// Creates the directories (absolute paths are required: they end up in overlays).
    pub fn new(config: DisksConfig) -> Result<Self, DiskError> {
        let mut config = config;
        for dir in [
            &mut config.cache_dir,
            &mut config.disks_dir,
            &mut config.snapshots_dir,
        ] {
            fs::create_dir_all(&*dir).map_err(DiskError::io("create the directory", dir))?;
            *dir = fs::canonicalize(&*dir).map_err(DiskError::io("resolve the directory", dir))?;
        }
        Ok(QemuImgDisks {
            layout: DiskLayout::new(&config.disks_dir),
            config,
            fetching: Mutex::new(HashMap::new()),
            cache_lock: Mutex::new(()),
        })
    }

    pub fn config(&self) -> &DisksConfig {
        &self.config
    }

    fn run(&self, action: &'static str, argv: Vec<OsString>) -> Result<Vec<u8>, DiskError> {
        process::run(&self.config.qemu_img, &argv, self.config.timeout).map_err(|e| match e {
            RunError::Spawn(source) => DiskError::QemuImgMissing {
                binary: self.config.qemu_img.clone(),
                source,
            },
            RunError::Timeout => DiskError::QemuImgTimeout {
                action,
                timeout: self.config.timeout,
            },
            RunError::Failed { status, stderr } => DiskError::QemuImg {
                action,
                message: if stderr.is_empty() {
                    status.to_string()
                } else {
                    stderr
                },
            },
        })
    }

    fn info(&self, path: &Path, format: DiskFormat) -> Result<OverlayInfo, DiskError> {
        let argv = qemu_img::info(path, format).map_err(|e| DiskError::QemuImg {
            action: "info",
            message: e.to_string(),
        })?;
        let out = self.run("info", argv)?;
        parse_info(path, &out)
    }

    fn in_cache(&self, base: &Path) -> Result<(), DiskError> {
        let cached = base.parent() == Some(self.config.cache_dir.as_path())
            && base
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| check_digest(n).is_ok())
            && base.is_file();
        if cached {
            Ok(())
        } else {
            Err(DiskError::NotCached {
                path: base.to_path_buf(),
                cache: self.config.cache_dir.clone(),
            })
        }
    }

    /// Streams `source` into a temp file in the cache, checking size and digest, then renames.
    fn fetch(
        &self,
        image: &BaseImage,
        source: &mut dyn ImageSource,
        dest: &Path,
    ) -> Result<(), DiskError> {
        let cache = &self.config.cache_dir;
        let fetch_err = |source| DiskError::Fetch {
            sha256: image.sha256.clone(),
            source,
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".part-")
            .tempfile_in(cache)
            .map_err(DiskError::io("create a temp file in", cache))?;
        let mut reader = source.open().map_err(fetch_err)?;
        let mut hasher = Sha256::new();
        let mut total: u64 = 0;
        let mut buf = vec![0u8; 1 << 20];
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
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(DiskError::io("write", tmp.path()))?;
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
        let file = tmp.as_file();
        file.sync_all()
            .map_err(DiskError::io("flush", tmp.path()))?;
        // Readable by all (QEMU may run as another user), writable by none.
        file.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(DiskError::io("make read-only", tmp.path()))?;
        tmp.persist(dest).map_err(|e| DiskError::Io {
            action: "move the fetched image to",
            path: dest.to_path_buf(),
            source: e.error,
        })?;
        sync_dir(cache);
        Ok(())
    }

    /// The generation directories under the disk directory (`<disks>/<server>/<generation>`).
    fn generation_dirs(&self) -> Result<Vec<PathBuf>, DiskError> {
        let mut out = Vec::new();
        for server in subdirs(&self.config.disks_dir)? {
            out.extend(subdirs(&server)?);
        }
        Ok(out)
    }

    /// Creates `disk` with `argv_for(temp path)` under a temp name in its directory, then
    /// renames it into place; the temp file is removed on failure.
    fn create_disk(
        &self,
        disk: DiskRef,
        argv_for: impl FnOnce(&Path) -> Result<Vec<OsString>, qemu_img::RelativePath>,
    ) -> Result<OverlayInfo, DiskError> {
        let path = self.disk_path(disk);
        let dir = path.parent().expect("disk paths have a directory");
        fs::create_dir_all(dir).map_err(DiskError::io("create the directory", dir))?;
        let tmp = dir.join(format!(".part-{}-{}", disk.role.as_str(), Uuid::new_v4()));
        let argv = argv_for(&tmp).map_err(|e| DiskError::QemuImg {
            action: "create",
            message: e.to_string(),
        })?;
        let created = self.run("create", argv).and_then(|_| {
            fs::rename(&tmp, &path).map_err(DiskError::io("rename the new disk to", &path))
        });
        if let Err(e) = created {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(dir);
        self.info(&path, DiskFormat::Qcow2)
    }

    /// The existing `disk`, if any: `Ok(Some)` when it is what `same` accepts, an error when it
    /// differs.
    fn existing(
        &self,
        disk: DiskRef,
        same: impl FnOnce(&OverlayInfo) -> bool,
    ) -> Result<Option<OverlayInfo>, DiskError> {
        let path = self.disk_path(disk);
        if !path.exists() {
            return Ok(None);
        }
        let have = self.info(&path, DiskFormat::Qcow2)?;
        if same(&have) {
            return Ok(Some(have));
        }
        Err(DiskError::OverlayExists {
            found: describe(&have),
            path,
        })
    }
}

/// The directories directly in `dir` (none when `dir` does not exist).
fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, DiskError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DiskError::io("list", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(DiskError::io("list", dir))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Best effort: make a rename durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn older_than(meta: &fs::Metadata, min_idle: Duration) -> bool {
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|idle| idle >= min_idle)
}

impl Disks for QemuImgDisks {
    fn base_path(&self, sha256: &str) -> Result<PathBuf, DiskError> {
        check_digest(sha256)?;
        Ok(self.config.cache_dir.join(sha256))
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
        let lock = self
            .fetching
            .lock()
            .entry(image.sha256.clone())
            .or_default()
            .clone();
        let _fetching = lock.lock();
        match fs::metadata(&path) {
            Ok(meta) if meta.len() == image.size => {
                // Mark it as wanted, for eviction.
                let _ = fs::File::open(&path).and_then(|f| f.set_modified(SystemTime::now()));
                return Ok(path);
            }
            Ok(meta) => {
                tracing::warn!(
                    path = %path.display(),
                    have = meta.len(),
                    want = image.size,
                    "cached base has the wrong size; fetching it again"
                );
                fs::remove_file(&path).map_err(DiskError::io("remove", &path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DiskError::io("read the metadata of", &path)(e)),
        }
        self.fetch(image, source, &path)?;
        Ok(path)
    }

    fn list_bases(&self) -> Result<Vec<CachedBase>, DiskError> {
        let dir = &self.config.cache_dir;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(DiskError::io("list", dir))? {
            let entry = entry.map_err(DiskError::io("list", dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if check_digest(&name).is_err() {
                continue;
            }
            let meta = entry
                .metadata()
                .map_err(DiskError::io("read the metadata of", &entry.path()))?;
            out.push(CachedBase {
                sha256: name,
                path: entry.path(),
                bytes: meta.len(),
            });
        }
        out.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        Ok(out)
    }

    fn create_overlay(
        &self,
        disk: DiskRef,
        base: &Path,
        base_format: DiskFormat,
        size_gib: u64,
    ) -> Result<OverlayInfo, DiskError> {
        let _cache = self.cache_lock.lock();
        self.in_cache(base)?;
        let base_info = self.info(base, base_format)?;
        let want_size = if size_gib == 0 {
            base_info.virtual_size
        } else {
            size_gib.saturating_mul(GIB)
        };
        if want_size < base_info.virtual_size {
            return Err(DiskError::TooSmall {
                requested_gib: size_gib,
                virtual_size: base_info.virtual_size,
            });
        }
        let same = |have: &OverlayInfo| {
            have.backing_file.as_deref() == Some(base)
                && have.backing_format.as_deref() == Some(base_format.qemu_name())
                && have.virtual_size == want_size
        };
        if let Some(have) = self.existing(disk, same)? {
            return Ok(have);
        }
        self.create_disk(disk, |tmp| {
            qemu_img::create_overlay(base, base_format, tmp, (size_gib > 0).then_some(size_gib))
        })
    }

    fn create_blank(&self, disk: DiskRef, size_bytes: u64) -> Result<OverlayInfo, DiskError> {
        let want_size = size_bytes.div_ceil(512) * 512;
        let same =
            |have: &OverlayInfo| have.backing_file.is_none() && have.virtual_size == want_size;
        if let Some(have) = self.existing(disk, same)? {
            return Ok(have);
        }
        self.create_disk(disk, |tmp| qemu_img::create_blank(tmp, want_size))
    }

    fn delete_disk(&self, disk: DiskRef) -> Result<bool, DiskError> {
        let path = self.disk_path(disk);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(DiskError::io("delete", &path)(e)),
        }
    }

    fn delete_generation(&self, server: Uuid, generation: u64) -> Result<bool, DiskError> {
        let server_id = server.to_string();
        let dir = self.layout.generation_dir(&server_id, generation);
        let deleted = match fs::remove_dir_all(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(DiskError::io("delete", &dir)(e)),
        };
        // The server's directory goes with its last generation (it fails while others remain).
        let _ = fs::remove_dir(self.layout.server_dir(&server_id));
        sync_dir(&self.config.disks_dir);
        Ok(deleted)
    }

    fn disk_info(&self, disk: DiskRef) -> Result<OverlayInfo, DiskError> {
        let path = self.disk_path(disk);
        if !path.is_file() {
            return Err(DiskError::NotFound { what: "disk", path });
        }
        self.info(&path, DiskFormat::Qcow2)
    }

    fn list_disks(&self) -> Result<Vec<DiskRef>, DiskError> {
        let mut out = Vec::new();
        for dir in self.generation_dirs()? {
            for entry in fs::read_dir(&dir).map_err(DiskError::io("list", &dir))? {
                let path = entry.map_err(DiskError::io("list", &dir))?.path();
                let Some((id, generation, role)) = self.layout.parse(&path) else {
                    continue;
                };
                if let (Ok(server), true) = (Uuid::parse_str(&id), path.is_file()) {
                    out.push(DiskRef::new(server, generation, role));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn snapshot(
        &self,
        disk: DiskRef,
        snapshot: Uuid,
        format: DiskFormat,
    ) -> Result<SnapshotFile, DiskError> {
        let disk = self.disk_path(disk);
        if !disk.is_file() {
            return Err(DiskError::NotFound {
                what: "disk",
                path: disk,
            });
        }
        let dest = self.config.snapshots_dir.join(snapshot.to_string());
        let tmp = self
            .config
            .snapshots_dir
            .join(format!(".part-{snapshot}-{}", Uuid::new_v4()));
        let argv = qemu_img::convert(&disk, DiskFormat::Qcow2, &tmp, format).map_err(|e| {
            DiskError::QemuImg {
                action: "convert",
                message: e.to_string(),
            }
        })?;
        let converted = self.run("convert", argv).map_err(|e| match e {
            DiskError::QemuImg { message, .. } if message.contains("lock") => DiskError::InUse {
                path: disk.clone(),
                message,
            },
            other => other,
        });
        let finished = converted.and_then(|_| {
            let info = self.info(&tmp, format)?;
            let (size, sha256) = hash_file(&tmp)?;
            fs::rename(&tmp, &dest).map_err(DiskError::io("rename the snapshot to", &dest))?;
            Ok(SnapshotFile {
                path: dest.clone(),
                format,
                size,
                virtual_size: info.virtual_size,
                sha256,
            })
        });
        if finished.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        finished
    }

    fn delete_snapshot(&self, snapshot: Uuid) -> Result<bool, DiskError> {
        let path = self.config.snapshots_dir.join(snapshot.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(DiskError::io("delete", &path)(e)),
        }
    }

    fn evict_unused(&self, min_idle: Duration) -> Result<Vec<EvictedBase>, DiskError> {
        let _cache = self.cache_lock.lock();
        let mut used = Vec::new();
        for overlay in self.list_disks()?.into_iter().map(|d| self.disk_path(d)) {
            match self.info(&overlay, DiskFormat::Qcow2) {
                Ok(info) => used.extend(info.backing_file),
                // A disk qemu-img cannot read keeps every base: we cannot tell which it uses.
                Err(e) => {
                    tracing::warn!(disk = %overlay.display(), error = %e, "not evicting any base image");
                    return Ok(Vec::new());
                }
            }
        }
        let mut evicted = Vec::new();
        for base in self.list_bases()? {
            if used.contains(&base.path) {
                continue;
            }
            let Ok(meta) = fs::metadata(&base.path) else {
                continue;
            };
            if !older_than(&meta, min_idle) {
                continue;
            }
            fs::remove_file(&base.path).map_err(DiskError::io("remove", &base.path))?;
            evicted.push(EvictedBase {
                sha256: base.sha256,
                bytes: base.bytes,
            });
        }
        // Temp files of fetches, disks and snapshots that a crash left behind.
        let mut dirs = vec![
            self.config.cache_dir.clone(),
            self.config.snapshots_dir.clone(),
        ];
        dirs.extend(self.generation_dirs()?);
        for dir in &dirs {
            for entry in fs::read_dir(dir)
                .map_err(DiskError::io("list", dir))?
                .flatten()
            {
                let stale = entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(".part-"))
                    && entry.metadata().is_ok_and(|m| older_than(&m, min_idle));
                if stale {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(evicted)
    }
}

fn describe(info: &OverlayInfo) -> String {
    format!(
        "{} of {} bytes on {} ({})",
        info.format,
        info.virtual_size,
        info.backing_file.as_ref().map_or_else(
            || "no backing file".to_string(),
            |b| b.display().to_string()
        ),
        info.backing_format
            .as_deref()
            .unwrap_or("no backing format"),
    )
}

fn hash_file(path: &Path) -> Result<(u64, String), DiskError> {
    let mut file = fs::File::open(path).map_err(DiskError::io("open", path))?;
    let mut hasher = Sha256::new();
    let size = io::copy(&mut file, &mut hasher).map_err(DiskError::io("read", path))?;
    Ok((size, hex::encode(hasher.finalize())))
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawInfo {
    format: String,
    virtual_size: u64,
    actual_size: Option<u64>,
    full_backing_filename: Option<String>,
    backing_filename: Option<String>,
    backing_filename_format: Option<String>,
}

/// Parses `qemu-img info --output=json` (one image, no backing chain).
fn parse_info(path: &Path, json: &[u8]) -> Result<OverlayInfo, DiskError> {
    let raw: RawInfo = serde_json::from_slice(json).map_err(|e| DiskError::QemuImg {
        action: "info",
        message: format!("unreadable JSON report: {e}"),
    })?;
    Ok(OverlayInfo {
        path: path.to_path_buf(),
        format: raw.format,
        virtual_size: raw.virtual_size,
        actual_size: raw.actual_size,
        backing_file: raw
            .full_backing_filename
            .or(raw.backing_filename)
            .map(PathBuf::from),
        backing_format: raw.backing_filename_format,
    })
}

#[cfg(test)]
#[path = "disks_tests.rs"]
mod tests;
