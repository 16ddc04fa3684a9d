//! The Disks conformance suite against the fake and real qemu-img, and what only the real one
//! can show (files, permissions, qemu-img's own view of what was made).
use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flotilla_agent::driver::conformance::disks::{image, pattern, qcow2_image, run_disks_suite};
use flotilla_agent::driver::disks::{DiskError, DiskRef, Disks, DisksConfig, QemuImgDisks};
use flotilla_agent::driver::disks_fake::{DiskOp, FakeDisks};
use flotilla_agent::render::domain::DiskRole;
use flotilla_agent::render::qemu_img::DiskFormat;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// qemu-img is a build dependency (deploy/install-deps.sh); say so plainly when it is missing.
fn have_qemu_img() -> bool {
    match Command::new("qemu-img").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        _ => {
            eprintln!("SKIP: qemu-img is not installed (run deploy/install-deps.sh)");
            false
        }
    }
}

fn real(root: &Path) -> QemuImgDisks {
    QemuImgDisks::new(DisksConfig::under(root)).expect("QemuImgDisks")
}

fn qemu_img_json(args: &[&str], path: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn fake_disks_pass_the_conformance_suite() {
    run_disks_suite(&|| Box::new(FakeDisks::new(Path::new("/fake/flotilla"))));
}

#[test]
fn qemu_img_disks_pass_the_conformance_suite() {
    if !have_qemu_img() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let counter = std::cell::Cell::new(0);
    run_disks_suite(&|| {
        counter.set(counter.get() + 1);
        Box::new(real(&root.path().join(counter.get().to_string())))
    });
}

#[test]
fn generated_qcow2_fixture_is_a_valid_image() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fixture.qcow2");
    std::fs::write(&path, qcow2_image(5 << 30)).unwrap();
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let info = qemu_img_json(&["info", "--output=json", "-f", "qcow2"], &path);
    assert_eq!(info["virtual-size"], 5u64 << 30);
}

#[test]
fn cached_bases_are_read_only_and_failed_fetches_leave_no_files() {
    if !have_qemu_img() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let disks = real(root.path());
    let cache = disks.config().cache_dir.clone();
    let bytes = pattern(1 << 20, 20);
    let mut bad = image(&bytes, DiskFormat::Raw);
    bad.sha256 = "0".repeat(64);
    let data = bytes.clone();
    let err = disks
        .ensure_base(&bad, &mut || Ok(Cursor::new(data.clone())))
        .unwrap_err();
    assert!(matches!(err, DiskError::ChecksumMismatch { .. }), "{err}");
    assert_eq!(files_in(&cache), Vec::<PathBuf>::new(), "no temp file left");

    let good = image(&bytes, DiskFormat::Raw);
    let data = bytes.clone();
    let path = disks
        .ensure_base(&good, &mut || Ok(Cursor::new(data.clone())))
        .unwrap();
    assert_eq!(files_in(&cache), std::slice::from_ref(&path));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o444
    );
}

#[test]
fn a_truncated_cached_base_is_fetched_again() {
    if !have_qemu_img() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let disks = real(root.path());
    let bytes = pattern(1 << 20, 21);
    let img = image(&bytes, DiskFormat::Raw);
    let path = disks.base_path(&img.sha256).unwrap();
    std::fs::write(&path, &bytes[..1000]).unwrap();
    let data = bytes.clone();
    assert_eq!(
        disks
            .ensure_base(&img, &mut || Ok(Cursor::new(data.clone())))
            .unwrap(),
        path
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn overlays_pin_the_backing_format_and_snapshots_stand_alone() {
    if !have_qemu_img() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let disks = real(root.path());
    let bytes = pattern(2 << 20, 22);
    let img = image(&bytes, DiskFormat::Raw);
    let data = bytes.clone();
    let base = disks
        .ensure_base(&img, &mut || Ok(Cursor::new(data.clone())))
        .unwrap();
    let server = DiskRef::root(Uuid::new_v4(), 3);
    disks
        .create_overlay(server, &base, DiskFormat::Raw, 1)
        .unwrap();
    let overlay = disks.disk_path(server);
    assert_eq!(
        overlay,
        disks
            .config()
            .disks_dir
            .join(server.server.to_string())
            .join("3/root.qcow2")
    );
    let info = qemu_img_json(&["info", "--output=json", "-f", "qcow2"], &overlay);
    assert_eq!(info["backing-filename-format"], "raw");
    assert_eq!(info["backing-filename"], base.to_str().unwrap());
    assert_eq!(
        files_in(overlay.parent().unwrap()),
        std::slice::from_ref(&overlay),
        "no temp file left"
    );

    // A blank swap disk is a qcow2 file without a backing file, next to the root disk.
    let swap = DiskRef::new(server.server, 3, DiskRole::Swap);
    disks.create_blank(swap, 64 << 20).unwrap();
    let info = qemu_img_json(
        &["info", "--output=json", "-f", "qcow2"],
        &disks.disk_path(swap),
    );
    assert!(info.get("backing-filename").is_none(), "{info}");
    assert_eq!(info["virtual-size"], 64u64 << 20);

    // A raw snapshot holds the base's bytes, flattened, and its digest is the file's.
    let snap = disks
        .snapshot(server, Uuid::new_v4(), DiskFormat::Raw)
        .unwrap();
    let content = std::fs::read(&snap.path).unwrap();
    assert_eq!(content.len() as u64, 1 << 30);
    assert_eq!(&content[..bytes.len()], bytes.as_slice());
    assert_eq!(snap.sha256, hex::encode(Sha256::digest(&content)));
    assert_eq!(snap.size, content.len() as u64);
    drop(content);
    let qsnap = disks
        .snapshot(server, Uuid::new_v4(), DiskFormat::Qcow2)
        .unwrap();
    let info = qemu_img_json(&["info", "--output=json", "-f", "qcow2"], &qsnap.path);
    assert!(info.get("backing-filename").is_none(), "{info}");
    assert_eq!(info["virtual-size"], 1u64 << 30);
}

#[test]
fn a_disk_in_use_is_not_snapshotted() {
    if !have_qemu_img() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let disks = real(root.path());
    let bytes = pattern(1 << 20, 23);
    let img = image(&bytes, DiskFormat::Raw);
    let data = bytes.clone();
    let base = disks
        .ensure_base(&img, &mut || Ok(Cursor::new(data.clone())))
        .unwrap();
    let server = DiskRef::root(Uuid::new_v4(), 1);
    disks
        .create_overlay(server, &base, DiskFormat::Raw, 1)
        .unwrap();
    // qemu-nbd (qemu-utils) holds the image like a running guest: a write lock. With --fork
    // it exits once the server holds the image; the server is stopped by its pid.
    let pid_file = root.path().join("nbd.pid");
    let status = Command::new("qemu-nbd")
        .args(["--fork", "--persistent", "-f", "qcow2", "--pid-file"])
        .arg(&pid_file)
        .arg("-k")
        .arg(root.path().join("nbd.sock"))
        .arg(disks.disk_path(server))
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("SKIP: qemu-nbd could not serve the disk");
        return;
    }
    let err = disks
        .snapshot(server, Uuid::new_v4(), DiskFormat::Qcow2)
        .unwrap_err();
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let _ = Command::new("kill").arg(pid.trim()).status();
    assert!(matches!(err, DiskError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("stop it first"), "{err}");
}

#[test]
fn a_hanging_or_missing_qemu_img_is_reported() {
    let root = tempfile::tempdir().unwrap();
    let script = root.path().join("slow-qemu-img");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = DisksConfig::under(&root.path().join("slow"));
    config.qemu_img = script;
    config.timeout = Duration::from_millis(300);
    let disks = QemuImgDisks::new(config).unwrap();
    let bytes = pattern(4096, 24);
    let img = image(&bytes, DiskFormat::Raw);
    let data = bytes.clone();
    let base = disks
        .ensure_base(&img, &mut || Ok(Cursor::new(data.clone())))
        .unwrap();
    match disks.create_overlay(DiskRef::root(Uuid::new_v4(), 1), &base, DiskFormat::Raw, 1) {
        Err(DiskError::QemuImgTimeout { action, .. }) => assert_eq!(action, "info"),
        other => panic!("expected QemuImgTimeout, got {other:?}"),
    }

    let mut config = DisksConfig::under(&root.path().join("missing"));
    config.qemu_img = PathBuf::from("/nonexistent/qemu-img");
    let disks = QemuImgDisks::new(config).unwrap();
    let data = bytes.clone();
    let base = disks
        .ensure_base(&img, &mut || Ok(Cursor::new(data.clone())))
        .unwrap();
    let err = disks
        .create_overlay(DiskRef::root(Uuid::new_v4(), 1), &base, DiskFormat::Raw, 1)
        .unwrap_err();
    assert!(err.to_string().contains("is qemu-utils installed"), "{err}");
}

#[test]
fn fake_disks_failures_are_scripted_per_operation() {
    let fake = FakeDisks::new(Path::new("/fake"));
    fake.fail_next(
        DiskOp::EnsureBase,
        DiskError::Fetch {
            sha256: "x".into(),
            source: std::io::Error::other("injected"),
        },
    );
    let bytes = pattern(100, 25);
    let img = image(&bytes, DiskFormat::Raw);
    let data = bytes.clone();
    assert!(matches!(
        fake.ensure_base(&img, &mut || Ok(Cursor::new(data.clone()))),
        Err(DiskError::Fetch { .. })
    ));
    let data = bytes.clone();
    fake.ensure_base(&img, &mut || Ok(Cursor::new(data.clone())))
        .expect("only the next call fails");
    assert_eq!(fake.calls(), [DiskOp::EnsureBase, DiskOp::EnsureBase]);
}
