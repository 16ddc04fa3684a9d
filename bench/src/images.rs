//! `images`: image upload and download throughput through the real ImageService of a
//! 3-controller cluster, next to a plain file copy and `sha256sum` of the same file.
//!
//! Each round generates two raw images of incompressible bytes (different seeds, so the blob
//! store cannot deduplicate them), fsynced before anything is timed, in a temporary directory
//! under `--data-root` (the disk the controllers' data directories are on). Then, one at a time
//! and each after the machine has settled (`--quiet-wait`):
//!
//! 1. `sha256sum` of the first file (context: the upload hashes sha256 and md5);
//! 2. `std::fs::copy` of it to a new file in the same directory, then `fsync` of the copy;
//! 3. UploadImage of it to the leader: header, then 1 MiB chunks. The answer comes after the
//!    controller has stored and fsynced the bytes, checked the sha256 the header names,
//!    inspected the file with qemu-img and copied it to one more controller (a majority);
//! 4. meanwhile, when each controller's copy of the blob appears (published by a rename once
//!    complete), found by polling the members' data directories every 20 ms: the receiving
//!    controller's own copy, the first peer's, and the last one's (which may come after the
//!    answer); the next measurement starts only when all three hold it;
//! 5. the same upload of the second file to a follower;
//! 6. DownloadImage of the first image from the leader and of the second from the follower
//!    (both controllers hold the blobs by then; the bytes are counted, not hashed).
//!
//! Everything the benchmark creates (files, cluster) is removed when it ends.
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_proto::v1 as fpb;
use fpb::image_service_client::ImageServiceClient;
use serde_json::{json, Value};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::cluster::{channel, Cluster};
use crate::{cpu, machine_note, FlotillaArgs};

const MIB: u64 = 1 << 20;
/// Size of the upload chunks (what the proto recommends, and what downloads arrive in).
const CHUNK: usize = 1 << 20;
/// Chunks read ahead of the network during an upload.
const READ_AHEAD: usize = 8;

#[derive(Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    cluster: FlotillaArgs,
    /// Size of each generated image, MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Rounds on the same cluster, each with two fresh images.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Longest wait for every controller to hold an uploaded blob, in seconds.
    #[arg(long, default_value_t = 300)]
    copies_timeout: u64,
}

/// One timed operation.
struct Row {
    round: usize,
    what: &'static str,
    /// The controller that answered (`-` for local file operations).
    member: String,
    bytes: u64,
    secs: f64,
    upload: Option<UploadTimes>,
    usage: cpu::Usage,
    /// Cores in use just before the operation (NaN without --quiet-wait).
    busy_before: f64,
}

/// Phases of an upload, in seconds from its start.
struct UploadTimes {
    /// gRPC had taken the last chunk from the benchmark.
    sent: f64,
    /// The receiving controller's blob was published (received, hashed, fsynced, renamed).
    stored: f64,
    /// The first other controller's copy was published.
    first_peer: f64,
    /// Every controller held the blob (the last copy may finish after the answer).
    all: f64,
}

impl Row {
    fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.secs.max(1e-9)
    }
}

/// Bytes of a splitmix64 sequence: incompressible, and cheap to generate.
fn generate(path: &Path, bytes: u64, seed: u64) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        for word in buf[..n].chunks_mut(8) {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            word.copy_from_slice(&z.to_le_bytes()[..word.len()]);
        }
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

/// Runs `sha256sum FILE`; returns the hex digest.
async fn sha256sum(path: &Path) -> Result<String> {
    let out = tokio::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .await
        .context("running sha256sum")?;
    if !out.status.success() {
        bail!("sha256sum {} failed: {}", path.display(), out.status);
    }
    let text = String::from_utf8(out.stdout)?;
    match text.split_whitespace().next() {
        Some(hex) if hex.len() == 64 => Ok(hex.to_owned()),
        _ => bail!("unexpected sha256sum output {text:?}"),
    }
}

/// `std::fs::copy` (on Linux: `copy_file_range`, an in-kernel copy; ext4 does not share
/// extents) and an fsync of the copy.
fn copy_fsync(from: &Path, to: &Path) -> Result<u64> {
    let n = std::fs::copy(from, to)?;
    File::options().write(true).open(to)?.sync_all()?;
    Ok(n)
}

fn with_auth<T>(msg: T, auth: &MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", auth.clone());
    req
}

/// Makes the `admin` project's image quotas unlimited.
async fn unlimited_image_quota(chan: Channel, auth: &MetadataValue<Ascii>) -> Result<()> {
    let mut q = fpb::quota_service_client::QuotaServiceClient::new(chan);
    q.set_quota(with_auth(
        fpb::SetQuotaRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            project: "admin".into(),
            images: Some(-1),
            image_storage_gib: Some(-1),
            ..Default::default()
        },
        auth,
    ))
    .await
    .context("SetQuota")?;
    Ok(())
}

async fn create_image(chan: Channel, auth: &MetadataValue<Ascii>, name: &str) -> Result<String> {
    let image = ImageServiceClient::new(chan)
        .create_image(with_auth(
            fpb::CreateImageRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                name: name.into(),
                disk_format: fpb::ImageDiskFormat::Raw as i32,
                container_format: fpb::ImageContainerFormat::Bare as i32,
                visibility: fpb::ImageVisibility::Private as i32,
                owner: "admin".into(),
                ..Default::default()
            },
            auth,
        ))
        .await
        .context("CreateImage")?
        .into_inner();
    Ok(image.id)
}

/// Streams `path` into the QUEUED image `id`; returns the (ACTIVE) image and when gRPC took
/// the last chunk.
async fn upload(
    chan: Channel,
    auth: &MetadataValue<Ascii>,
    id: &str,
    path: &Path,
    sha256: &str,
) -> Result<(fpb::Image, Instant)> {
    use fpb::upload_image_request::Data;
    let size = std::fs::metadata(path)?.len();
    let (tx, rx) = tokio::sync::mpsc::channel::<fpb::UploadImageRequest>(READ_AHEAD);
    let header = fpb::UploadImageHeader {
        request_id: uuid::Uuid::new_v4().to_string(),
        image: id.into(),
        expected_sha256: sha256.into(),
        expected_md5: String::new(),
        size_bytes: size,
    };
    tx.send(fpb::UploadImageRequest {
        data: Some(Data::Header(header)),
    })
    .await?;
    let path = path.to_owned();
    let reader = tokio::task::spawn_blocking(move || -> Result<u64> {
        let mut f = File::open(&path)?;
        let mut sent = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match f.read(&mut buf[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            if filled == 0 {
                return Ok(sent);
            }
            buf.truncate(filled);
            let msg = fpb::UploadImageRequest {
                data: Some(Data::Chunk(buf)),
            };
            if tx.blocking_send(msg).is_err() {
                return Ok(sent); // the call ended early; its answer says why
            }
            sent += filled as u64;
        }
    });
    let last_taken = Arc::new(OnceLock::new());
    let taken = last_taken.clone();
    let stream = futures::stream::unfold(rx, move |mut rx| {
        let taken = taken.clone();
        async move {
            let next = rx.recv().await;
            if next.is_none() {
                taken.get_or_init(Instant::now);
            }
            next.map(|m| (m, rx))
        }
    });
    let answer = ImageServiceClient::new(chan)
        .upload_image(with_auth(stream, auth))
        .await;
    let sent = reader.await??;
    let image = answer.context("UploadImage")?.into_inner();
    if sent != size || image.status != fpb::ImageStatus::Active as i32 {
        bail!(
            "upload of {size} bytes sent {sent}; image is {:?} ({})",
            fpb::ImageStatus::try_from(image.status),
            image.status_reason
        );
    }
    let last_taken = last_taken.get().copied().unwrap_or_else(Instant::now);
    Ok((image, last_taken))
}

/// Downloads image `id`; returns the number of content bytes received.
async fn download(chan: Channel, auth: &MetadataValue<Ascii>, id: &str) -> Result<u64> {
    use fpb::download_image_response::Data;
    let mut stream = ImageServiceClient::new(chan)
        .download_image(with_auth(
            fpb::DownloadImageRequest {
                image: id.into(),
                offset: 0,
            },
            auth,
        ))
        .await
        .context("DownloadImage")?
        .into_inner();
    let (mut header, mut bytes) = (false, 0u64);
    while let Some(msg) = stream.message().await.context("DownloadImage stream")? {
        match msg.data {
            Some(Data::Image(_)) => header = true,
            Some(Data::Chunk(c)) => bytes += c.len() as u64,
            None => {}
        }
    }
    if !header {
        bail!("the download carried no image metadata");
    }
    Ok(bytes)
}

/// Where member `i` keeps blob `sha256` (the controller's layout: `images/sha256/xx/<hex>` under
/// its data directory, published by an atomic rename once complete and fsynced).
fn blob_path(c: &Cluster, i: usize, sha256: &str) -> Option<PathBuf> {
    let dir = c.dir()?.join(&c.members[i].name).join("images/sha256");
    Some(dir.join(&sha256[..2]).join(sha256))
}

/// Watches, every 20 ms until all are there or `within` has passed, for each member's copy of
/// the blob; the task returns when each was first seen.
fn watch_copies(
    c: &Cluster,
    sha256: &str,
    within: Duration,
) -> tokio::task::JoinHandle<Vec<Option<Instant>>> {
    let paths: Vec<Option<PathBuf>> = (0..c.members.len())
        .map(|i| blob_path(c, i, sha256))
        .collect();
    tokio::spawn(async move {
        let deadline = Instant::now() + within;
        let mut seen = vec![None; paths.len()];
        while Instant::now() < deadline && seen.iter().any(Option::is_none) {
            for (p, s) in paths.iter().zip(seen.iter_mut()) {
                if s.is_none() && p.as_ref().is_some_and(|p| p.is_file()) {
                    *s = Some(Instant::now());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    })
}

/// The result of one timed operation with the CPU the cluster, the benchmark and the rest of
/// the machine used meanwhile.
struct Timed<T> {
    value: T,
    started: Instant,
    secs: f64,
    usage: cpu::Usage,
    busy_before: f64,
}

/// Runs `op` once the machine has settled (see --quiet-wait) and times it.
async fn timed<T>(
    o: &FlotillaArgs,
    c: &Cluster,
    op: impl std::future::Future<Output = Result<T>>,
) -> Result<Timed<T>> {
    let busy_before = o.settle(c).await;
    let pids = c.pids();
    let (s0, t0) = (cpu::sample(&pids), Instant::now());
    let value = op.await?;
    let secs = t0.elapsed().as_secs_f64();
    let usage = cpu::usage(&s0, &cpu::sample(&pids));
    Ok(Timed {
        value,
        started: t0,
        secs,
        usage,
        busy_before,
    })
}

impl Row {
    fn new<T>(round: usize, what: &'static str, member: String, bytes: u64, t: &Timed<T>) -> Row {
        Row {
            round,
            what,
            member,
            bytes,
            secs: t.secs,
            upload: None,
            usage: t.usage,
            busy_before: t.busy_before,
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

pub async fn run(a: ImagesArgs) -> Result<()> {
    let o = a.cluster.clone();
    if a.size_mib == 0 || a.rounds == 0 {
        bail!("--size-mib and --rounds must be positive");
    }
    let machine = machine_note(o.json);
    let files = tempfile::Builder::new()
        .prefix("flotilla-bench-images-")
        .tempdir_in(&o.data_root)?;
    let (mut c, leader) = o.start().await?;
    let auth = c.flotilla_auth()?;
    unlimited_image_quota(channel(&c.members[leader].client_addr)?, &auth).await?;
    let size = a.size_mib * MIB;
    let mut rows: Vec<Row> = Vec::new();
    for round in 1..=a.rounds {
        c.check_alive()?;
        let leader = c.wait_for_leader(Duration::from_secs(10)).await?;
        let follower = (leader + 1) % c.members.len();
        let targets = [
            (leader, "upload to the leader", "download from the leader"),
            (follower, "upload to a follower", "download from a follower"),
        ];
        let mut uploaded = Vec::new();
        for (k, (to, what, _)) in targets.into_iter().enumerate() {
            let path = files.path().join(format!("r{round}-{k}.raw"));
            let (p, seed) = (path.clone(), (round * 2 + k) as u64);
            blocking(move || generate(&p, size, seed)).await?;
            let sha = timed(&o, &c, sha256sum(&path)).await?;
            if k == 0 {
                rows.push(Row::new(
                    round,
                    "sha256sum of the file",
                    "-".into(),
                    size,
                    &sha,
                ));
                let copy = files.path().join(format!("r{round}-{k}.copy"));
                let (from, dest) = (path.clone(), copy.clone());
                let t = timed(&o, &c, blocking(move || copy_fsync(&from, &dest))).await?;
                rows.push(Row::new(
                    round,
                    "file copy (std::fs::copy + fsync)",
                    "-".into(),
                    t.value,
                    &t,
                ));
                std::fs::remove_file(&copy)?;
            }
            let sha = sha.value;
            let leader_chan = channel(&c.members[leader].client_addr)?;
            let id = create_image(leader_chan, &auth, &format!("bench-r{round}-{k}")).await?;
            let chan = channel(&c.members[to].client_addr)?;
            let watch = watch_copies(&c, &sha, Duration::from_secs(a.copies_timeout));
            let t = timed(&o, &c, upload(chan, &auth, &id, &path, &sha)).await?;
            let (image, last_taken) = &t.value;
            if image.sha256 != sha || image.size_bytes != size {
                bail!(
                    "image {id} records {} / {} bytes, expected {sha} / {size}",
                    image.sha256,
                    image.size_bytes
                );
            }
            let seen = watch.await?;
            let since = |i: Instant| i.saturating_duration_since(t.started).as_secs_f64();
            let Some(seen) = seen.into_iter().collect::<Option<Vec<Instant>>>() else {
                bail!(
                    "not every controller held blob {sha} within {} s",
                    a.copies_timeout
                );
            };
            let first_peer = (0..seen.len()).filter(|i| *i != to).map(|i| seen[i]).min();
            let times = UploadTimes {
                sent: since(*last_taken),
                stored: since(seen[to]),
                first_peer: first_peer.map(since).unwrap_or(f64::NAN),
                all: seen.iter().copied().max().map(since).unwrap_or(f64::NAN),
            };
            let mut row = Row::new(round, what, c.members[to].name.clone(), size, &t);
            if !o.json {
                eprintln!(
                    "round {round}: {what} ({}): {:.2} s, {:.0} MiB/s; last chunk sent after \
                     {:.2} s, stored after {:.2} s, first peer copy after {:.2} s, all copies \
                     after {:.2} s",
                    row.member,
                    row.secs,
                    row.mib_per_s(),
                    times.sent,
                    times.stored,
                    times.first_peer,
                    times.all,
                );
            }
            row.upload = Some(times);
            rows.push(row);
            std::fs::remove_file(&path)?;
            uploaded.push((to, id));
        }
        for ((from, _, what), (_, id)) in targets.into_iter().zip(uploaded) {
            let chan = channel(&c.members[from].client_addr)?;
            let t = timed(&o, &c, download(chan, &auth, &id)).await?;
            if t.value != size {
                bail!(
                    "downloaded {} bytes of image {id}, expected {size}",
                    t.value
                );
            }
            let row = Row::new(round, what, c.members[from].name.clone(), t.value, &t);
            if !o.json {
                eprintln!(
                    "round {round}: {what} ({}): {:.2} s, {:.0} MiB/s",
                    row.member,
                    row.secs,
                    row.mib_per_s()
                );
            }
            rows.push(row);
        }
    }
    drop(c);
    drop(files);
    report(&a, machine, &rows)
}

fn report(a: &ImagesArgs, machine: Value, rows: &[Row]) -> Result<()> {
    if a.cluster.json {
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "round": r.round, "operation": r.what, "controller": r.member,
                    "bytes": r.bytes, "seconds": r.secs, "mib_per_s": r.mib_per_s(),
                    "last_chunk_sent_after_s": r.upload.as_ref().map(|u| u.sent),
                    "stored_after_s": r.upload.as_ref().map(|u| u.stored),
                    "first_peer_copy_after_s": r.upload.as_ref().map(|u| u.first_peer),
                    "all_copies_after_s": r.upload.as_ref().map(|u| u.all),
                    "server_cpu_cores": r.usage.servers, "bench_cpu_cores": r.usage.bench,
                    "other_cpu_cores": r.usage.other,
                    "busy_cores_before": if r.busy_before.is_nan() { Value::Null } else { json!(r.busy_before) },
                })
            })
            .collect();
        let out = json!({
            "command": "images", "machine": machine, "size_mib": a.size_mib,
            "rounds": a.rounds, "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "\n{} MiB raw image of incompressible bytes, {} round(s)\n",
        a.size_mib, a.rounds
    );
    println!("| round | operation | controller | seconds | MiB/s | last chunk sent after s | stored after s | first peer copy after s | all 3 copies after s | server CPU (cores) | bench CPU (cores) | other CPU (cores) | busy before (cores) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let opt = |v: Option<f64>| v.map(|s| format!("{s:.2}")).unwrap_or("-".into());
    for r in rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} |",
            r.round,
            r.what,
            r.member,
            r.secs,
            r.mib_per_s(),
            opt(r.upload.as_ref().map(|u| u.sent)),
            opt(r.upload.as_ref().map(|u| u.stored)),
            opt(r.upload.as_ref().map(|u| u.first_peer)),
            opt(r.upload.as_ref().map(|u| u.all)),
            r.usage.servers,
            r.usage.bench,
            r.usage.other,
            if r.busy_before.is_nan() {
                "-".into()
            } else {
                format!("{:.2}", r.busy_before)
            },
        );
    }
    Ok(())
}
