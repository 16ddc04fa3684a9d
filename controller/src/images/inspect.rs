//! Image inspection for invariant I9 ("Safe disks").
//!
//! [`Inspector::inspect`] runs `qemu-img info --output=json -U <file>` without `--format`, so
//! qemu-img probes the content, and parses its report into [`ImageFacts`]. [`check`] is a pure
//! function deciding whether an image with those facts may be accepted under its declared
//! [`DiskFormat`].
//!
//! What qemu-img opens while probing (observed with qemu-img 10.0 under strace):
//! * qcow2 backing files and external data files are *not* opened by `info` (no
//!   `--backing-chain`); their names are reported (`backing-filename`,
//!   `format-specific.data.data-file`).
//! * A VMDK *text descriptor* makes qemu-img open every extent file it names, whatever the
//!   path (e.g. `/etc/shadow`, a FIFO, a device). So the inspector looks at the first bytes
//!   itself and refuses descriptors before running qemu-img ([`UnsafeImage::VmdkDescriptor`]).
//!   Binary VMDKs (monolithicSparse, streamOptimized) are their own single extent.
//!
//! qemu-img runs with a timeout (killed when it expires) and a cap on how much output is read.
//! The path handed to it is made absolute, so it is never mistaken for a protocol
//! (`json:{…}`, `nbd:…`).
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

/// Default time qemu-img gets before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes read from qemu-img's stdout or stderr.
const MAX_OUTPUT: u64 = 4 << 20;
/// How much of the file the descriptor check reads (qemu's probe buffer is 2 KiB).
const PROBE_BYTES: usize = 2048;

pub use crate::state::DiskFormat;

/// What qemu-img reports about an image, reduced to what the checks and the API need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFacts {
    /// The probed format, in qemu's naming (`vpc` for VHD).
    pub format: String,
    /// The file name as qemu-img reports it (the path it was given).
    pub filename: String,
    pub virtual_size: u64,
    /// Bytes allocated on the host, when reported.
    pub actual_size: Option<u64>,
    pub backing_filename: Option<String>,
    pub backing_format: Option<String>,
    /// qcow2 external data file (`format-specific.data.data-file`).
    pub data_file: Option<String>,
    pub encrypted: bool,
    /// qcow2 images flagged corrupt by qemu.
    pub corrupt: bool,
    pub dirty: bool,
    /// VMDK `createType` (e.g. `monolithicSparse`).
    pub vmdk_create_type: Option<String>,
    /// Files holding VMDK extents.
    pub vmdk_extents: Vec<String>,
    /// Every other string in the report that names a file (`(json pointer, path)`), except the
    /// image's own name.
    pub other_paths: Vec<(String, String)>,
}

/// Why an image is refused (I9). Messages tell the uploader what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeImage {
    #[error("the image was declared {declared} but its content is {}; {}", probed_description(.probed), format_advice(.probed))]
    FormatMismatch {
        declared: DiskFormat,
        probed: String,
    },
    #[error("the image has a backing file ({0}); images must be self-contained: flatten it with `qemu-img convert -O qcow2` first")]
    BackingFile(String),
    #[error("the image keeps its data in an external file ({0}); images must be self-contained: convert it without the data_file option first")]
    ExternalDataFile(String),
    #[error("the image is encrypted; upload an unencrypted image")]
    Encrypted,
    #[error("the VMDK image stores an extent in another file ({0}); upload a monolithic VMDK (monolithicSparse or streamOptimized) or convert it to qcow2")]
    ExternalExtent(String),
    #[error("the image is a VMDK descriptor referring to other files; upload a monolithic VMDK (monolithicSparse or streamOptimized) or convert it to qcow2")]
    VmdkDescriptor,
    #[error("the image refers to a host path ({path}, at {field} in qemu-img's report); images must be self-contained")]
    HostPath { field: String, path: String },
    #[error("qemu-img reports the image as corrupt; repair it with `qemu-img check -r all` and upload it again")]
    Corrupt,
}

fn probed_description(probed: &str) -> String {
    match probed {
        "raw" => "raw (no disk image header qemu-img recognises)".to_string(),
        other => other.to_string(),
    }
}

fn format_advice(probed: &str) -> String {
    match DiskFormat::from_qemu_name(probed) {
        Some(f) => format!("declare it as {f} or upload a {f} image"),
        None => format!(
            "{probed} images are not accepted: convert it with `qemu-img convert -O qcow2` first"
        ),
    }
}

/// Decides whether an image may be accepted under `declared` (pure; the I9 policy).
pub fn check(declared: DiskFormat, facts: &ImageFacts) -> Result<(), UnsafeImage> {
    if facts.format != declared.qemu_name() {
        return Err(UnsafeImage::FormatMismatch {
            declared,
            probed: facts.format.clone(),
        });
    }
    if let Some(backing) = &facts.backing_filename {
        return Err(UnsafeImage::BackingFile(backing.clone()));
    }
    if let Some(data_file) = &facts.data_file {
        return Err(UnsafeImage::ExternalDataFile(data_file.clone()));
    }
    if facts.encrypted {
        return Err(UnsafeImage::Encrypted);
    }
    if let Some(extent) = facts.vmdk_extents.iter().find(|e| **e != facts.filename) {
        return Err(UnsafeImage::ExternalExtent(extent.clone()));
    }
    if let Some((field, path)) = facts.other_paths.first() {
        return Err(UnsafeImage::HostPath {
            field: field.clone(),
            path: path.clone(),
        });
    }
    if facts.corrupt {
        return Err(UnsafeImage::Corrupt);
    }
    Ok(())
}

/// Everything that can go wrong while inspecting an image (apart from the image being unsafe,
/// which [`check`] reports).
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("could not read the image {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not run {} (is qemu-img installed?)", binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("qemu-img did not finish within {} s and was killed", timeout.as_secs_f64())]
    Timeout { timeout: Duration },
    #[error("qemu-img info failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error("qemu-img produced more than {MAX_OUTPUT} bytes of output")]
    OutputTooLarge,
    #[error("could not parse qemu-img's JSON report")]
    Parse(#[source] serde_json::Error),
    #[error(transparent)]
    Refused(#[from] UnsafeImage),
}

/// Runs qemu-img; configure the binary and timeout for tests or unusual installs.
#[derive(Debug, Clone)]
pub struct Inspector {
    pub qemu_img: PathBuf,
    pub timeout: Duration,
}

impl Default for Inspector {
    fn default() -> Self {
        Self {
            qemu_img: PathBuf::from("qemu-img"),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl Inspector {
    /// Probes `path` with qemu-img (blocking). Refuses VMDK text descriptors without running
    /// qemu-img, since it would open the files they name.
    pub fn inspect(&self, path: &Path) -> Result<ImageFacts, InspectError> {
        let read_err = |source| InspectError::Read {
            path: path.to_path_buf(),
            source,
        };
        let path = std::path::absolute(path).map_err(read_err)?;
        let mut head = Vec::with_capacity(PROBE_BYTES);
        std::fs::File::open(&path)
            .and_then(|f| f.take(PROBE_BYTES as u64).read_to_end(&mut head))
            .map_err(read_err)?;
        if looks_like_vmdk_descriptor(&head) {
            return Err(UnsafeImage::VmdkDescriptor.into());
        }
        let mut cmd = Command::new(&self.qemu_img);
        cmd.arg("info").arg("--output=json").arg("-U").arg(&path);
        let stdout = run_with_timeout(cmd, &self.qemu_img, self.timeout)?;
        parse_info(&stdout)
    }
}

/// Mirrors qemu's `vmdk_probe` for text descriptors: after comment lines and blank lines, a
/// `version=1|2|3` line.
pub fn looks_like_vmdk_descriptor(head: &[u8]) -> bool {
    let mut rest = head;
    while !rest.is_empty() {
        match rest[0] {
            b'#' => {
                let end = rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |i| i + 1);
                rest = &rest[end..];
            }
            b' ' | b'\r' | b'\n' => {
                let trimmed = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
                let mut tail = &rest[trimmed..];
                if tail.first() == Some(&b'\r') {
                    tail = &tail[1..];
                }
                match tail.first() {
                    None => return false,
                    Some(b'\n') => rest = &tail[1..],
                    Some(_) => return false,
                }
            }
            _ => {
                return [b'1', b'2', b'3'].iter().any(|v| {
                    rest.starts_with(&[b"version=".as_slice(), &[*v]].concat())
                        && (rest.get(9) == Some(&b'\n')
                            || (rest.get(9) == Some(&b'\r') && rest.get(10) == Some(&b'\n')))
                })
            }
        }
    }
    false
}

/// Runs `cmd`, kills it after `timeout`, and returns its stdout if it succeeded.
fn run_with_timeout(
    mut cmd: Command,
    binary: &Path,
    timeout: Duration,
) -> Result<Vec<u8>, InspectError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C");
    // ETXTBSY: another thread's fork may briefly hold a just-written executable open.
    let mut attempts = 0;
    let mut child = loop {
        match cmd.spawn() {
            Ok(child) => break child,
            Err(e) if e.raw_os_error() == Some(26) && attempts < 5 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(InspectError::Spawn {
                    binary: binary.to_path_buf(),
                    source,
                })
            }
        }
    };
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(pipe) = pipe {
                // One byte over the cap tells "too large" apart from "exactly at the cap".
                let _ = pipe.take(MAX_OUTPUT + 1).read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(InspectError::Timeout { timeout });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(InspectError::Spawn {
                    binary: binary.to_path_buf(),
                    source,
                });
            }
        }
    };
    // The child has exited; its pipes close unless it left a grandchild holding them.
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        return Err(InspectError::Failed {
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        });
    }
    if stdout.len() as u64 > MAX_OUTPUT {
        return Err(InspectError::OutputTooLarge);
    }
    Ok(stdout)
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawInfo {
    filename: String,
    format: String,
    virtual_size: u64,
    actual_size: Option<u64>,
    backing_filename: Option<String>,
    backing_filename_format: Option<String>,
    #[serde(default)]
    encrypted: bool,
    #[serde(default)]
    dirty_flag: bool,
    format_specific: Option<FormatSpecific>,
}

#[derive(Deserialize)]
struct FormatSpecific {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

/// Keys whose string values name files in `qemu-img info` reports.
fn names_a_file(key: &str) -> bool {
    key.ends_with("filename") || key == "data-file" || key.ends_with("-file")
}

/// Parses the output of `qemu-img info --output=json` (one image, no backing chain).
pub fn parse_info(json: &[u8]) -> Result<ImageFacts, InspectError> {
    let value: Value = serde_json::from_slice(json).map_err(InspectError::Parse)?;
    let raw: RawInfo = serde_json::from_value(value.clone()).map_err(InspectError::Parse)?;
    let mut facts = ImageFacts {
        format: raw.format,
        virtual_size: raw.virtual_size,
        actual_size: raw.actual_size,
        backing_filename: raw.backing_filename,
        backing_format: raw.backing_filename_format,
        encrypted: raw.encrypted,
        dirty: raw.dirty_flag,
        ..ImageFacts::default()
    };
    if let Some(specific) = raw.format_specific {
        let data = &specific.data;
        match specific.kind.as_str() {
            "qcow2" => {
                facts.data_file = data["data-file"].as_str().map(str::to_string);
                facts.corrupt = data["corrupt"].as_bool().unwrap_or(false);
                facts.encrypted |= data.get("encrypt").is_some();
            }
            "vmdk" => {
                facts.vmdk_create_type = data["create-type"].as_str().map(str::to_string);
                if let Some(extents) = data["extents"].as_array() {
                    facts.vmdk_extents = extents
                        .iter()
                        .filter_map(|e| e["filename"].as_str().map(str::to_string))
                        .collect();
                }
            }
            "luks" => facts.encrypted = true,
            _ => {}
        }
    }
    facts.filename = raw.filename;

    // Anything else naming a file that is not the image itself.
    let mut found = Vec::new();
    collect_paths(&value, String::new(), &mut found);
    let known: Vec<&String> = [&facts.backing_filename, &facts.data_file]
        .into_iter()
        .flatten()
        .chain(&facts.vmdk_extents)
        .collect();
    facts.other_paths = found
        .into_iter()
        .filter(|(_, p)| *p != facts.filename && !known.contains(&p))
        .collect();
    Ok(facts)
}

fn collect_paths(value: &Value, pointer: String, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let here = format!("{pointer}/{key}");
                match v {
                    Value::String(s) if names_a_file(key) => out.push((here, s.clone())),
                    _ => collect_paths(v, here, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_paths(v, format!("{pointer}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[path = "inspect_tests.rs"]
mod tests;
