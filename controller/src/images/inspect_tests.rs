//! Inspection tests against the real qemu-img (it must be installed: these tests are not
//! gated) plus pure tests of the parser and the policy.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

const MIB: u64 = 1 << 20;

/// Runs `qemu-img <args>` in `dir`, failing the test clearly if qemu-img is missing or fails.
/// Creating a LUKS image times PBKDF iterations on the thread's CPU clock, which qemu-img
/// sometimes cannot read on a busy virtual machine ("Unable to get accurate CPU usage"): that
/// attempt is repeated.
fn qemu_img(dir: &Path, args: &[&str]) {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let out = Command::new("qemu-img")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("qemu-img is required by these tests (apt-get install qemu-utils): {e}")
            });
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success()
            && stderr.contains("Unable to get accurate CPU usage")
            && attempts < 20
        {
            continue;
        }
        assert!(out.status.success(), "qemu-img {args:?} failed: {stderr}");
        return;
    }
}

/// A tempdir holding a clean 1 MiB qcow2 named `clean.qcow2`.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    qemu_img(
        dir.path(),
        &["create", "-q", "-f", "qcow2", "clean.qcow2", "1M"],
    );
    dir
}

fn inspect(path: &Path) -> Result<ImageFacts, InspectError> {
    Inspector::default().inspect(path)
}

fn facts(path: &Path) -> ImageFacts {
    inspect(path).unwrap_or_else(|e| panic!("inspecting {}: {e}", path.display()))
}

fn convert(dir: &Path, to: &str, opts: &[&str], out: &str) -> PathBuf {
    let mut args = vec!["convert", "-q", "-f", "qcow2", "-O", to];
    args.extend_from_slice(opts);
    args.extend_from_slice(&["clean.qcow2", out]);
    qemu_img(dir, &args);
    dir.join(out)
}

#[test]
fn clean_qcow2_is_accepted() {
    let dir = workdir();
    let f = facts(&dir.path().join("clean.qcow2"));
    assert_eq!(f.format, "qcow2");
    assert_eq!(f.virtual_size, MIB);
    assert!(f.actual_size.is_some_and(|s| s > 0));
    assert_eq!(f.filename, dir.path().join("clean.qcow2").to_string_lossy());
    assert!(f.other_paths.is_empty(), "{:?}", f.other_paths);
    check(DiskFormat::Qcow2, &f).expect("clean qcow2 is safe");
}

#[test]
fn relative_paths_are_made_absolute() {
    let dir = workdir();
    let cwd_relative = pathdiff(dir.path().join("clean.qcow2"));
    let f = facts(&cwd_relative);
    assert!(f.filename.starts_with('/'), "{}", f.filename);
}

/// `path` relative to the current directory when possible (tests run in the crate dir).
fn pathdiff(path: PathBuf) -> PathBuf {
    let cwd = std::env::current_dir().expect("cwd");
    let depth = cwd.components().count() - 1;
    let mut rel = PathBuf::new();
    for _ in 0..depth {
        rel.push("..");
    }
    rel.join(path.strip_prefix("/").expect("absolute tempdir"))
}

#[test]
fn raw_is_accepted_as_raw_and_iso_but_not_as_qcow2() {
    let dir = workdir();
    let raw = convert(dir.path(), "raw", &[], "disk.raw");
    let f = facts(&raw);
    assert_eq!(f.format, "raw");
    check(DiskFormat::Raw, &f).expect("raw declared raw");
    check(DiskFormat::Iso, &f).expect("qemu probes ISO images as raw");
    let err = check(DiskFormat::Qcow2, &f).expect_err("raw declared qcow2");
    assert!(
        matches!(&err, UnsafeImage::FormatMismatch { declared: DiskFormat::Qcow2, probed } if probed == "raw"),
        "{err:?}"
    );
}

#[test]
fn qcow2_declared_raw_is_rejected() {
    let dir = workdir();
    let err =
        check(DiskFormat::Raw, &facts(&dir.path().join("clean.qcow2"))).expect_err("mismatch");
    assert_eq!(
        err.to_string(),
        "the image was declared raw but its content is qcow2; declare it as qcow2 or upload a qcow2 image"
    );
}

#[test]
fn text_file_declared_qcow2_names_the_probed_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "this is not a disk image\n").expect("write");
    let err = check(DiskFormat::Qcow2, &facts(&path)).expect_err("mismatch");
    assert_eq!(
        err.to_string(),
        "the image was declared qcow2 but its content is raw (no disk image header qemu-img \
         recognises); declare it as raw or upload a raw image"
    );
}

#[test]
fn backing_file_is_rejected_with_its_path() {
    let dir = workdir();
    qemu_img(
        dir.path(),
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "/etc/hostname",
            "-F",
            "raw",
            "overlay.qcow2",
            "1M",
        ],
    );
    let f = facts(&dir.path().join("overlay.qcow2"));
    assert_eq!(f.backing_format.as_deref(), Some("raw"));
    let err = check(DiskFormat::Qcow2, &f).expect_err("backing file");
    assert_eq!(err, UnsafeImage::BackingFile("/etc/hostname".into()));
    assert!(
        err.to_string().starts_with(
            "the image has a backing file (/etc/hostname); images must be self-contained"
        ),
        "{err}"
    );
}

#[test]
fn inspection_does_not_open_the_backing_file() {
    // If qemu-img followed the reference, a missing backing file would make it fail.
    let dir = workdir();
    qemu_img(
        dir.path(),
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "/nonexistent/base.img",
            "-F",
            "raw",
            "dangling.qcow2",
            "1M",
        ],
    );
    let f = facts(&dir.path().join("dangling.qcow2"));
    assert_eq!(f.backing_filename.as_deref(), Some("/nonexistent/base.img"));
    assert!(matches!(
        check(DiskFormat::Qcow2, &f),
        Err(UnsafeImage::BackingFile(_))
    ));
}

#[test]
fn external_data_file_is_rejected_and_not_opened() {
    let dir = workdir();
    let data = dir.path().join("data.raw");
    let opt = format!("data_file={}", data.display());
    qemu_img(
        dir.path(),
        &["create", "-q", "-f", "qcow2", "-o", &opt, "ext.qcow2", "1M"],
    );
    std::fs::remove_file(&data).expect("remove the data file");
    let f = facts(&dir.path().join("ext.qcow2"));
    assert_eq!(f.data_file.as_deref(), Some(data.to_str().expect("utf-8")));
    let err = check(DiskFormat::Qcow2, &f).expect_err("data file");
    assert_eq!(
        err,
        UnsafeImage::ExternalDataFile(data.to_string_lossy().into())
    );
    assert!(err.to_string().contains("external file"), "{err}");
}

#[test]
fn encrypted_qcow2_is_rejected() {
    let dir = workdir();
    qemu_img(
        dir.path(),
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            "secret,id=sec0,data=hunter2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0",
            "enc.qcow2",
            "1M",
        ],
    );
    let f = facts(&dir.path().join("enc.qcow2"));
    assert!(f.encrypted);
    assert_eq!(check(DiskFormat::Qcow2, &f), Err(UnsafeImage::Encrypted));
}

#[test]
fn monolithic_vmdks_are_accepted() {
    let dir = workdir();
    for (subformat, file) in [
        ("monolithicSparse", "mono.vmdk"),
        ("streamOptimized", "so.vmdk"),
    ] {
        let path = convert(
            dir.path(),
            "vmdk",
            &["-o", &format!("subformat={subformat}")],
            file,
        );
        let f = facts(&path);
        assert_eq!(f.vmdk_create_type.as_deref(), Some(subformat));
        assert_eq!(f.vmdk_extents, vec![f.filename.clone()]);
        check(DiskFormat::Vmdk, &f).expect("monolithic vmdk is safe");
        assert!(matches!(
            check(DiskFormat::Qcow2, &f),
            Err(UnsafeImage::FormatMismatch { .. })
        ));
    }
}

#[test]
fn split_vmdk_descriptor_is_refused_before_running_qemu_img() {
    let dir = workdir();
    let path = convert(
        dir.path(),
        "vmdk",
        &["-o", "subformat=twoGbMaxExtentSparse"],
        "two.vmdk",
    );
    let err = inspect(&path).expect_err("descriptor");
    assert!(
        matches!(err, InspectError::Refused(UnsafeImage::VmdkDescriptor)),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("upload a monolithic VMDK"),
        "{err}"
    );
}

#[test]
fn hand_written_descriptor_pointing_at_a_host_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("evil.vmdk");
    std::fs::write(
        &path,
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\n\nRW 2048 FLAT \"/etc/hostname\" 0\n",
    )
    .expect("write");
    // A fake qemu-img proves it is never run.
    let inspector = Inspector {
        qemu_img: fake_qemu_img(dir.path(), "echo must not run >&2; exit 1"),
        ..Inspector::default()
    };
    let err = inspector.inspect(&path).expect_err("descriptor");
    assert!(
        matches!(err, InspectError::Refused(UnsafeImage::VmdkDescriptor)),
        "{err:?}"
    );
}

#[test]
fn other_qemu_formats_map_to_their_declared_names() {
    let dir = workdir();
    for (qemu, declared, file) in [
        ("vpc", DiskFormat::Vhd, "d.vhd"),
        ("vhdx", DiskFormat::Vhdx, "d.vhdx"),
        ("vdi", DiskFormat::Vdi, "d.vdi"),
    ] {
        let f = facts(&convert(dir.path(), qemu, &[], file));
        assert_eq!(f.format, qemu);
        check(declared, &f).unwrap_or_else(|e| panic!("{declared}: {e}"));
        let err = check(DiskFormat::Raw, &f).expect_err("mismatch");
        assert!(
            err.to_string()
                .contains(&format!("declare it as {declared}")),
            "{err}"
        );
    }
}

/// `qemu-img info` output for a descriptor VMDK with an extent in /etc/hostname (captured from
/// qemu-img 10.0), trimmed.
const DESCRIPTOR_REPORT: &str = r#"{
    "children": [
        {"name": "extents.0", "info": {"children": [], "virtual-size": 512,
         "filename": "/etc/hostname", "format": "file", "dirty-flag": false}},
        {"name": "file", "info": {"children": [], "virtual-size": 512,
         "filename": "/tmp/d/desc.vmdk", "format": "file", "dirty-flag": false}}
    ],
    "virtual-size": 1048576, "filename": "/tmp/d/desc.vmdk", "format": "vmdk",
    "actual-size": 8192,
    "format-specific": {"type": "vmdk", "data": {"cid": 4294967294, "parent-cid": 4294967295,
        "create-type": "monolithicFlat",
        "extents": [{"virtual-size": 1048576, "filename": "/etc/hostname", "format": "FLAT"}]}},
    "dirty-flag": false
}"#;

#[test]
fn vmdk_extent_in_another_file_is_rejected_by_the_policy() {
    let f = parse_info(DESCRIPTOR_REPORT.as_bytes()).expect("parse");
    assert_eq!(f.vmdk_extents, vec!["/etc/hostname".to_string()]);
    assert!(
        f.other_paths.is_empty(),
        "extents are not reported twice: {:?}",
        f.other_paths
    );
    assert_eq!(
        check(DiskFormat::Vmdk, &f),
        Err(UnsafeImage::ExternalExtent("/etc/hostname".into()))
    );
}

#[test]
fn any_other_field_naming_a_host_path_is_rejected() {
    let json = r#"{"filename": "/blobs/x", "format": "qcow2", "virtual-size": 1,
        "children": [{"name": "file", "info": {"filename": "/blobs/x", "format": "file"}},
                     {"name": "future", "info": {"filename": "/dev/sda", "format": "file"}}],
        "format-specific": {"type": "qcow2", "data": {"corrupt": false}}}"#;
    let f = parse_info(json.as_bytes()).expect("parse");
    assert_eq!(
        check(DiskFormat::Qcow2, &f),
        Err(UnsafeImage::HostPath {
            field: "/children/1/info/filename".into(),
            path: "/dev/sda".into()
        })
    );
}

#[test]
fn corrupt_qcow2_is_rejected() {
    let json = r#"{"filename": "/b/x", "format": "qcow2", "virtual-size": 1,
        "format-specific": {"type": "qcow2", "data": {"corrupt": true}}}"#;
    let f = parse_info(json.as_bytes()).expect("parse");
    assert_eq!(check(DiskFormat::Qcow2, &f), Err(UnsafeImage::Corrupt));
}

#[test]
fn unsupported_probed_format_says_what_to_do() {
    let f = ImageFacts {
        format: "qed".into(),
        ..ImageFacts::default()
    };
    let err = check(DiskFormat::Qcow2, &f).expect_err("qed");
    assert_eq!(
        err.to_string(),
        "the image was declared qcow2 but its content is qed; qed images are not accepted: \
         convert it with `qemu-img convert -O qcow2` first"
    );
}

#[test]
fn descriptor_detection_mirrors_qemus_probe() {
    assert!(looks_like_vmdk_descriptor(
        b"# Disk DescriptorFile\nversion=1\nCID=1\n"
    ));
    assert!(looks_like_vmdk_descriptor(b"#c\n   \r\nversion=3\r\n"));
    assert!(looks_like_vmdk_descriptor(b"version=2\n"));
    assert!(!looks_like_vmdk_descriptor(b"version=4\n"));
    assert!(!looks_like_vmdk_descriptor(b"# comment only\n"));
    assert!(!looks_like_vmdk_descriptor(b"hello\nversion=1\n"));
    assert!(!looks_like_vmdk_descriptor(b"QFI\xfb\0\0\0\x03"));
    assert!(!looks_like_vmdk_descriptor(b""));
}

/// Writes an executable shell script standing in for qemu-img.
fn fake_qemu_img(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-qemu-img");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn a_hanging_qemu_img_is_killed_after_the_timeout() {
    let dir = workdir();
    let inspector = Inspector {
        qemu_img: fake_qemu_img(dir.path(), "exec sleep 60"),
        timeout: Duration::from_millis(300),
    };
    let started = Instant::now();
    let err = inspector
        .inspect(&dir.path().join("clean.qcow2"))
        .expect_err("timeout");
    assert!(matches!(err, InspectError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        err.to_string(),
        "qemu-img did not finish within 0.3 s and was killed"
    );
}

#[test]
fn qemu_img_failures_and_garbage_output_are_errors() {
    let dir = workdir();
    let image = dir.path().join("clean.qcow2");
    let failing = Inspector {
        qemu_img: fake_qemu_img(dir.path(), "echo 'qemu-img: boom' >&2; exit 1"),
        ..Inspector::default()
    };
    let err = failing.inspect(&image).expect_err("failure");
    assert!(
        matches!(&err, InspectError::Failed { stderr, .. } if stderr == "qemu-img: boom"),
        "{err:?}"
    );
    let garbage = Inspector {
        qemu_img: fake_qemu_img(dir.path(), "echo not json"),
        ..Inspector::default()
    };
    assert!(matches!(
        garbage.inspect(&image),
        Err(InspectError::Parse(_))
    ));
    let missing = Inspector {
        qemu_img: dir.path().join("no-such-qemu-img"),
        ..Inspector::default()
    };
    let err = missing.inspect(&image).expect_err("missing binary");
    assert!(err.to_string().contains("is qemu-img installed?"), "{err}");
    assert!(matches!(
        inspect(&dir.path().join("absent.qcow2")),
        Err(InspectError::Read { .. })
    ));
}
