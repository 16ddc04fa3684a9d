//! Fixtures shared by the api module's in-process tests: a simulated host's registration and
//! the commands that make an image stored and active.
use std::collections::BTreeMap;

use crate::state::*;

/// What a simulated agent registers with: a QEMU host in zone `nova` with `capacity`.
pub(super) fn registration(hostname: &str, address: &str, capacity: Capacity) -> HostRegistration {
    HostRegistration {
        hostname: hostname.into(),
        address: address.into(),
        tunnel_address: String::new(),
        availability_zone: "nova".into(),
        hypervisor_type: "qemu".into(),
        hypervisor_version: "7.2".into(),
        cpu_model: "qemu64".into(),
        agent_version: "sim".into(),
        capacity,
    }
}

/// The commands that create image `id` of `project` and store 1 MiB of it (an upload that
/// finished), so servers can boot from it.
pub(super) fn stored_image(
    id: &str,
    project: &str,
    disk_format: DiskFormat,
    visibility: Visibility,
    virtual_size_bytes: u64,
) -> [Command; 3] {
    [
        Command::CreateImage(ImageSpec {
            id: id.into(),
            name: id.into(),
            owner_project_id: project.into(),
            disk_format,
            container_format: ContainerFormat::Bare,
            visibility,
            min_disk_gib: 0,
            min_ram_mib: 0,
            protected: false,
            properties: BTreeMap::new(),
        }),
        Command::BeginImageUpload {
            image_id: id.into(),
            upload_id: "u".into(),
            controller_id: 1,
            size_hint: 0,
        },
        Command::FinishImageUpload {
            image_id: id.into(),
            upload_id: "u".into(),
            result: UploadResult::Stored {
                size_bytes: 1 << 20,
                virtual_size_bytes,
                sha256: "ab".repeat(32),
                md5: "cd".repeat(16),
            },
        },
    ]
}
