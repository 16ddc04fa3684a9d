//! Stored resources. Plain data; every map is a `BTreeMap` so encoding (and so the state
//! checksum) is deterministic.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub client_address: String,
    pub peer_address: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub create_revision: u64,
    pub update_revision: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Meta {
    pub fn new(revision: u64, time_ms: i64) -> Meta {
        Meta {
            create_revision: revision,
            update_revision: revision,
            created_at_ms: time_ms,
            updated_at_ms: time_ms,
        }
    }

    pub fn touch(&mut self, revision: u64, time_ms: i64) {
        self.update_revision = revision;
        self.updated_at_ms = time_ms;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub properties: BTreeMap<String, String>,
    pub meta: Meta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flavor {
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
    pub access_project_ids: BTreeSet<String>,
    pub meta: Meta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventAction {
    Created,
    Updated,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    pub time_ms: i64,
    pub resource_type: String,
    pub resource_id: String,
    pub resource_name: String,
    pub action: EventAction,
    pub project_id: String,
    pub actor: String,
    pub request_id: String,
}
