//! Serializable views of the proto messages (the generated types carry no serde), with their
//! table layouts. Field names follow the proto so JSON/YAML output mirrors the API.
//! Images live in [`image`], servers in [`server`] (their groups in [`server_group`], their
//! console and diagnostics in [`diagnostics`]), hosts in [`host`], operations in [`operation`].

pub mod diagnostics;
pub mod host;
pub mod image;
pub mod network;
pub mod operation;
pub mod server;
pub mod server_group;

use std::collections::{BTreeMap, HashMap};

use flotilla_proto::v1;
use serde::Serialize;

use crate::output::{format_time_ms, map_cell, short_enum, yes_no, Tabular};

pub(crate) fn sorted(map: HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

fn role_name(value: i32) -> String {
    v1::Role::try_from(value)
        .map(|r| r.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string())
}

fn action_name(value: i32) -> String {
    v1::EventAction::try_from(value)
        .map(|a| a.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string())
}

#[derive(Debug, Clone, Serialize)]
pub struct MetaView {
    pub create_revision: u64,
    pub update_revision: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl From<v1::ResourceMeta> for MetaView {
    fn from(m: v1::ResourceMeta) -> Self {
        MetaView {
            create_revision: m.create_revision,
            update_revision: m.update_revision,
            created_at_ms: m.created_at_ms,
            updated_at_ms: m.updated_at_ms,
        }
    }
}

pub(crate) fn meta_fields(meta: &Option<MetaView>) -> Vec<(&'static str, String)> {
    let m = meta.clone().unwrap_or(MetaView {
        create_revision: 0,
        update_revision: 0,
        created_at_ms: 0,
        updated_at_ms: 0,
    });
    vec![
        ("created_at", format_time_ms(m.created_at_ms)),
        ("updated_at", format_time_ms(m.updated_at_ms)),
        ("create_revision", m.create_revision.to_string()),
        ("update_revision", m.update_revision.to_string()),
    ]
}

#[derive(Debug, Clone, Serialize)]
pub struct ProjectView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub properties: BTreeMap<String, String>,
    pub meta: Option<MetaView>,
}

impl From<v1::Project> for ProjectView {
    fn from(p: v1::Project) -> Self {
        ProjectView {
            id: p.id,
            name: p.name,
            description: p.description,
            enabled: p.enabled,
            properties: sorted(p.properties),
            meta: p.meta.map(MetaView::from),
        }
    }
}

impl Tabular for ProjectView {
    fn columns() -> &'static [&'static str] {
        &["ID", "NAME", "ENABLED", "DESCRIPTION"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            yes_no(self.enabled),
            self.description.clone(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("description", self.description.clone()),
            ("enabled", yes_no(self.enabled)),
            ("properties", map_cell(&self.properties)),
        ];
        f.extend(meta_fields(&self.meta));
        f
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FlavorView {
    pub id: String,
    pub name: String,
    pub vcpus: u32,
    pub ram_mib: u64,
    pub disk_gib: u64,
    pub ephemeral_gib: u64,
    pub swap_mib: u64,
    pub is_public: bool,
    pub description: String,
    pub extra_specs: BTreeMap<String, String>,
    pub access_project_ids: Vec<String>,
    pub meta: Option<MetaView>,
}

impl From<v1::Flavor> for FlavorView {
    fn from(f: v1::Flavor) -> Self {
        FlavorView {
            id: f.id,
            name: f.name,
            vcpus: f.vcpus,
            ram_mib: f.ram_mib,
            disk_gib: f.disk_gib,
            ephemeral_gib: f.ephemeral_gib,
            swap_mib: f.swap_mib,
            is_public: f.is_public,
            description: f.description,
            extra_specs: sorted(f.extra_specs),
            access_project_ids: f.access_project_ids,
            meta: f.meta.map(MetaView::from),
        }
    }
}

impl Tabular for FlavorView {
    fn columns() -> &'static [&'static str] {
        &[
            "ID",
            "NAME",
            "VCPUS",
            "RAM_MIB",
            "DISK_GIB",
            "EPHEMERAL_GIB",
            "SWAP_MIB",
            "PUBLIC",
        ]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.vcpus.to_string(),
            self.ram_mib.to_string(),
            self.disk_gib.to_string(),
            self.ephemeral_gib.to_string(),
            self.swap_mib.to_string(),
            yes_no(self.is_public),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("vcpus", self.vcpus.to_string()),
            ("ram_mib", self.ram_mib.to_string()),
            ("disk_gib", self.disk_gib.to_string()),
            ("ephemeral_gib", self.ephemeral_gib.to_string()),
            ("swap_mib", self.swap_mib.to_string()),
            ("is_public", yes_no(self.is_public)),
            ("description", self.description.clone()),
            ("extra_specs", map_cell(&self.extra_specs)),
            ("access_project_ids", self.access_project_ids.join(", ")),
        ];
        f.extend(meta_fields(&self.meta));
        f
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub id: u64,
    pub name: String,
    pub client_address: String,
    pub peer_address: String,
    pub voter: bool,
}

impl From<v1::Member> for MemberView {
    fn from(m: v1::Member) -> Self {
        MemberView {
            id: m.id,
            name: m.name,
            client_address: m.client_address,
            peer_address: m.peer_address,
            voter: m.voter,
        }
    }
}

impl Tabular for MemberView {
    fn columns() -> &'static [&'static str] {
        &["ID", "NAME", "CLIENT_ADDRESS", "PEER_ADDRESS", "VOTER"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.client_address.clone(),
            self.peer_address.clone(),
            yes_no(self.voter),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        self.row()
            .into_iter()
            .zip(["id", "name", "client_address", "peer_address", "voter"])
            .map(|(v, k)| (k, v))
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatusView {
    pub id: u64,
    pub name: String,
    pub client_address: String,
    pub role: String,
    pub term: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub revision: u64,
    pub state_checksum: String,
    pub snapshot_index: u64,
    pub first_log_index: u64,
    pub last_log_index: u64,
    pub version: String,
    pub error: String,
}

impl From<v1::MemberStatus> for MemberStatusView {
    fn from(s: v1::MemberStatus) -> Self {
        MemberStatusView {
            id: s.id,
            name: s.name,
            client_address: s.client_address,
            role: role_name(s.role),
            term: s.term,
            leader_id: s.leader_id,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            revision: s.revision,
            state_checksum: s.state_checksum,
            snapshot_index: s.snapshot_index,
            first_log_index: s.first_log_index,
            last_log_index: s.last_log_index,
            version: s.version,
            error: s.error,
        }
    }
}

impl Tabular for MemberStatusView {
    fn columns() -> &'static [&'static str] {
        &[
            "ID", "NAME", "ADDRESS", "ROLE", "TERM", "APPLIED", "CHECKSUM",
        ]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.client_address.clone(),
            short_enum(&self.role, "ROLE_"),
            self.term.to_string(),
            self.applied_index.to_string(),
            self.state_checksum.clone(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.to_string()),
            ("name", self.name.clone()),
            ("client_address", self.client_address.clone()),
            ("role", short_enum(&self.role, "ROLE_")),
            ("term", self.term.to_string()),
            ("leader_id", self.leader_id.to_string()),
            ("commit_index", self.commit_index.to_string()),
            ("applied_index", self.applied_index.to_string()),
            ("revision", self.revision.to_string()),
            ("state_checksum", self.state_checksum.clone()),
            ("snapshot_index", self.snapshot_index.to_string()),
            ("first_log_index", self.first_log_index.to_string()),
            ("last_log_index", self.last_log_index.to_string()),
            ("version", self.version.clone()),
            ("error", self.error.clone()),
        ]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatusView {
    pub leader_id: u64,
    pub members: Vec<MemberStatusView>,
}

impl From<v1::ClusterStatus> for ClusterStatusView {
    fn from(s: v1::ClusterStatus) -> Self {
        ClusterStatusView {
            leader_id: s.leader_id,
            members: s.members.into_iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub revision: u64,
    pub time_ms: i64,
    pub resource_type: String,
    pub resource_id: String,
    pub resource_name: String,
    pub action: String,
    pub project_id: String,
    pub actor: String,
    pub request_id: String,
}

impl From<v1::Event> for EventView {
    fn from(e: v1::Event) -> Self {
        EventView {
            revision: e.revision,
            time_ms: e.time_ms,
            resource_type: e.resource_type,
            resource_id: e.resource_id,
            resource_name: e.resource_name,
            action: action_name(e.action),
            project_id: e.project_id,
            actor: e.actor,
            request_id: e.request_id,
        }
    }
}

impl EventView {
    /// Column widths of the streamed event table (rows are printed before later ones are known,
    /// so widths are fixed; longer values simply push the line).
    pub const WIDTHS: [usize; 6] = [10, 24, 8, 14, 36, 0];

    pub fn columns() -> [&'static str; 6] {
        ["REVISION", "TIME", "ACTION", "TYPE", "ID", "NAME"]
    }

    pub fn row(&self) -> [String; 6] {
        [
            self.revision.to_string(),
            format_time_ms(self.time_ms),
            short_enum(&self.action, "EVENT_ACTION_"),
            self.resource_type.clone(),
            self.resource_id.clone(),
            self.resource_name.clone(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Format;
    use crate::output::{list, show};

    #[test]
    fn enums_are_named_in_json_and_shortened_in_tables() {
        let status = ClusterStatusView::from(v1::ClusterStatus {
            leader_id: 2,
            members: vec![v1::MemberStatus {
                id: 2,
                name: "c2".into(),
                client_address: "127.0.0.1:7002".into(),
                role: v1::Role::Leader as i32,
                term: 3,
                commit_index: 10,
                applied_index: 9,
                revision: 7,
                state_checksum: "ab12".into(),
                ..Default::default()
            }],
        });
        let json: serde_json::Value =
            serde_json::from_str(&crate::output::structured(Format::Json, &status).unwrap())
                .unwrap();
        assert_eq!(json["leader_id"], 2);
        assert_eq!(json["members"][0]["role"], "ROLE_LEADER");
        assert_eq!(json["members"][0]["commit_index"], 10);
        assert_eq!(json["members"][0]["revision"], 7);
        let table = list(Format::Table, &status.members).unwrap();
        assert_eq!(
            table,
            "ID  NAME  ADDRESS         ROLE    TERM  APPLIED  CHECKSUM\n\
             2   c2    127.0.0.1:7002  leader  3     9        ab12\n"
        );
    }

    #[test]
    fn project_show_lists_every_field() {
        let p = ProjectView::from(v1::Project {
            id: "p-1".into(),
            name: "web".into(),
            description: "front".into(),
            enabled: true,
            properties: HashMap::from([("b".into(), "2".into()), ("a".into(), "1".into())]),
            meta: Some(v1::ResourceMeta {
                create_revision: 4,
                update_revision: 5,
                created_at_ms: 1_714_564_800_000,
                updated_at_ms: 1_714_564_801_000,
            }),
        });
        let text = show(Format::Table, &p).unwrap();
        assert!(
            text.starts_with("FIELD            VALUE\nid               p-1\n"),
            "{text}"
        );
        assert!(text.contains("properties       a=1, b=2\n"), "{text}");
        assert!(
            text.contains("created_at       2024-05-01T12:00:00.000Z\n"),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&show(Format::Json, &p).unwrap()).unwrap();
        assert_eq!(json["properties"]["a"], "1");
        assert_eq!(json["meta"]["update_revision"], 5);
    }

    #[test]
    fn unknown_enum_values_show_their_number() {
        assert_eq!(role_name(42), "42");
        assert_eq!(action_name(1), "EVENT_ACTION_CREATED");
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub id: String,
    pub name: String,
    pub email: String,
    pub enabled: bool,
    pub default_project_id: String,
    pub meta: Option<MetaView>,
}

impl From<v1::User> for UserView {
    fn from(u: v1::User) -> Self {
        UserView {
            id: u.id,
            name: u.name,
            email: u.email,
            enabled: u.enabled,
            default_project_id: u.default_project_id,
            meta: u.meta.map(Into::into),
        }
    }
}

impl Tabular for UserView {
    fn columns() -> &'static [&'static str] {
        &["ID", "NAME", "EMAIL", "ENABLED", "DEFAULT_PROJECT_ID"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.email.clone(),
            yes_no(self.enabled),
            self.default_project_id.clone(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("email", self.email.clone()),
            ("enabled", yes_no(self.enabled)),
            ("default_project_id", self.default_project_id.clone()),
        ];
        f.extend(meta_fields(&self.meta));
        f
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RoleAssignmentView {
    pub user_id: String,
    pub project_id: String,
    pub role: String,
}

impl From<v1::RoleAssignment> for RoleAssignmentView {
    fn from(a: v1::RoleAssignment) -> Self {
        RoleAssignmentView {
            user_id: a.user_id,
            project_id: a.project_id,
            role: a.role,
        }
    }
}

impl Tabular for RoleAssignmentView {
    fn columns() -> &'static [&'static str] {
        &["USER_ID", "PROJECT_ID", "ROLE"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.user_id.clone(),
            self.project_id.clone(),
            self.role.clone(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("user_id", self.user_id.clone()),
            ("project_id", self.project_id.clone()),
            ("role", self.role.clone()),
        ]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenView {
    pub token: String,
    pub token_id: String,
    pub user_id: String,
    pub project_id: String,
    pub expires_at_ms: i64,
    pub roles: Vec<String>,
}

impl From<v1::Token> for TokenView {
    fn from(t: v1::Token) -> Self {
        TokenView {
            token: t.token,
            token_id: t.token_id,
            user_id: t.user_id,
            project_id: t.project_id,
            expires_at_ms: t.expires_at_ms,
            roles: t.roles,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IdentityView {
    pub user_id: String,
    pub user_name: String,
    pub project_id: String,
    pub roles: Vec<String>,
    pub expires_at_ms: i64,
}

impl From<v1::Identity> for IdentityView {
    fn from(i: v1::Identity) -> Self {
        IdentityView {
            user_id: i.user_id,
            user_name: i.user_name,
            project_id: i.project_id,
            roles: i.roles,
            expires_at_ms: i.expires_at_ms,
        }
    }
}

impl Tabular for IdentityView {
    fn columns() -> &'static [&'static str] {
        &["USER_ID", "USER_NAME", "PROJECT_ID", "ROLES", "EXPIRES_AT"]
    }
    fn row(&self) -> Vec<String> {
        let expires = if self.expires_at_ms == 0 {
            "never".to_string()
        } else {
            format_time_ms(self.expires_at_ms)
        };
        vec![
            self.user_id.clone(),
            self.user_name.clone(),
            self.project_id.clone(),
            self.roles.join(","),
            expires,
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        self.row()
            .into_iter()
            .zip(["user_id", "user_name", "project_id", "roles", "expires_at"])
            .map(|(v, k)| (k, v))
            .collect()
    }
}
