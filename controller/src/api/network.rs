//! NetworkService: networks, subnets, ports, floating IPs and security groups over the
//! replicated state (IPAM happens in `apply`, see `state::networks`).
//!
//! Authorization as elsewhere: readers of a project read its resources, members change them,
//! admins everything. Non-admins also see (and attach ports to) shared networks and see
//! external networks. Provider networks (flat, VLAN), chosen segmentation ids, physical networks
//! and the `external`/`shared` flags are admin only, as in Neutron. `--all-projects` is admin
//! only; a `project` filter needs a role in that project.
//!
//! Finding resources and who may see and change them: [`super::network_access`]; proto ⇄
//! state conversion: [`super::network_convert`].
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::network_service_server::NetworkService;
use tonic::{Request, Response, Status};

use super::authz::{Action, Principal};
use super::network_access::{
    admin_only, find_floating_ip, find_group, find_network, find_port, find_rule, find_subnet,
    groups_in, list_scope, may_write, network_filter, network_visible, own_project, owned_visible,
    project_of, provider_options, subnet_visible, token_project, Finder, Owned,
};
use super::network_convert::{
    direction_from_pb, ethertype_from_pb, floating_ip, network, network_spec, network_type_from_pb,
    port, routes_from_pb, rule, security_group, subnet, subnet_spec, unexpected, Answer,
};
use super::{allow, auth::principal, new_id, page_size, paginate, required, Api};
use crate::state::{
    Command, FixedIp, FloatingIp, NetCommand, NetOutcome, Network, Outcome, Port, PortSpec,
    RuleSpec, SecurityGroup, State, Subnet, DEFAULT_GROUP_IDS, NEW_GROUP_RULE_IDS,
};

pub struct NetworkApi {
    pub api: Api,
    /// Inclusive range tenant VNIs come from (this controller's configuration).
    pub vni_range: (u32, u32),
}

fn fresh(n: usize) -> Vec<String> {
    (0..n).map(|_| new_id()).collect()
}

fn net_outcome(out: Outcome) -> Result<NetOutcome, Status> {
    match out {
        Outcome::Net(o) => Ok(*o),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
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

    /// Proposes `c` and answers with the resource it made or changed, as it is now (so a
    /// retry answers with the resource as it is now).
    async fn reply<T: Answer>(
        &self,
        request_id: String,
        actor: String,
        c: NetCommand,
    ) -> Result<Response<T::Pb>, Status> {
        let x = T::take(self.run(request_id, actor, c).await?)?;
        Ok(Response::new(x.now(&self.api.node.state())))
    }

    /// A Get RPC: the resource `key` names, as users see it.
    async fn get<T, R>(
        &self,
        p: &Principal,
        stale: bool,
        key: &str,
        find: Finder<T>,
        show: fn(&State, &T) -> R,
    ) -> Result<Response<R>, Status> {
        let state = self.api.read(stale).await?;
        Ok(Response::new(show(&state, find(&state, p, key)?)))
    }

    /// The id of the resource `key` names, once the caller may change its project.
    async fn writable_id<T: Owned>(
        &self,
        p: &Principal,
        key: &str,
        find: Finder<T>,
    ) -> Result<String, Status> {
        let state = self.api.read(false).await?;
        let x = find(&state, p, key)?;
        may_write(&state, p, x.project_id())?;
        Ok(x.id().to_owned())
    }

    /// A Delete RPC: proposes `delete` of the id of the resource `key` names, once the caller
    /// may change its project.
    async fn delete<T: Owned>(
        &self,
        p: Principal,
        request_id: String,
        key: &str,
        find: Finder<T>,
        delete: fn(String) -> NetCommand,
    ) -> Result<Response<pb::Empty>, Status> {
        let id = self.writable_id(&p, key, find).await?;
        self.api
            .propose(request_id, p.name, Command::Networking(delete(id)))
            .await?;
        Ok(Response::new(pb::Empty {}))
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
        let network_type = network_type_from_pb(r.network_type)?;
        provider_options(&p, &r, network_type)?;
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
        let request_id = r.request_id.clone();
        let spec = network_spec(new_id(), r, project_id, network_type, self.vni_range);
        self.reply::<Network>(request_id, p.name, NetCommand::CreateNetwork(spec))
            .await
    }

    async fn get_network(
        &self,
        req: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        self.get(&p, r.stale, &r.network, find_network, |_, n| network(n))
            .await
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
        let network_id = self.writable_id(&p, &r.network, find_network).await?;
        let cmd = NetCommand::UpdateNetwork {
            network_id,
            name: r.name,
            description: r.description,
            admin_state_up: r.admin_state_up,
            shared: r.shared,
            external: r.external,
            mtu: r.mtu,
        };
        self.reply::<Network>(r.request_id, p.name, cmd).await
    }

    async fn delete_network(
        &self,
        req: Request<pb::DeleteNetworkRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        self.delete(p, r.request_id, &r.network, find_network, |network_id| {
            NetCommand::DeleteNetwork { network_id }
        })
        .await
    }

    async fn create_subnet(
        &self,
        req: Request<pb::CreateSubnetRequest>,
    ) -> Result<Response<pb::Subnet>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        required("cidr", &r.cidr)?;
        let network_id = self.writable_id(&p, &r.network, find_network).await?;
        let request_id = r.request_id.clone();
        let spec = subnet_spec(new_id(), r, network_id)?;
        self.reply::<Subnet>(request_id, p.name, NetCommand::CreateSubnet(spec))
            .await
    }

    async fn get_subnet(
        &self,
        req: Request<pb::GetSubnetRequest>,
    ) -> Result<Response<pb::Subnet>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        self.get(&p, r.stale, &r.subnet, find_subnet, |_, s| subnet(s))
            .await
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
        let subnet_id = self.writable_id(&p, &r.subnet, find_subnet).await?;
        let cmd = NetCommand::UpdateSubnet {
            subnet_id,
            name: r.name,
            description: r.description,
            gateway_ip: r.gateway_ip,
            enable_dhcp: r.enable_dhcp,
            dns_nameservers: r.dns_nameservers.map(|d| d.nameservers),
            host_routes: r.host_routes.map(|h| routes_from_pb(h.routes)),
        };
        self.reply::<Subnet>(r.request_id, p.name, cmd).await
    }

    async fn delete_subnet(
        &self,
        req: Request<pb::DeleteSubnetRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        self.delete(p, r.request_id, &r.subnet, find_subnet, |subnet_id| {
            NetCommand::DeleteSubnet { subnet_id }
        })
        .await
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
        self.reply::<Port>(r.request_id, p.name, NetCommand::CreatePort(spec))
            .await
    }

    async fn get_port(
        &self,
        req: Request<pb::GetPortRequest>,
    ) -> Result<Response<pb::Port>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        self.get(&p, r.stale, &r.port, find_port, port).await
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
        self.reply::<Port>(r.request_id, p.name, cmd).await
    }

    async fn delete_port(
        &self,
        req: Request<pb::DeletePortRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        self.delete(p, r.request_id, &r.port, find_port, |port_id| {
            NetCommand::DeletePort { port_id }
        })
        .await
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
        self.reply::<FloatingIp>(r.request_id, p.name, cmd).await
    }

    async fn get_floating_ip(
        &self,
        req: Request<pb::GetFloatingIpRequest>,
    ) -> Result<Response<pb::FloatingIp>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        self.get(&p, r.stale, &r.floating_ip, find_floating_ip, floating_ip)
            .await
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
        let floating_ip_id = self
            .writable_id(&p, &r.floating_ip, find_floating_ip)
            .await?;
        let cmd = NetCommand::UpdateFloatingIp {
            floating_ip_id,
            description: r.description,
        };
        self.reply::<FloatingIp>(r.request_id, p.name, cmd).await
    }

    async fn delete_floating_ip(
        &self,
        req: Request<pb::DeleteFloatingIpRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        self.delete(
            p,
            r.request_id,
            &r.floating_ip,
            find_floating_ip,
            |floating_ip_id| NetCommand::DeleteFloatingIp { floating_ip_id },
        )
        .await
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
        self.reply::<FloatingIp>(r.request_id, p.name, cmd).await
    }

    async fn disassociate_floating_ip(
        &self,
        req: Request<pb::DisassociateFloatingIpRequest>,
    ) -> Result<Response<pb::FloatingIp>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let floating_ip_id = self
            .writable_id(&p, &r.floating_ip, find_floating_ip)
            .await?;
        let cmd = NetCommand::DisassociateFloatingIp { floating_ip_id };
        self.reply::<FloatingIp>(r.request_id, p.name, cmd).await
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
        self.reply::<SecurityGroup>(r.request_id, p.name, cmd).await
    }

    async fn get_security_group(
        &self,
        req: Request<pb::GetSecurityGroupRequest>,
    ) -> Result<Response<pb::SecurityGroup>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        self.get(&p, r.stale, &r.security_group, find_group, security_group)
            .await
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
        let group_id = self.writable_id(&p, &r.security_group, find_group).await?;
        let cmd = NetCommand::UpdateSecurityGroup {
            group_id,
            name: r.name,
            description: r.description,
        };
        self.reply::<SecurityGroup>(r.request_id, p.name, cmd).await
    }

    async fn delete_security_group(
        &self,
        req: Request<pb::DeleteSecurityGroupRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        self.delete(p, r.request_id, &r.security_group, find_group, |group_id| {
            NetCommand::DeleteSecurityGroup { group_id }
        })
        .await
    }

    async fn create_security_group_rule(
        &self,
        req: Request<pb::CreateSecurityGroupRuleRequest>,
    ) -> Result<Response<pb::SecurityGroupRule>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let direction = direction_from_pb(r.direction)?
            .ok_or_else(|| Status::invalid_argument("direction is required: ingress or egress"))?;
        let ethertype = ethertype_from_pb(r.ethertype)?;
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
        self.get(&p, r.stale, &r.rule, find_rule, |_, x| rule(x))
            .await
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
        self.delete(p, r.request_id, &r.rule, find_rule, |rule_id| {
            NetCommand::DeleteSecurityGroupRule { rule_id }
        })
        .await
    }
}
