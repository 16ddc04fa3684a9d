//! Server group views.
use flotilla_proto::v1;
use serde::Serialize;

use super::{meta_fields, MetaView};
use crate::output::Tabular;

/// The policy as operators write it (`anti-affinity`, …).
pub fn policy_name(value: i32) -> String {
    match v1::ServerGroupPolicy::try_from(value) {
        Ok(v1::ServerGroupPolicy::Affinity) => "affinity".into(),
        Ok(v1::ServerGroupPolicy::AntiAffinity) => "anti-affinity".into(),
        Ok(v1::ServerGroupPolicy::SoftAffinity) => "soft-affinity".into(),
        Ok(v1::ServerGroupPolicy::SoftAntiAffinity) => "soft-anti-affinity".into(),
        _ => value.to_string(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerGroupView {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub user_id: String,
    pub policy: String,
    pub max_server_per_host: u32,
    pub member_ids: Vec<String>,
    pub meta: Option<MetaView>,
}

impl From<v1::ServerGroup> for ServerGroupView {
    fn from(g: v1::ServerGroup) -> Self {
        ServerGroupView {
            policy: policy_name(g.policy),
            id: g.id,
            name: g.name,
            project_id: g.project_id,
            user_id: g.user_id,
            max_server_per_host: g.rules.map_or(0, |r| r.max_server_per_host),
            member_ids: g.member_ids,
            meta: g.meta.map(MetaView::from),
        }
    }
}

impl Tabular for ServerGroupView {
    fn columns() -> &'static [&'static str] {
        &["ID", "NAME", "POLICY", "MEMBERS"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.policy.clone(),
            self.member_ids.len().to_string(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("project_id", self.project_id.clone()),
            ("user_id", self.user_id.clone()),
            ("policy", self.policy.clone()),
            ("max_server_per_host", self.max_server_per_host.to_string()),
            ("member_ids", self.member_ids.join(", ")),
        ];
        f.extend(meta_fields(&self.meta));
        f
    }
}
