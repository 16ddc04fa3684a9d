//! The image service's background work on every controller, once per maintenance interval:
//!
//! * uploads this controller was receiving when it stopped (SAVING, not live in this process)
//!   are recorded as interrupted, so the image returns to QUEUED; the leader does the same for
//!   uploads whose controller is no longer a member;
//! * blobs of active images missing here are fetched from a peer (a controller that was down
//!   during an upload, or that joined later, catches up);
//! * blobs no image refers to are collected once older than the grace period.
use std::collections::HashSet;

use super::ImageApi;
use crate::state::{Command, ImageStatus, UploadResult, AGENT_UPLOAD};

/// Runs forever; spawn it.
pub async fn run(images: ImageApi) {
    let mut tick = tokio::time::interval(images.runtime.maintenance_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        maintain_once(&images).await;
    }
}

/// One round; public for tests.
pub async fn maintain_once(images: &ImageApi) {
    let api = &images.api;
    let rt = &images.runtime;
    let self_id = api.node.id();
    let is_leader = api.node.status().leader_id == self_id;
    let (abandoned, wanted, referenced, members) = {
        let state = api.node.state();
        let members: Vec<_> = state.members().cloned().collect();
        let member_ids: HashSet<u64> = members.iter().map(|m| m.id).collect();
        let mut abandoned = Vec::new();
        let mut wanted = Vec::new();
        let mut referenced = HashSet::new();
        for image in state.images() {
            if !image.sha256.is_empty() {
                referenced.insert(image.sha256.clone());
            }
            if image.status == ImageStatus::Active {
                wanted.push(image.sha256.clone());
            }
            // Server snapshots are uploaded by an agent and ended by their operation.
            let upload = image
                .upload
                .as_ref()
                .filter(|u| u.controller_id != AGENT_UPLOAD);
            let Some(upload) = upload else {
                continue;
            };
            let mine_and_dead = upload.controller_id == self_id && !rt.is_live(&upload.id);
            let owner_gone = is_leader && !member_ids.contains(&upload.controller_id);
            if mine_and_dead || owner_gone {
                abandoned.push((image.id.clone(), upload.id.clone(), mine_and_dead));
            }
        }
        (abandoned, wanted, referenced, members)
    };

    for (image_id, upload_id, restarted) in abandoned {
        let reason = if restarted {
            "the upload was interrupted: the controller receiving it restarted; upload again"
        } else {
            "the upload was interrupted: the controller receiving it left the cluster; upload again"
        };
        let cmd = Command::FinishImageUpload {
            image_id: image_id.clone(),
            upload_id: upload_id.clone(),
            result: UploadResult::Interrupted {
                reason: reason.into(),
            },
        };
        let actor = format!("controller-{self_id}");
        match api.propose(format!("{upload_id}:finish"), actor, cmd).await {
            Ok(_) => tracing::info!(image = %image_id, "returned an abandoned upload to queued"),
            Err(e) => tracing::debug!(image = %image_id, "abandoning an upload: {}", e.message()),
        }
    }

    for sha256 in wanted {
        if let Err(e) = rt.ensure_local(self_id, &members, &sha256).await {
            tracing::warn!(%sha256, "an active image's blob is missing here: {e}");
        }
    }

    let (blobs, grace) = (rt.blobs.clone(), rt.gc_grace);
    let gc = tokio::task::spawn_blocking(move || blobs.collect_garbage(&referenced, grace)).await;
    match gc {
        Ok(Ok(report)) if !report.removed_blobs.is_empty() || report.removed_temp_files > 0 => {
            tracing::info!(
                blobs = report.removed_blobs.len(),
                temp_files = report.removed_temp_files,
                freed_bytes = report.freed_bytes,
                "collected unreferenced image data"
            );
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("collecting image blobs failed: {e}"),
        Err(e) => tracing::warn!("collecting image blobs panicked: {e}"),
    }
}
