//! A content-addressed blob store on one controller's disk.
//!
//! Layout under the store's root:
//!
//! ```text
//! sha256/<first two hex digits>/<64 hex digits>   published blobs, never modified in place
//! tmp/<uuid>.part                                 uploads in progress (or left by a crash)
//! ```
//!
//! An upload streams into a temp file while sha256, md5 and the byte count are computed
//! incrementally; [`BlobWriter::finish`] fsyncs it, checks the expected digests and renames it
//! into place atomically (then fsyncs the directory). Uploading content that is already present
//! is not an error: the rename replaces the blob with identical bytes (dedup), which also
//! refreshes its modification time so a concurrent garbage collection treats it as young.
//!
//! Garbage collection deletes only blobs that are both unreferenced and older than a grace
//! period, and temp files older than the grace period that no live [`BlobWriter`] of this
//! store owns. A store-wide lock makes "is it old? delete it" atomic with respect to
//! publication, so a blob that was just (re)published is never deleted. The grace period must
//! exceed the time between an upload finishing and the image record referencing it being
//! committed.
//!
//! All operations are blocking: async callers use `spawn_blocking`.
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use md5::Md5;
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};

/// Default upper bound on one blob's size: 64 GiB.
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 64 << 30;

const BLOB_DIR: &str = "sha256";
const TMP_DIR: &str = "tmp";
const TMP_SUFFIX: &str = ".part";

/// Everything that can go wrong in the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("could not {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{0}` is not a {1} digest ({2} lowercase or uppercase hex digits)")]
    InvalidDigest(String, &'static str, usize),
    #[error("the upload exceeds the size limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the content's {algorithm} is {actual}, but {expected} was expected")]
    ChecksumMismatch {
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    #[error("there is no blob with sha256 {0}")]
    NotFound(String),
    #[error("blob {expected} is corrupt: its content hashes to {actual}")]
    Corrupt { expected: String, actual: String },
    #[error("the upload already failed and cannot continue")]
    WriterFailed,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BlobError + 'a {
    move |source| BlobError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What the store knows about a blob's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Lowercase hex sha256: the blob's address.
    pub sha256: String,
    /// Lowercase hex md5 (Glance compatibility; never used as an address).
    pub md5: String,
    pub size: u64,
}

/// Digests a finished upload must have; `None` fields are not checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expected<'a> {
    pub sha256: Option<&'a str>,
    pub md5: Option<&'a str>,
}

/// What one garbage collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Digests of the blobs deleted, sorted.
    pub removed_blobs: Vec<String>,
    pub removed_temp_files: usize,
    pub freed_bytes: u64,
}

struct Inner {
    root: PathBuf,
    max_size: u64,
    /// Temp files owned by live writers: garbage collection never touches them.
    active: Mutex<HashSet<PathBuf>>,
    /// Publication takes it shared, garbage collection exclusive.
    publish: RwLock<()>,
}

/// A handle on a store directory; cheap to clone and shareable between threads.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("root", &self.inner.root)
            .field("max_size", &self.inner.max_size)
            .finish()
    }
}

impl BlobStore {
    /// Opens (creating if needed) the store rooted at `dir`, with [`DEFAULT_MAX_BLOB_SIZE`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, BlobError> {
        Self::open_with_limit(dir, DEFAULT_MAX_BLOB_SIZE)
    }

    /// Opens (creating if needed) the store rooted at `dir`; no blob may exceed `max_size`.
    pub fn open_with_limit(dir: impl AsRef<Path>, max_size: u64) -> Result<Self, BlobError> {
        let root = dir.as_ref().to_path_buf();
        for sub in [BLOB_DIR, TMP_DIR] {
            let path = root.join(sub);
            fs::create_dir_all(&path).map_err(io_err("create directory", &path))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                max_size,
                active: Mutex::new(HashSet::new()),
                publish: RwLock::new(()),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Starts an upload limited to the store's maximum blob size.
    pub fn begin_upload(&self) -> Result<BlobWriter, BlobError> {
        self.begin_upload_with_limit(self.inner.max_size)
    }

    /// Starts an upload limited to `limit` bytes (capped by the store's maximum), e.g. the
    /// project's remaining image quota.
    pub fn begin_upload_with_limit(&self, limit: u64) -> Result<BlobWriter, BlobError> {
        let path = self
            .inner
            .root
            .join(TMP_DIR)
            .join(format!("{}{TMP_SUFFIX}", uuid::Uuid::new_v4()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create temp file", &path))?;
        self.inner.active.lock().insert(path.clone());
        Ok(BlobWriter {
            store: self.clone(),
            file: Some(file),
            path,
            limit: limit.min(self.inner.max_size),
            size: 0,
            sha256: Sha256::new(),
            md5: Md5::new(),
            failed: false,
        })
    }

    /// Where the blob with this (validated, lowercase) digest lives.
    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.inner
            .root
            .join(BLOB_DIR)
            .join(&sha256[..2])
            .join(sha256)
    }

    /// The file of a published blob, for tools that need a path (qemu-img). The blob must not
    /// be modified through it.
    pub fn path_of(&self, sha256: &str) -> Result<PathBuf, BlobError> {
        Ok(self.blob_path(&normalize_digest(sha256, "sha256", 64)?))
    }

    pub fn contains(&self, sha256: &str) -> Result<bool, BlobError> {
        let path = self.blob_path(&normalize_digest(sha256, "sha256", 64)?);
        match fs::symlink_metadata(&path) {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("inspect", &path)(e)),
        }
    }

    /// Opens a blob for reading (it implements `Seek`, for resumed downloads). The content is
    /// not re-hashed: use [`BlobStore::verify`] where that matters.
    pub fn open_blob(&self, sha256: &str) -> Result<File, BlobError> {
        let digest = normalize_digest(sha256, "sha256", 64)?;
        let path = self.blob_path(&digest);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                BlobError::NotFound(digest)
            } else {
                io_err("open", &path)(e)
            }
        })
    }

    /// Re-hashes a blob and fails with [`BlobError::Corrupt`] unless it still has its address.
    pub fn verify(&self, sha256: &str) -> Result<BlobInfo, BlobError> {
        let digest = normalize_digest(sha256, "sha256", 64)?;
        let path = self.blob_path(&digest);
        let mut file = self.open_blob(&digest)?;
        let (mut sha, mut md5, mut size) = (Sha256::new(), Md5::new(), 0u64);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io_err("read", &path))?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            md5.update(&buf[..n]);
            size += n as u64;
        }
        let actual = hex::encode(sha.finalize());
        if actual != digest {
            return Err(BlobError::Corrupt {
                expected: digest,
                actual,
            });
        }
        Ok(BlobInfo {
            sha256: actual,
            md5: hex::encode(md5.finalize()),
            size,
        })
    }

    /// Every published blob's digest, sorted.
    pub fn list(&self) -> Result<Vec<String>, BlobError> {
        let mut out: Vec<String> = self.scan_blobs()?.into_iter().map(|(d, _)| d).collect();
        out.sort();
        Ok(out)
    }

    /// Deletes a blob; `Ok(false)` if it was not there.
    pub fn remove(&self, sha256: &str) -> Result<bool, BlobError> {
        let path = self.blob_path(&normalize_digest(sha256, "sha256", 64)?);
        let _guard = self.inner.publish.write();
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// Deletes blobs not in `referenced` whose last publication is older than `grace`, and temp
    /// files older than `grace` that no live writer of this store owns (leftovers of crashed or
    /// abandoned uploads). Files whose names the store does not recognise are left alone.
    pub fn collect_garbage(
        &self,
        referenced: &HashSet<String>,
        grace: Duration,
    ) -> Result<GcReport, BlobError> {
        let now = SystemTime::now();
        let is_old = |meta: &fs::Metadata| {
            meta.modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= grace)
        };
        let mut report = GcReport::default();
        let referenced: HashSet<String> =
            referenced.iter().map(|d| d.to_ascii_lowercase()).collect();

        for (digest, path) in self.scan_blobs()? {
            if referenced.contains(&digest) {
                continue;
            }
            // Held across the age check and the removal, so a concurrent `finish` of the same
            // content either publishes before (fresh mtime: kept) or after (re-created).
            let _guard = self.inner.publish.write();
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("inspect", &path)(e)),
            };
            if !is_old(&meta) {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    report.freed_bytes += meta.len();
                    report.removed_blobs.push(digest);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }
        report.removed_blobs.sort();

        let tmp = self.inner.root.join(TMP_DIR);
        for entry in fs::read_dir(&tmp).map_err(io_err("list", &tmp))? {
            let entry = entry.map_err(io_err("list", &tmp))?;
            let path = entry.path();
            let name = entry.file_name();
            if !name.to_string_lossy().ends_with(TMP_SUFFIX) {
                continue;
            }
            let active = self.inner.active.lock();
            if active.contains(&path) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() || !is_old(&meta) {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    report.freed_bytes += meta.len();
                    report.removed_temp_files += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }
        Ok(report)
    }

    /// `(digest, path)` of every well-formed blob file.
    fn scan_blobs(&self) -> Result<Vec<(String, PathBuf)>, BlobError> {
        let base = self.inner.root.join(BLOB_DIR);
        let mut out = Vec::new();
        for prefix in fs::read_dir(&base).map_err(io_err("list", &base))? {
            let prefix = prefix.map_err(io_err("list", &base))?;
            let prefix_name = prefix.file_name().to_string_lossy().into_owned();
            let dir = prefix.path();
            if prefix_name.len() != 2 || !dir.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
                let entry = entry.map_err(io_err("list", &dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let well_formed = name.len() == 64
                    && name.starts_with(&prefix_name)
                    && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                if well_formed && entry.file_type().is_ok_and(|t| t.is_file()) {
                    out.push((name, entry.path()));
                }
            }
        }
        Ok(out)
    }
}

/// An upload in progress. Dropping it without [`BlobWriter::finish`] removes its temp file.
pub struct BlobWriter {
    store: BlobStore,
    file: Option<File>,
    path: PathBuf,
    limit: u64,
    size: u64,
    sha256: Sha256,
    md5: Md5,
    failed: bool,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("limit", &self.limit)
            .finish()
    }
}

impl BlobWriter {
    /// Bytes accepted so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a chunk. On any error (including the size limit) the temp file is removed and
    /// the writer is unusable.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        if self.failed {
            return Err(BlobError::WriterFailed);
        }
        let new_size = self.size.saturating_add(chunk.len() as u64);
        if new_size > self.limit {
            self.fail();
            return Err(BlobError::TooLarge { limit: self.limit });
        }
        let Some(file) = self.file.as_mut() else {
            return Err(BlobError::WriterFailed);
        };
        if let Err(e) = file.write_all(chunk) {
            self.fail();
            return Err(io_err("write", &self.path)(e));
        }
        self.sha256.update(chunk);
        self.md5.update(chunk);
        self.size = new_size;
        Ok(())
    }

    /// Completes the upload, checking the sha256 if one is given. See [`BlobWriter::finish_with`].
    pub fn finish(self, expected_sha256: Option<&str>) -> Result<BlobInfo, BlobError> {
        self.finish_with(Expected {
            sha256: expected_sha256,
            md5: None,
        })
    }

    /// Fsyncs the content, checks the expected digests (on mismatch the temp file is removed)
    /// and publishes the blob atomically. Publishing content that is already stored succeeds.
    pub fn finish_with(mut self, expected: Expected<'_>) -> Result<BlobInfo, BlobError> {
        if self.failed {
            return Err(BlobError::WriterFailed);
        }
        // Validate the caller's digests before spending anything on the content.
        let want_sha = expected
            .sha256
            .map(|d| normalize_digest(d, "sha256", 64))
            .transpose()?;
        let want_md5 = expected
            .md5
            .map(|d| normalize_digest(d, "md5", 32))
            .transpose()?;
        let Some(file) = self.file.take() else {
            return Err(BlobError::WriterFailed);
        };
        let info = BlobInfo {
            sha256: hex::encode(std::mem::take(&mut self.sha256).finalize()),
            md5: hex::encode(std::mem::take(&mut self.md5).finalize()),
            size: self.size,
        };
        for (algorithm, want, actual) in [
            ("sha256", want_sha, &info.sha256),
            ("md5", want_md5, &info.md5),
        ] {
            if let Some(want) = want.filter(|w| w != actual) {
                self.fail();
                return Err(BlobError::ChecksumMismatch {
                    algorithm,
                    expected: want,
                    actual: actual.clone(),
                });
            }
        }
        if let Err(e) = file.sync_all() {
            self.fail();
            return Err(io_err("flush", &self.path)(e));
        }
        drop(file);

        let target = self.store.blob_path(&info.sha256);
        let Some(dir) = target.parent().map(Path::to_path_buf) else {
            return Err(BlobError::WriterFailed);
        };
        let publish = (|| {
            fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
            let _guard = self.store.inner.publish.read();
            fs::rename(&self.path, &target).map_err(io_err("publish", &target))?;
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("flush directory", &dir))
        })();
        match publish {
            Ok(()) => {
                self.store.inner.active.lock().remove(&self.path);
                self.failed = true; // Nothing left to clean up on drop.
                Ok(info)
            }
            Err(e) => {
                self.fail();
                Err(e)
            }
        }
    }

    /// Abandons the upload and removes its temp file.
    pub fn abort(mut self) {
        self.fail();
    }

    fn fail(&mut self) {
        if self.failed {
            return;
        }
        self.failed = true;
        self.file = None;
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e,
                    "could not remove an abandoned upload; garbage collection will retry");
            }
        }
        self.store.inner.active.lock().remove(&self.path);
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        self.fail();
    }
}

/// Checks that `digest` is `len` hex digits and returns it in lowercase.
fn normalize_digest(
    digest: &str,
    algorithm: &'static str,
    len: usize,
) -> Result<String, BlobError> {
    if digest.len() == len && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(digest.to_ascii_lowercase())
    } else {
        Err(BlobError::InvalidDigest(digest.to_string(), algorithm, len))
    }
}

#[cfg(test)]
#[path = "blobs_tests.rs"]
mod tests;
