//! `flotilla image` against fake ImageServices on loopback ports, run in-process: what the
//! upload stream carries, the restart after a leader redirect, failures that must not be
//! retried, stalls, and downloads (verification, `.part` handling, resuming at an offset).

mod image_fake;

use std::time::Duration;

use flotilla_proto::v1;
use image_fake::{sha256_hex, DownloadMode, Server, UploadMode, DEADLINE, MIB};

struct Run {
    code: i32,
    out: Vec<u8>,
    err: String,
}

/// Runs `flotilla --endpoints E --config <empty> ARGS...` in-process.
async fn flotilla(endpoints: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    let mut all = vec![
        "flotilla".to_string(),
        "--endpoints".into(),
        endpoints.into(),
        "--config".into(),
        config.display().to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = tokio::time::timeout(DEADLINE, flotilla_cli::execute(all, &mut out, &mut err))
        .await
        .expect("the command finished before the test deadline");
    Run {
        code,
        out,
        err: String::from_utf8(err).unwrap(),
    }
}

/// Waits (up to 10s) until the server saw an upload stream end.
async fn wait_for_end(server: &Server) {
    for _ in 0..200 {
        if !server.rec.lock().unwrap().upload_ends.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_slice(&run.out).unwrap_or_else(|e| panic!("{e}: {}", run.err))
}

#[tokio::test]
async fn create_with_a_file_creates_then_streams_it_in_whole_mebibytes() {
    let server = Server::start(UploadMode::Accept, DownloadMode::Serve, Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cirros.img");
    let data = content(2 * MIB + MIB / 2);
    std::fs::write(&file, &data).unwrap();
    let sha = sha256_hex(&data);
    let run = flotilla(
        &server.endpoint(),
        &[
            "image",
            "create",
            "cirros",
            "--file",
            file.to_str().unwrap(),
            "--disk-format",
            "raw",
            "--shared",
            "--min-ram",
            "64",
            "--protected",
            "--property",
            "os=cirros",
            "--checksum",
            &sha.to_uppercase(),
            "--project",
            "web",
            "-f",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    let created = server.rec.lock().unwrap().creates[0].clone();
    assert_eq!(created.name, "cirros");
    assert_eq!(created.disk_format, v1::ImageDiskFormat::Raw as i32);
    assert_eq!(
        created.container_format,
        v1::ImageContainerFormat::Bare as i32
    );
    assert_eq!(created.visibility, v1::ImageVisibility::Shared as i32);
    assert_eq!((created.min_ram_mib, created.protected), (64, true));
    assert_eq!(created.properties["os"], "cirros");
    assert_eq!(created.owner, "web");
    assert!(!created.request_id.is_empty());

    let uploads = server.uploads();
    assert_eq!(uploads.len(), 1);
    let up = &uploads[0];
    assert_eq!(
        up.header.image, "img-new",
        "uploads into the image just created"
    );
    assert_eq!(up.header.expected_sha256, sha);
    assert!(up.header.expected_md5.is_empty());
    assert_eq!(up.header.size_bytes, data.len() as u64);
    assert_eq!(up.chunk_sizes, [MIB, MIB, MIB / 2]);
    assert!(up.content == data);
    let out = json(&run);
    assert_eq!(out["status"], "IMAGE_STATUS_ACTIVE");
    assert_eq!(out["sha256"], sha.as_str());
}

#[tokio::test]
async fn without_a_file_the_image_stays_queued_and_a_missing_file_creates_nothing() {
    let server = Server::start(UploadMode::Accept, DownloadMode::Serve, Vec::new()).await;
    let run = flotilla(
        &server.endpoint(),
        &["image", "create", "empty", "-f", "json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(json(&run)["status"], "IMAGE_STATUS_QUEUED");
    assert!(server.uploads().is_empty());

    let run = flotilla(
        &server.endpoint(),
        &["image", "create", "x", "--file", "/nonexistent/disk.img"],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.err
            .starts_with("flotilla: error: cannot read image file /nonexistent/disk.img"),
        "{}",
        run.err
    );
    assert_eq!(
        server.rec.lock().unwrap().creates.len(),
        1,
        "no second create"
    );
}

#[tokio::test]
async fn an_md5_checksum_goes_into_the_md5_field() {
    let server = Server::start(UploadMode::Accept, DownloadMode::Serve, Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::write(&file, b"abc").unwrap();
    let md5 = "900150983cd24fb0d6963f7d28e17f72";
    let run = flotilla(
        &server.endpoint(),
        &[
            "image",
            "upload",
            "queued",
            "--file",
            file.to_str().unwrap(),
            "--checksum",
            md5,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    let header = &server.uploads()[0].header;
    assert_eq!((header.expected_md5.as_str(), header.size_bytes), (md5, 3));
    assert!(header.expected_sha256.is_empty());
    assert_eq!(header.image, "queued");
}

#[tokio::test]
async fn a_leader_redirect_restarts_the_upload_there_with_the_same_request_id() {
    let leader = Server::start(UploadMode::Accept, DownloadMode::Serve, Vec::new()).await;
    let follower = Server::start(
        UploadMode::Redirect(leader.endpoint()),
        DownloadMode::Serve,
        Vec::new(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    let data = content(3 * MIB + 5);
    std::fs::write(&file, &data).unwrap();
    let run = flotilla(
        &follower.endpoint(),
        &[
            "image",
            "upload",
            "cirros",
            "--file",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    let refused = follower.uploads();
    let accepted = leader.uploads();
    assert_eq!((refused.len(), accepted.len()), (1, 1));
    assert_eq!(refused[0].header.request_id, accepted[0].header.request_id);
    assert!(accepted[0].content == data, "restarted from the first byte");
}

#[tokio::test]
async fn a_rejected_upload_is_not_retried_and_says_the_image_is_killed() {
    let server = Server::start(UploadMode::Reject, DownloadMode::Serve, Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::write(&file, content(MIB + 1)).unwrap();
    let run = flotilla(
        &server.endpoint(),
        &[
            "image",
            "upload",
            "cirros",
            "--file",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    assert_eq!(server.uploads().len(), 1);
    assert!(
        run.err.starts_with(
            "flotilla: error: upload of image cirros failed after sending 1048577 of 1048577 \
             bytes: checksum mismatch [INVALID_ARGUMENT]; the image is now killed; delete it \
             and create it again\n"
        ),
        "{}",
        run.err
    );
}

#[tokio::test]
async fn an_interrupted_upload_is_not_retried_and_says_how_to_retry() {
    let server = Server::start(UploadMode::BreakAfter(2), DownloadMode::Serve, Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::write(&file, content(8 * MIB)).unwrap();
    let path = file.to_str().unwrap();
    let run = flotilla(
        &server.endpoint(),
        &["image", "upload", "cirros", "--file", path],
    )
    .await;
    assert_eq!(run.code, 1);
    assert_eq!(
        server.uploads().len(),
        1,
        "UNAVAILABLE without a redirect is final"
    );
    assert!(
        run.err
            .contains("connection to the blob store lost [UNAVAILABLE]"),
        "{}",
        run.err
    );
    assert!(
        run.err.trim_end().ends_with(&format!(
            "the controller returns an interrupted image to queued (it may show saving for up \
             to a minute); retry with `flotilla image upload cirros --file {path}`"
        )),
        "{}",
        run.err
    );
}

#[tokio::test]
async fn a_controller_that_stops_reading_fails_the_upload_after_the_timeout() {
    let server = Server::start(UploadMode::Stall, DownloadMode::Serve, Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::write(&file, content(16 * MIB)).unwrap();
    let started = std::time::Instant::now();
    let run = flotilla(
        &server.endpoint(),
        &[
            "image",
            "upload",
            "cirros",
            "--file",
            file.to_str().unwrap(),
            "--timeout",
            "1",
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.err.contains("the controller took no data for 1.0s"),
        "{}",
        run.err
    );
    assert!(
        run.err.contains("retry with `flotilla image upload"),
        "{}",
        run.err
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_file_that_shrinks_during_the_upload_never_ends_the_stream_cleanly() {
    let server = Server::start(UploadMode::Slow, DownloadMode::Serve, Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::write(&file, content(32 * MIB)).unwrap();
    let truncate = file.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(truncate)
            .unwrap();
        f.set_len(MIB as u64).unwrap();
    });
    let path = file.to_str().unwrap();
    let run = flotilla(
        &server.endpoint(),
        &["image", "upload", "cirros", "--file", path],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.err
            .contains(&format!("cannot read {path}: the file ended after ")),
        "{}",
        run.err
    );
    assert!(
        run.err.contains(" of 33554432 bytes (it changed"),
        "{}",
        run.err
    );
    assert!(
        run.err.contains("retry with `flotilla image upload"),
        "{}",
        run.err
    );
    // The server must see a broken stream, never a clean end of a short upload.
    wait_for_end(&server).await;
    assert_eq!(server.rec.lock().unwrap().upload_ends, ["broken"]);
}

#[tokio::test]
async fn transfers_may_outlast_the_timeout() {
    // Ten chunks each way, 60ms apart: every wait is within --timeout 0.3, the whole is not.
    let data = content(10 * MIB);
    let server = Server::start(UploadMode::Slow, DownloadMode::Slow, data.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::write(&file, &data).unwrap();
    let path = file.to_str().unwrap();
    let started = std::time::Instant::now();
    let run = flotilla(
        &server.endpoint(),
        &["image", "upload", "big", "--file", path, "--timeout", "0.3"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(started.elapsed() > Duration::from_millis(500));
    assert_eq!(server.uploads()[0].content.len(), data.len());

    let saved = dir.path().join("saved.img");
    let started = std::time::Instant::now();
    let run = flotilla(
        &server.endpoint(),
        &[
            "image",
            "save",
            "big",
            "--file",
            saved.to_str().unwrap(),
            "--timeout",
            "0.3",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(started.elapsed() > Duration::from_millis(500));
    assert!(std::fs::read(&saved).unwrap() == data);
    assert_eq!(
        server.rec.lock().unwrap().download_offsets,
        [0],
        "no reopening"
    );
}

#[tokio::test]
async fn save_verifies_and_renames_the_part_file() {
    let data = content(2 * MIB + 17);
    let server = Server::start(UploadMode::Accept, DownloadMode::Serve, data.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.qcow2");
    let run = flotilla(
        &server.endpoint(),
        &["image", "save", "cirros", "--file", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(run.out.is_empty() && run.err.is_empty(), "{}", run.err);
    assert!(std::fs::read(&file).unwrap() == data);
    assert!(!dir.path().join("out.qcow2.part").exists());
}

#[tokio::test]
async fn save_resumes_a_broken_stream_at_the_offset_received() {
    let data = content(3 * MIB + 123);
    let server = Server::start(
        UploadMode::Accept,
        DownloadMode::BreakOnceAfter(3 * MIB / 2),
        data.clone(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.raw");
    let run = flotilla(
        &server.endpoint(),
        &["image", "save", "cirros", "--file", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert_eq!(
        server.rec.lock().unwrap().download_offsets,
        [0, (3 * MIB / 2) as u64]
    );
    assert!(std::fs::read(&file).unwrap() == data);
}

#[tokio::test]
async fn a_digest_mismatch_removes_the_part_file_and_keeps_the_old_file() {
    let server = Server::start(UploadMode::Accept, DownloadMode::WrongDigest, content(MIB)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.qcow2");
    std::fs::write(&file, b"previous").unwrap();
    let run = flotilla(
        &server.endpoint(),
        &["image", "save", "cirros", "--file", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.err
            .starts_with("flotilla: error: the downloaded sha256 of image cirros is "),
        "{}",
        run.err
    );
    assert!(run.err.contains("removed"), "{}", run.err);
    assert!(!dir.path().join("out.qcow2.part").exists());
    assert_eq!(std::fs::read(&file).unwrap(), b"previous");
}

#[tokio::test]
async fn save_to_stdout_writes_only_the_content() {
    let data = content(MIB + 3);
    let server = Server::start(UploadMode::Accept, DownloadMode::Serve, data.clone()).await;
    let run = flotilla(
        &server.endpoint(),
        &["image", "save", "cirros", "--file", "-"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(run.out == data);
}

#[tokio::test]
async fn list_follows_pages_and_delete_reports_each_failure() {
    let server = Server::start(UploadMode::Accept, DownloadMode::Serve, Vec::new()).await;
    let run = flotilla(&server.endpoint(), &["image", "list", "--long"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    let text = String::from_utf8(run.out).unwrap();
    assert!(
        text.starts_with("ID     NAME        STATUS  DISK_FORMAT"),
        "{text}"
    );
    assert!(
        text.contains("\nimg-2  name-img-2  active  qcow2"),
        "{text}"
    );
    assert_eq!(server.rec.lock().unwrap().list_tokens, ["", "t1"]);

    let run = flotilla(
        &server.endpoint(),
        &["image", "delete", "a", "protected", "b"],
    )
    .await;
    assert_eq!(run.code, 1);
    assert_eq!(
        run.err,
        "flotilla: error: cannot delete image protected: image \"protected\" is protected \
         [FAILED_PRECONDITION]\nflotilla: error: 1 of 3 operations failed\n"
    );
    let ids = server.rec.lock().unwrap().deletes.clone();
    assert_eq!(ids.len(), 3);
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2],
        "one request id per image"
    );
}
