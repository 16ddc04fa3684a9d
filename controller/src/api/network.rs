//! NetworkService: networks, subnets, ports, floating IPs and security groups over the
//! replicated state (IPAM happens in `apply`, see `state::networks`).
//!
//! Authorization as elsewhere: readers of a project read its resources, members change them,
//! admins everything. Non-admins also see (and attach ports to) shared networks and see
//! external networks. Provider networks (flat, VLAN), chosen segmentation ids, physical networks
//! and the `external`/`shared` flags are admin only, as in Neutron. `--all-projects` is admin
//! only; a `project` filter needs a role in that project.
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::network_service_server::NetworkService;
use tonic::{Request, Response, Status};

use super::authz::{Action, Principal};
use super::{allow, auth::principal, convert::meta, new_id, page_size, paginate, required, Api};
use crate::state::{
    Command, Direction, Ethertype, FixedIp, FloatingIp, GatewaySpec, HostRoute, NetCommand,
    NetOutcome, Network, NetworkSpec, NetworkType, Outcome, Port, PortSpec, Project, RuleSpec,
    SecurityGroup, SecurityGroupRule, State, Subnet, SubnetSpec, DEFAULT_GROUP_IDS,
    NEW_GROUP_RULE_IDS,
};

pub struct NetworkApi {
    pub api: Api,
    /// Inclusive range tenant VNIs come from (this controller's configuration).
    pub vni_range: (u32, u32),
}

fn token_project(p: &Principal) -> String {
    p.token
        .as_ref()
        .map(|t| t.project_id.clone())
        .unwrap_or_default()
}

fn fresh(n: usize) -> Vec<String> {
    (0..n).map(|_| new_id()).collect()
}

fn admin_only(p: &Principal, what: &str) -> Result<(), Status> {
    if p.admin {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "permission denied: {what} needs the cluster admin role"
    )))
}

fn project_of<'s>(state: &'s State, id: &str) -> Result<&'s Project, Status> {
    state
        .project(id)
        .ok_or_else(|| Status::not_found(format!("project {id:?} not found")))
}

/// The caller's token project, which must exist.
fn own_project<'s>(state: &'s State, p: &Principal) -> Result<&'s Project, Status> {
    let id = token_project(p);
    if id.is_empty() {
        return Err(Status::invalid_argument(
            "your token is not scoped to a project: log in with --project",
        ));
    }
    state
        .project(&id)
        .ok_or_else(|| Status::not_found("your token's project no longer exists"))
}

fn may_write(state: &State, p: &Principal, project_id: &str) -> Result<(), Status> {
    allow(
        p,
        Action::WriteProject,
        Some(project_of(state, project_id)?),
    )
}

fn network_visible(p: &Principal, n: &Network) -> bool {
    p.admin || p.in_project(&n.project_id) || n.shared || n.external
}

fn owned_visible(p: &Principal, project_id: &str) -> bool {
    p.admin || p.in_project(project_id)
}

/// Finds a resource by id among those visible, else by a name unique among those visible
/// (preferring the caller's token project).
fn resolve<'s, T: 's>(
    kind: &str,
    key: &str,
    by_id: Option<&'s T>,
    all: impl Iterator<Item = &'s T>,
    visible: impl Fn(&T) -> bool,
    name_project: impl Fn(&T) -> (&str, &str),
    scope: &str,
) -> Result<&'s T, Status> {
    required(kind, key)?;
    if let Some(found) = by_id.filter(|t| visible(t)) {
        return Ok(found);
    }
    let named: Vec<&T> = all
        .filter(|t| visible(t) && name_project(t).0 == key)
        .collect();
    let own: Vec<&T> = named
        .iter()
        .copied()
        .filter(|t| name_project(t).1 == scope)
        .collect();
    let pick = if own.len() == 1 { own } else { named };
    match pick.as_slice() {
        [one] => Ok(one),
        [] => Err(Status::not_found(format!("{kind} {key:?} not found"))),
        _ => Err(Status::failed_precondition(format!(
            "several {kind}s are named {key:?}; use the id"
        ))),
    }
}

/// A List RPC's optional network filter: none when empty, else the network's id.
fn network_filter(state: &State, p: &Principal, key: &str) -> Result<Option<String>, Status> {
    if key.is_empty() {
        return Ok(None);
    }
    Ok(Some(find_network(state, p, key)?.id.clone()))
}

pub(super) fn find_network<'s>(
    state: &'s State,
    p: &Principal,
    key: &str,
) -> Result<&'s Network, Status> {
    resolve(
        "network",
        key,
        state.network(key),
        state.networks_after(""),
        |n| network_visible(p, n),
        |n| (n.name.as_str(), n.project_id.as_str()),
        &token_project(p),
    )
}

fn subnet_visible(state: &State, p: &Principal, s: &Subnet) -> bool {
    owned_visible(p, &s.project_id)
        || state
            .network(&s.network_id)
            .is_some_and(|n| network_visible(p, n))
}

fn find_subnet<'s>(state: &'s State, p: &Principal, key: &str) -> Result<&'s Subnet, Status> {
    resolve(
        "subnet",
        key,
        state.subnet(key),
        state.subnets_after(""),
        |s| subnet_visible(state, p, s),
        |s| (s.name.as_str(), s.project_id.as_str()),
        &token_project(p),
    )
}

pub(super) fn find_port<'s>(
    state: &'s State,
    p: &Principal,
    key: &str,
) -> Result<&'s Port, Status> {
    resolve(
        "port",
        key,
        state.port(key),
        state.ports_after(""),
        |x| owned_visible(p, &x.project_id),
        |x| (x.name.as_str(), x.project_id.as_str()),
        &token_project(p),
    )
}

/// Floating IPs are named by id or by address.
pub(super) fn find_floating_ip<'s>(
    state: &'s State,
    p: &Principal,
    key: &str,
) -> Result<&'s FloatingIp, Status> {
    resolve(
        "floating IP",
        key,
        state.floating_ip(key),
        state.floating_ips_after(""),
        |f| owned_visible(p, &f.project_id),
        |f| (f.address.as_str(), f.project_id.as_str()),
        &token_project(p),
    )
}

fn find_group<'s>(state: &'s State, p: &Principal, key: &str) -> Result<&'s SecurityGroup, Status> {
    resolve(
        "security group",
        key,
        state.security_group(key),
        state.security_groups_after(""),
        |g| owned_visible(p, &g.project_id),
        |g| (g.name.as_str(), g.project_id.as_str()),
        &token_project(p),
    )
}

/// Security groups of `project_id` by id or name.
fn groups_in(state: &State, project_id: &str, keys: &[String]) -> Result<Vec<String>, Status> {
    keys.iter()
        .map(|k| {
            state
                .security_group(k)
                .filter(|g| g.project_id == project_id)
                .or_else(|| {
                    state
                        .security_groups_after("")
                        .find(|g| g.project_id == project_id && g.name == *k)
                })
                .map(|g| g.id.clone())
                .ok_or_else(|| {
                    Status::not_found(format!("security group {k:?} not found in the project"))
                })
        })
        .collect()
}

/// The project a list is limited to: `project` (needs a role there), every project (admins
/// with `all_projects`), or the token's project.
fn list_scope(
    state: &State,
    p: &Principal,
    all_projects: bool,
    project: &str,
) -> Result<Option<String>, Status> {
    if all_projects && !p.admin {
        return Err(Status::permission_denied(
            "permission denied: --all-projects needs the cluster admin role",
        ));
    }
    if !project.is_empty() {
        let pr = project_of(state, project)?;
        allow(p, Action::ReadProject, Some(pr))?;
        return Ok(Some(pr.id.clone()));
    }
    let scope = token_project(p);
    if all_projects || scope.is_empty() {
        Ok(None)
    } else {
        Ok(Some(scope))
    }
}

fn net_outcome(out: Outcome) -> Result<NetOutcome, Status> {
    match out {
        Outcome::Net(o) => Ok(*o),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

fn unexpected(o: NetOutcome) -> Status {
    Status::internal(format!("unexpected outcome {o:?}"))
}

// ---- conversions ------------------------------------------------------------------------

fn status(up: bool) -> i32 {
    if up {
        pb::NetworkResourceStatus::Active as i32
    } else {
        pb::NetworkResourceStatus::Down as i32
    }
}

pub(super) fn network_type_to_pb(t: NetworkType) -> i32 {
    (match t {
        NetworkType::Vxlan => pb::NetworkType::Vxlan,
        NetworkType::Flat => pb::NetworkType::Flat,
        NetworkType::Vlan => pb::NetworkType::Vlan,
    }) as i32
}

pub fn network(n: &Network) -> pb::Network {
    pb::Network {
        id: n.id.clone(),
        name: n.name.clone(),
        project_id: n.project_id.clone(),
        network_type: network_type_to_pb(n.network_type),
        segmentation_id: n.segmentation_id,
        physical_network: n.physical_network.clone(),
        external: n.external,
        shared: n.shared,
        mtu: n.mtu,
        admin_state_up: n.admin_state_up,
        status: status(n.admin_state_up),
        subnet_ids: n.subnet_ids.clone(),
        description: n.description.clone(),
        meta: Some(meta(&n.meta)),
    }
}

fn routes_to_pb(routes: &[HostRoute]) -> Vec<pb::SubnetHostRoute> {
    routes
        .iter()
        .map(|r| pb::SubnetHostRoute {
            destination: r.destination.clone(),
            nexthop: r.nexthop.clone(),
        })
        .collect()
}

fn routes_from_pb(routes: Vec<pb::SubnetHostRoute>) -> Vec<HostRoute> {
    routes
        .into_iter()
        .map(|r| HostRoute {
            destination: r.destination,
            nexthop: r.nexthop,
        })
        .collect()
}

pub fn subnet(s: &Subnet) -> pb::Subnet {
    pb::Subnet {
        id: s.id.clone(),
        network_id: s.network_id.clone(),
        name: s.name.clone(),
        project_id: s.project_id.clone(),
        cidr: s.cidr.to_string(),
        ip_version: s.cidr.family.version(),
        gateway_ip: s.gateway_ip(),
        allocation_pools: s
            .pool_strings()
            .into_iter()
            .map(|(start, end)| pb::SubnetAllocationPool { start, end })
            .collect(),
        dns_nameservers: s.dns_nameservers.clone(),
        enable_dhcp: s.enable_dhcp,
        host_routes: routes_to_pb(&s.host_routes),
        description: s.description.clone(),
        meta: Some(meta(&s.meta)),
    }
}

/// A port as users see it: its host is its server's owner host, and it is ACTIVE once that
/// host's agent reported it wired (DOWN before, after a move until the new host reports it,
/// while the host is down, and when unbound or administratively down).
pub fn port(state: &State, p: &Port) -> pb::Port {
    let st = if p.admin_state_up && state.port_wired(p) {
        pb::NetworkResourceStatus::Active
    } else {
        pb::NetworkResourceStatus::Down
    };
    let host = state
        .port_host(p)
        .map(|h| h.info.hostname.clone())
        .unwrap_or_default();
    pb::Port {
        id: p.id.clone(),
        network_id: p.network_id.clone(),
        name: p.name.clone(),
        project_id: p.project_id.clone(),
        mac_address: p.mac_address.clone(),
        fixed_ips: p
            .fixed_ips
            .iter()
            .map(|f| pb::PortFixedIp {
                subnet_id: f.subnet_id.clone(),
                ip_address: f.ip_address.clone(),
            })
            .collect(),
        security_group_ids: p.security_group_ids.clone(),
        device_owner: p.device_owner.clone(),
        device_id: p.device_id.clone(),
        host,
        status: st as i32,
        admin_state_up: p.admin_state_up,
        port_security_enabled: p.port_security_enabled,
        description: p.description.clone(),
        meta: Some(meta(&p.meta)),
    }
}

pub fn floating_ip(state: &State, f: &FloatingIp) -> pb::FloatingIp {
    let port = state.port(&f.port_id);
    let server_id = port
        .filter(|p| p.device_owner.starts_with("compute:"))
        .map(|p| p.device_id.clone())
        .unwrap_or_default();
    pb::FloatingIp {
        id: f.id.clone(),
        floating_network_id: f.network_id.clone(),
        floating_ip_address: f.address.clone(),
        port_id: f.port_id.clone(),
        fixed_ip_address: f.fixed_ip_address.clone(),
        project_id: f.project_id.clone(),
        status: status(port.is_some()),
        server_id,
        host: port
            .and_then(|p| state.port_host(p))
            .map(|h| h.info.hostname.clone())
            .unwrap_or_default(),
        description: f.description.clone(),
        meta: Some(meta(&f.meta)),
    }
}

fn direction_to_pb(d: Direction) -> i32 {
    (match d {
        Direction::Ingress => pb::SecurityGroupRuleDirection::Ingress,
        Direction::Egress => pb::SecurityGroupRuleDirection::Egress,
    }) as i32
}

pub fn rule(r: &SecurityGroupRule) -> pb::SecurityGroupRule {
    pb::SecurityGroupRule {
        id: r.id.clone(),
        security_group_id: r.security_group_id.clone(),
        direction: direction_to_pb(r.direction),
        ethertype: (match r.ethertype {
            Ethertype::Ipv4 => pb::SecurityGroupRuleEthertype::Ipv4,
            Ethertype::Ipv6 => pb::SecurityGroupRuleEthertype::Ipv6,
        }) as i32,
        protocol: r.protocol.clone(),
        port_range_min: r.port_range_min,
        port_range_max: r.port_range_max,
        remote_ip_prefix: r.remote_ip_prefix.clone(),
        remote_group_id: r.remote_group_id.clone(),
        description: r.description.clone(),
        project_id: r.project_id.clone(),
        meta: Some(meta(&r.meta)),
    }
}

pub fn security_group(state: &State, g: &SecurityGroup) -> pb::SecurityGroup {
    pb::SecurityGroup {
        id: g.id.clone(),
        name: g.name.clone(),
        description: g.description.clone(),
        project_id: g.project_id.clone(),
        rules: state.rules_of(&g.id).map(rule).collect(),
        meta: Some(meta(&g.meta)),
    }
}

fn direction_from_pb(v: i32) -> Result<Option<Direction>, Status> {
    match pb::SecurityGroupRuleDirection::try_from(v) {
        Ok(pb::SecurityGroupRuleDirection::Unspecified) => Ok(None),
        Ok(pb::SecurityGroupRuleDirection::Ingress) => Ok(Some(Direction::Ingress)),
        Ok(pb::SecurityGroupRuleDirection::Egress) => Ok(Some(Direction::Egress)),
        Err(_) => Err(Status::invalid_argument(format!("unknown direction {v}"))),
    }
}

// ---- the service ----------------------------------------------------------------------------

impl NetworkApi {
    async fn run(
        &self,
        request_id: String,
        actor: String,
        c: NetCommand,
    ) -> Result<NetOutcome, Status> {
        net_outcome(
            self.api
                .propose(request_id, actor, Command::Networking(c))
                .await?,
        )
    }

    /// A retry answers with the resource as it is now.
    fn network_now(&self, n: Network) -> pb::Network {
        let state = self.api.node.state();
        network(state.network(&n.id).unwrap_or(&n))
    }

    fn subnet_now(&self, s: Subnet) -> pb::Subnet {
        let state = self.api.node.state();
        subnet(state.subnet(&s.id).unwrap_or(&s))
    }

    fn port_now(&self, p: Port) -> pb::Port {
        let state = self.api.node.state();
        port(&state, state.port(&p.id).unwrap_or(&p))
    }

    fn floating_ip_now(&self, f: FloatingIp) -> pb::FloatingIp {
        let state = self.api.node.state();
        floating_ip(&state, state.floating_ip(&f.id).unwrap_or(&f))
    }

    fn group_now(&self, g: SecurityGroup) -> pb::SecurityGroup {
        let state = self.api.node.state();
        security_group(&state, state.security_group(&g.id).unwrap_or(&g))
    }

    async fn floating_ip_reply(&self, out: NetOutcome) -> Result<Response<pb::FloatingIp>, Status> {
        match out {
            NetOutcome::FloatingIp(f) => Ok(Response::new(self.floating_ip_now(f))),
            o => Err(unexpected(o)),
        }
    }
}

#[tonic::async_trait]
impl NetworkService for NetworkApi {
    async fn create_network(
        &self,
        req: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let network_type = match pb::NetworkType::try_from(r.network_type) {
            Ok(pb::NetworkType::Unspecified | pb::NetworkType::Vxlan) => NetworkType::Vxlan,
            Ok(pb::NetworkType::Flat) => NetworkType::Flat,
            Ok(pb::NetworkType::Vlan) => NetworkType::Vlan,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown network type {}",
                    r.network_type
                )))
            }
        };
        if network_type != NetworkType::Vxlan {
            admin_only(&p, "a flat or VLAN (provider) network")?;
        }
        if r.segmentation_id != 0 {
            admin_only(&p, "choosing a segmentation id")?;
        }
        if !r.physical_network.is_empty() {
            admin_only(&p, "choosing a physical network")?;
        }
        if r.external {
            admin_only(&p, "an external network")?;
        }
        if r.shared {
            admin_only(&p, "a shared network")?;
        }
        let project_id = {
            let state = self.api.read(false).await?;
            let project = if r.project.is_empty() {
                own_project(&state, &p)?
            } else {
                admin_only(&p, "creating a network in another project")?;
                project_of(&state, &r.project)?
            };
            allow(&p, Action::WriteProject, Some(project))?;
            project.id.clone()
        };
        let spec = NetworkSpec {
            id: new_id(),
            name: r.name,
            description: r.description,
            project_id,
            network_type,
            segmentation_id: r.segmentation_id,
            physical_network: r.physical_network,
            external: r.external,
            shared: r.shared,
            mtu: r.mtu,
            admin_state_up: r.admin_state_up.unwrap_or(true),
            vni_range: self.vni_range,
        };
        match self
            .run(r.request_id, p.name, NetCommand::CreateNetwork(spec))
            .await?
        {
            NetOutcome::Network(n) => Ok(Response::new(self.network_now(n))),
            o => Err(unexpected(o)),
        }
    }

    async fn get_network(
        &self,
        req: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let state = self.api.read(r.stale).await?;
        Ok(Response::new(network(find_network(
            &state, &p, &r.network,
        )?)))
    }

    async fn list_networks(
        &self,
        req: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let state = self.api.read(r.stale).await?;
        let scope = list_scope(&state, &p, r.all_projects, &r.project)?;
        let explicit = !r.project.is_empty();
        let (page, next) = paginate(
            state.networks_after(&r.page_token).filter(|n| {
                network_visible(&p, n)
                    && match &scope {
                        None => true,
                        // Like Neutron, a project's list includes shared and external networks
                        // unless a project was asked for explicitly.
                        Some(id) => &n.project_id == id || (!explicit && (n.shared || n.external)),
                    }
                    && (r.name.is_empty() || n.name == r.name)
                    && r.external.is_none_or(|e| n.external == e)
            }),
            page_size(r.page_size),
            |n| n.id.clone(),
        );
        Ok(Response::new(pb::ListNetworksResponse {
            networks: page.into_iter().map(network).collect(),
            next_page_token: next,
        }))
    }

    async fn update_network(
        &self,
        req: Request<pb::UpdateNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        if r.shared.is_some() {
            admin_only(&p, "changing whether a network is shared")?;
        }
        if r.external.is_some() {
            admin_only(&p, "changing whether a network is external")?;
        }
        let network_id = {
            let state = self.api.read(false).await?;
            let n = find_network(&state, &p, &r.network)?;
            may_write(&state, &p, &n.project_id)?;
            n.id.clone()
        };
        let cmd = NetCommand::UpdateNetwork {
            network_id,
            name: r.name,
            description: r.description,
            admin_state_up: r.admin_state_up,
            shared: r.shared,
            external: r.external,
            mtu: r.mtu,
        };
        match self.run(r.request_id, p.name, cmd).await? {
            NetOutcome::Network(n) => Ok(Response::new(self.network_now(n))),
            o => Err(unexpected(o)),
        }
    }

    async fn delete_network(
        &self,
        req: Request<pb::DeleteNetworkRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let network_id = {
            let state = self.api.read(false).await?;
            let n = find_network(&state, &p, &r.network)?;
            may_write(&state, &p, &n.project_id)?;
            n.id.clone()
        };
        self.api
            .propose(
                r.request_id,
                p.name,
                Command::Networking(NetCommand::DeleteNetwork { network_id }),
            )
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn create_subnet(
        &self,
        req: Request<pb::CreateSubnetRequest>,
    ) -> Result<Response<pb::Subnet>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        required("cidr", &r.cidr)?;
        let network_id = {
            let state = self.api.read(false).await?;
            let n = find_network(&state, &p, &r.network)?;
            may_write(&state, &p, &n.project_id)?;
            n.id.clone()
        };
        let gateway = match (r.disable_gateway, r.gateway_ip.is_empty()) {
            (true, true) => GatewaySpec::None,
            (true, false) => {
                return Err(Status::invalid_argument(
                    "give either gateway_ip or disable_gateway, not both",
                ))
            }
            (false, true) => GatewaySpec::Default,
            (false, false) => GatewaySpec::Address(r.gateway_ip),
        };
        let spec = SubnetSpec {
            id: new_id(),
            network_id,
            name: r.name,
            description: r.description,
            cidr: r.cidr,
            ip_version: r.ip_version,
            gateway,
            allocation_pools: r
                .allocation_pools
                .into_iter()
                .map(|a| (a.start, a.end))
                .collect(),
            dns_nameservers: r.dns_nameservers,
            enable_dhcp: r.enable_dhcp.unwrap_or(true),
            host_routes: routes_from_pb(r.host_routes),
        };
        match self
            .run(r.request_id, p.name, NetCommand::CreateSubnet(spec))
            .await?
        {
            NetOutcome::Subnet(s) => Ok(Response::new(self.subnet_now(s))),
            o => Err(unexpected(o)),
        }
    }

    async fn get_subnet(
        &self,
        req: Request<pb::GetSubnetRequest>,
    ) -> Result<Response<pb::Subnet>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let state = self.api.read(r.stale).await?;
        Ok(Response::new(subnet(find_subnet(&state, &p, &r.subnet)?)))
    }

    async fn list_subnets(
        &self,
        req: Request<pb::ListSubnetsRequest>,
    ) -> Result<Response<pb::ListSubnetsResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let state = self.api.read(r.stale).await?;
        let scope = list_scope(&state, &p, r.all_projects, &r.project)?;
        let network_id = network_filter(&state, &p, &r.network)?;
        let (page, next) = paginate(
            state.subnets_after(&r.page_token).filter(|s| {
                subnet_visible(&state, &p, s)
                    && network_id.as_ref().is_none_or(|id| &s.network_id == id)
                    // Subnets of a network named explicitly are all listed (it may be shared).
                    && (network_id.is_some()
                        || scope.as_ref().is_none_or(|id| &s.project_id == id))
            }),
            page_size(r.page_size),
            |s| s.id.clone(),
        );
        Ok(Response::new(pb::ListSubnetsResponse {
            subnets: page.into_iter().map(subnet).collect(),
            next_page_token: next,
        }))
    }

    async fn update_subnet(
        &self,
        req: Request<pb::UpdateSubnetRequest>,
    ) -> Result<Response<pb::Subnet>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let subnet_id = {
            let state = self.api.read(false).await?;
            let s = find_subnet(&state, &p, &r.subnet)?;
            may_write(&state, &p, &s.project_id)?;
            s.id.clone()
        };
        let cmd = NetCommand::UpdateSubnet {
            subnet_id,
            name: r.name,
            description: r.description,
            gateway_ip: r.gateway_ip,
            enable_dhcp: r.enable_dhcp,
            dns_nameservers: r.dns_nameservers.map(|d| d.nameservers),
            host_routes: r.host_routes.map(|h| routes_from_pb(h.routes)),
        };
        match self.run(r.request_id, p.name, cmd).await? {
            NetOutcome::Subnet(s) => Ok(Response::new(self.subnet_now(s))),
            o => Err(unexpected(o)),
        }
    }

    async fn delete_subnet(
        &self,
        req: Request<pb::DeleteSubnetRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let subnet_id = {
            let state = self.api.read(false).await?;
            let s = find_subnet(&state, &p, &r.subnet)?;
            may_write(&state, &p, &s.project_id)?;
            s.id.clone()
        };
        self.api
            .propose(
                r.request_id,
                p.name,
                Command::Networking(NetCommand::DeleteSubnet { subnet_id }),
            )
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn create_port(
        &self,
        req: Request<pb::CreatePortRequest>,
    ) -> Result<Response<pb::Port>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let spec = {
            let state = self.api.read(false).await?;
            let project = own_project(&state, &p)?;
            allow(&p, Action::WriteProject, Some(project))?;
            let n = find_network(&state, &p, &r.network)?;
            if n.external && !p.admin {
                return Err(Status::permission_denied(
                    "permission denied: ports on an external network need the cluster admin \
                     role; use a floating IP",
                ));
            }
            let mut fixed_ips = Vec::new();
            for f in r.fixed_ips {
                let subnet_id = if f.subnet_id.is_empty() {
                    String::new()
                } else {
                    find_subnet(&state, &p, &f.subnet_id)?.id.clone()
                };
                fixed_ips.push(FixedIp {
                    subnet_id,
                    ip_address: f.ip_address,
                });
            }
            PortSpec {
                id: new_id(),
                network_id: n.id.clone(),
                project_id: project.id.clone(),
                name: r.name,
                description: r.description,
                mac_address: r.mac_address,
                fixed_ips,
                security_group_ids: groups_in(&state, &project.id, &r.security_groups)?,
                port_security_enabled: r.port_security_enabled.unwrap_or(true),
                admin_state_up: r.admin_state_up.unwrap_or(true),
                device_owner: String::new(),
                device_id: String::new(),
                default_group_ids: fresh(DEFAULT_GROUP_IDS),
            }
        };
        match self
            .run(r.request_id, p.name, NetCommand::CreatePort(spec))
            .await?
        {
            NetOutcome::Port(x) => Ok(Response::new(self.port_now(x))),
            o => Err(unexpected(o)),
        }
    }

    async fn get_port(
        &self,
        req: Request<pb::GetPortRequest>,
    ) -> Result<Response<pb::Port>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let state = self.api.read(r.stale).await?;
        Ok(Response::new(port(&state, find_port(&state, &p, &r.port)?)))
    }

    async fn list_ports(
        &self,
        req: Request<pb::ListPortsRequest>,
    ) -> Result<Response<pb::ListPortsResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let state = self.api.read(r.stale).await?;
        let scope = list_scope(&state, &p, r.all_projects, &r.project)?;
        let network_id = network_filter(&state, &p, &r.network)?;
        let (page, next) = paginate(
            state.ports_after(&r.page_token).filter(|x| {
                owned_visible(&p, &x.project_id)
                    && scope.as_ref().is_none_or(|id| &x.project_id == id)
                    && network_id.as_ref().is_none_or(|id| &x.network_id == id)
                    && (r.device_id.is_empty() || x.device_id == r.device_id)
                    && (r.device_owner.is_empty() || x.device_owner == r.device_owner)
            }),
            page_size(r.page_size),
            |x| x.id.clone(),
        );
        Ok(Response::new(pb::ListPortsResponse {
            ports: page.into_iter().map(|x| port(&state, x)).collect(),
            next_page_token: next,
        }))
    }

    async fn update_port(
        &self,
        req: Request<pb::UpdatePortRequest>,
    ) -> Result<Response<pb::Port>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let (port_id, groups) = {
            let state = self.api.read(false).await?;
            let x = find_port(&state, &p, &r.port)?;
            may_write(&state, &p, &x.project_id)?;
            let groups = match r.security_groups {
                Some(g) => Some(groups_in(&state, &x.project_id, &g.security_groups)?),
                None => None,
            };
            (x.id.clone(), groups)
        };
        let cmd = NetCommand::UpdatePort {
            port_id,
            name: r.name,
            description: r.description,
            admin_state_up: r.admin_state_up,
            port_security_enabled: r.port_security_enabled,
            security_group_ids: groups,
        };
        match self.run(r.request_id, p.name, cmd).await? {
            NetOutcome::Port(x) => Ok(Response::new(self.port_now(x))),
            o => Err(unexpected(o)),
        }
    }

    async fn delete_port(
        &self,
        req: Request<pb::DeletePortRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let port_id = {
            let state = self.api.read(false).await?;
            let x = find_port(&state, &p, &r.port)?;
            may_write(&state, &p, &x.project_id)?;
            x.id.clone()
        };
        self.api
            .propose(
                r.request_id,
                p.name,
                Command::Networking(NetCommand::DeletePort { port_id }),
            )
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn create_floating_ip(
        &self,
        req: Request<pb::CreateFloatingIpRequest>,
    ) -> Result<Response<pb::FloatingIp>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        if !r.floating_ip_address.is_empty() {
            admin_only(&p, "choosing the floating address")?;
        }
        let cmd = {
            let state = self.api.read(false).await?;
            let project = own_project(&state, &p)?;
            allow(&p, Action::WriteProject, Some(project))?;
            let n = find_network(&state, &p, &r.floating_network)?;
            let port_id = if r.port.is_empty() {
                String::new()
            } else {
                find_port(&state, &p, &r.port)?.id.clone()
            };
            NetCommand::CreateFloatingIp {
                id: new_id(),
                network_id: n.id.clone(),
                project_id: project.id.clone(),
                address: r.floating_ip_address,
                port_id,
                fixed_ip_address: r.fixed_ip_address,
                description: r.description,
            }
        };
        let out = self.run(r.request_id, p.name, cmd).await?;
        self.floating_ip_reply(out).await
    }

    async fn get_floating_ip(
        &self,
        req: Request<pb::GetFloatingIpRequest>,
    ) -> Result<Response<pb::FloatingIp>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let state = self.api.read(r.stale).await?;
        let f = find_floating_ip(&state, &p, &r.floating_ip)?;
        Ok(Response::new(floating_ip(&state, f)))
    }

    async fn list_floating_ips(
        &self,
        req: Request<pb::ListFloatingIpsRequest>,
    ) -> Result<Response<pb::ListFloatingIpsResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let state = self.api.read(r.stale).await?;
        let scope = list_scope(&state, &p, r.all_projects, &r.project)?;
        let network_id = network_filter(&state, &p, &r.floating_network)?;
        let port_id = if r.port.is_empty() {
            None
        } else {
            Some(find_port(&state, &p, &r.port)?.id.clone())
        };
        let (page, next) = paginate(
            state.floating_ips_after(&r.page_token).filter(|f| {
                owned_visible(&p, &f.project_id)
                    && scope.as_ref().is_none_or(|id| &f.project_id == id)
                    && network_id.as_ref().is_none_or(|id| &f.network_id == id)
                    && port_id.as_ref().is_none_or(|id| &f.port_id == id)
            }),
            page_size(r.page_size),
            |f| f.id.clone(),
        );
        Ok(Response::new(pb::ListFloatingIpsResponse {
            floating_ips: page.into_iter().map(|f| floating_ip(&state, f)).collect(),
            next_page_token: next,
        }))
    }

    async fn update_floating_ip(
        &self,
        req: Request<pb::UpdateFloatingIpRequest>,
    ) -> Result<Response<pb::FloatingIp>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let floating_ip_id = {
            let state = self.api.read(false).await?;
            let f = find_floating_ip(&state, &p, &r.floating_ip)?;
            may_write(&state, &p, &f.project_id)?;
            f.id.clone()
        };
        let cmd = NetCommand::UpdateFloatingIp {
            floating_ip_id,
            description: r.description,
        };
        let out = self.run(r.request_id, p.name, cmd).await?;
        self.floating_ip_reply(out).await
    }

    async fn delete_floating_ip(
        &self,
        req: Request<pb::DeleteFloatingIpRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let floating_ip_id = {
            let state = self.api.read(false).await?;
            let f = find_floating_ip(&state, &p, &r.floating_ip)?;
            may_write(&state, &p, &f.project_id)?;
            f.id.clone()
        };
        self.api
            .propose(
                r.request_id,
                p.name,
                Command::Networking(NetCommand::DeleteFloatingIp { floating_ip_id }),
            )
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn associate_floating_ip(
        &self,
        req: Request<pb::AssociateFloatingIpRequest>,
    ) -> Result<Response<pb::FloatingIp>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let cmd = {
            let state = self.api.read(false).await?;
            let f = find_floating_ip(&state, &p, &r.floating_ip)?;
            may_write(&state, &p, &f.project_id)?;
            let x = find_port(&state, &p, &r.port)?;
            may_write(&state, &p, &x.project_id)?;
            NetCommand::AssociateFloatingIp {
                floating_ip_id: f.id.clone(),
                port_id: x.id.clone(),
                fixed_ip_address: r.fixed_ip_address,
            }
        };
        let out = self.run(r.request_id, p.name, cmd).await?;
        self.floating_ip_reply(out).await
    }

    async fn disassociate_floating_ip(
        &self,
        req: Request<pb::DisassociateFloatingIpRequest>,
    ) -> Result<Response<pb::FloatingIp>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let floating_ip_id = {
            let state = self.api.read(false).await?;
            let f = find_floating_ip(&state, &p, &r.floating_ip)?;
            may_write(&state, &p, &f.project_id)?;
            f.id.clone()
        };
        let cmd = NetCommand::DisassociateFloatingIp { floating_ip_id };
        let out = self.run(r.request_id, p.name, cmd).await?;
        self.floating_ip_reply(out).await
    }

    async fn create_security_group(
        &self,
        req: Request<pb::CreateSecurityGroupRequest>,
    ) -> Result<Response<pb::SecurityGroup>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let project_id = {
            let state = self.api.read(false).await?;
            let project = own_project(&state, &p)?;
            allow(&p, Action::WriteProject, Some(project))?;
            project.id.clone()
        };
        let cmd = NetCommand::CreateSecurityGroup {
            id: new_id(),
            project_id,
            name: r.name,
            description: r.description,
            fresh_ids: fresh(NEW_GROUP_RULE_IDS + DEFAULT_GROUP_IDS),
        };
        match self.run(r.request_id, p.name, cmd).await? {
            NetOutcome::SecurityGroup(g) => Ok(Response::new(self.group_now(g))),
            o => Err(unexpected(o)),
        }
    }

    async fn get_security_group(
        &self,
        req: Request<pb::GetSecurityGroupRequest>,
    ) -> Result<Response<pb::SecurityGroup>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let state = self.api.read(r.stale).await?;
        let g = find_group(&state, &p, &r.security_group)?;
        Ok(Response::new(security_group(&state, g)))
    }

    async fn list_security_groups(
        &self,
        req: Request<pb::ListSecurityGroupsRequest>,
    ) -> Result<Response<pb::ListSecurityGroupsResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        // As in Neutron, a member's first look creates the project's default group.
        let missing = {
            let state = self.api.read(r.stale).await?;
            own_project(&state, &p).ok().and_then(|project| {
                let writable = allow(&p, Action::WriteProject, Some(project)).is_ok();
                (writable && state.default_group_of(&project.id).is_none())
                    .then(|| project.id.clone())
            })
        };
        if let Some(project_id) = missing {
            let cmd = NetCommand::EnsureDefaultSecurityGroup {
                project_id,
                fresh_ids: fresh(DEFAULT_GROUP_IDS),
            };
            self.run(String::new(), p.name.clone(), cmd).await?;
        }
        let state = self.api.read(r.stale).await?;
        let scope = list_scope(&state, &p, r.all_projects, &r.project)?;
        let (page, next) = paginate(
            state.security_groups_after(&r.page_token).filter(|g| {
                owned_visible(&p, &g.project_id)
                    && scope.as_ref().is_none_or(|id| &g.project_id == id)
                    && (r.name.is_empty() || g.name == r.name)
            }),
            page_size(r.page_size),
            |g| g.id.clone(),
        );
        Ok(Response::new(pb::ListSecurityGroupsResponse {
            security_groups: page
                .into_iter()
                .map(|g| security_group(&state, g))
                .collect(),
            next_page_token: next,
        }))
    }

    async fn update_security_group(
        &self,
        req: Request<pb::UpdateSecurityGroupRequest>,
    ) -> Result<Response<pb::SecurityGroup>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let group_id = {
            let state = self.api.read(false).await?;
            let g = find_group(&state, &p, &r.security_group)?;
            may_write(&state, &p, &g.project_id)?;
            g.id.clone()
        };
        let cmd = NetCommand::UpdateSecurityGroup {
            group_id,
            name: r.name,
            description: r.description,
        };
        match self.run(r.request_id, p.name, cmd).await? {
            NetOutcome::SecurityGroup(g) => Ok(Response::new(self.group_now(g))),
            o => Err(unexpected(o)),
        }
    }

    async fn delete_security_group(
        &self,
        req: Request<pb::DeleteSecurityGroupRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let group_id = {
            let state = self.api.read(false).await?;
            let g = find_group(&state, &p, &r.security_group)?;
            may_write(&state, &p, &g.project_id)?;
            g.id.clone()
        };
        self.api
            .propose(
                r.request_id,
                p.name,
                Command::Networking(NetCommand::DeleteSecurityGroup { group_id }),
            )
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn create_security_group_rule(
        &self,
        req: Request<pb::CreateSecurityGroupRuleRequest>,
    ) -> Result<Response<pb::SecurityGroupRule>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let direction = direction_from_pb(r.direction)?
            .ok_or_else(|| Status::invalid_argument("direction is required: ingress or egress"))?;
        let ethertype = match pb::SecurityGroupRuleEthertype::try_from(r.ethertype) {
            Ok(
                pb::SecurityGroupRuleEthertype::Unspecified | pb::SecurityGroupRuleEthertype::Ipv4,
            ) => Ethertype::Ipv4,
            Ok(pb::SecurityGroupRuleEthertype::Ipv6) => Ethertype::Ipv6,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown ethertype {}",
                    r.ethertype
                )))
            }
        };
        let spec = {
            let state = self.api.read(false).await?;
            let g = find_group(&state, &p, &r.security_group)?;
            may_write(&state, &p, &g.project_id)?;
            let remote_group_id = if r.remote_group.is_empty() {
                String::new()
            } else {
                groups_in(&state, &g.project_id, std::slice::from_ref(&r.remote_group))?.remove(0)
            };
            RuleSpec {
                id: new_id(),
                security_group_id: g.id.clone(),
                direction,
                ethertype,
                protocol: r.protocol,
                port_range_min: r.port_range_min,
                port_range_max: r.port_range_max,
                remote_ip_prefix: r.remote_ip_prefix,
                remote_group_id,
                description: r.description,
            }
        };
        match self
            .run(
                r.request_id,
                p.name,
                NetCommand::CreateSecurityGroupRule(spec),
            )
            .await?
        {
            NetOutcome::SecurityGroupRule(x) => Ok(Response::new(rule(&x))),
            o => Err(unexpected(o)),
        }
    }

    async fn get_security_group_rule(
        &self,
        req: Request<pb::GetSecurityGroupRuleRequest>,
    ) -> Result<Response<pb::SecurityGroupRule>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        required("rule", &r.rule)?;
        let state = self.api.read(r.stale).await?;
        let x = state
            .security_group_rule(&r.rule)
            .filter(|x| owned_visible(&p, &x.project_id))
            .ok_or_else(|| {
                Status::not_found(format!("security group rule {:?} not found", r.rule))
            })?;
        Ok(Response::new(rule(x)))
    }

    async fn list_security_group_rules(
        &self,
        req: Request<pb::ListSecurityGroupRulesRequest>,
    ) -> Result<Response<pb::ListSecurityGroupRulesResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let direction = direction_from_pb(r.direction)?;
        let state = self.api.read(r.stale).await?;
        let group_id = if r.security_group.is_empty() {
            None
        } else {
            Some(find_group(&state, &p, &r.security_group)?.id.clone())
        };
        let scope = token_project(&p);
        let (page, next) = paginate(
            state.security_group_rules_after(&r.page_token).filter(|x| {
                owned_visible(&p, &x.project_id)
                    && match &group_id {
                        Some(id) => &x.security_group_id == id,
                        // Without a group: the token project's rules (admins: all).
                        None => p.admin || scope.is_empty() || x.project_id == scope,
                    }
                    && direction.is_none_or(|d| x.direction == d)
            }),
            page_size(r.page_size),
            |x| x.id.clone(),
        );
        Ok(Response::new(pb::ListSecurityGroupRulesResponse {
            rules: page.into_iter().map(rule).collect(),
            next_page_token: next,
        }))
    }

    async fn delete_security_group_rule(
        &self,
        req: Request<pb::DeleteSecurityGroupRuleRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        required("rule", &r.rule)?;
        let rule_id = {
            let state = self.api.read(false).await?;
            let x = state
                .security_group_rule(&r.rule)
                .filter(|x| owned_visible(&p, &x.project_id))
                .ok_or_else(|| {
                    Status::not_found(format!("security group rule {:?} not found", r.rule))
                })?;
            may_write(&state, &p, &x.project_id)?;
            x.id.clone()
        };
        self.api
            .propose(
                r.request_id,
                p.name,
                Command::Networking(NetCommand::DeleteSecurityGroupRule { rule_id }),
            )
            .await?;
        Ok(Response::new(pb::Empty {}))
    }
}
