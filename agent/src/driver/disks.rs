//! [`Disks`]: the host's base-image cache and the servers' disks, and [`QemuImgDisks`], the
//! implementation with `qemu-img`.
//!
//! Layout (three directories, configurable):
//! - `<cache>/<sha256>`: base images, content-addressed, read-only (0444). A base enters the
//!   cache only by a rename after its bytes matched the digest (I9), from a temp file
//!   `<cache>/.part-*` that is deleted on any failure.
//! - `<disks>/<server id>.qcow2`: each server's qcow2 overlay on its base, the backing format
//!   pinned (`-F`), created under a temp name and renamed.
//! - `<snapshots>/<snapshot id>`: standalone copies of server disks for upload.
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

use super::process::{self, RunError};
use crate::render::qemu_img::{self, DiskFormat};

const GIB: u64 = 1 << 30;

/// A base image as the controller describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    /// Hex sha256 of the image bytes (64 lowercase digits).
    pub sha256: String,
    pub format: DiskFormat,
    /// Size of the image file in bytes.
    pub size: u64,
}

/// Where [`Disks::ensure_base`] gets an image's bytes when the cache lacks it (a stream from a
/// controller). Opened at most once per call, and not at all on a cache hit.
pub trait ImageSource {
    fn open(&mut self) -> io::Result<Box<dyn Read>>;
}

impl<F, R> ImageSource for F
where
    F: FnMut() -> io::Result<R>,
    R: Read + 'static,
{
    fn open(&mut self) -> io::Result<Box<dyn Read>> {
        Ok(Box::new(self()?))
    }
}

/// A base image in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedBase {
    pub sha256: String,
    pub path: PathBuf,
    pub bytes: u64,
}

/// What `qemu-img info` says about a server's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayInfo {
    pub path: PathBuf,
    /// qemu's format name (`qcow2`).
    pub format: String,
    pub virtual_size: u64,
    /// Bytes allocated on the host, when reported.
    pub actual_size: Option<u64>,
    pub backing_file: Option<PathBuf>,
    /// qemu's name of the backing file's format (`raw`, `qcow2`), pinned at creation.
    pub backing_format: Option<String>,
}

/// A standalone copy of a server's disk ([`Disks::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub format: DiskFormat,
    /// File size in bytes.
    pub size: u64,
    pub virtual_size: u64,
    /// Hex sha256 of the file, for the upload.
    pub sha256: String,
}

/// A base removed by [`Disks::evict_unused`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictedBase {
    pub sha256: String,
    pub bytes: u64,
}

/// The host's image cache and server disks. Every method blocks; call through
/// `spawn_blocking`. [`super::conformance::disks`] checks the contract.
pub trait Disks: Send + Sync {
    /// Where the base with this digest lives in the cache (whether or not it is there).
    fn base_path(&self, sha256: &str) -> Result<PathBuf, DiskError>;

    /// Where the disk of `server` lives (whether or not it exists).
    fn overlay_path(&self, server: Uuid) -> PathBuf;

    /// Returns the cached base, fetching it from `source` first when it is missing. The bytes
    /// must have `image.size` and `image.sha256`, else nothing is kept.
    fn ensure_base(
        &self,
        image: &BaseImage,
        source: &mut dyn ImageSource,
    ) -> Result<PathBuf, DiskError>;

    /// Every base in the cache, by digest.
    fn list_bases(&self) -> Result<Vec<CachedBase>, DiskError>;

    /// Creates the qcow2 disk of `server` on `base` (a cached base), `size_gib` GiB large or,
    /// with 0, as large as the base. Succeeds without change when that exact disk exists;
    /// refuses to replace a different one and to make a disk smaller than the base.
    fn create_overlay(
        &self,
        server: Uuid,
        base: &Path,
        base_format: DiskFormat,
        size_gib: u64,
    ) -> Result<OverlayInfo, DiskError>;

    /// Deletes the disk of `server`; `false` when there was none.
    fn delete_overlay(&self, server: Uuid) -> Result<bool, DiskError>;

    /// Facts about the disk of `server`.
    fn overlay_info(&self, server: Uuid) -> Result<OverlayInfo, DiskError>;

    /// Copies the disk of `server`, its backing chain flattened, into a standalone `format`
    /// file named by `snapshot` (replacing an earlier attempt). The server must not be
    /// running: a disk in use is refused.
    fn snapshot(
        &self,
        server: Uuid,
        snapshot: Uuid,
        format: DiskFormat,
    ) -> Result<SnapshotFile, DiskError>;

    /// Deletes a snapshot file; `false` when there was none.
    fn delete_snapshot(&self, snapshot: Uuid) -> Result<bool, DiskError>;

    /// Removes cached bases no server disk uses and nobody asked for within `min_idle`, and
    /// abandoned temp files older than that.
    fn evict_unused(&self, min_idle: Duration) -> Result<Vec<EvictedBase>, DiskError>;
}

/// Everything [`Disks`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{0:?} is not a sha256 digest (64 lowercase hex digits)")]
    InvalidDigest(String),
    #[error("could not fetch image {sha256}")]
    Fetch {
        sha256: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the fetched bytes of image {expected} have sha256 {actual}; nothing was kept (the \
         transfer or the controller's copy is corrupt)"
    )]
    ChecksumMismatch { expected: String, actual: String },
    #[error("image {sha256} should be {expected} bytes but the fetched copy has {actual}; nothing was kept")]
    SizeMismatch {
        sha256: String,
        expected: u64,
        /// What was read (for a stream that ran long, as far as it was read).
        actual: String,
    },
    #[error("{} is not a base image in the image cache {}; fetch it with ensure_base first", path.display(), cache.display())]
    NotCached { path: PathBuf, cache: PathBuf },
    #[error(
        "a {requested_gib} GiB disk is smaller than the image ({:.2} GiB virtual size); use a \
         flavor with at least {} GiB of disk", *virtual_size as f64 / GIB as f64, virtual_size.div_ceil(GIB)
    )]
    TooSmall {
        requested_gib: u64,
        virtual_size: u64,
    },
    #[error("the disk {} already exists and differs ({found}); refusing to replace it, as it holds the server's data: delete it first", path.display())]
    OverlayExists { path: PathBuf, found: String },
    #[error("there is no {what} at {}", path.display())]
    NotFound { what: &'static str, path: PathBuf },
    #[error("the disk {} is in use (is the server running? stop it first): {message}", path.display())]
    InUse { path: PathBuf, message: String },
    #[error("could not {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not run {} (is qemu-utils installed?)", binary.display())]
    QemuImgMissing {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("qemu-img {action} did not finish within {} s and was killed", timeout.as_secs_f64())]
    QemuImgTimeout {
        action: &'static str,
        timeout: Duration,
    },
    #[error("qemu-img {action} failed: {message}")]
    QemuImg {
        action: &'static str,
        message: String,
    },
}

impl DiskError {
    fn io<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> DiskError + 'p {
        move |source| DiskError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Checks a digest names a cache entry.
pub fn check_digest(sha256: &str) -> Result<(), DiskError> {
    if sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(DiskError::InvalidDigest(sha256.to_string()))
    }
}

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

    fn list_overlays(&self) -> Result<Vec<PathBuf>, DiskError> {
        let dir = &self.config.disks_dir;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(DiskError::io("list", dir))? {
            let path = entry.map_err(DiskError::io("list", dir))?.path();
            if path.extension().is_some_and(|e| e == "qcow2") && path.is_file() {
                out.push(path);
            }
        }
        Ok(out)
    }
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

    fn overlay_path(&self, server: Uuid) -> PathBuf {
        self.config.disks_dir.join(format!("{server}.qcow2"))
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
        server: Uuid,
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
        let disk = self.overlay_path(server);
        if disk.exists() {
            let have = self.info(&disk, DiskFormat::Qcow2)?;
            let same = have.backing_file.as_deref() == Some(base)
                && have.backing_format.as_deref() == Some(base_format.qemu_name())
                && have.virtual_size == want_size;
            if same {
                return Ok(have);
            }
            return Err(DiskError::OverlayExists {
                found: describe(&have),
                path: disk,
            });
        }
        let tmp = self
            .config
            .disks_dir
            .join(format!(".part-{server}-{}", Uuid::new_v4()));
        let argv =
            qemu_img::create_overlay(base, base_format, &tmp, (size_gib > 0).then_some(size_gib))
                .map_err(|e| DiskError::QemuImg {
                action: "create",
                message: e.to_string(),
            })?;
        let created = self.run("create", argv).and_then(|_| {
            fs::rename(&tmp, &disk).map_err(DiskError::io("rename the new disk to", &disk))
        });
        if let Err(e) = created {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(&self.config.disks_dir);
        self.info(&disk, DiskFormat::Qcow2)
    }

    fn delete_overlay(&self, server: Uuid) -> Result<bool, DiskError> {
        let disk = self.overlay_path(server);
        match fs::remove_file(&disk) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(DiskError::io("delete", &disk)(e)),
        }
    }

    fn overlay_info(&self, server: Uuid) -> Result<OverlayInfo, DiskError> {
        let disk = self.overlay_path(server);
        if !disk.is_file() {
            return Err(DiskError::NotFound {
                what: "disk",
                path: disk,
            });
        }
        self.info(&disk, DiskFormat::Qcow2)
    }

    fn snapshot(
        &self,
        server: Uuid,
        snapshot: Uuid,
        format: DiskFormat,
    ) -> Result<SnapshotFile, DiskError> {
        let disk = self.overlay_path(server);
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
        for overlay in self.list_overlays()? {
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
        // Temp files of fetches, overlays and snapshots that a crash left behind.
        for dir in [
            &self.config.cache_dir,
            &self.config.disks_dir,
            &self.config.snapshots_dir,
        ] {
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
