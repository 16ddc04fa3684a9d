//! Unit tests of the qemu-img disks driver's pure parts.
use super::*;

#[test]
fn info_reports_of_qemu_img_7_and_10_parse_alike() {
    // qemu-img 10 adds "children"; 7.2 does not. Both name the backing file twice.
    let v7 = br#"{"backing-filename-format": "raw", "virtual-size": 2097152,
        "filename": "/d/ov.qcow2", "cluster-size": 65536, "format": "qcow2",
        "actual-size": 200704, "format-specific": {"type": "qcow2", "data": {}},
        "full-backing-filename": "/c/base", "backing-filename": "/c/base",
        "dirty-flag": false}"#;
    let v10 = br#"{"children": [{"name": "file", "info": {"filename": "/d/ov.qcow2",
        "format": "file", "virtual-size": 197120}}], "backing-filename-format": "raw",
        "virtual-size": 2097152, "filename": "/d/ov.qcow2", "format": "qcow2",
        "actual-size": 200704, "full-backing-filename": "/c/base",
        "backing-filename": "/c/base", "dirty-flag": false}"#;
    let a = parse_info(Path::new("/d/ov.qcow2"), v7).unwrap();
    let b = parse_info(Path::new("/d/ov.qcow2"), v10).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.backing_file, Some(PathBuf::from("/c/base")));
    assert_eq!(a.backing_format.as_deref(), Some("raw"));
    assert_eq!(a.virtual_size, 2 << 20);
    assert!(parse_info(Path::new("/x"), b"not json").is_err());
}

#[test]
fn digests_are_64_lowercase_hex_digits() {
    check_digest(&"ab".repeat(32)).unwrap();
    for bad in [
        "",
        "../etc",
        &"AB".repeat(32),
        &"a".repeat(63),
        &"g".repeat(64),
    ] {
        assert!(
            matches!(check_digest(bad), Err(DiskError::InvalidDigest(_))),
            "{bad}"
        );
    }
}

#[test]
fn too_small_names_the_smallest_disk_that_fits() {
    let e = DiskError::TooSmall {
        requested_gib: 1,
        virtual_size: 2 * GIB + 1,
    };
    assert_eq!(
        e.to_string(),
        "a 1 GiB disk is smaller than the image (2.00 GiB virtual size); use a flavor with \
         at least 3 GiB of disk"
    );
}
