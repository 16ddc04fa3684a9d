//! Image content on the local side, without gRPC: checksums given on the command line, the
//! chunked reader uploads stream from (bounded memory: one chunk at a time), the destination
//! downloads are written to (a `.part` file renamed into place once verified, or standard
//! output), and the progress bar.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::args::Format;
use crate::error::CliError;

/// Size of the content pieces sent and expected on image streams (the contract recommends at
/// most 1 MiB).
pub const CHUNK_BYTES: usize = 1 << 20;

/// A digest the uploaded content must have, told apart by its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// 64 lowercase hex digits.
    Sha256(String),
    /// 32 lowercase hex digits.
    Md5(String),
}

impl Checksum {
    /// `(expected_sha256, expected_md5)` for the upload header; the unused one is empty.
    pub fn header_fields(checksum: Option<&Checksum>) -> (String, String) {
        match checksum {
            Some(Checksum::Sha256(h)) => (h.clone(), String::new()),
            Some(Checksum::Md5(h)) => (String::new(), h.clone()),
            None => (String::new(), String::new()),
        }
    }
}

/// Parses `--checksum HEX`: 64 hex digits are a sha256, 32 an md5 (case-insensitive).
pub fn parse_checksum(s: &str) -> Result<Checksum, String> {
    let hex = s.trim().to_ascii_lowercase();
    if let Some(bad) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("`{s}` is not hexadecimal (it contains `{bad}`)"));
    }
    match hex.len() {
        64 => Ok(Checksum::Sha256(hex)),
        32 => Ok(Checksum::Md5(hex)),
        n => Err(format!(
            "a checksum is 64 hex digits (sha256) or 32 (md5); `{s}` has {n}"
        )),
    }
}

/// Opens a file to upload and returns it with its size. Only regular files: their size is
/// known up front (it goes into the upload header and the quota check).
pub fn open_source(path: &Path) -> Result<(tokio::fs::File, u64), CliError> {
    let err = |source| CliError::ReadFile {
        what: "image file",
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    Ok((tokio::fs::File::from_std(file), meta.len()))
}

/// Reads a source of known size in chunks of exactly `chunk` bytes (the last may be shorter),
/// hashing what it hands out. A source that ends early or goes on past its size (a file
/// changed during the upload) is an error, so a short upload is never sent as complete.
pub struct ChunkReader<R> {
    inner: R,
    chunk: usize,
    expected: u64,
    read: u64,
    hasher: Sha256,
    done: bool,
}

impl<R: AsyncRead + Unpin> ChunkReader<R> {
    pub fn new(inner: R, expected: u64, chunk: usize) -> Self {
        ChunkReader {
            inner,
            chunk: chunk.max(1),
            expected,
            read: 0,
            hasher: Sha256::new(),
            done: false,
        }
    }

    /// The next chunk, or `None` once all `expected` bytes were returned and the source ended.
    pub async fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        let want = (self.expected - self.read).min(self.chunk as u64) as usize;
        if want == 0 {
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe).await? != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the file grew beyond {} bytes while being read",
                        self.expected
                    ),
                ));
            }
            self.done = true;
            return Ok(None);
        }
        let mut buf = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            let n = self.inner.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the file ended after {} of {} bytes (it changed while being read)",
                        self.read + filled as u64,
                        self.expected
                    ),
                ));
            }
            filled += n;
        }
        self.read += want as u64;
        self.hasher.update(&buf);
        Ok(Some(buf))
    }

    /// Hex sha256 of everything returned so far.
    pub fn sha256_hex(self) -> String {
        format!("{:x}", self.hasher.finalize())
    }
}

/// What a download must turn out to be, from the image's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// How the image is named in messages.
    pub image: String,
    /// 0 = unknown.
    pub size: u64,
    /// Hex; empty = unknown.
    pub sha256: String,
}

/// How far a download could be verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    Sha256,
    /// The controller gave no sha256; only the size (if known) was checked.
    Unchecked,
}

/// A mismatch between what arrived and what the image says: (what, actual, expected).
type Mismatch = (&'static str, String, String);

/// Compares a received size and sha256 with the expected ones.
pub fn verify(expected: &Expected, size: u64, sha256: &str) -> Result<Verified, Mismatch> {
    if expected.size != 0 && size != expected.size {
        return Err((
            "size",
            format!("{size} bytes"),
            format!("{} bytes", expected.size),
        ));
    }
    if expected.sha256.is_empty() {
        return Ok(Verified::Unchecked);
    }
    if !expected.sha256.eq_ignore_ascii_case(sha256) {
        return Err(("sha256", sha256.to_string(), expected.sha256.clone()));
    }
    Ok(Verified::Sha256)
}

enum Sink<'a> {
    /// Written to `part`, renamed to `path` once verified.
    File {
        path: PathBuf,
        part: PathBuf,
        file: File,
    },
    /// Standard output (`--file -`): nothing can be taken back.
    Writer(&'a mut dyn Write),
}

/// The receiving end of a download: writes chunks, hashes them, and on [`Download::finish`]
/// verifies the whole before putting it in place.
pub struct Download<'a> {
    sink: Sink<'a>,
    hasher: Sha256,
    written: u64,
}

/// `path` with `.part` appended to its file name (same directory, so the rename is atomic).
pub fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

impl<'a> Download<'a> {
    /// Downloads into `path.part` (created or truncated).
    pub fn to_file(path: &Path) -> Result<Self, CliError> {
        let part = part_path(path);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&part)
            .map_err(|source| CliError::File {
                action: "create",
                path: part.clone(),
                source,
            })?;
        Ok(Download {
            sink: Sink::File {
                path: path.to_path_buf(),
                part,
                file,
            },
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Downloads into `out` (standard output).
    pub fn to_writer(out: &'a mut dyn Write) -> Self {
        Download {
            sink: Sink::Writer(out),
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// Bytes received so far (the offset to resume from).
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn write(&mut self, chunk: &[u8]) -> Result<(), CliError> {
        match &mut self.sink {
            Sink::File { part, file, .. } => {
                file.write_all(chunk).map_err(|source| CliError::File {
                    action: "write",
                    path: part.clone(),
                    source,
                })?
            }
            Sink::Writer(out) => out.write_all(chunk)?,
        }
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Verifies the content against `expected`. A file is then flushed to disk and renamed
    /// into place; on a mismatch the `.part` file is removed and the error says so.
    pub fn finish(self, expected: &Expected) -> Result<Verified, CliError> {
        let sha256 = format!("{:x}", self.hasher.finalize());
        let verdict = verify(expected, self.written, &sha256);
        match self.sink {
            Sink::Writer(out) => {
                out.flush()?;
                verdict.map_err(|(what, actual, exp)| CliError::Mismatch {
                    image: expected.image.clone(),
                    what,
                    actual,
                    expected: exp,
                    disposal: "the data already written to standard output is not the image".into(),
                })
            }
            Sink::File { path, part, file } => {
                let verified = match verdict {
                    Ok(v) => v,
                    Err((what, actual, exp)) => {
                        drop(file);
                        let disposal = match std::fs::remove_file(&part) {
                            Ok(()) => format!("removed {}", part.display()),
                            Err(e) => format!("could not remove {}: {e}", part.display()),
                        };
                        return Err(CliError::Mismatch {
                            image: expected.image.clone(),
                            what,
                            actual,
                            expected: exp,
                            disposal,
                        });
                    }
                };
                file.sync_all().map_err(|source| CliError::File {
                    action: "write",
                    path: part.clone(),
                    source,
                })?;
                drop(file);
                // The verified .part file stays if it cannot be moved into place.
                std::fs::rename(&part, &path).map_err(|source| CliError::File {
                    action: "rename the verified .part file to",
                    path,
                    source,
                })?;
                Ok(verified)
            }
        }
    }

    /// Gives up: removes the `.part` file (a failed download leaves nothing behind).
    pub fn discard(self) {
        if let Sink::File { part, file, .. } = self.sink {
            drop(file);
            // Best effort: the download's own error is what gets reported.
            let _ = std::fs::remove_file(part);
        }
    }
}

/// Whether to draw a progress bar: only for people (table output, stderr a terminal) and
/// unless `--no-progress`.
pub fn wants_progress(no_progress: bool, format: Format, stderr_is_terminal: bool) -> bool {
    !no_progress && format == Format::Table && stderr_is_terminal
}

/// Bytes done and total, transfer rate, time left.
const PROGRESS_TEMPLATE: &str =
    "{wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}";

/// A byte progress bar on stderr (bytes, rate, ETA), or a hidden one when `show` is false.
/// It is redrawn only when it advances (no ticker thread: `main` holds the stderr lock). A bar
/// dropped before [`complete`] (a failed transfer) is erased, so the error starts its own line.
pub fn progress_bar(len: u64, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(PROGRESS_TEMPLATE)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_finish(ProgressFinish::AndClear)
}

/// Leaves a finished bar on screen and ends its line (the bar itself never writes a newline).
pub fn complete(bar: &ProgressBar) {
    if bar.is_hidden() {
        return;
    }
    bar.finish();
    // Best effort, like the bar's own drawing.
    let _ = writeln!(io::stderr());
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn checksums_are_told_apart_by_length() {
        assert_eq!(
            parse_checksum(&SHA_ABC.to_ascii_uppercase()),
            Ok(Checksum::Sha256(SHA_ABC.into()))
        );
        let md5 = "900150983cd24fb0d6963f7d28e17f72";
        assert_eq!(parse_checksum(md5), Ok(Checksum::Md5(md5.into())));
        let err = parse_checksum("abc123").unwrap_err();
        assert!(err.contains("64 hex digits (sha256) or 32 (md5)"), "{err}");
        assert!(err.contains("has 6"), "{err}");
        assert!(parse_checksum(&"g".repeat(32)).unwrap_err().contains("`g`"));
        assert!(parse_checksum("").is_err());
        assert_eq!(
            Checksum::header_fields(Some(&Checksum::Md5(md5.into()))),
            (String::new(), md5.to_string())
        );
        assert_eq!(
            Checksum::header_fields(None),
            (String::new(), String::new())
        );
    }

    /// Hands out at most 3 bytes per read, like a slow file or pipe.
    struct Trickle<'a>(&'a [u8]);

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let n = self.0.len().min(3).min(buf.remaining());
            buf.put_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    async fn chunks_of(data: &[u8], expected: u64, chunk: usize) -> io::Result<Vec<Vec<u8>>> {
        let mut reader = ChunkReader::new(Trickle(data), expected, chunk);
        let mut out = Vec::new();
        while let Some(c) = reader.next_chunk().await? {
            out.push(c);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn the_reader_fills_whole_chunks_and_hashes_them() {
        let data: Vec<u8> = (0..25u8).collect();
        let chunks = chunks_of(&data, 25, 10).await.unwrap();
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 5]);
        assert_eq!(chunks.concat(), data);

        let mut reader = ChunkReader::new(&b"abc"[..], 3, CHUNK_BYTES);
        assert_eq!(reader.next_chunk().await.unwrap().unwrap(), b"abc");
        assert!(reader.next_chunk().await.unwrap().is_none());
        assert!(reader.next_chunk().await.unwrap().is_none());
        assert_eq!(reader.sha256_hex(), SHA_ABC);
        assert!(chunks_of(b"", 0, 4).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_file_that_changes_size_while_read_is_an_error() {
        let err = chunks_of(b"0123456789", 12, 4).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("after 10 of 12 bytes"), "{err}");
        let err = chunks_of(b"0123456789", 8, 4).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("grew beyond 8 bytes"), "{err}");
    }

    #[test]
    fn only_regular_files_can_be_uploaded() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let err = open_source(dir.path()).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read image file"),
            "{err}"
        );
        let file = dir.path().join("disk.img");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(open_source(&file).unwrap().1, 5);
        assert!(open_source(&dir.path().join("missing")).is_err());
    }

    fn expected(size: u64, sha256: &str) -> Expected {
        Expected {
            image: "cirros".into(),
            size,
            sha256: sha256.into(),
        }
    }

    #[test]
    fn verification_checks_size_then_sha256() {
        assert_eq!(
            verify(&expected(3, SHA_ABC), 3, SHA_ABC),
            Ok(Verified::Sha256)
        );
        let upper = SHA_ABC.to_ascii_uppercase();
        assert_eq!(
            verify(&expected(3, &upper), 3, SHA_ABC),
            Ok(Verified::Sha256)
        );
        assert_eq!(
            verify(&expected(0, ""), 3, SHA_ABC),
            Ok(Verified::Unchecked)
        );
        assert_eq!(
            verify(&expected(4, SHA_ABC), 3, SHA_ABC).unwrap_err().0,
            "size"
        );
        let (what, actual, exp) = verify(&expected(3, &"0".repeat(64)), 3, SHA_ABC).unwrap_err();
        assert_eq!((what, actual.as_str()), ("sha256", SHA_ABC));
        assert_eq!(exp, "0".repeat(64));
    }

    #[test]
    fn a_verified_download_is_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cirros.qcow2");
        std::fs::write(&path, b"old content").unwrap();
        let mut d = Download::to_file(&path).unwrap();
        let part = dir.path().join("cirros.qcow2.part");
        assert!(part.exists());
        d.write(b"a").unwrap();
        d.write(b"bc").unwrap();
        assert_eq!(d.written(), 3);
        assert_eq!(d.finish(&expected(3, SHA_ABC)).unwrap(), Verified::Sha256);
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        assert!(!part.exists());
    }

    #[test]
    fn a_mismatching_download_is_removed_and_the_target_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cirros.qcow2");
        std::fs::write(&path, b"old content").unwrap();
        let mut d = Download::to_file(&path).unwrap();
        d.write(b"abd").unwrap();
        let err = d.finish(&expected(3, SHA_ABC)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("the downloaded sha256 of image cirros is "),
            "{text}"
        );
        assert!(
            text.contains(&format!("but the image's is {SHA_ABC}")),
            "{text}"
        );
        assert!(text.ends_with("cirros.qcow2.part"), "{text}");
        assert!(!part_path(&path).exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"old content");

        let mut d = Download::to_file(&path).unwrap();
        d.write(b"ab").unwrap();
        let err = d.finish(&expected(3, SHA_ABC)).unwrap_err();
        assert!(err.to_string().contains("size"), "{err}");
        assert!(!part_path(&path).exists());
    }

    #[test]
    fn a_discarded_download_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.raw");
        let mut d = Download::to_file(&path).unwrap();
        d.write(b"partial").unwrap();
        d.discard();
        assert!(!part_path(&path).exists());
        assert!(!path.exists());
    }

    #[test]
    fn downloads_to_a_writer_are_verified_after_the_fact() {
        let mut out = Vec::new();
        let mut d = Download::to_writer(&mut out);
        d.write(b"abc").unwrap();
        assert_eq!(d.finish(&expected(3, SHA_ABC)).unwrap(), Verified::Sha256);
        assert_eq!(out, b"abc");
        let mut out = Vec::new();
        let mut d = Download::to_writer(&mut out);
        d.write(b"xyz").unwrap();
        let err = d.finish(&expected(3, SHA_ABC)).unwrap_err();
        assert!(err.to_string().contains("standard output is not the image"));
    }

    #[test]
    fn part_files_sit_next_to_the_target() {
        assert_eq!(
            part_path(Path::new("/tmp/a/img.qcow2")),
            Path::new("/tmp/a/img.qcow2.part")
        );
        assert_eq!(part_path(Path::new("img")), Path::new("img.part"));
    }

    #[test]
    fn progress_is_only_for_people_at_a_terminal() {
        assert!(wants_progress(false, Format::Table, true));
        assert!(!wants_progress(true, Format::Table, true));
        assert!(!wants_progress(false, Format::Json, true));
        assert!(!wants_progress(false, Format::Yaml, true));
        assert!(!wants_progress(false, Format::Table, false));
        assert!(progress_bar(10, false).is_hidden());
        assert!(ProgressStyle::with_template(PROGRESS_TEMPLATE).is_ok());
    }
}
