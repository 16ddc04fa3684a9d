//! Commands: the only way cluster state changes (I1). A log entry's data is
//! `[FORMAT_VERSION] ++ bincode(Envelope)`.
//!
//! Policy for evolution: new `Command` variants are appended at the end (bincode encodes the
//! variant index), so old logs keep decoding. An entry with a newer format version, or a variant
//! this binary does not know, cannot be applied deterministically: decoding fails and the node
//! stops with a message asking for an upgrade — it never skips an entry.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::host_jobs::{HostJobSpec, ItemStart};
use super::hosts::HostRegistration;
use super::images::{ImageChanges, ImageSpec, UploadResult};
use super::model::{Member, Role};
use super::networks::NetCommand;
use super::operations::Progress;
use super::quota::{Amounts, Resource};
use super::server_groups::ServerGroupSpec;
use super::server_nics::NicSpec;
use super::servers::{NewServer, ObservedServer, ServerRequest};
use crate::scheduler::AllocationRatios;

pub const FORMAT_VERSION: u8 = 1;

/// A command with everything `apply` needs stamped in by the proposing controller: time, fresh
/// ids, who asked and the client's request id. Apply reads no clock and no randomness (I2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Client request id for deduplication (I4); empty disables it.
    pub request_id: String,
    /// Who asked (a user name, or `controller-<id>` for work a controller does by itself).
    pub actor: String,
    /// Leader-stamped wall clock, ms since the Unix epoch.
    pub time_ms: i64,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Records the initial members of a new cluster; ignored once any member is known.
    Bootstrap {
        members: Vec<Member>,
    },
    CreateProject {
        id: String,
        name: String,
        description: String,
        enabled: bool,
        properties: BTreeMap<String, String>,
    },
    UpdateProject {
        /// Id or name.
        project: String,
        name: Option<String>,
        description: Option<String>,
        enabled: Option<bool>,
        set_properties: BTreeMap<String, String>,
        unset_properties: Vec<String>,
    },
    DeleteProject {
        project: String,
    },
    CreateFlavor(FlavorSpec),
    UpdateFlavor {
        flavor: String,
        description: Option<String>,
        is_public: Option<bool>,
        set_extra_specs: BTreeMap<String, String>,
        unset_extra_specs: Vec<String>,
    },
    DeleteFlavor {
        flavor: String,
    },
    AddFlavorAccess {
        flavor: String,
        project: String,
    },
    RemoveFlavorAccess {
        flavor: String,
        project: String,
    },
    CreateUser {
        id: String,
        name: String,
        email: String,
        enabled: bool,
        /// Id or name; empty for none.
        default_project: String,
        /// argon2id PHC string computed by the proposer; empty: no password yet.
        password_hash: String,
    },
    UpdateUser {
        /// Id or name.
        user: String,
        name: Option<String>,
        email: Option<String>,
        enabled: Option<bool>,
        /// Id or name; `Some("")` clears it.
        default_project: Option<String>,
    },
    DeleteUser {
        user: String,
    },
    SetPassword {
        user: String,
        password_hash: String,
    },
    AddRoleAssignment {
        user: String,
        /// Id or name; empty for the cluster-wide `admin` role.
        project: String,
        role: Role,
    },
    RemoveRoleAssignment {
        user: String,
        project: String,
        role: Role,
    },
    /// Adds a new active signing key (the previous one keeps verifying). With `only_if_none`
    /// it is ignored when any key exists (the first login of a cluster creates one).
    AddSigningKey {
        key_id: String,
        secret: Vec<u8>,
        only_if_none: bool,
    },
    /// Puts a token id on the revocation list until `expires_at_ms`.
    RevokeToken {
        token_id: String,
        expires_at_ms: i64,
    },
    /// Creates the `admin` user (cluster admin) and the `admin` project on a new cluster;
    /// ignored once any user exists.
    BootstrapAdmin {
        user_id: String,
        project_id: String,
        password_hash: String,
        key_id: String,
        key_secret: Vec<u8>,
    },
    /// Changes a project's quota: `reset_to_default` removes project-specific limits first,
    /// then `changes` sets limits (-1 = unlimited), all in one step.
    SetQuota {
        /// Id or name.
        project: String,
        reset_to_default: Vec<Resource>,
        changes: Amounts,
    },
    /// Changes the cluster-wide default limits.
    SetDefaultQuota {
        changes: Amounts,
    },
    CreateImage(ImageSpec),
    UpdateImage {
        image_id: String,
        changes: ImageChanges,
    },
    DeleteImage {
        image_id: String,
    },
    AddImageMember {
        image_id: String,
        /// Id or name.
        project: String,
    },
    RemoveImageMember {
        image_id: String,
        project: String,
    },
    /// A controller starts receiving an image's bytes. `size_hint` (0 = unknown) lets the
    /// image storage quota refuse early.
    BeginImageUpload {
        image_id: String,
        upload_id: String,
        controller_id: u64,
        size_hint: u64,
    },
    FinishImageUpload {
        image_id: String,
        upload_id: String,
        result: UploadResult,
    },
    /// An agent registered (or re-registered) its host: it is up under a new lease.
    RegisterHost {
        /// Used when the hostname is new.
        host_id: String,
        info: HostRegistration,
    },
    /// The leader saw the host's lease expire. Ignored unless `lease_id` is still current.
    MarkHostDown {
        host_id: String,
        lease_id: u64,
    },
    SetHostEnabled {
        /// Id or hostname.
        host: String,
        enabled: bool,
        reason: String,
    },
    SetHostForcedDown {
        host: String,
        forced_down: bool,
    },
    /// Servers placed by the proposer's scheduler run; admitted all together or not at all.
    CreateServers {
        servers: Vec<NewServer>,
        /// The allocation ratios the placement was made with (the leader's configuration).
        ratios: AllocationRatios,
    },
    /// A host's agent's full report of the Flotilla servers it holds.
    ServerObserved {
        host_id: String,
        lease_id: u64,
        servers: Vec<ObservedServer>,
    },
    ServerRequest {
        server_id: String,
        operation_id: String,
        request: ServerRequest,
    },
    /// The leader moves a boot that failed to another host (empty: none is left, ERROR).
    RescheduleServer {
        server_id: String,
        host_id: String,
        ratios: AllocationRatios,
    },
    /// An agent finished a command step of an operation.
    OperationStepResult {
        operation_id: String,
        ok: bool,
        message: String,
    },
    /// A server group in a project (charged to its `server_groups` quota).
    CreateServerGroup(ServerGroupSpec),
    /// Forgets a group; its members keep running where they are (as Nova does).
    DeleteServerGroup {
        group_id: String,
    },
    /// An agent finished a step of a migration (`step` names which; a result for a step the
    /// operation is no longer at is ignored). A prepared destination's domain XML comes as the
    /// message of a successful "prepare_destination".
    MigrationStep {
        operation_id: String,
        step: String,
        ok: bool,
        message: String,
    },
    /// Progress an agent reported for the step an operation is at.
    OperationProgress {
        operation_id: String,
        step: String,
        progress: Progress,
    },
    /// Asks a running operation to stop at its next safe point.
    CancelOperation {
        operation_id: String,
    },
    /// Starts a host evacuation or drain: one item per server on the host, moved later by
    /// [`Command::AdvanceHostJob`] within the job's parallelism.
    StartHostJob {
        operation_id: String,
        host_id: String,
        job: HostJobSpec,
    },
    /// The leader starts the next items of a host job on the destinations it picked.
    AdvanceHostJob {
        operation_id: String,
        starts: Vec<ItemStart>,
    },
    /// Networks, subnets, ports, floating IPs and security groups (IPAM happens in apply).
    Networking(NetCommand),
    /// [`Command::CreateServers`] with NICs: `nics[i]` are the NICs of `servers[i]`, created
    /// or bound in the same apply as the servers are admitted.
    CreateServersWithNics {
        servers: Vec<NewServer>,
        ratios: AllocationRatios,
        nics: Vec<Vec<NicSpec>>,
        /// Ids for the project's `default` security group, used when this entry creates it.
        default_group_ids: Vec<String>,
    },
    /// A host's agent's full list of the ports it has wired (observed state).
    PortsWired {
        host_id: String,
        lease_id: u64,
        port_ids: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlavorSpec {
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
}

impl Command {
    /// Stable name of the operation, used to detect a request id reused for something else.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Bootstrap { .. } => "bootstrap",
            Command::CreateProject { .. } => "create_project",
            Command::UpdateProject { .. } => "update_project",
            Command::DeleteProject { .. } => "delete_project",
            Command::CreateFlavor(_) => "create_flavor",
            Command::UpdateFlavor { .. } => "update_flavor",
            Command::DeleteFlavor { .. } => "delete_flavor",
            Command::AddFlavorAccess { .. } => "add_flavor_access",
            Command::RemoveFlavorAccess { .. } => "remove_flavor_access",
            Command::CreateUser { .. } => "create_user",
            Command::UpdateUser { .. } => "update_user",
            Command::DeleteUser { .. } => "delete_user",
            Command::SetPassword { .. } => "set_password",
            Command::AddRoleAssignment { .. } => "add_role_assignment",
            Command::RemoveRoleAssignment { .. } => "remove_role_assignment",
            Command::AddSigningKey { .. } => "add_signing_key",
            Command::RevokeToken { .. } => "revoke_token",
            Command::BootstrapAdmin { .. } => "bootstrap_admin",
            Command::SetQuota { .. } => "set_quota",
            Command::SetDefaultQuota { .. } => "set_default_quota",
            Command::CreateImage(_) => "create_image",
            Command::UpdateImage { .. } => "update_image",
            Command::DeleteImage { .. } => "delete_image",
            Command::AddImageMember { .. } => "add_image_member",
            Command::RemoveImageMember { .. } => "remove_image_member",
            Command::BeginImageUpload { .. } => "begin_image_upload",
            Command::FinishImageUpload { .. } => "finish_image_upload",
            Command::RegisterHost { .. } => "register_host",
            Command::MarkHostDown { .. } => "mark_host_down",
            Command::SetHostEnabled { .. } => "set_host_enabled",
            Command::SetHostForcedDown { .. } => "set_host_forced_down",
            Command::CreateServers { .. } => "create_servers",
            Command::ServerObserved { .. } => "server_observed",
            Command::ServerRequest { .. } => "server_request",
            Command::RescheduleServer { .. } => "reschedule_server",
            Command::OperationStepResult { .. } => "operation_step_result",
            Command::CreateServerGroup(_) => "create_server_group",
            Command::DeleteServerGroup { .. } => "delete_server_group",
            Command::MigrationStep { .. } => "migration_step",
            Command::OperationProgress { .. } => "operation_progress",
            Command::CancelOperation { .. } => "cancel_operation",
            Command::StartHostJob { .. } => "start_host_job",
            Command::AdvanceHostJob { .. } => "advance_host_job",
            Command::Networking(c) => c.kind(),
            Command::CreateServersWithNics { .. } => "create_servers",
            Command::PortsWired { .. } => "ports_wired",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("log entry is empty")]
    Empty,
    #[error(
        "log entry has format version {0}, this controller understands up to {FORMAT_VERSION}; \
         upgrade this controller"
    )]
    NewerVersion(u8),
    #[error("log entry cannot be decoded (corrupt, or written by a newer controller)")]
    Malformed(#[source] bincode::Error),
    #[error(
        "the snapshot has state format {found}, this controller reads format {expected} only \
         (it was written by an earlier development build); start this member from an empty \
         data directory and let it catch up from the others"
    )]
    OlderSnapshot { found: u8, expected: u8 },
    #[error("the snapshot has state format {0}, newer than this controller reads; upgrade it")]
    NewerSnapshot(u8),
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_VERSION];
        // Serializing plain owned data into a Vec cannot fail.
        bincode::serialize_into(&mut out, self).expect("envelope serializes");
        out
    }

    pub fn decode(data: &[u8]) -> Result<Envelope, DecodeError> {
        match data.first() {
            None => Err(DecodeError::Empty),
            Some(&v) if v > FORMAT_VERSION || v == 0 => Err(DecodeError::NewerVersion(v)),
            Some(_) => bincode::deserialize(&data[1..]).map_err(DecodeError::Malformed),
        }
    }
}
