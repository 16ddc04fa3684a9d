//! Every implemented RPC × principal (admin, member, reader, no role, disabled user, no
//! credentials) × own/other project, against the real services on a 3-node in-process cluster
//! (real Raft replicas over an in-memory network; requests go to node 1, leader or not).
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use pb::cluster_service_server::ClusterService;
use pb::event_service_server::EventService;
use pb::flavor_service_server::FlavorService;
use pb::identity_service_server::IdentityService;
use tonic::{Code, Request, Status};

use super::auth::{Authenticator, Principal};
use super::{Api, ClusterApi, EventApi, FlavorApi, IdentityApi, PeerDirectory, QuotaApi};
use crate::raft::harness::{fast_tuning, Cluster};
use crate::state::Member;

mod bootstrap;
mod image;
mod network;
mod quota;

const PASSWORD: &str = "password-1";

struct NoPeers;

#[tonic::async_trait]
impl PeerDirectory for NoPeers {
    async fn peer_status(&self, _m: &Member) -> Result<pb::MemberStatus, String> {
        Err("no peers in this test".into())
    }
}

struct World {
    cluster: Cluster,
    auth: Authenticator,
    identity: IdentityApi,
    flavors: FlavorApi,
    clusters: ClusterApi,
    events: EventApi,
    quotas: QuotaApi,
    images: super::ImageApi,
    networks: super::NetworkApi,
    counter: AtomicU32,
    /// The controller's image blob store (deleted with the world).
    _blob_dir: tempfile::TempDir,
}

/// Builds a request as the interceptor would pass it on.
fn req<T>(auth: &Authenticator, token: Option<&str>, msg: T) -> Result<Request<T>, Status> {
    let mut r = Request::new(());
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let (meta, ext, ()) = auth.intercept(r)?.into_parts();
    Ok(Request::from_parts(meta, ext, msg))
}

impl World {
    async fn start() -> World {
        // Three replicas: node 1 serves the API whether or not it leads (followers forward
        // writes and read through ReadIndex), as a client of a real cluster sees it.
        let cluster = Cluster::start(3, 7, fast_tuning());
        cluster
            .wait_until(Duration::from_secs(10), "a leader", |c| {
                c.leader().is_some()
            })
            .await;
        let node = cluster.node(1).expect("running").clone();
        let api = Api::new(node.clone(), Arc::new(NoPeers));
        let blob_dir = tempfile::tempdir().expect("temp dir");
        World {
            cluster,
            auth: Authenticator::new(node),
            identity: IdentityApi(api.clone()),
            flavors: FlavorApi(api.clone()),
            clusters: ClusterApi(api.clone()),
            events: EventApi(api.clone()),
            quotas: QuotaApi(api.clone()),
            networks: super::NetworkApi {
                api: api.clone(),
                vni_range: crate::state::DEFAULT_VNI_RANGE,
            },
            images: image::image_api(api, &blob_dir),
            counter: AtomicU32::new(0),
            _blob_dir: blob_dir,
        }
    }

    /// An Api on the node that leads now (leader-only work such as the admin bootstrap).
    fn leader_api(&self) -> Api {
        let id = self.cluster.leader().expect("a leader");
        let node = self.cluster.node(id).expect("running").clone();
        Api::new(node, Arc::new(NoPeers))
    }

    fn req<T>(&self, token: Option<&str>, msg: T) -> Result<Request<T>, Status> {
        req(&self.auth, token, msg)
    }

    /// A request as the in-process test admin ([`Principal::test_admin`], attached the way
    /// the interceptor attaches a principal): the world's setup acts as admin without a user,
    /// so the `admin` user and project exist only where a test bootstraps them.
    fn admin<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.extensions_mut().insert(Principal::test_admin());
        r
    }

    fn fresh(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.counter.fetch_add(1, Ordering::Relaxed))
    }

    async fn project(&self, name: &str) {
        let r = pb::CreateProjectRequest {
            name: name.into(),
            ..Default::default()
        };
        self.identity.create_project(self.admin(r)).await.unwrap();
    }

    async fn user(&self, name: &str, roles: &[(&str, &str)]) {
        let r = pb::CreateUserRequest {
            name: name.into(),
            password: PASSWORD.into(),
            ..Default::default()
        };
        self.identity.create_user(self.admin(r)).await.unwrap();
        for (project, role) in roles {
            self.grant(name, project, role).await;
        }
    }

    async fn grant(&self, user: &str, project: &str, role: &str) {
        let r = pb::AddRoleAssignmentRequest {
            user: user.into(),
            project: project.into(),
            role: role.into(),
            ..Default::default()
        };
        self.identity
            .add_role_assignment(self.admin(r))
            .await
            .unwrap();
    }

    async fn login(&self, user: &str, project: &str) -> Result<pb::Token, Status> {
        let r = pb::LoginRequest {
            user: user.into(),
            password: PASSWORD.into(),
            project: project.into(),
        };
        let anonymous = self.req(None, r).unwrap();
        self.identity.login(anonymous).await.map(|t| t.into_inner())
    }

    async fn set_enabled(&self, user: &str, enabled: bool) {
        let r = pb::UpdateUserRequest {
            user: user.into(),
            enabled: Some(enabled),
            ..Default::default()
        };
        self.identity.update_user(self.admin(r)).await.unwrap();
    }

    /// Sets up the world every row expects: projects `own` and `other`, a public flavor
    /// `small`, a private flavor `priv`, a user `victim` without roles; returns the tokens.
    async fn populate(&self) -> Vec<(&'static str, Option<String>)> {
        self.project("own").await;
        self.project("other").await;
        self.user("boss", &[("", "admin")]).await;
        self.user("member", &[("own", "member")]).await;
        self.user("reader", &[("own", "reader")]).await;
        self.user("norole", &[]).await;
        self.user("disabled", &[("own", "member")]).await;
        self.user("victim", &[]).await;
        for (name, public) in [("small", true), ("priv", false)] {
            let r = pb::CreateFlavorRequest {
                name: name.into(),
                vcpus: 1,
                ram_mib: 512,
                is_public: Some(public),
                ..Default::default()
            };
            self.flavors.create_flavor(self.admin(r)).await.unwrap();
        }
        let mut tokens = Vec::new();
        for name in ["boss", "member", "reader", "norole", "disabled"] {
            tokens.push((name, Some(self.login(name, "").await.unwrap().token)));
        }
        self.set_enabled("disabled", false).await;
        tokens.push(("anonymous", None));
        self.populate_images().await;
        tokens
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    /// Cluster admins only.
    Admin,
    /// Any enabled user.
    Any,
    /// Admins, and users holding a role in the target project.
    ReadOwn,
    /// Admins, and members of the target project.
    WriteOwn,
    /// An image of the target project: admins and its project's users read it; it is hidden
    /// (NOT_FOUND) from everyone else.
    ImageRead,
    /// As `ImageRead`, and only admins and members change it (readers: PERMISSION_DENIED).
    ImageWrite,
    /// Making an image public: admins only (hidden images stay NOT_FOUND).
    ImagePublish,
}

/// What a call by `who` on `t` under `rule` must return: `None` = success.
fn expected(rule: Rule, who: &str, t: Target) -> Option<Code> {
    let in_project = matches!(who, "member" | "reader") && t == Target::Own;
    match (who, rule) {
        ("disabled" | "anonymous", _) => Some(Code::Unauthenticated),
        ("boss", _) | (_, Rule::Any) => None,
        (_, Rule::ReadOwn) if in_project => None,
        (_, Rule::WriteOwn) if in_project && who == "member" => None,
        (_, Rule::Admin | Rule::ReadOwn | Rule::WriteOwn) => Some(Code::PermissionDenied),
        (_, Rule::ImageRead | Rule::ImageWrite | Rule::ImagePublish) if !in_project => {
            Some(Code::NotFound)
        }
        (_, Rule::ImageRead) => None,
        ("member", Rule::ImageWrite) => None,
        (_, Rule::ImageWrite | Rule::ImagePublish) => Some(Code::PermissionDenied),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Own,
    Other,
    NoProject,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Own => "own",
            Target::Other | Target::NoProject => "other",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    CreateProject,
    GetProject,
    ListProjects,
    UpdateProject,
    DeleteProject,
    CreateUser,
    GetUserSelf,
    GetUserOther,
    ListUsers,
    UpdateUser,
    DeleteUser,
    SetPasswordSelf,
    SetPasswordOther,
    AddRoleAssignment,
    RemoveRoleAssignment,
    ListRoleAssignments,
    RevokeToken,
    WhoAmI,
    RotateSigningKey,
    CreateFlavor,
    GetFlavor,
    ListFlavors,
    UpdateFlavor,
    DeleteFlavor,
    AddFlavorAccess,
    RemoveFlavorAccess,
    GetClusterStatus,
    GetMemberStatus,
    ListMembers,
    AddMember,
    RemoveMember,
    TransferLeader,
    WatchEvents,
    GetQuota,
    SetQuota,
    GetDefaultQuota,
    SetDefaultQuota,
    CreateImage,
    GetImage,
    ListImages,
    UpdateImage,
    /// UpdateImage to public visibility.
    PublishImage,
    DeleteImage,
    UploadImage,
    DownloadImage,
    AddImageMember,
    RemoveImageMember,
    ListImageMembers,
    /// CreateNetwork naming the owner project (admins only).
    CreateNetworkForProject,
    GetNetwork,
    ListNetworks,
    UpdateNetwork,
    DeleteNetwork,
    CreateSubnet,
    GetSubnet,
    ListSubnets,
    UpdateSubnet,
    DeleteSubnet,
    GetPort,
    ListPorts,
    UpdatePort,
    DeletePort,
    GetFloatingIp,
    ListFloatingIps,
    UpdateFloatingIp,
    DeleteFloatingIp,
    AssociateFloatingIp,
    DisassociateFloatingIp,
    GetSecurityGroup,
    ListSecurityGroups,
    UpdateSecurityGroup,
    DeleteSecurityGroup,
    CreateSecurityGroupRule,
    GetSecurityGroupRule,
    ListSecurityGroupRules,
    DeleteSecurityGroupRule,
}

impl World {
    /// Performs `rpc` as `who` (user name, token); setup steps run as the bootstrap admin.
    async fn call(
        &self,
        rpc: Rpc,
        who: &str,
        token: Option<&str>,
        t: Target,
    ) -> Result<(), Status> {
        let project = t.name().to_owned();
        match rpc {
            Rpc::CreateProject => {
                let r = pb::CreateProjectRequest {
                    name: self.fresh("p"),
                    ..Default::default()
                };
                self.identity.create_project(self.req(token, r)?).await?;
            }
            Rpc::GetProject => {
                let r = pb::GetProjectRequest {
                    project,
                    stale: false,
                };
                self.identity.get_project(self.req(token, r)?).await?;
            }
            Rpc::ListProjects => {
                let r = pb::ListProjectsRequest::default();
                self.identity.list_projects(self.req(token, r)?).await?;
            }
            Rpc::UpdateProject => {
                let r = pb::UpdateProjectRequest {
                    project,
                    description: Some(self.fresh("d")),
                    ..Default::default()
                };
                self.identity.update_project(self.req(token, r)?).await?;
            }
            Rpc::DeleteProject => {
                let name = self.fresh("tmp");
                self.project(&name).await;
                if t == Target::Own {
                    for (user, role) in [("member", "member"), ("reader", "reader")] {
                        self.grant(user, &name, role).await;
                    }
                }
                let r = pb::DeleteProjectRequest {
                    project: name,
                    ..Default::default()
                };
                self.identity.delete_project(self.req(token, r)?).await?;
            }
            Rpc::CreateUser => {
                let r = pb::CreateUserRequest {
                    name: self.fresh("u"),
                    ..Default::default()
                };
                self.identity.create_user(self.req(token, r)?).await?;
            }
            Rpc::GetUserSelf | Rpc::GetUserOther => {
                let user = if matches!(rpc, Rpc::GetUserSelf) {
                    who
                } else {
                    "victim"
                };
                let r = pb::GetUserRequest {
                    user: user.into(),
                    stale: false,
                };
                self.identity.get_user(self.req(token, r)?).await?;
            }
            Rpc::ListUsers => {
                let r = pb::ListUsersRequest::default();
                self.identity.list_users(self.req(token, r)?).await?;
            }
            Rpc::UpdateUser => {
                let r = pb::UpdateUserRequest {
                    user: "victim".into(),
                    email: Some(format!("{}@example.org", self.fresh("v"))),
                    ..Default::default()
                };
                self.identity.update_user(self.req(token, r)?).await?;
            }
            Rpc::DeleteUser => {
                let name = self.fresh("gone");
                self.user(&name, &[]).await;
                let r = pb::DeleteUserRequest {
                    user: name,
                    ..Default::default()
                };
                self.identity.delete_user(self.req(token, r)?).await?;
            }
            Rpc::SetPasswordSelf | Rpc::SetPasswordOther => {
                let user = if matches!(rpc, Rpc::SetPasswordSelf) {
                    who
                } else {
                    "victim"
                };
                let r = pb::SetPasswordRequest {
                    user: user.into(),
                    current_password: PASSWORD.into(),
                    new_password: PASSWORD.into(),
                    ..Default::default()
                };
                self.identity.set_password(self.req(token, r)?).await?;
            }
            Rpc::AddRoleAssignment => {
                let r = pb::AddRoleAssignmentRequest {
                    user: "victim".into(),
                    project,
                    role: "reader".into(),
                    ..Default::default()
                };
                self.identity
                    .add_role_assignment(self.req(token, r)?)
                    .await?;
            }
            Rpc::RemoveRoleAssignment => {
                self.grant("victim", &project, "reader").await;
                let r = pb::RemoveRoleAssignmentRequest {
                    user: "victim".into(),
                    project,
                    role: "reader".into(),
                    ..Default::default()
                };
                self.identity
                    .remove_role_assignment(self.req(token, r)?)
                    .await?;
            }
            Rpc::ListRoleAssignments => {
                let r = pb::ListRoleAssignmentsRequest {
                    project,
                    ..Default::default()
                };
                self.identity
                    .list_role_assignments(self.req(token, r)?)
                    .await?;
            }
            Rpc::RevokeToken => {
                let r = pb::RevokeTokenRequest {
                    token_id: self.fresh("no-such-token"),
                    ..Default::default()
                };
                self.identity.revoke_token(self.req(token, r)?).await?;
            }
            Rpc::WhoAmI => {
                self.identity
                    .who_am_i(self.req(token, pb::WhoAmIRequest {})?)
                    .await?;
            }
            Rpc::RotateSigningKey => {
                let r = pb::RotateSigningKeyRequest::default();
                self.identity
                    .rotate_signing_key(self.req(token, r)?)
                    .await?;
            }
            Rpc::CreateFlavor => {
                let r = pb::CreateFlavorRequest {
                    name: self.fresh("f"),
                    vcpus: 1,
                    ram_mib: 512,
                    ..Default::default()
                };
                self.flavors.create_flavor(self.req(token, r)?).await?;
            }
            Rpc::GetFlavor => {
                let r = pb::GetFlavorRequest {
                    flavor: "small".into(),
                    stale: false,
                };
                self.flavors.get_flavor(self.req(token, r)?).await?;
            }
            Rpc::ListFlavors => {
                let r = pb::ListFlavorsRequest::default();
                self.flavors.list_flavors(self.req(token, r)?).await?;
            }
            Rpc::UpdateFlavor => {
                let r = pb::UpdateFlavorRequest {
                    flavor: "small".into(),
                    description: Some(self.fresh("d")),
                    ..Default::default()
                };
                self.flavors.update_flavor(self.req(token, r)?).await?;
            }
            Rpc::DeleteFlavor => {
                let name = self.fresh("fgone");
                let r = pb::CreateFlavorRequest {
                    name: name.clone(),
                    vcpus: 1,
                    ram_mib: 512,
                    ..Default::default()
                };
                self.flavors.create_flavor(self.admin(r)).await?;
                let r = pb::DeleteFlavorRequest {
                    flavor: name,
                    ..Default::default()
                };
                self.flavors.delete_flavor(self.req(token, r)?).await?;
            }
            Rpc::AddFlavorAccess | Rpc::RemoveFlavorAccess => {
                let r = pb::FlavorAccessRequest {
                    flavor: "priv".into(),
                    project,
                    ..Default::default()
                };
                if matches!(rpc, Rpc::AddFlavorAccess) {
                    self.flavors.add_flavor_access(self.req(token, r)?).await?;
                } else {
                    self.flavors
                        .remove_flavor_access(self.req(token, r)?)
                        .await?;
                }
            }
            Rpc::GetClusterStatus => {
                let r = pb::GetClusterStatusRequest::default();
                self.clusters
                    .get_cluster_status(self.req(token, r)?)
                    .await?;
            }
            Rpc::GetMemberStatus => {
                let r = pb::GetMemberStatusRequest::default();
                self.clusters.get_member_status(self.req(token, r)?).await?;
            }
            Rpc::ListMembers => {
                let r = pb::ListMembersRequest::default();
                self.clusters.list_members(self.req(token, r)?).await?;
            }
            // Invalid arguments on purpose: authorization comes first, and an allowed call
            // must not change this one-node cluster's membership.
            Rpc::AddMember => {
                let r = pb::AddMemberRequest::default();
                self.clusters.add_member(self.req(token, r)?).await?;
            }
            Rpc::RemoveMember => {
                let r = pb::RemoveMemberRequest::default();
                self.clusters.remove_member(self.req(token, r)?).await?;
            }
            Rpc::TransferLeader => {
                let r = pb::TransferLeaderRequest { target_id: 1 };
                self.clusters.transfer_leader(self.req(token, r)?).await?;
            }
            Rpc::WatchEvents => {
                let r = pb::WatchEventsRequest::default();
                drop(self.events.watch_events(self.req(token, r)?).await?);
            }
            Rpc::CreateImage
            | Rpc::GetImage
            | Rpc::ListImages
            | Rpc::UpdateImage
            | Rpc::PublishImage
            | Rpc::DeleteImage
            | Rpc::UploadImage
            | Rpc::DownloadImage
            | Rpc::AddImageMember
            | Rpc::RemoveImageMember
            | Rpc::ListImageMembers => {
                self.call_image(rpc, token, t).await?;
            }
            Rpc::GetQuota | Rpc::SetQuota | Rpc::GetDefaultQuota | Rpc::SetDefaultQuota => {
                self.call_quota(rpc, token, project).await?;
            }
            Rpc::CreateNetworkForProject
            | Rpc::GetNetwork
            | Rpc::ListNetworks
            | Rpc::UpdateNetwork
            | Rpc::DeleteNetwork
            | Rpc::CreateSubnet
            | Rpc::GetSubnet
            | Rpc::ListSubnets
            | Rpc::UpdateSubnet
            | Rpc::DeleteSubnet
            | Rpc::GetPort
            | Rpc::ListPorts
            | Rpc::UpdatePort
            | Rpc::DeletePort
            | Rpc::GetFloatingIp
            | Rpc::ListFloatingIps
            | Rpc::UpdateFloatingIp
            | Rpc::DeleteFloatingIp
            | Rpc::AssociateFloatingIp
            | Rpc::DisassociateFloatingIp
            | Rpc::GetSecurityGroup
            | Rpc::ListSecurityGroups
            | Rpc::UpdateSecurityGroup
            | Rpc::DeleteSecurityGroup
            | Rpc::CreateSecurityGroupRule
            | Rpc::GetSecurityGroupRule
            | Rpc::ListSecurityGroupRules
            | Rpc::DeleteSecurityGroupRule => {
                self.call_network(rpc, token, t).await?;
            }
        }
        Ok(())
    }
}

fn rule(rpc: Rpc) -> (Rule, &'static [Target]) {
    use Rpc::*;
    const BOTH: &[Target] = &[Target::Own, Target::Other];
    const NONE: &[Target] = &[Target::NoProject];
    match rpc {
        GetProject | GetQuota => (Rule::ReadOwn, BOTH),
        UpdateProject | DeleteProject | AddRoleAssignment | RemoveRoleAssignment
        | AddFlavorAccess | RemoveFlavorAccess | SetQuota => (Rule::Admin, BOTH),
        ListRoleAssignments => (Rule::Any, BOTH),
        CreateProject | CreateUser | GetUserOther | UpdateUser | DeleteUser | SetPasswordOther
        | RotateSigningKey | CreateFlavor | UpdateFlavor | DeleteFlavor | GetClusterStatus
        | GetMemberStatus | ListMembers | AddMember | RemoveMember | TransferLeader
        | SetDefaultQuota => (Rule::Admin, NONE),
        ListProjects | GetUserSelf | ListUsers | SetPasswordSelf | RevokeToken | WhoAmI
        | GetFlavor | ListFlavors | WatchEvents | GetDefaultQuota | ListImages => (Rule::Any, NONE),
        CreateImage => (Rule::WriteOwn, BOTH),
        GetImage | DownloadImage | ListImageMembers => (Rule::ImageRead, BOTH),
        UpdateImage | DeleteImage | UploadImage | AddImageMember | RemoveImageMember => {
            (Rule::ImageWrite, BOTH)
        }
        PublishImage => (Rule::ImagePublish, BOTH),
        // Networking resources of a project are hidden from other projects like images.
        CreateNetworkForProject => (Rule::Admin, BOTH),
        ListNetworks
        | ListSubnets
        | ListPorts
        | ListFloatingIps
        | ListSecurityGroups
        | ListSecurityGroupRules => (Rule::Any, NONE),
        GetNetwork | GetSubnet | GetPort | GetFloatingIp | GetSecurityGroup
        | GetSecurityGroupRule => (Rule::ImageRead, BOTH),
        UpdateNetwork
        | DeleteNetwork
        | CreateSubnet
        | UpdateSubnet
        | DeleteSubnet
        | UpdatePort
        | DeletePort
        | UpdateFloatingIp
        | DeleteFloatingIp
        | AssociateFloatingIp
        | DisassociateFloatingIp
        | UpdateSecurityGroup
        | DeleteSecurityGroup
        | CreateSecurityGroupRule
        | DeleteSecurityGroupRule => (Rule::ImageWrite, BOTH),
    }
}

const ALL: &[Rpc] = &[
    Rpc::CreateProject,
    Rpc::GetProject,
    Rpc::ListProjects,
    Rpc::UpdateProject,
    Rpc::DeleteProject,
    Rpc::CreateUser,
    Rpc::GetUserSelf,
    Rpc::GetUserOther,
    Rpc::ListUsers,
    Rpc::UpdateUser,
    Rpc::DeleteUser,
    Rpc::SetPasswordSelf,
    Rpc::SetPasswordOther,
    Rpc::AddRoleAssignment,
    Rpc::RemoveRoleAssignment,
    Rpc::ListRoleAssignments,
    Rpc::RevokeToken,
    Rpc::WhoAmI,
    Rpc::RotateSigningKey,
    Rpc::CreateFlavor,
    Rpc::GetFlavor,
    Rpc::ListFlavors,
    Rpc::UpdateFlavor,
    Rpc::DeleteFlavor,
    Rpc::AddFlavorAccess,
    Rpc::RemoveFlavorAccess,
    Rpc::GetClusterStatus,
    Rpc::GetMemberStatus,
    Rpc::ListMembers,
    Rpc::AddMember,
    Rpc::RemoveMember,
    Rpc::TransferLeader,
    Rpc::WatchEvents,
    Rpc::GetQuota,
    Rpc::SetQuota,
    Rpc::GetDefaultQuota,
    Rpc::SetDefaultQuota,
    Rpc::CreateImage,
    Rpc::GetImage,
    Rpc::ListImages,
    Rpc::UpdateImage,
    Rpc::PublishImage,
    Rpc::DeleteImage,
    Rpc::UploadImage,
    Rpc::DownloadImage,
    Rpc::AddImageMember,
    Rpc::RemoveImageMember,
    Rpc::ListImageMembers,
    Rpc::CreateNetworkForProject,
    Rpc::GetNetwork,
    Rpc::ListNetworks,
    Rpc::UpdateNetwork,
    Rpc::DeleteNetwork,
    Rpc::CreateSubnet,
    Rpc::GetSubnet,
    Rpc::ListSubnets,
    Rpc::UpdateSubnet,
    Rpc::DeleteSubnet,
    Rpc::GetPort,
    Rpc::ListPorts,
    Rpc::UpdatePort,
    Rpc::DeletePort,
    Rpc::GetFloatingIp,
    Rpc::ListFloatingIps,
    Rpc::UpdateFloatingIp,
    Rpc::DeleteFloatingIp,
    Rpc::AssociateFloatingIp,
    Rpc::DisassociateFloatingIp,
    Rpc::GetSecurityGroup,
    Rpc::ListSecurityGroups,
    Rpc::UpdateSecurityGroup,
    Rpc::DeleteSecurityGroup,
    Rpc::CreateSecurityGroupRule,
    Rpc::GetSecurityGroupRule,
    Rpc::ListSecurityGroupRules,
    Rpc::DeleteSecurityGroupRule,
];

/// Calls whose allowed form is deliberately invalid (see [`World::call`]).
fn lenient(rpc: Rpc) -> bool {
    matches!(
        rpc,
        Rpc::AddMember | Rpc::RemoveMember | Rpc::TransferLeader
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_allows_and_denies_by_role_and_project() {
    let w = World::start().await;
    let principals = w.populate().await;
    let mut failures = Vec::new();
    for &rpc in ALL {
        let (rule, targets) = rule(rpc);
        for &t in targets {
            for (who, token) in &principals {
                let got = w.call(rpc, who, token.as_deref(), t).await;
                let expected = expected(rule, who, t);
                let ok = match (&got, expected) {
                    (Ok(()), None) => true,
                    (Err(e), None) => {
                        lenient(rpc)
                            && !matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated)
                    }
                    (Err(e), Some(code)) => e.code() == code,
                    (Ok(()), Some(_)) => false,
                };
                if !ok {
                    failures.push(format!(
                        "{rpc:?} as {who} on {t:?}: expected {expected:?}, got {got:?}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    w.cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_only_their_projects_users_and_assignments() {
    let w = World::start().await;
    let principals = w.populate().await;
    let token = |name: &str| {
        principals
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, t)| t.clone())
    };
    for (who, expected) in [
        ("boss", vec!["other", "outsider", "own"]),
        ("member", vec!["own"]),
        ("reader", vec!["own"]),
        ("norole", vec![]),
    ] {
        let r = w
            .req(token(who).as_deref(), pb::ListProjectsRequest::default())
            .unwrap();
        let mut names: Vec<String> = w
            .identity
            .list_projects(r)
            .await
            .unwrap()
            .into_inner()
            .projects
            .into_iter()
            .map(|p| p.name)
            .collect();
        names.sort();
        assert_eq!(names, expected, "{who}");
    }
    let r = w
        .req(token("member").as_deref(), pb::ListUsersRequest::default())
        .unwrap();
    let users = w.identity.list_users(r).await.unwrap().into_inner().users;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].name, "member");
    let r = w
        .req(
            token("member").as_deref(),
            pb::ListRoleAssignmentsRequest::default(),
        )
        .unwrap();
    let mine = w
        .identity
        .list_role_assignments(r)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.assignments.len(), 1);
    assert_eq!(mine.assignments[0].role, "member");
    let r = w
        .req(
            token("member").as_deref(),
            pb::ListFlavorsRequest::default(),
        )
        .unwrap();
    let flavors = w
        .flavors
        .list_flavors(r)
        .await
        .unwrap()
        .into_inner()
        .flavors;
    let names: Vec<_> = flavors.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["small"],
        "a private flavor without access is hidden"
    );
    w.cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_scopes_tokens_and_revocation_disabling_and_throttling_take_effect() {
    let w = World::start().await;
    w.populate().await;
    // Scoping: a project the user holds no role in is refused.
    let err = w.login("member", "other").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let t = w.login("member", "own").await.unwrap();
    assert_eq!(t.roles, ["member"]);
    assert!(t.expires_at_ms > crate::server::now_ms() + 11 * 3600 * 1000);
    let r = w.req(Some(&t.token), pb::WhoAmIRequest {}).unwrap();
    let me = w.identity.who_am_i(r).await.unwrap().into_inner();
    assert_eq!(
        (me.user_name.as_str(), me.roles.as_slice()),
        ("member", &["member".to_string()][..])
    );

    // Revocation: the token stops working at once.
    let r = w
        .req(
            Some(&t.token),
            pb::RevokeTokenRequest {
                token_id: t.token_id.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    w.identity.revoke_token(r).await.unwrap();
    let err = w.req(Some(&t.token), ()).unwrap_err();
    assert!(err.message().contains("revoked"), "{err:?}");

    // Key rotation: tokens signed by the old key keep working, new ones use the new key.
    let before = w.login("reader", "").await.unwrap();
    let r = w.admin(pb::RotateSigningKeyRequest::default());
    w.identity.rotate_signing_key(r).await.unwrap();
    assert!(w.req(Some(&before.token), ()).is_ok());
    let after = w.login("reader", "").await.unwrap();
    assert_ne!(
        before.token.split('.').nth(1),
        after.token.split('.').nth(1)
    );

    // A disabled project stops its members (admins still act).
    let r = w.admin(pb::UpdateProjectRequest {
        project: "own".into(),
        enabled: Some(false),
        ..Default::default()
    });
    w.identity.update_project(r).await.unwrap();
    let r = w
        .req(
            Some(&after.token),
            pb::GetProjectRequest {
                project: "own".into(),
                stale: false,
            },
        )
        .unwrap();
    let err = w.identity.get_project(r).await.unwrap_err();
    assert!(err.message().contains("disabled"), "{err:?}");

    // Throttling: five wrong passwords, then RESOURCE_EXHAUSTED even for the right one.
    for _ in 0..5 {
        let r = w
            .req(
                None,
                pb::LoginRequest {
                    user: "norole".into(),
                    password: "wrong-password".into(),
                    project: String::new(),
                },
            )
            .unwrap();
        let err = w.identity.login(r).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let err = w.login("norole", "").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("retry in"), "{err:?}");
    w.cluster.shutdown();
}
