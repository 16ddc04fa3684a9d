use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use super::*;

// sha256 and md5 of "hello world".
const HELLO_SHA: &str = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
const HELLO_MD5: &str = "5eb63bbbe01eeed093cb22bb8f5acdc3";
const HOUR: Duration = Duration::from_secs(3600);

fn store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).expect("open store");
    (dir, store)
}

fn upload(store: &BlobStore, chunks: &[&[u8]]) -> BlobInfo {
    let mut w = store.begin_upload().expect("begin");
    for c in chunks {
        w.write_chunk(c).expect("write");
    }
    w.finish(None).expect("finish")
}

fn temp_files(store: &BlobStore) -> Vec<PathBuf> {
    fs::read_dir(store.root().join("tmp"))
        .expect("read tmp")
        .map(|e| e.expect("entry").path())
        .collect()
}

fn age(path: &Path, by: Duration) {
    let file = File::options().write(true).open(path).expect("open to age");
    file.set_modified(SystemTime::now() - by)
        .expect("set mtime");
}

#[test]
fn upload_hashes_incrementally_and_publishes_under_the_digest() {
    let (dir, store) = store();
    let info = upload(&store, &[b"hello", b" ", b"world"]);
    assert_eq!(
        info,
        BlobInfo {
            sha256: HELLO_SHA.into(),
            md5: HELLO_MD5.into(),
            size: 11
        }
    );
    let path = dir.path().join("sha256").join("b9").join(HELLO_SHA);
    assert_eq!(fs::read(path).expect("blob file"), b"hello world");
    assert!(store.contains(HELLO_SHA).expect("contains"));
    assert_eq!(store.list().expect("list"), vec![HELLO_SHA.to_string()]);
    assert!(temp_files(&store).is_empty(), "no temp file left behind");
}

#[test]
fn matching_expected_digests_are_accepted_in_any_case() {
    let (_dir, store) = store();
    let mut w = store.begin_upload().expect("begin");
    w.write_chunk(b"hello world").expect("write");
    let info = w
        .finish_with(Expected {
            sha256: Some(&HELLO_SHA.to_uppercase()),
            md5: Some(HELLO_MD5),
        })
        .expect("finish");
    assert_eq!(info.sha256, HELLO_SHA);
}

#[test]
fn checksum_mismatch_is_reported_and_leaves_nothing_behind() {
    let (_dir, store) = store();
    let mut w = store.begin_upload().expect("begin");
    w.write_chunk(b"hello world!").expect("write");
    let err = w.finish(Some(HELLO_SHA)).expect_err("mismatch");
    assert!(
        matches!(&err, BlobError::ChecksumMismatch { algorithm: "sha256", expected, .. }
            if expected == HELLO_SHA),
        "{err:?}"
    );
    assert!(err.to_string().contains("but b94d27b9"), "{err}");
    assert!(temp_files(&store).is_empty());
    assert!(store.list().expect("list").is_empty());

    let mut w = store.begin_upload().expect("begin");
    w.write_chunk(b"hello world!").expect("write");
    let err = w
        .finish_with(Expected {
            sha256: None,
            md5: Some(HELLO_MD5),
        })
        .expect_err("md5 mismatch");
    assert!(matches!(
        err,
        BlobError::ChecksumMismatch {
            algorithm: "md5",
            ..
        }
    ));
    assert!(temp_files(&store).is_empty());
}

#[test]
fn malformed_digests_are_rejected_before_touching_the_disk() {
    let (_dir, store) = store();
    for bad in ["", "../../etc/passwd", &"g".repeat(64), &HELLO_SHA[..63]] {
        assert!(matches!(
            store.contains(bad),
            Err(BlobError::InvalidDigest(..))
        ));
        assert!(matches!(
            store.open_blob(bad),
            Err(BlobError::InvalidDigest(..))
        ));
    }
    let mut w = store.begin_upload().expect("begin");
    w.write_chunk(b"x").expect("write");
    assert!(matches!(
        w.finish(Some("abc")),
        Err(BlobError::InvalidDigest(..))
    ));
    assert!(temp_files(&store).is_empty());
}

#[test]
fn size_limit_stops_the_upload_and_removes_the_temp_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open_with_limit(dir.path(), 10).expect("open");
    let mut w = store.begin_upload().expect("begin");
    w.write_chunk(&[0; 6]).expect("first chunk fits");
    w.write_chunk(&[0; 4]).expect("exactly at the limit");
    let err = w.write_chunk(&[0]).expect_err("over the limit");
    assert!(matches!(err, BlobError::TooLarge { limit: 10 }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the upload exceeds the size limit of 10 bytes"
    );
    assert!(temp_files(&store).is_empty());
    assert!(matches!(w.write_chunk(b""), Err(BlobError::WriterFailed)));
    assert!(matches!(w.finish(None), Err(BlobError::WriterFailed)));

    // A per-upload limit is capped by the store's.
    let mut w = store.begin_upload_with_limit(3).expect("begin");
    assert!(matches!(
        w.write_chunk(&[0; 4]),
        Err(BlobError::TooLarge { limit: 3 })
    ));
    let mut w = store.begin_upload_with_limit(100).expect("begin");
    assert!(matches!(
        w.write_chunk(&[0; 11]),
        Err(BlobError::TooLarge { limit: 10 })
    ));
}

#[test]
fn abort_and_drop_remove_the_temp_file() {
    let (_dir, store) = store();
    let mut w = store.begin_upload().expect("begin");
    w.write_chunk(b"partial").expect("write");
    assert_eq!(temp_files(&store).len(), 1);
    w.abort();
    assert!(temp_files(&store).is_empty());

    {
        let mut w = store.begin_upload().expect("begin");
        w.write_chunk(b"partial").expect("write");
    }
    assert!(temp_files(&store).is_empty());
    assert!(store.list().expect("list").is_empty());
}

#[test]
fn concurrent_uploads_of_the_same_content_deduplicate() {
    let (_dir, store) = store();
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let store = store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut w = store.begin_upload().expect("begin");
                for _ in 0..64 {
                    w.write_chunk(&[7u8; 4096]).expect("write");
                }
                barrier.wait();
                w.finish(None).expect("finish")
            })
        })
        .collect();
    let infos: Vec<BlobInfo> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    assert!(infos.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(infos[0].size, 64 * 4096);
    assert_eq!(store.list().expect("list"), vec![infos[0].sha256.clone()]);
    assert!(temp_files(&store).is_empty());
    assert_eq!(store.verify(&infos[0].sha256).expect("verify"), infos[0]);
}

#[test]
fn open_blob_reads_and_seeks_and_missing_blobs_are_not_found() {
    let (_dir, store) = store();
    upload(&store, &[b"hello world"]);
    let mut r = store.open_blob(HELLO_SHA).expect("open");
    r.seek(SeekFrom::Start(6)).expect("seek");
    let mut rest = String::new();
    r.read_to_string(&mut rest).expect("read");
    assert_eq!(rest, "world");

    let missing = "0".repeat(64);
    assert!(matches!(store.open_blob(&missing), Err(BlobError::NotFound(d)) if d == missing));
    assert!(!store.contains(&missing).expect("contains"));
    assert!(matches!(
        store.verify(&missing),
        Err(BlobError::NotFound(_))
    ));
}

#[test]
fn verify_detects_a_corrupted_blob() {
    let (dir, store) = store();
    upload(&store, &[b"hello world"]);
    let path = dir.path().join("sha256/b9").join(HELLO_SHA);
    fs::write(&path, b"hello w0rld").expect("corrupt it");
    let err = store.verify(HELLO_SHA).expect_err("corrupt");
    assert!(matches!(&err, BlobError::Corrupt { expected, .. } if expected == HELLO_SHA));
    assert!(err.to_string().starts_with("blob b94d27b9"), "{err}");

    // Uploading the right content again repairs it.
    upload(&store, &[b"hello world"]);
    assert_eq!(store.verify(HELLO_SHA).expect("verify").md5, HELLO_MD5);
}

#[test]
fn remove_deletes_once() {
    let (_dir, store) = store();
    upload(&store, &[b"hello world"]);
    assert!(store.remove(HELLO_SHA).expect("remove"));
    assert!(!store.remove(HELLO_SHA).expect("remove again"));
    assert!(!store.contains(HELLO_SHA).expect("contains"));
}

#[test]
fn gc_keeps_referenced_and_young_blobs_and_deletes_old_unreferenced_ones() {
    let (dir, store) = store();
    let referenced_old = upload(&store, &[b"referenced"]).sha256;
    let unreferenced_old = upload(&store, &[b"garbage"]).sha256;
    let unreferenced_young = upload(&store, &[b"just uploaded"]).sha256;
    for d in [&referenced_old, &unreferenced_old] {
        age(&dir.path().join("sha256").join(&d[..2]).join(d), 2 * HOUR);
    }
    let referenced = HashSet::from([referenced_old.to_uppercase()]);
    let report = store
        .collect_garbage(&referenced, HOUR)
        .expect("collect garbage");
    assert_eq!(report.removed_blobs, vec![unreferenced_old.clone()]);
    assert_eq!(report.freed_bytes, b"garbage".len() as u64);
    assert_eq!(report.removed_temp_files, 0);
    let mut left = vec![referenced_old, unreferenced_young];
    left.sort();
    assert_eq!(store.list().expect("list"), left);
}

#[test]
fn republishing_an_old_blob_makes_it_young_again() {
    let (dir, store) = store();
    upload(&store, &[b"hello world"]);
    age(&dir.path().join("sha256/b9").join(HELLO_SHA), 2 * HOUR);
    upload(&store, &[b"hello world"]);
    let report = store
        .collect_garbage(&HashSet::new(), HOUR)
        .expect("collect garbage");
    assert!(report.removed_blobs.is_empty());
    assert!(store.contains(HELLO_SHA).expect("contains"));
}

#[test]
fn gc_removes_crash_leftover_temp_files_but_never_an_upload_in_progress() {
    let (dir, store) = store();
    let tmp = dir.path().join("tmp");
    let leftover = tmp.join("0b1c6c2e-crashed.part");
    let young_leftover = tmp.join("young.part");
    let foreign = tmp.join("not-ours.txt");
    for p in [&leftover, &young_leftover, &foreign] {
        fs::write(p, b"half an image").expect("write leftover");
    }
    age(&leftover, 2 * HOUR);
    age(&foreign, 2 * HOUR);

    // A slow upload whose temp file has not been touched for longer than the grace period.
    let mut slow = store.begin_upload().expect("begin");
    slow.write_chunk(b"hello ").expect("write");
    let slow_path = temp_files(&store)
        .into_iter()
        .find(|p| ![&leftover, &young_leftover, &foreign].contains(&p))
        .expect("the writer's temp file");
    age(&slow_path, 2 * HOUR);

    let report = store
        .collect_garbage(&HashSet::new(), HOUR)
        .expect("collect garbage");
    assert_eq!(report.removed_temp_files, 1);
    assert!(!leftover.exists());
    assert!(young_leftover.exists() && foreign.exists() && slow_path.exists());

    slow.write_chunk(b"world")
        .expect("the slow upload continues");
    assert_eq!(slow.finish(Some(HELLO_SHA)).expect("finish").size, 11);

    // Another store handle on the same directory (e.g. after a restart) does not know the
    // writer, but still spares young temp files.
    let other = BlobStore::open(dir.path()).expect("reopen");
    let _w = store.begin_upload().expect("begin");
    let report = other
        .collect_garbage(&HashSet::new(), HOUR)
        .expect("collect garbage");
    assert_eq!(report.removed_temp_files, 0);
    assert_eq!(
        temp_files(&store).len(),
        3,
        "young leftover, foreign file, live upload"
    );
}

#[test]
fn error_messages_are_sentences() {
    let err = BlobError::InvalidDigest("xyz".into(), "sha256", 64);
    assert_eq!(
        err.to_string(),
        "`xyz` is not a sha256 digest (64 lowercase or uppercase hex digits)"
    );
    let (_dir, store) = store();
    let err = store.open_blob(&"a".repeat(64)).expect_err("missing");
    assert_eq!(
        err.to_string(),
        format!("there is no blob with sha256 {}", "a".repeat(64))
    );
}
