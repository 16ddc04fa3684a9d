//! Views of images and image members. JSON/YAML carry every proto field (enums by their proto
//! names, sizes in bytes); tables shorten enums (`qcow2`, `active`) and add readable sizes.

use std::collections::BTreeMap;

use flotilla_proto::v1;
use serde::Serialize;

use super::{meta_fields, sorted, MetaView};
use crate::output::{format_time_ms, human_bytes, map_cell, short_enum, yes_no, Tabular};

fn status_name(value: i32) -> String {
    v1::ImageStatus::try_from(value)
        .map(|v| v.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string())
}

fn disk_format_name(value: i32) -> String {
    v1::ImageDiskFormat::try_from(value)
        .map(|v| v.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string())
}

fn container_format_name(value: i32) -> String {
    v1::ImageContainerFormat::try_from(value)
        .map(|v| v.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string())
}

fn visibility_name(value: i32) -> String {
    v1::ImageVisibility::try_from(value)
        .map(|v| v.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string())
}

/// `1073741824 (1.0 GiB)`; plain `0` before an upload.
fn size_cell(bytes: u64) -> String {
    if bytes == 0 {
        "0".to_string()
    } else {
        format!("{bytes} ({})", human_bytes(bytes))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageView {
    pub id: String,
    pub name: String,
    pub status: String,
    /// Why the image is KILLED; empty otherwise (tables show it only when set).
    pub status_reason: String,
    pub disk_format: String,
    pub container_format: String,
    pub visibility: String,
    pub owner_project_id: String,
    pub shared_with: Vec<String>,
    pub size_bytes: u64,
    pub virtual_size_bytes: u64,
    pub sha256: String,
    pub md5: String,
    pub min_disk_gib: u64,
    pub min_ram_mib: u64,
    pub protected: bool,
    pub properties: BTreeMap<String, String>,
    pub meta: Option<MetaView>,
}

impl From<v1::Image> for ImageView {
    fn from(i: v1::Image) -> Self {
        let mut shared_with = i.shared_with;
        shared_with.sort();
        ImageView {
            id: i.id,
            name: i.name,
            status: status_name(i.status),
            status_reason: i.status_reason,
            disk_format: disk_format_name(i.disk_format),
            container_format: container_format_name(i.container_format),
            visibility: visibility_name(i.visibility),
            owner_project_id: i.owner_project_id,
            shared_with,
            size_bytes: i.size_bytes,
            virtual_size_bytes: i.virtual_size_bytes,
            sha256: i.sha256,
            md5: i.md5,
            min_disk_gib: i.min_disk_gib,
            min_ram_mib: i.min_ram_mib,
            protected: i.protected,
            properties: sorted(i.properties),
            meta: i.meta.map(MetaView::from),
        }
    }
}

impl ImageView {
    fn short_status(&self) -> String {
        short_enum(&self.status, "IMAGE_STATUS_")
    }
    fn short_disk_format(&self) -> String {
        short_enum(&self.disk_format, "IMAGE_DISK_FORMAT_")
    }
    fn short_container_format(&self) -> String {
        short_enum(&self.container_format, "IMAGE_CONTAINER_FORMAT_")
    }
    fn short_visibility(&self) -> String {
        short_enum(&self.visibility, "IMAGE_VISIBILITY_")
    }
}

impl Tabular for ImageView {
    fn columns() -> &'static [&'static str] {
        &["ID", "NAME", "STATUS"]
    }
    fn row(&self) -> Vec<String> {
        vec![self.id.clone(), self.name.clone(), self.short_status()]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("status", self.short_status()),
        ];
        if !self.status_reason.is_empty() {
            f.push(("status_reason", self.status_reason.clone()));
        }
        f.extend([
            ("disk_format", self.short_disk_format()),
            ("container_format", self.short_container_format()),
            ("visibility", self.short_visibility()),
            ("owner_project_id", self.owner_project_id.clone()),
            ("shared_with", self.shared_with.join(", ")),
            ("size", size_cell(self.size_bytes)),
            ("virtual_size", size_cell(self.virtual_size_bytes)),
            ("sha256", self.sha256.clone()),
            ("md5", self.md5.clone()),
            ("min_disk_gib", self.min_disk_gib.to_string()),
            ("min_ram_mib", self.min_ram_mib.to_string()),
            ("protected", yes_no(self.protected)),
            ("properties", map_cell(&self.properties)),
        ]);
        f.extend(meta_fields(&self.meta));
        f
    }
}

/// `image list --long`: more columns; JSON/YAML are the same as without `--long`.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ImageLongView(pub ImageView);

impl Tabular for ImageLongView {
    fn columns() -> &'static [&'static str] {
        &[
            "ID",
            "NAME",
            "STATUS",
            "DISK_FORMAT",
            "CONTAINER_FORMAT",
            "SIZE",
            "VISIBILITY",
            "PROTECTED",
            "OWNER",
        ]
    }
    fn row(&self) -> Vec<String> {
        let i = &self.0;
        let size = if i.size_bytes == 0 {
            String::new()
        } else {
            human_bytes(i.size_bytes)
        };
        vec![
            i.id.clone(),
            i.name.clone(),
            i.short_status(),
            i.short_disk_format(),
            i.short_container_format(),
            size,
            i.short_visibility(),
            yes_no(i.protected),
            i.owner_project_id.clone(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        self.0.fields()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageMemberView {
    pub image_id: String,
    pub project_id: String,
    pub created_at_ms: i64,
}

impl From<v1::ImageMember> for ImageMemberView {
    fn from(m: v1::ImageMember) -> Self {
        ImageMemberView {
            image_id: m.image_id,
            project_id: m.project_id,
            created_at_ms: m.created_at_ms,
        }
    }
}

impl Tabular for ImageMemberView {
    fn columns() -> &'static [&'static str] {
        &["IMAGE_ID", "PROJECT_ID", "CREATED_AT"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.image_id.clone(),
            self.project_id.clone(),
            format_time_ms(self.created_at_ms),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        self.row()
            .into_iter()
            .zip(["image_id", "project_id", "created_at"])
            .map(|(v, k)| (k, v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::args::Format;
    use crate::output::{list, show};

    fn image() -> v1::Image {
        v1::Image {
            id: "img-1".into(),
            name: "cirros".into(),
            disk_format: v1::ImageDiskFormat::Qcow2 as i32,
            container_format: v1::ImageContainerFormat::Bare as i32,
            visibility: v1::ImageVisibility::Shared as i32,
            owner_project_id: "p-1".into(),
            shared_with: vec!["p-3".into(), "p-2".into()],
            min_disk_gib: 1,
            min_ram_mib: 64,
            size_bytes: 21_692_416,
            virtual_size_bytes: 117_440_512,
            sha256: "ab".repeat(32),
            md5: "cd".repeat(16),
            status: v1::ImageStatus::Active as i32,
            protected: true,
            properties: HashMap::from([
                ("os_distro".into(), "cirros".into()),
                ("hw_disk_bus".into(), "virtio".into()),
            ]),
            meta: Some(v1::ResourceMeta {
                create_revision: 3,
                update_revision: 9,
                created_at_ms: 1_714_564_800_000,
                updated_at_ms: 1_714_564_860_000,
            }),
            status_reason: String::new(),
        }
    }

    #[test]
    fn show_lists_every_field_with_short_enums_and_readable_sizes() {
        let text = show(Format::Table, &ImageView::from(image())).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let field = |name: &str| -> String {
            lines
                .iter()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
                .trim_start_matches(name)
                .trim()
                .to_string()
        };
        assert_eq!(field("status"), "active");
        assert_eq!(field("disk_format"), "qcow2");
        assert_eq!(field("container_format"), "bare");
        assert_eq!(field("visibility"), "shared");
        assert_eq!(field("shared_with"), "p-2, p-3");
        assert_eq!(field("size"), "21692416 (20.7 MiB)");
        assert_eq!(field("virtual_size"), "117440512 (112.0 MiB)");
        assert_eq!(field("protected"), "yes");
        assert_eq!(field("properties"), "hw_disk_bus=virtio, os_distro=cirros");
        assert_eq!(field("created_at"), "2024-05-01T12:00:00.000Z");
        assert_eq!(field("updated_at"), "2024-05-01T12:01:00.000Z");
        assert_eq!(field("sha256"), "ab".repeat(32));
        assert_eq!(field("min_ram_mib"), "64");
        assert!(!text.contains("status_reason"), "only when set:\n{text}");
    }

    #[test]
    fn a_killed_image_shows_why() {
        let mut i = image();
        i.status = v1::ImageStatus::Killed as i32;
        i.status_reason = "declared qcow2 but the content is raw".into();
        let text = show(Format::Table, &ImageView::from(i)).unwrap();
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.splitn(2, ' ').map(str::trim).collect())
            .collect();
        let at = lines.iter().position(|l| l[0] == "status").unwrap();
        assert_eq!(lines[at], ["status", "killed"]);
        assert_eq!(
            lines[at + 1],
            ["status_reason", "declared qcow2 but the content is raw"]
        );
    }

    #[test]
    fn json_and_yaml_use_proto_names() {
        let view = ImageView::from(image());
        let json: serde_json::Value =
            serde_json::from_str(&show(Format::Json, &view).unwrap()).expect("valid JSON");
        assert_eq!(json["status"], "IMAGE_STATUS_ACTIVE");
        assert_eq!(json["disk_format"], "IMAGE_DISK_FORMAT_QCOW2");
        assert_eq!(json["container_format"], "IMAGE_CONTAINER_FORMAT_BARE");
        assert_eq!(json["visibility"], "IMAGE_VISIBILITY_SHARED");
        assert_eq!(json["size_bytes"], 21_692_416);
        assert_eq!(json["properties"]["os_distro"], "cirros");
        assert_eq!(json["shared_with"][0], "p-2");
        assert_eq!(json["status_reason"], "");
        assert_eq!(json["meta"]["update_revision"], 9);
        let yaml = show(Format::Yaml, &view).unwrap();
        assert!(yaml.starts_with("id: img-1\nname: cirros\nstatus: IMAGE_STATUS_ACTIVE\n"));
        let long = list(Format::Json, &[ImageLongView(view)]).unwrap();
        let json: serde_json::Value = serde_json::from_str(&long).unwrap();
        assert_eq!(json[0]["id"], "img-1", "--long changes only the table");
    }

    #[test]
    fn lists_have_short_and_long_tables() {
        let mut queued = image();
        queued.id = "img-2".into();
        queued.name = "empty".into();
        queued.status = v1::ImageStatus::Queued as i32;
        queued.size_bytes = 0;
        queued.visibility = v1::ImageVisibility::Private as i32;
        queued.protected = false;
        let views: Vec<ImageView> = vec![image().into(), queued.into()];
        assert_eq!(
            list(Format::Table, &views).unwrap(),
            "ID     NAME    STATUS\nimg-1  cirros  active\nimg-2  empty   queued\n"
        );
        let long: Vec<ImageLongView> = views.into_iter().map(ImageLongView).collect();
        assert_eq!(
            list(Format::Table, &long).unwrap(),
            "ID     NAME    STATUS  DISK_FORMAT  CONTAINER_FORMAT  SIZE      VISIBILITY  \
             PROTECTED  OWNER\n\
             img-1  cirros  active  qcow2        bare              20.7 MiB  shared      \
             yes        p-1\n\
             img-2  empty   queued  qcow2        bare                        private     \
             no         p-1\n"
        );
    }

    #[test]
    fn members_show_their_project_and_time() {
        let m = ImageMemberView::from(v1::ImageMember {
            image_id: "img-1".into(),
            project_id: "p-2".into(),
            created_at_ms: 1_714_564_800_000,
        });
        assert_eq!(
            list(Format::Table, std::slice::from_ref(&m)).unwrap(),
            "IMAGE_ID  PROJECT_ID  CREATED_AT\nimg-1     p-2         2024-05-01T12:00:00.000Z\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&show(Format::Json, &m).unwrap()).unwrap();
        assert_eq!(json["created_at_ms"], 1_714_564_800_000i64);
    }

    #[test]
    fn unknown_enum_values_show_their_number() {
        let mut i = image();
        i.status = 42;
        assert_eq!(ImageView::from(i).status, "42");
    }
}
