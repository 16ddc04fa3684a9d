//! Domain ↔ proto conversion.
use flotilla_proto::v1 as pb;

use crate::state::{
    ContainerFormat, DiskFormat, Event, EventAction, Flavor, Image, ImageStatus, Member, Meta,
    Project, RoleAssignment, User, Visibility,
};

pub fn meta(m: &Meta) -> pb::ResourceMeta {
    pb::ResourceMeta {
        create_revision: m.create_revision,
        update_revision: m.update_revision,
        created_at_ms: m.created_at_ms,
        updated_at_ms: m.updated_at_ms,
    }
}

pub fn project(p: &Project) -> pb::Project {
    pb::Project {
        id: p.id.clone(),
        name: p.name.clone(),
        description: p.description.clone(),
        enabled: p.enabled,
        properties: p.properties.clone().into_iter().collect(),
        meta: Some(meta(&p.meta)),
    }
}

pub fn flavor(f: &Flavor) -> pb::Flavor {
    pb::Flavor {
        id: f.id.clone(),
        name: f.name.clone(),
        vcpus: f.vcpus,
        ram_mib: f.ram_mib,
        disk_gib: f.disk_gib,
        ephemeral_gib: f.ephemeral_gib,
        swap_mib: f.swap_mib,
        is_public: f.is_public,
        description: f.description.clone(),
        extra_specs: f.extra_specs.clone().into_iter().collect(),
        access_project_ids: f.access_project_ids.iter().cloned().collect(),
        meta: Some(meta(&f.meta)),
    }
}

pub fn member(m: &Member, voter: bool) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.name.clone(),
        client_address: m.client_address.clone(),
        peer_address: m.peer_address.clone(),
        voter,
    }
}

pub fn event(e: &Event) -> pb::Event {
    let action = match e.action {
        EventAction::Created => pb::EventAction::Created,
        EventAction::Updated => pb::EventAction::Updated,
        EventAction::Deleted => pb::EventAction::Deleted,
    };
    pb::Event {
        revision: e.revision,
        time_ms: e.time_ms,
        resource_type: e.resource_type.clone(),
        resource_id: e.resource_id.clone(),
        resource_name: e.resource_name.clone(),
        action: action as i32,
        project_id: e.project_id.clone(),
        actor: e.actor.clone(),
        request_id: e.request_id.clone(),
    }
}

/// Never includes the password hash.
pub fn user(u: &User) -> pb::User {
    pb::User {
        id: u.id.clone(),
        name: u.name.clone(),
        email: u.email.clone(),
        enabled: u.enabled,
        default_project_id: u.default_project_id.clone(),
        meta: Some(meta(&u.meta)),
    }
}

pub fn role_assignment(a: &RoleAssignment) -> pb::RoleAssignment {
    pb::RoleAssignment {
        user_id: a.user_id.clone(),
        project_id: a.project_id.clone(),
        role: a.role.as_str().to_owned(),
    }
}

pub fn disk_format(f: DiskFormat) -> pb::ImageDiskFormat {
    match f {
        DiskFormat::Qcow2 => pb::ImageDiskFormat::Qcow2,
        DiskFormat::Raw => pb::ImageDiskFormat::Raw,
        DiskFormat::Vmdk => pb::ImageDiskFormat::Vmdk,
        DiskFormat::Vdi => pb::ImageDiskFormat::Vdi,
        DiskFormat::Vhd => pb::ImageDiskFormat::Vhd,
        DiskFormat::Vhdx => pb::ImageDiskFormat::Vhdx,
        DiskFormat::Iso => pb::ImageDiskFormat::Iso,
    }
}

pub fn image(i: &Image) -> pb::Image {
    let disk_format = disk_format(i.disk_format);
    let container_format = match i.container_format {
        ContainerFormat::Bare => pb::ImageContainerFormat::Bare,
        ContainerFormat::Ovf => pb::ImageContainerFormat::Ovf,
        ContainerFormat::Ova => pb::ImageContainerFormat::Ova,
    };
    let visibility = match i.visibility {
        Visibility::Public => pb::ImageVisibility::Public,
        Visibility::Private => pb::ImageVisibility::Private,
        Visibility::Shared => pb::ImageVisibility::Shared,
    };
    let status = match i.status {
        ImageStatus::Queued => pb::ImageStatus::Queued,
        ImageStatus::Saving => pb::ImageStatus::Saving,
        ImageStatus::Active => pb::ImageStatus::Active,
        ImageStatus::Killed => pb::ImageStatus::Killed,
    };
    pb::Image {
        id: i.id.clone(),
        name: i.name.clone(),
        disk_format: disk_format as i32,
        container_format: container_format as i32,
        visibility: visibility as i32,
        owner_project_id: i.owner_project_id.clone(),
        shared_with: i.members.keys().cloned().collect(),
        min_disk_gib: i.min_disk_gib,
        min_ram_mib: i.min_ram_mib,
        size_bytes: i.size_bytes,
        virtual_size_bytes: i.virtual_size_bytes,
        sha256: i.sha256.clone(),
        md5: i.md5.clone(),
        status: status as i32,
        protected: i.protected,
        properties: i.properties.clone().into_iter().collect(),
        meta: Some(meta(&i.meta)),
        status_reason: i.status_reason.clone(),
    }
}
