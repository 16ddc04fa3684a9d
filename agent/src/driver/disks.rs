//! [`Disks`]: the host's base-image cache and the servers' disks; [`QemuImgDisks`]
//! (`disks_qemu.rs`) implements it with `qemu-img`.
//!
//! Layout (three directories, configurable):
//! - `<cache>/<sha256>`: base images, content-addressed, read-only (0444). A base enters the
//!   cache only by a rename after its bytes matched the digest (I9), from a temp file
//!   `<cache>/.part-*` that is deleted on any failure.
//! - `<disks>/<server id>/<generation>/<role>.qcow2` ([`DiskLayout`]): each server's disks, one
//!   directory per placement generation, so a copy made for an old generation is never mistaken
//!   for the current one (I7) and is deleted as a whole. The root disk is a qcow2 overlay on its
//!   base with the backing format pinned (`-F`); ephemeral and swap disks are blank qcow2 files.
//!   Each is created under a temp name (`.part-*`) in its directory and renamed.
//! - `<snapshots>/<snapshot id>`: standalone copies of server disks for upload.
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use uuid::Uuid;

use crate::reconcile::DiskLayout;
use crate::render::domain::DiskRole;
use crate::render::qemu_img::DiskFormat;

pub use super::disks_qemu::{DisksConfig, QemuImgDisks};

pub(crate) const GIB: u64 = 1 << 30;

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

/// One disk file of a server: the placement generation it was made for and its role. Its path
/// is [`DiskLayout::disk_path`] under the driver's disk directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiskRef {
    pub server: Uuid,
    pub generation: u64,
    pub role: DiskRole,
}

impl DiskRef {
    pub fn new(server: Uuid, generation: u64, role: DiskRole) -> Self {
        DiskRef {
            server,
            generation,
            role,
        }
    }

    /// The root disk (the overlay on the image) of `server` for `generation`.
    pub fn root(server: Uuid, generation: u64) -> Self {
        Self::new(server, generation, DiskRole::Root)
    }
}

/// A base image in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedBase {
    pub sha256: String,
    pub path: PathBuf,
    pub bytes: u64,
}

/// What `qemu-img info` says about a server's disk (an overlay or a blank disk).
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

    /// How server disks are laid out under the disk directory.
    fn layout(&self) -> &DiskLayout;

    /// Where `disk` lives (whether or not it exists).
    fn disk_path(&self, disk: DiskRef) -> PathBuf {
        self.layout()
            .disk_path(&disk.server.to_string(), disk.generation, disk.role)
    }

    /// Returns the cached base, fetching it from `source` first when it is missing. The bytes
    /// must have `image.size` and `image.sha256`, else nothing is kept.
    fn ensure_base(
        &self,
        image: &BaseImage,
        source: &mut dyn ImageSource,
    ) -> Result<PathBuf, DiskError>;

    /// Every base in the cache, by digest.
    fn list_bases(&self) -> Result<Vec<CachedBase>, DiskError>;

    /// Creates `disk` as a qcow2 overlay on `base` (a cached base), `size_gib` GiB large or,
    /// with 0, as large as the base. Succeeds without change when that exact disk exists;
    /// refuses to replace a different one and to make a disk smaller than the base.
    fn create_overlay(
        &self,
        disk: DiskRef,
        base: &Path,
        base_format: DiskFormat,
        size_gib: u64,
    ) -> Result<OverlayInfo, DiskError>;

    /// Creates `disk` as a blank qcow2 file of `size_bytes` (rounded up to whole 512-byte
    /// sectors), without a backing file. Succeeds without change when that exact disk exists;
    /// refuses to replace a different one.
    fn create_blank(&self, disk: DiskRef, size_bytes: u64) -> Result<OverlayInfo, DiskError>;

    /// Deletes one disk file; `false` when there was none.
    fn delete_disk(&self, disk: DiskRef) -> Result<bool, DiskError>;

    /// Deletes every disk `server` has for `generation` (its directory); `false` when there
    /// was none. Other generations are untouched.
    fn delete_generation(&self, server: Uuid, generation: u64) -> Result<bool, DiskError>;

    /// Facts about one disk.
    fn disk_info(&self, disk: DiskRef) -> Result<OverlayInfo, DiskError>;

    /// Every server disk present, in order. Files that do not fit the layout are left out
    /// (and alone).
    fn list_disks(&self) -> Result<Vec<DiskRef>, DiskError>;

    /// Copies `disk`, its backing chain flattened, into a standalone `format` file named by
    /// `snapshot` (replacing an earlier attempt). The server must not be running: a disk in
    /// use is refused.
    fn snapshot(
        &self,
        disk: DiskRef,
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
    pub(crate) fn io<'p>(
        action: &'static str,
        path: &'p Path,
    ) -> impl FnOnce(io::Error) -> DiskError + 'p {
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
