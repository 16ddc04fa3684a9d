//! How state's hosts and servers look to the (pure) scheduler, so placement and the re-check in
//! apply use the same filters and arithmetic.
use super::hosts::Host;
use super::images::Image;
use super::servers::FlavorSnapshot;
use crate::scheduler::{FlavorSize, HostView, ImageRequirements, PlacementRequest};

pub fn host_view(h: &Host) -> HostView {
    HostView {
        id: h.id.clone(),
        name: h.info.hostname.clone(),
        up: h.is_up(),
        enabled: h.enabled,
        disabled_reason: h.disabled_reason.clone(),
        availability_zone: h.info.availability_zone.clone(),
        capacity: h.info.capacity,
        used: h.used,
        hypervisor_type: h.info.hypervisor_type.clone(),
    }
}

/// One server of `flavor` booting `image`.
pub fn request_for(flavor: &FlavorSnapshot, image: &Image) -> PlacementRequest {
    let mut request = PlacementRequest::new(FlavorSize {
        vcpus: flavor.vcpus,
        ram_mib: flavor.ram_mib,
        root_gib: flavor.disk_gib,
        ephemeral_gib: flavor.ephemeral_gib,
        swap_mib: flavor.swap_mib,
    });
    request.image = ImageRequirements {
        min_disk_gib: image.min_disk_gib,
        min_ram_mib: image.min_ram_mib,
        virtual_size_bytes: image.virtual_size_bytes,
    };
    request
}
