//! Process tests of the image service on a real 3-controller cluster: uploads streamed over
//! gRPC, inspected by the real qemu-img, copied between controllers over the peer listener,
//! downloaded from any controller; unsafe files refused through the API (I9); the image quota
//! raced by 50 concurrent creates (I3); a 1 GiB upload with the leader killed mid-way.
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::image_service_client::ImageServiceClient;
use flotilla_proto::v1::quota_service_client::QuotaServiceClient;
use sha2::{Digest, Sha256};
use support::{request_id, wait_for, with_token, Client, Cluster, Options};
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

const READY: Duration = Duration::from_secs(30);
const CALL: Duration = Duration::from_secs(20);
/// Background copies and fetches between controllers.
const COPIES: Duration = Duration::from_secs(60);
/// A whole 1 GiB transfer.
const BIG: Duration = Duration::from_secs(300);
const ALL: [u64; 3] = [1, 2, 3];
const CHUNK: usize = 1 << 20;

fn options() -> Options {
    Options {
        // Fast maintenance so a controller that missed an upload fetches it within the test.
        extra_toml: "[images]\nmaintenance_interval_secs = 1\n".into(),
        ..Options::default()
    }
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs (install qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

fn blob_path(cluster: &Cluster, node: u64, sha256: &str) -> PathBuf {
    cluster
        .node(node)
        .data_dir
        .join("images/sha256")
        .join(&sha256[..2])
        .join(sha256)
}

async fn create_image(
    client: &Client,
    name: &str,
    disk_format: pb::ImageDiskFormat,
    owner: &str,
) -> pb::Image {
    let req = pb::CreateImageRequest {
        request_id: request_id(),
        name: name.into(),
        disk_format: disk_format as i32,
        owner: owner.into(),
        ..Default::default()
    };
    client
        .call(CALL, |ch| {
            let req = client.authed(req.clone());
            async move { ImageServiceClient::new(ch).create_image(req).await }
        })
        .await
        .unwrap_or_else(|e| panic!("CreateImage {name}: {e:?}"))
        .value
}

async fn get_image(client: &Client, node: u64, id: &str) -> pb::Image {
    let req = pb::GetImageRequest {
        image: id.into(),
        stale: true,
    };
    client
        .once(node, |ch| {
            let req = client.authed(req);
            async move { ImageServiceClient::new(ch).get_image(req).await }
        })
        .await
        .unwrap_or_else(|e| panic!("GetImage at n{node}: {e:?}"))
}

/// Streams `path` to `node` in 1 MiB chunks; `sent` counts the bytes handed to gRPC.
async fn upload(
    token: &str,
    client: &Client,
    node: u64,
    image: &str,
    path: &Path,
    expected_sha256: &str,
    sent: Option<tokio::sync::watch::Sender<u64>>,
) -> Result<pb::Image, Status> {
    let size = std::fs::metadata(path).unwrap().len();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let header = pb::UploadImageRequest {
        data: Some(pb::upload_image_request::Data::Header(
            pb::UploadImageHeader {
                request_id: request_id(),
                image: image.into(),
                expected_sha256: expected_sha256.into(),
                expected_md5: String::new(),
                size_bytes: size,
            },
        )),
    };
    let path = path.to_owned();
    tokio::spawn(async move {
        if tx.send(header).await.is_err() {
            return;
        }
        let mut file = tokio::fs::File::open(&path).await.unwrap();
        let mut total = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = file.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            buf.truncate(n);
            let msg = pb::UploadImageRequest {
                data: Some(pb::upload_image_request::Data::Chunk(buf)),
            };
            if tx.send(msg).await.is_err() {
                return;
            }
            total += n as u64;
            if let Some(s) = &sent {
                let _ = s.send(total);
            }
        }
    });
    let req = with_token(ReceiverStream::new(rx), token);
    client
        .clone()
        .with_attempt_timeout(BIG)
        .once(node, |ch| async move {
            ImageServiceClient::new(ch)
                .max_decoding_message_size(8 << 20)
                .upload_image(req)
                .await
        })
        .await
}

/// Downloads an image from `node`; returns its metadata and the sha256 of the bytes received.
async fn download(
    client: &Client,
    node: u64,
    image: &str,
) -> Result<(pb::Image, String, u64), Status> {
    let req = pb::DownloadImageRequest {
        image: image.into(),
        offset: 0,
    };
    let mut stream = client
        .clone()
        .with_attempt_timeout(BIG)
        .once(node, |ch| {
            let req = client.authed(req);
            async move {
                ImageServiceClient::new(ch)
                    .max_decoding_message_size(8 << 20)
                    .download_image(req)
                    .await
            }
        })
        .await?;
    let mut meta = None;
    let mut hash = Sha256::new();
    let mut size = 0u64;
    while let Some(msg) = stream.message().await? {
        match msg.data {
            Some(pb::download_image_response::Data::Image(i)) => meta = Some(i),
            Some(pb::download_image_response::Data::Chunk(c)) => {
                size += c.len() as u64;
                hash.update(&c);
            }
            None => {}
        }
    }
    Ok((
        meta.expect("metadata first"),
        hex::encode(hash.finalize()),
        size,
    ))
}

async fn status_of(client: &Client, node: u64, id: &str) -> pb::ImageStatus {
    get_image(client, node, id).await.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn images_are_uploaded_copied_to_every_controller_downloaded_and_unsafe_files_refused() {
    let _serial = support::serial().await;
    let cluster = Cluster::start(options());
    let leader = cluster.wait_ready(&ALL, READY).await;
    let client = cluster.client();
    let token = cluster.admin_token().to_owned();
    let follower = ALL.into_iter().find(|&n| n != leader).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // A real qcow2 with some data, uploaded to a follower with the client's checksum.
    let raw = dir.path().join("data.raw");
    std::fs::write(
        &raw,
        (0..3 << 20)
            .map(|i: u32| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let good = dir.path().join("good.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        good.to_str().unwrap(),
    ]);
    let sha = sha256_file(&good);
    let image = create_image(&client, "cirros-like", pb::ImageDiskFormat::Qcow2, "admin").await;
    assert_eq!(image.status(), pb::ImageStatus::Queued);
    let active = upload(&token, &client, follower, &image.id, &good, &sha, None)
        .await
        .expect("upload of a clean qcow2");
    assert_eq!(active.status(), pb::ImageStatus::Active);
    assert_eq!(active.sha256, sha);
    assert_eq!(active.size_bytes, std::fs::metadata(&good).unwrap().len());
    assert_eq!(
        active.virtual_size_bytes,
        3 << 20,
        "virtual size from qemu-img"
    );
    assert_eq!(active.md5.len(), 32);

    // Every controller ends up holding the verified bytes; any of them serves the download.
    wait_for(COPIES, "the blob on every controller", || async {
        ALL.iter()
            .all(|&n| blob_path(&cluster, n, &sha).is_file())
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
    for n in ALL {
        assert_eq!(
            sha256_file(&blob_path(&cluster, n, &sha)),
            sha,
            "n{n}'s copy"
        );
        let (meta, got, size) = download(&client, n, &image.id).await.expect("download");
        assert_eq!(
            (meta.id.as_str(), got.as_str(), size),
            (image.id.as_str(), sha.as_str(), active.size_bytes)
        );
    }
    // An active image takes no second upload.
    let err = upload(&token, &client, leader, &image.id, &good, "", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // A controller that lost its copy fetches it again from a peer.
    std::fs::remove_file(blob_path(&cluster, follower, &sha)).unwrap();
    wait_for(COPIES, "the lost copy fetched back", || async {
        blob_path(&cluster, follower, &sha)
            .is_file()
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
    assert_eq!(sha256_file(&blob_path(&cluster, follower, &sha)), sha);

    // Unsafe files: each refused with a reason, the image KILLED, never active.
    let secret = dir.path().join("host-secret.raw");
    std::fs::write(&secret, b"host data that must never be exposed").unwrap();
    let backing = dir.path().join("backing.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        secret.to_str().unwrap(),
        "-F",
        "raw",
        backing.to_str().unwrap(),
        "1M",
    ]);
    let data_file = dir.path().join("datafile.qcow2");
    let external = dir.path().join("external.raw");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", external.display()),
        data_file.to_str().unwrap(),
        "1M",
    ]);
    let cases: [(&str, &Path, pb::ImageDiskFormat, &str, &str); 4] = [
        (
            "backing",
            &backing,
            pb::ImageDiskFormat::Qcow2,
            "",
            "backing file",
        ),
        (
            "data-file",
            &data_file,
            pb::ImageDiskFormat::Qcow2,
            "",
            "external file",
        ),
        (
            "mismatch",
            &raw,
            pb::ImageDiskFormat::Qcow2,
            "",
            "declared qcow2 but its content is raw",
        ),
        (
            "bad-checksum",
            &good,
            pb::ImageDiskFormat::Qcow2,
            &"0".repeat(64),
            "checksum mismatch",
        ),
    ];
    for (name, file, format, expected, says) in cases {
        let img = create_image(&client, name, format, "admin").await;
        let err = upload(&token, &client, follower, &img.id, file, expected, None)
            .await
            .expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(err.message().contains(says), "{name}: {}", err.message());
        let after = get_image(&client, leader, &img.id).await;
        assert_eq!(after.status(), pb::ImageStatus::Killed, "{name}");
        assert!(
            after.status_reason.contains(says),
            "{name}: {}",
            after.status_reason
        );
        let err = download(&client, leader, &img.id).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{name}");
    }
    // Nothing names the host file: its content never reached a blob store.
    let secret_sha = sha256_file(&secret);
    for n in ALL {
        assert!(!blob_path(&cluster, n, &secret_sha).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_creates_against_an_image_quota_of_ten_admit_exactly_ten() {
    let _serial = support::serial().await;
    let cluster = Cluster::start(options());
    let leader = cluster.wait_ready(&ALL, READY).await;
    let client = cluster.client();
    let project = client
        .create_project(&request_id(), "racers", CALL)
        .await
        .expect("project")
        .value;
    let set = pb::SetQuotaRequest {
        request_id: request_id(),
        project: project.id.clone(),
        images: Some(10),
        ..Default::default()
    };
    client
        .call(CALL, |ch| {
            let req = client.authed(set.clone());
            async move { QuotaServiceClient::new(ch).set_quota(req).await }
        })
        .await
        .expect("set quota");

    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = client.clone().starting_at(i);
        let owner = project.id.clone();
        tasks.push(tokio::spawn(async move {
            let req = pb::CreateImageRequest {
                request_id: request_id(),
                name: format!("racer-{i}"),
                disk_format: pb::ImageDiskFormat::Raw as i32,
                owner,
                ..Default::default()
            };
            client
                .call(CALL, |ch| {
                    let req = client.authed(req.clone());
                    async move { ImageServiceClient::new(ch).create_image(req).await }
                })
                .await
        }));
    }
    let (mut ok, mut refused) = (Vec::new(), 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(acked) => ok.push(acked.value),
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(e.message().contains("quota exceeded for images"), "{e:?}");
                refused += 1;
            }
            Err(e) => panic!("unexpected failure {e:?}"),
        }
    }
    assert_eq!((ok.len(), refused), (10, 40));

    let usage = |node: u64| {
        let client = client.clone();
        let project = project.id.clone();
        async move {
            let req = pb::GetQuotaRequest {
                project,
                stale: true,
            };
            // A restarting controller refuses connections for a moment: keep polling.
            let q = client
                .once(node, |ch| {
                    let req = client.authed(req);
                    async move { QuotaServiceClient::new(ch).get_quota(req).await }
                })
                .await;
            q.map(|q| q.images.expect("images item").in_use)
                .unwrap_or(-1)
        }
    };
    for n in ALL {
        wait_for(CALL, "usage 10 everywhere", || async {
            (usage(n).await == 10)
                .then_some(())
                .ok_or_else(|| "not yet".to_owned())
        })
        .await;
    }

    // Deletes release exactly; a leader change keeps usage exact.
    for image in &ok[..3] {
        let req = pb::DeleteImageRequest {
            request_id: request_id(),
            image: image.id.clone(),
        };
        client
            .call(CALL, |ch| {
                let req = client.authed(req.clone());
                async move { ImageServiceClient::new(ch).delete_image(req).await }
            })
            .await
            .expect("delete");
    }
    cluster.kill(leader);
    let rest: Vec<u64> = ALL.into_iter().filter(|&n| n != leader).collect();
    cluster.wait_leader(&rest, READY).await;
    for &n in &rest {
        wait_for(CALL, "usage 7 after deletes", || async {
            (usage(n).await == 7)
                .then_some(())
                .ok_or_else(|| "not yet".to_owned())
        })
        .await;
    }
    let mut created = 0;
    for i in 0..5 {
        let req = pb::CreateImageRequest {
            request_id: request_id(),
            name: format!("after-{i}"),
            disk_format: pb::ImageDiskFormat::Raw as i32,
            owner: project.id.clone(),
            ..Default::default()
        };
        match client
            .call(CALL, |ch| {
                let req = client.authed(req.clone());
                async move { ImageServiceClient::new(ch).create_image(req).await }
            })
            .await
        {
            Ok(_) => created += 1,
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}"),
        }
    }
    assert_eq!(created, 3);
    cluster.restart(leader);
    wait_for(
        READY,
        "the restarted controller agrees: usage 10",
        || async {
            (usage(leader).await == 10)
                .then_some(())
                .ok_or_else(|| "not yet".to_owned())
        },
    )
    .await;
}

/// Writes `size` bytes of incompressible, position-dependent data.
fn big_file(path: &Path, size: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; CHUNK];
    for _ in 0..size / CHUNK as u64 {
        for b in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b.copy_from_slice(&state.to_le_bytes());
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_1gib_upload_with_the_leader_killed_midway_completes_or_fails_cleanly() {
    let _serial = support::serial().await;
    let cluster = Cluster::start(options());
    let leader = cluster.wait_ready(&ALL, READY).await;
    let client = cluster.client();
    let token = cluster.admin_token().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.raw");
    big_file(&file, 1 << 30);
    let sha = sha256_file(&file);

    // 1. The upload goes to a follower; the leader is killed a third of the way in.
    let follower = ALL.into_iter().find(|&n| n != leader).unwrap();
    let image = create_image(
        &client,
        "big-via-follower",
        pb::ImageDiskFormat::Raw,
        "admin",
    )
    .await;
    let (sent_tx, mut sent_rx) = tokio::sync::watch::channel(0u64);
    let up = {
        let (token, client, id, file) = (
            token.clone(),
            client.clone(),
            image.id.clone(),
            file.clone(),
        );
        let sha = sha.clone();
        tokio::spawn(async move {
            upload(&token, &client, follower, &id, &file, &sha, Some(sent_tx)).await
        })
    };
    sent_rx
        .wait_for(|&n| n >= 350 << 20)
        .await
        .expect("upload progressing");
    cluster.kill(leader);
    let result = tokio::time::timeout(BIG, up)
        .await
        .expect("upload ends")
        .unwrap();
    let survivors: Vec<u64> = ALL.into_iter().filter(|&n| n != leader).collect();
    cluster.wait_leader(&survivors, READY).await;
    eprintln!(
        "1 GiB upload via a follower, leader killed: {:?}",
        result.as_ref().map(|i| i.status())
    );
    match result {
        Ok(img) => {
            assert_eq!(img.status(), pb::ImageStatus::Active);
            assert_eq!(img.sha256, sha);
            // The bytes any surviving controller serves are exactly the file.
            let other = survivors.iter().copied().find(|&n| n != follower).unwrap();
            let (_, got, size) = download(&client, other, &image.id).await.expect("download");
            assert_eq!((got, size), (sha.clone(), 1 << 30));
        }
        Err(e) => {
            // A clean failure: the image is not active, and once settled it can be retried.
            let st = status_of(&client, follower, &image.id).await;
            assert_ne!(
                st,
                pb::ImageStatus::Active,
                "failed upload {e:?} left an active image"
            );
        }
    }
    cluster.restart(leader);
    cluster.wait_ready(&ALL, READY).await;

    // 2. The upload goes to the leader itself, which is killed mid-way: the client sees an
    //    error, the image is never active; once the controller is back the image returns to
    //    QUEUED and a new upload (to another controller) succeeds.
    let leader = cluster.wait_leader(&ALL, READY).await;
    let image = create_image(&client, "big-via-leader", pb::ImageDiskFormat::Raw, "admin").await;
    let (sent_tx, mut sent_rx) = tokio::sync::watch::channel(0u64);
    let up = {
        let (token, client, id, file) = (
            token.clone(),
            client.clone(),
            image.id.clone(),
            file.clone(),
        );
        let sha = sha.clone();
        tokio::spawn(async move {
            upload(&token, &client, leader, &id, &file, &sha, Some(sent_tx)).await
        })
    };
    sent_rx
        .wait_for(|&n| n >= 350 << 20)
        .await
        .expect("upload progressing");
    cluster.kill(leader);
    let err = tokio::time::timeout(BIG, up)
        .await
        .expect("upload ends")
        .unwrap()
        .expect_err("the controller receiving the upload died");
    let survivors: Vec<u64> = ALL.into_iter().filter(|&n| n != leader).collect();
    cluster.wait_leader(&survivors, READY).await;
    let st = status_of(&client, survivors[0], &image.id).await;
    assert_eq!(st, pb::ImageStatus::Saving, "after {err:?}");
    cluster.restart(leader);
    wait_for(
        READY,
        "the interrupted upload returned to queued",
        || async {
            (status_of(&client, survivors[0], &image.id).await == pb::ImageStatus::Queued)
                .then_some(())
                .ok_or_else(|| "not yet".to_owned())
        },
    )
    .await;
    let img = upload(&token, &client, survivors[0], &image.id, &file, &sha, None)
        .await
        .expect("a retried upload succeeds");
    assert_eq!(
        (img.status(), img.sha256.as_str()),
        (pb::ImageStatus::Active, sha.as_str())
    );
    let (_, got, _) = download(&client, leader, &image.id)
        .await
        .expect("download from the restarted controller");
    assert_eq!(got, sha);
}
