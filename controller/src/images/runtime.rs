//! One controller's image machinery: its blob store, the qemu-img inspector, the peers it
//! copies blobs to and from, and the uploads it is receiving right now.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;

use super::blobs::BlobStore;
use super::inspect::Inspector;
use super::peers::BlobPeers;
use crate::state::Member;

/// Throughput assumed when bounding how long copying to peers may take.
const MIN_COPY_BYTES_PER_SEC: u64 = 5 << 20;
const MIN_COPY_TIME: Duration = Duration::from_secs(30);

pub struct ImageRuntime {
    pub blobs: BlobStore,
    pub inspector: Inspector,
    pub peers: Arc<dyn BlobPeers>,
    /// Copies (this controller included) an upload needs before it is active; 0 = majority.
    pub min_copies: usize,
    pub max_image_bytes: u64,
    pub gc_grace: Duration,
    pub maintenance_interval: Duration,
    live_uploads: Arc<Mutex<HashSet<String>>>,
}

/// Marks an upload as being received by this process until dropped.
pub struct LiveUpload {
    id: String,
    set: Arc<Mutex<HashSet<String>>>,
}

impl Drop for LiveUpload {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
    }
}

impl ImageRuntime {
    pub fn new(
        blobs: BlobStore,
        inspector: Inspector,
        peers: Arc<dyn BlobPeers>,
        min_copies: usize,
        max_image_bytes: u64,
    ) -> ImageRuntime {
        ImageRuntime {
            blobs,
            inspector,
            peers,
            min_copies,
            max_image_bytes,
            gc_grace: Duration::from_secs(3600),
            maintenance_interval: Duration::from_secs(60),
            live_uploads: Arc::default(),
        }
    }

    /// Copies needed among `members` controllers.
    pub fn copies_needed(&self, members: usize) -> usize {
        let members = members.max(1);
        match self.min_copies {
            0 => members / 2 + 1,
            n => n.min(members),
        }
    }

    pub fn track_upload(&self, upload_id: &str) -> LiveUpload {
        self.live_uploads.lock().insert(upload_id.to_owned());
        LiveUpload {
            id: upload_id.to_owned(),
            set: self.live_uploads.clone(),
        }
    }

    pub fn is_live(&self, upload_id: &str) -> bool {
        self.live_uploads.lock().contains(upload_id)
    }

    /// Copies the local blob to the other members until `needed` controllers (this one
    /// included) hold it. Copies still running when enough have finished go on in the
    /// background. Errors name every peer that failed.
    pub async fn replicate(
        &self,
        self_id: u64,
        members: Vec<Member>,
        sha256: &str,
        size: u64,
        needed: usize,
    ) -> Result<usize, String> {
        let mut held = 1;
        if held >= needed {
            self.replicate_in_background(self_id, members, sha256);
            return Ok(held);
        }
        let mut copies: FuturesUnordered<_> = members
            .into_iter()
            .filter(|m| m.id != self_id)
            .map(|m| {
                let (peers, store, sha) =
                    (self.peers.clone(), self.blobs.clone(), sha256.to_owned());
                let task = tokio::spawn(async move {
                    let r = peers.push(&m, &store, &sha).await;
                    (m, r)
                });
                async move { task.await.map_err(|e| e.to_string()) }
            })
            .collect();
        let deadline = MIN_COPY_TIME + Duration::from_secs(size / MIN_COPY_BYTES_PER_SEC);
        let mut failures = Vec::new();
        let outcome = tokio::time::timeout(deadline, async {
            while let Some(done) = copies.next().await {
                match done {
                    Ok((_, Ok(()))) => {
                        held += 1;
                        if held >= needed {
                            return true;
                        }
                    }
                    Ok((m, Err(e))) => {
                        tracing::warn!(peer = %m.name, %sha256, "copying an image blob failed: {e}");
                        failures.push(e);
                    }
                    Err(e) => failures.push(e),
                }
            }
            false
        })
        .await;
        match outcome {
            Ok(true) => Ok(held),
            Ok(false) => Err(format!(
                "only {held} of the {needed} controllers needed hold the image ({})",
                failures.join("; ")
            )),
            Err(_) => Err(format!(
                "only {held} of the {needed} controllers needed received the image within {} s",
                deadline.as_secs()
            )),
        }
    }

    fn replicate_in_background(&self, self_id: u64, members: Vec<Member>, sha256: &str) {
        for m in members.into_iter().filter(|m| m.id != self_id) {
            let (peers, store, sha) = (self.peers.clone(), self.blobs.clone(), sha256.to_owned());
            tokio::spawn(async move {
                if let Err(e) = peers.push(&m, &store, &sha).await {
                    tracing::warn!(peer = %m.name, %sha, "copying an image blob failed: {e}");
                }
            });
        }
    }

    /// Makes sure this controller holds the blob, fetching it from a peer when it does not.
    pub async fn ensure_local(
        &self,
        self_id: u64,
        members: &[Member],
        sha256: &str,
    ) -> Result<(), String> {
        if self.blobs.contains(sha256).map_err(|e| e.to_string())? {
            return Ok(());
        }
        let mut errors = Vec::new();
        for m in members.iter().filter(|m| m.id != self_id) {
            match self.peers.fetch(m, &self.blobs, sha256).await {
                Ok(_) => {
                    tracing::info!(peer = %m.name, %sha256, "fetched a missing image blob");
                    return Ok(());
                }
                Err(e) => errors.push(e),
            }
        }
        Err(format!(
            "no controller could provide blob {sha256}: {}",
            errors.join("; ")
        ))
    }
}
