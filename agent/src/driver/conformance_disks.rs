//! The [`Disks`] conformance suite. Each check gets a fresh driver from the fixture's factory
//! (an empty cache) and uses only the trait, so real and fake are held to the same contract.
use std::cell::Cell;
use std::io::{self, Cursor};
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::driver::disks::{BaseImage, DiskError, DiskRef, Disks};
use crate::render::domain::DiskRole;
use crate::render::qemu_img::DiskFormat;

const GIB: u64 = 1 << 30;

/// Makes a fresh driver with an empty cache, no disks and no snapshots.
pub type DisksFactory<'a> = &'a dyn Fn() -> Box<dyn Disks>;

type Check = fn(&dyn Disks);

/// Every Disks check, by name.
pub const DISKS_CHECKS: &[(&str, Check)] = &[
    (
        "ensure_base_verifies_then_caches",
        ensure_base_verifies_then_caches,
    ),
    (
        "a_checksum_mismatch_keeps_nothing",
        a_checksum_mismatch_keeps_nothing,
    ),
    (
        "wrong_sizes_and_fetch_errors_keep_nothing",
        wrong_sizes_and_fetch_errors_keep_nothing,
    ),
    (
        "invalid_digests_are_refused_before_fetching",
        invalid_digests_are_refused_before_fetching,
    ),
    (
        "overlay_pins_base_and_format_and_is_idempotent",
        overlay_pins_base_and_format_and_is_idempotent,
    ),
    (
        "overlay_smaller_than_the_base_is_refused",
        overlay_smaller_than_the_base_is_refused,
    ),
    ("overlay_needs_a_cached_base", overlay_needs_a_cached_base),
    ("delete_disk_is_idempotent", delete_disk_is_idempotent),
    (
        "blank_disks_have_no_backing_file",
        blank_disks_have_no_backing_file,
    ),
    (
        "generations_are_separate_and_deleted_whole",
        generations_are_separate_and_deleted_whole,
    ),
    (
        "snapshot_makes_a_standalone_copy",
        snapshot_makes_a_standalone_copy,
    ),
    (
        "eviction_keeps_bases_in_use_or_recently_wanted",
        eviction_keeps_bases_in_use_or_recently_wanted,
    ),
];

/// Runs every check on a fresh driver, printing each name and duration.
pub fn run_disks_suite(make: DisksFactory<'_>) {
    for (name, check) in DISKS_CHECKS {
        let started = Instant::now();
        eprintln!("disks conformance: {name} ...");
        check(make().as_ref());
        eprintln!("disks conformance: {name} ok ({:.2?})", started.elapsed());
    }
}

/// Deterministic pseudo-random bytes (no two images of the suite alike).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A valid, empty qcow2 v3 image (64 KiB clusters) with the given virtual size: header,
/// refcount table, refcount block and L1 table, one cluster each. `qemu-img check` accepts it.
pub fn qcow2_image(virtual_size: u64) -> Vec<u8> {
    const CLUSTER: usize = 1 << 16;
    let l1_entries = virtual_size.div_ceil((CLUSTER as u64) * (CLUSTER as u64 / 8)) as u32;
    assert!(
        l1_entries as usize * 8 <= CLUSTER,
        "one L1 cluster suffices"
    );
    let mut img = vec![0u8; 4 * CLUSTER];
    let mut put = |at: usize, bytes: &[u8]| img[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, b"QFI\xfb");
    put(4, &3u32.to_be_bytes()); // version
    put(20, &16u32.to_be_bytes()); // cluster_bits
    put(24, &virtual_size.to_be_bytes());
    put(36, &l1_entries.to_be_bytes());
    put(40, &(3 * CLUSTER as u64).to_be_bytes()); // l1_table_offset
    put(48, &(CLUSTER as u64).to_be_bytes()); // refcount_table_offset
    put(56, &1u32.to_be_bytes()); // refcount_table_clusters
    put(96, &4u32.to_be_bytes()); // refcount_order: 16-bit refcounts
    put(100, &104u32.to_be_bytes()); // header_length
                                     // Header extensions end at 104 (type 0, length 0: already zero).
    put(CLUSTER, &(2 * CLUSTER as u64).to_be_bytes()); // refcount table -> block
    for cluster in 0..4 {
        put(2 * CLUSTER + 2 * cluster, &1u16.to_be_bytes());
    }
    img
}

/// An image description and its bytes.
pub fn image(bytes: &[u8], format: DiskFormat) -> BaseImage {
    BaseImage {
        sha256: hex::encode(Sha256::digest(bytes)),
        format,
        size: bytes.len() as u64,
    }
}

/// Ensures `bytes` is cached; returns the image and its path.
fn cached(d: &dyn Disks, bytes: &[u8], format: DiskFormat) -> (BaseImage, std::path::PathBuf) {
    let img = image(bytes, format);
    let data = bytes.to_vec();
    let path = d
        .ensure_base(&img, &mut || Ok(Cursor::new(data.clone())))
        .expect("ensure_base");
    (img, path)
}

fn cached_digests(d: &dyn Disks) -> Vec<String> {
    d.list_bases()
        .expect("list_bases")
        .into_iter()
        .map(|b| b.sha256)
        .collect()
}

/// The generation-1 root disk of a fresh server.
fn new_root() -> DiskRef {
    DiskRef::root(Uuid::new_v4(), 1)
}

fn ensure_base_verifies_then_caches(d: &dyn Disks) {
    let bytes = pattern(3 << 20, 1);
    let img = image(&bytes, DiskFormat::Raw);
    let opened = Cell::new(0);
    let data = bytes.clone();
    let path = d
        .ensure_base(&img, &mut || {
            opened.set(opened.get() + 1);
            Ok(Cursor::new(data.clone()))
        })
        .expect("ensure_base");
    assert_eq!(opened.get(), 1);
    assert_eq!(path, d.base_path(&img.sha256).unwrap());
    assert_eq!(
        path.file_name().unwrap().to_str(),
        Some(img.sha256.as_str())
    );
    let bases = d.list_bases().unwrap();
    assert_eq!(bases.len(), 1);
    assert_eq!(
        (bases[0].sha256.as_str(), bases[0].bytes),
        (img.sha256.as_str(), img.size)
    );
    assert_eq!(bases[0].path, path);

    let again = d
        .ensure_base(&img, &mut || -> io::Result<Cursor<Vec<u8>>> {
            panic!("a cached image is not fetched again")
        })
        .expect("cache hit");
    assert_eq!(again, path);
}

fn a_checksum_mismatch_keeps_nothing(d: &dyn Disks) {
    let bytes = pattern(1 << 20, 2);
    let mut img = image(&bytes, DiskFormat::Raw);
    let claimed = hex::encode(Sha256::digest(b"something else"));
    let actual = std::mem::replace(&mut img.sha256, claimed.clone());
    let data = bytes.clone();
    match d.ensure_base(&img, &mut || Ok(Cursor::new(data.clone()))) {
        Err(DiskError::ChecksumMismatch {
            expected,
            actual: got,
        }) => {
            assert_eq!((expected, got), (claimed, actual));
        }
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    assert!(
        cached_digests(d).is_empty(),
        "nothing kept after a mismatch"
    );

    // The right bytes afterwards are accepted.
    cached(d, &bytes, DiskFormat::Raw);
    assert_eq!(cached_digests(d).len(), 1);
}

fn wrong_sizes_and_fetch_errors_keep_nothing(d: &dyn Disks) {
    let bytes = pattern(1 << 20, 3);
    let img = image(&bytes, DiskFormat::Raw);
    for (declared, label) in [(img.size + 1, "short"), (img.size - 1, "long")] {
        let wrong = BaseImage {
            size: declared,
            ..img.clone()
        };
        let data = bytes.clone();
        match d.ensure_base(&wrong, &mut || Ok(Cursor::new(data.clone()))) {
            Err(DiskError::SizeMismatch { expected, .. }) => assert_eq!(expected, declared),
            other => panic!("{label} stream: expected SizeMismatch, got {other:?}"),
        }
    }
    let failing = || -> io::Result<Cursor<Vec<u8>>> {
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "controller went away",
        ))
    };
    match d.ensure_base(&img, &mut { failing }) {
        Err(DiskError::Fetch { sha256, source }) => {
            assert_eq!(sha256, img.sha256);
            assert_eq!(source.kind(), io::ErrorKind::ConnectionReset);
        }
        other => panic!("failing source: expected Fetch, got {other:?}"),
    }
    // A stream that breaks half way.
    let half = bytes[..bytes.len() / 2].to_vec();
    let broken = move || -> io::Result<io::Chain<Cursor<Vec<u8>>, FailingReader>> {
        Ok(io::Read::chain(Cursor::new(half.clone()), FailingReader))
    };
    match d.ensure_base(&img, &mut { broken }) {
        Err(DiskError::Fetch { .. }) => {}
        other => panic!("broken stream: expected Fetch, got {other:?}"),
    }
    assert!(cached_digests(d).is_empty(), "nothing kept");
}

/// A reader that fails.
pub struct FailingReader;

impl io::Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream cut"))
    }
}

fn invalid_digests_are_refused_before_fetching(d: &dyn Disks) {
    for digest in ["../../etc/passwd", "", &"A".repeat(64)] {
        let img = BaseImage {
            sha256: digest.to_string(),
            format: DiskFormat::Raw,
            size: 1,
        };
        let result = d.ensure_base(&img, &mut || -> io::Result<Cursor<Vec<u8>>> {
            panic!("an invalid digest must not be fetched")
        });
        assert!(
            matches!(result, Err(DiskError::InvalidDigest(_))),
            "{digest}: {result:?}"
        );
        assert!(matches!(
            d.base_path(digest),
            Err(DiskError::InvalidDigest(_))
        ));
    }
}

fn overlay_pins_base_and_format_and_is_idempotent(d: &dyn Disks) {
    let (_, base) = cached(d, &pattern(2 << 20, 4), DiskFormat::Raw);
    let server = new_root();
    let info = d
        .create_overlay(server, &base, DiskFormat::Raw, 1)
        .expect("create_overlay");
    assert_eq!(info.path, d.disk_path(server));
    assert_eq!(
        d.layout().parse(&info.path),
        Some((server.server.to_string(), 1, DiskRole::Root)),
        "the path follows the layout"
    );
    assert_eq!(info.format, "qcow2");
    assert_eq!(info.virtual_size, GIB);
    assert_eq!(info.backing_file.as_deref(), Some(base.as_path()));
    assert_eq!(info.backing_format.as_deref(), Some("raw"));
    assert_eq!(d.disk_info(server).unwrap(), info);
    assert_eq!(d.list_disks().unwrap(), [server]);

    let again = d
        .create_overlay(server, &base, DiskFormat::Raw, 1)
        .expect("same disk again");
    assert_eq!(again, info);
    match d.create_overlay(server, &base, DiskFormat::Raw, 2) {
        Err(DiskError::OverlayExists { path, .. }) => assert_eq!(path, info.path),
        other => {
            panic!("another size over an existing disk: expected OverlayExists, got {other:?}")
        }
    }
    assert_eq!(
        d.disk_info(server).unwrap(),
        info,
        "the existing disk is untouched"
    );

    // Size 0: as large as the base. A qcow2 base is pinned as qcow2.
    let (_, qbase) = cached(d, &qcow2_image(3 * GIB), DiskFormat::Qcow2);
    let other = new_root();
    let info = d
        .create_overlay(other, &qbase, DiskFormat::Qcow2, 0)
        .unwrap();
    assert_eq!(info.virtual_size, 3 * GIB);
    assert_eq!(info.backing_format.as_deref(), Some("qcow2"));
}

fn overlay_smaller_than_the_base_is_refused(d: &dyn Disks) {
    let (_, base) = cached(d, &qcow2_image(2 * GIB + 512), DiskFormat::Qcow2);
    let server = new_root();
    match d.create_overlay(server, &base, DiskFormat::Qcow2, 2) {
        Err(e @ DiskError::TooSmall { .. }) => {
            assert!(e.to_string().contains("at least 3 GiB"), "{e}");
        }
        other => panic!("expected TooSmall, got {other:?}"),
    }
    assert!(matches!(
        d.disk_info(server),
        Err(DiskError::NotFound { .. })
    ));
    assert_eq!(
        d.create_overlay(server, &base, DiskFormat::Qcow2, 3)
            .unwrap()
            .virtual_size,
        3 * GIB
    );
}

fn overlay_needs_a_cached_base(d: &dyn Disks) {
    let server = new_root();
    let missing = d.base_path(&"0".repeat(64)).unwrap();
    for base in [missing.as_path(), Path::new("/etc/passwd")] {
        match d.create_overlay(server, base, DiskFormat::Raw, 1) {
            Err(DiskError::NotCached { path, .. }) => assert_eq!(path, base),
            other => panic!("{}: expected NotCached, got {other:?}", base.display()),
        }
    }
    // A raw image declared qcow2: qemu-img (pinned to qcow2) refuses it.
    let (_, base) = cached(d, &pattern(1 << 20, 5), DiskFormat::Raw);
    match d.create_overlay(server, &base, DiskFormat::Qcow2, 1) {
        Err(DiskError::QemuImg { message, .. }) => assert!(message.contains("qcow2"), "{message}"),
        other => panic!("raw bytes as qcow2: expected QemuImg, got {other:?}"),
    }
    assert!(matches!(
        d.disk_info(server),
        Err(DiskError::NotFound { .. })
    ));
    assert!(d.list_disks().unwrap().is_empty(), "nothing left behind");
}

fn delete_disk_is_idempotent(d: &dyn Disks) {
    let (_, base) = cached(d, &pattern(1 << 20, 6), DiskFormat::Raw);
    let server = new_root();
    d.create_overlay(server, &base, DiskFormat::Raw, 1).unwrap();
    assert!(d.delete_disk(server).unwrap());
    assert!(!d.delete_disk(server).unwrap());
    match d.disk_info(server) {
        Err(DiskError::NotFound { path, .. }) => assert_eq!(path, d.disk_path(server)),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A new disk can be made in its place.
    d.create_overlay(server, &base, DiskFormat::Raw, 2).unwrap();
}

fn blank_disks_have_no_backing_file(d: &dyn Disks) {
    let server = Uuid::new_v4();
    let swap = DiskRef::new(server, 4, DiskRole::Swap);
    let info = d.create_blank(swap, 512 << 20).expect("create_blank");
    assert_eq!(info.path, d.disk_path(swap));
    assert_eq!(info.format, "qcow2");
    assert_eq!(info.virtual_size, 512 << 20);
    assert_eq!((info.backing_file, info.backing_format), (None, None));
    // Sizes round up to whole sectors.
    let eph = DiskRef::new(server, 4, DiskRole::Ephemeral);
    assert_eq!(d.create_blank(eph, 1000).unwrap().virtual_size, 1024);
    // The same disk again is fine; another size over it is refused.
    assert_eq!(
        d.create_blank(swap, 512 << 20).unwrap().virtual_size,
        512 << 20
    );
    match d.create_blank(swap, 1 << 30) {
        Err(DiskError::OverlayExists { path, .. }) => assert_eq!(path, d.disk_path(swap)),
        other => {
            panic!("another size over an existing disk: expected OverlayExists, got {other:?}")
        }
    }
    assert_eq!(d.list_disks().unwrap(), [eph, swap]);
}

fn generations_are_separate_and_deleted_whole(d: &dyn Disks) {
    let (_, base) = cached(d, &pattern(1 << 20, 10), DiskFormat::Raw);
    let server = Uuid::new_v4();
    let (old, new) = (DiskRef::root(server, 1), DiskRef::root(server, 2));
    let old_swap = DiskRef::new(server, 1, DiskRole::Swap);
    let other = DiskRef::root(Uuid::new_v4(), 1);
    d.create_overlay(old, &base, DiskFormat::Raw, 1).unwrap();
    d.create_blank(old_swap, 1 << 20).unwrap();
    // Another generation's disk is another file, even with different contents.
    d.create_overlay(new, &base, DiskFormat::Raw, 2).unwrap();
    d.create_overlay(other, &base, DiskFormat::Raw, 1).unwrap();
    assert_ne!(d.disk_path(old), d.disk_path(new));
    let mut all = vec![old, old_swap, new, other];
    all.sort();
    assert_eq!(d.list_disks().unwrap(), all);

    assert!(d.delete_generation(server, 1).unwrap());
    assert!(!d.delete_generation(server, 1).unwrap(), "idempotent");
    let mut left = vec![new, other];
    left.sort();
    assert_eq!(d.list_disks().unwrap(), left);
    assert_eq!(d.disk_info(new).unwrap().virtual_size, 2 * GIB);

    assert!(d.delete_generation(server, 2).unwrap());
    assert_eq!(d.list_disks().unwrap(), [other]);
    assert!(!d.delete_generation(Uuid::new_v4(), 7).unwrap());
}

fn snapshot_makes_a_standalone_copy(d: &dyn Disks) {
    let (_, base) = cached(d, &pattern(1 << 20, 7), DiskFormat::Raw);
    let server = new_root();
    d.create_overlay(server, &base, DiskFormat::Raw, 1).unwrap();
    let snap_id = Uuid::new_v4();
    let snap = d
        .snapshot(server, snap_id, DiskFormat::Qcow2)
        .expect("snapshot");
    assert_eq!(snap.format, DiskFormat::Qcow2);
    assert_eq!(snap.virtual_size, GIB);
    assert_eq!(snap.sha256.len(), 64);
    assert!(snap.size > 0);
    assert_eq!(
        snap.path.file_name().unwrap().to_str(),
        Some(snap_id.to_string().as_str())
    );
    // Taken again (a retried step): replaced, same result.
    let again = d.snapshot(server, snap_id, DiskFormat::Qcow2).unwrap();
    assert_eq!(
        (again.path, again.sha256),
        (snap.path.clone(), snap.sha256.clone())
    );
    assert!(d.delete_snapshot(snap_id).unwrap());
    assert!(!d.delete_snapshot(snap_id).unwrap());

    match d.snapshot(new_root(), Uuid::new_v4(), DiskFormat::Qcow2) {
        Err(DiskError::NotFound { .. }) => {}
        other => panic!("snapshot without a disk: expected NotFound, got {other:?}"),
    }
}

fn eviction_keeps_bases_in_use_or_recently_wanted(d: &dyn Disks) {
    let (used, used_path) = cached(d, &pattern(1 << 20, 8), DiskFormat::Raw);
    let (unused, _) = cached(d, &pattern(1 << 20, 9), DiskFormat::Raw);
    let server = new_root();
    d.create_overlay(server, &used_path, DiskFormat::Raw, 1)
        .unwrap();

    assert!(
        d.evict_unused(Duration::from_secs(3600))
            .unwrap()
            .is_empty(),
        "recently wanted bases stay"
    );
    let evicted = d.evict_unused(Duration::ZERO).unwrap();
    assert_eq!(
        evicted
            .iter()
            .map(|e| e.sha256.as_str())
            .collect::<Vec<_>>(),
        [unused.sha256.as_str()]
    );
    assert_eq!(evicted[0].bytes, unused.size);
    assert_eq!(cached_digests(d), std::slice::from_ref(&used.sha256));
    assert_eq!(d.disk_info(server).unwrap().backing_file, Some(used_path));

    d.delete_generation(server.server, server.generation)
        .unwrap();
    let evicted = d.evict_unused(Duration::ZERO).unwrap();
    assert_eq!(evicted.len(), 1);
    assert!(cached_digests(d).is_empty());
}
